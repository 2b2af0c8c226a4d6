/**
 * Live progress of one crh repro/cr invocation on stderr: each phase as it
 * starts, with the time since the command began, and the duration of every
 * phase kept for the verdict.
 */
import { escapeControl } from '../util/terminal-text.ts';

export class Progress {
  private readonly started = Date.now();
  private current: { name: string; at: number } | undefined;
  /** milliseconds spent in each phase, in order */
  readonly timings: Record<string, number> = {};

  constructor(
    private readonly prefix: string,
    private readonly write: (line: string) => void = (line) => void process.stderr.write(`${line}\n`),
  ) {}

  /** Ends the current phase and starts `name`. */
  phase(name: string, detail?: string): void {
    this.endPhase();
    this.current = { name, at: Date.now() };
    this.line(detail ? `${name}: ${detail}` : name);
  }

  /** A line inside the current phase. */
  note(text: string): void {
    this.line(`  ${text}`);
  }

  endPhase(): void {
    if (this.current) this.timings[this.current.name] = (this.timings[this.current.name] ?? 0) + Date.now() - this.current.at;
    this.current = undefined;
  }

  get elapsedMs(): number {
    return Date.now() - this.started;
  }

  /** Phases and notes quote compiler warnings and names from a bundle: escaped, one terminal line each. */
  private line(text: string): void {
    this.write(`${this.prefix} [${(this.elapsedMs / 1000).toFixed(1).padStart(5)}s] ${escapeControl(text)}`);
  }
}
