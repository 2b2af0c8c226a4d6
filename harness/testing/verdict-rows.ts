/**
 * Verdict rows recorded from the tap subtest that made the assertions: a row
 * is FAIL when any assertion of its own scope failed — the assertions its
 * subtest made since the subtest's previous row (or its start) — and names
 * them. One verdict is not computed twice and allowed to disagree: a case
 * once asserted "the kernel accepted every register as requested", the
 * assertion failed, and its row, which compared other things, said PASS.
 *
 * tap parses a test point's result only once the line after it arrives (a
 * YAML block may follow), so the failures are read in the subtest's
 * teardown, when its output is complete; the row keeps the assertion count
 * at the moment it was recorded to know which failures are its own, and is
 * written then. Rows carry the restores the row made (restore-witness.ts).
 */
import { engineOf, outcomeVerdict, recordVerdict, takeElapsedSinceLastRow, type Engine, type OutcomeRow, type Verdict } from '../report/verdicts.ts';
import { takeRestores } from './restore-witness.ts';

/** The parts of a tap Test a row reads: its assertion count, its failed points (id = assertion number), its teardown. */
export interface AssertionScope {
  readonly count: number;
  readonly lists: { readonly fail: ReadonlyArray<{ readonly id: number; readonly name: string }> };
  teardown(fn: () => unknown): void;
}

interface PendingRow {
  verdict: Verdict;
  /** the row's assertions are numbers (after, upTo] */
  after: number;
  upTo: number;
}

const pendingRows = new WeakMap<AssertionScope, PendingRow[]>();
/** The engines this case process has recorded rows for (guest-fixture.ts says so when an asked engine got none). */
const recordedEngines = new Set<Engine>();

/** The engines this process recorded at least one row for, through recordRow. */
export function enginesRecorded(): ReadonlySet<Engine> {
  return recordedEngines;
}

/** A row with its scope's failed assertions applied: any failure makes it FAIL and is named. */
export function withFailedAssertions(verdict: Verdict, failed: readonly string[]): Verdict {
  if (failed.length === 0 || verdict.skipped !== undefined) return verdict;
  return { ...verdict, pass: false, failedAssertions: [...(verdict.failedAssertions ?? []), ...failed] };
}

/** Records `verdict` from scope `t`, after the assertions it rests on; written when `t` ends. */
export function recordRow(t: AssertionScope, verdict: Verdict): void {
  let rows = pendingRows.get(t);
  if (!rows) {
    const own: PendingRow[] = [];
    rows = own;
    pendingRows.set(t, own);
    t.teardown(() => {
      for (const row of own.splice(0)) {
        const failed = t.lists.fail.filter((r) => r.id > row.after && r.id <= row.upTo).map((r) => r.name);
        recordVerdict(withFailedAssertions(row.verdict, failed));
      }
    });
  }
  recordedEngines.add(engineOf(verdict));
  const restores = [...(verdict.restores ?? []), ...takeRestores()];
  rows.push({
    verdict: { ...verdict, durationMs: verdict.durationMs ?? takeElapsedSinceLastRow(), ...(restores.length > 0 ? { restores } : {}) },
    after: rows.at(-1)?.upTo ?? 0,
    upTo: t.count,
  });
}

/** recordOutcome's row (a control passes when the run differed), recorded from scope `t` as recordRow does. */
export function recordRowOutcome(t: AssertionScope, row: OutcomeRow): void {
  recordRow(t, outcomeVerdict(row));
}
