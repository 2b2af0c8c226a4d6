/**
 * The guest's serial console: every byte goes to a log file (kept with the
 * case's artifacts), the recent tail stays in memory for error messages, and
 * waits can watch for a pattern line by line.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import type { Readable } from 'node:stream';

const TAIL_BYTES = 16 * 1024;

/** Console lines that mean the kernel died: a wait fails on them at once. */
export const KERNEL_DEATH = /Kernel panic - not syncing|end Kernel panic|BUG: unable to handle|general protection fault:.*\[#/;

export class ConsoleLog {
  private tailText = '';
  private partial = '';
  private readonly lineListeners = new Set<(line: string) => void>();
  private readonly file: WriteStream;
  readonly lines: string[] = [];
  /** Date.now() when the first console byte arrived; a silent console is how a dead vCPU shows */
  firstByteAt: number | undefined;

  constructor(
    readonly path: string,
    source: Readable,
  ) {
    this.file = createWriteStream(path, { flags: 'a' });
    source.on('data', (chunk: Buffer) => this.onData(chunk.toString('utf8')));
  }

  /** The last few KiB of console output. */
  tail(maxLines = 60): string {
    return this.tailText.split('\n').slice(-maxLines).join('\n');
  }

  onLine(listener: (line: string) => void): () => void {
    this.lineListeners.add(listener);
    return () => this.lineListeners.delete(listener);
  }

  /** Flushes and closes the log file. */
  close(): Promise<void> {
    if (this.partial.length > 0) this.emit(this.partial);
    this.partial = '';
    return new Promise((resolve) => this.file.end(resolve));
  }

  private onData(text: string): void {
    this.firstByteAt ??= Date.now();
    this.file.write(text);
    this.tailText = (this.tailText + text).slice(-TAIL_BYTES);
    const parts = (this.partial + text).split(/\r?\n/);
    this.partial = parts.pop() ?? '';
    for (const line of parts) this.emit(line);
  }

  private emit(line: string): void {
    this.lines.push(line);
    if (this.lines.length > 5000) this.lines.splice(0, this.lines.length - 5000);
    for (const listener of [...this.lineListeners]) listener(line);
  }
}
