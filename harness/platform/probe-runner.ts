/**
 * Platform probes run under a bound. A probe asks the kernel under test to
 * do something (abort an rseq section, stop at a breakpoint); a kernel that
 * never does it is what a person validating a patch came to find out, so a
 * probe that cannot conclude is a finding — a value of null with what was
 * seen ("no rseq abort within 5000 ms") — and not an error that takes every
 * guest start, and so every case, down with it.
 *
 * The bound is handed to the probe, which uses it for its own waits (the
 * agent's RUN timeout interrupts the program and leaves the agent free);
 * the runner also stops waiting after twice the bound and a second, for a
 * probe that ignores it.
 */
import { isRunTimeout } from '../agent/run-to-end.ts';
export { isRunTimeout };
import { CrhError } from '../errors.ts';

/** Seconds, not the 30 s of a case's RUN: a working kernel answers every probe in milliseconds, even under TCG. */
export const PROBE_BOUND_MS = 5_000;

/** A measured fact: its value (null when it could not be measured) and how it was obtained. */
export interface Measured<T> {
  value: T | null;
  how: string;
  /** the probe could not conclude within its bound: `how` says what it saw */
  inconclusive?: true;
}

/** A probe: measures one fact, waiting at most `boundMs` for the guest at any one time. */
export type Probe<T> = (boundMs: number) => Promise<Measured<T>>;

/** Thrown by a probe that saw the kernel not do what it asked: `seen` says what it saw instead. */
export class ProbeInconclusiveError extends CrhError {
  override readonly name: string = 'ProbeInconclusiveError';
  constructor(readonly seen: string) {
    super(seen);
  }
}

/**
 * Runs `probe` under `boundMs`: its measurement, or an inconclusive null
 * that names the probe and what it saw. Errors other than a probe's own
 * inconclusive answer or a RUN timeout (the host, QEMU, the agent failing)
 * are not findings about the kernel and propagate.
 */
export async function runBoundedProbe<T>(name: string, probe: Probe<T>, boundMs = PROBE_BOUND_MS): Promise<Measured<T>> {
  let timer: NodeJS.Timeout | undefined;
  // Past the probe's own bound by as much again and a second: the agent's answer to a timed-out RUN comes first.
  const giveUpMs = 2 * boundMs + 1_000;
  const gaveUp = new Promise<Measured<T>>((resolve) => {
    timer = setTimeout(
      () => resolve({ value: null, how: `${name}: no conclusion within ${giveUpMs} ms (the probe did not return)`, inconclusive: true }),
      giveUpMs,
    );
  });
  try {
    const measuring = probe(boundMs);
    // Given up on, it may still fail later: that is no one's error any more.
    measuring.catch(() => {});
    return await Promise.race([measuring, gaveUp]);
  } catch (error) {
    if (error instanceof ProbeInconclusiveError) return { value: null, how: `${name}: ${error.seen}`, inconclusive: true };
    if (isRunTimeout(error)) return { value: null, how: `${name}: the program did not finish within ${boundMs} ms`, inconclusive: true };
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** The probes of a profile that could not conclude, as "name: what was seen". */
export function inconclusiveProbes(probes: Readonly<Record<string, Measured<unknown>>>): string[] {
  return Object.entries(probes)
    .filter(([, m]) => m.inconclusive)
    .map(([name, m]) => `${name}: ${m.how}`);
}
