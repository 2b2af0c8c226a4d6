/**
 * The comparison that decides a reproducer's verdict: the checkpointed run
 * must end as the uninterrupted one did (exit status or signal), print the
 * same output, and — at a breakpoint checkpoint — execute the checkpoint
 * address as often (a restore that loses EFLAGS.RF re-triggers it).
 */
import type { RunRecord } from './runs.ts';
import { signalName } from './runs.ts';

export interface Mismatch {
  /** "exit status", "output", "breakpoint hits at checkpoint_here" */
  what: string;
  reference: string;
  restored: string;
  /** for output: the first differing line, 1-based */
  line?: number;
}

/** Where the uninterrupted traced run differs from the native one: the harness perturbs the program. */
export interface Perturbation {
  /** "exit status", "output" */
  what: string;
  native: string;
  traced: string;
  /** for output: the first differing line, 1-based */
  line?: number;
}

/** The native run against the uninterrupted traced run: exit status and output (no hits: the native run has no breakpoint). */
export function comparePerturbation(
  native: Pick<RunRecord, 'outcome' | 'code' | 'output'>,
  traced: Pick<RunRecord, 'outcome' | 'code' | 'output'>,
): Perturbation[] {
  const differences: Perturbation[] = [];
  const status = [describeStatus(native), describeStatus(traced)] as const;
  if (status[0] !== status[1]) differences.push({ what: 'exit status', native: status[0], traced: status[1] });
  const line = firstDifferentLine(native.output, traced.output);
  if (line) differences.push({ what: 'output', line: line.line, native: line.reference, traced: line.restored });
  return differences;
}

/** One line for a perturbation, as the summary shows it. */
export function describePerturbation(differences: readonly Perturbation[]): string {
  const parts = differences.map((d) =>
    d.what === 'output'
      ? `output differs at line ${d.line}: native ${d.native}, traced ${d.traced}`
      : `${d.what} differs: native ${d.native}, traced ${d.traced}`,
  );
  return `the harness perturbs this program: its uninterrupted traced run differs from the native run (no tracer, no breakpoint): ${parts.join('; ')}`;
}

export function describeStatus(run: Pick<RunRecord, 'outcome' | 'code'>): string {
  if (run.outcome === 'exited') return `exit ${run.code}`;
  if (run.outcome === 'killed') return `killed by ${signalName(run.code)} (${run.code})`;
  return `did not finish within ${run.code} ms`;
}

export function compareRuns(reference: RunRecord, restored: RunRecord, hitsAt?: string): Mismatch[] {
  const mismatches: Mismatch[] = [];
  const status = [describeStatus(reference), describeStatus(restored)] as const;
  if (status[0] !== status[1]) mismatches.push({ what: 'exit status', reference: status[0], restored: status[1] });
  const line = firstDifferentLine(reference.output, restored.output);
  if (line) mismatches.push({ what: 'output', ...line });
  if (hitsAt !== undefined && reference.hits !== restored.hits) {
    mismatches.push({ what: `breakpoint hits at ${hitsAt}`, reference: String(reference.hits), restored: String(restored.hits) });
  }
  return mismatches;
}

/** The first line where two outputs differ; a missing line reads "(no line N)". */
export function firstDifferentLine(reference: string, restored: string): { line: number; reference: string; restored: string } | undefined {
  if (reference === restored) return undefined;
  const a = reference.split('\n');
  const b = restored.split('\n');
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) {
      const show = (s: string | undefined): string => (s === undefined ? `(no line ${i + 1})` : JSON.stringify(s));
      return { line: i + 1, reference: show(a[i]), restored: show(b[i]) };
    }
  }
  return undefined;
}

/** One line a person reads first: what differed, or that nothing did. */
export function summarize(mismatches: readonly Mismatch[], restoreError: string | undefined, reference: RunRecord): string {
  if (restoreError !== undefined) return `the restore failed: ${restoreError.split('\n')[0]}`;
  if (mismatches.length === 0) {
    const lines = reference.output.split('\n').filter(Boolean).length;
    return `the restored run matches the uninterrupted run: ${describeStatus(reference)}, ${lines} line${lines === 1 ? '' : 's'} of output`;
  }
  return mismatches
    .map((m) =>
      m.what === 'output'
        ? `output differs at line ${m.line}: uninterrupted ${m.reference}, restored ${m.restored}`
        : `${m.what} differs: uninterrupted ${m.reference}, restored ${m.restored}`,
    )
    .join('; ');
}
