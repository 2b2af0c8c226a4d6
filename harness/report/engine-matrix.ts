/**
 * The verdicts of one run under several engines, side by side: one row per
 * case × scenario × policy, one column per engine (crh, criu) — what
 * `crh run --engine crh,criu` prints before its summary. A cell is the row's
 * outcome (PASS, FAIL, GAP for a known engine gap, SKIP) or "-" where that
 * engine recorded no such row. Under the table, every cell that is not a
 * plain PASS says why: a gap with its reference, a finding with what was
 * observed, a skip with its reason. Pure: the rows come in as data.
 */
import { engineOf, outcome, type Engine, type Verdict } from './verdicts.ts';

export interface EngineMatrixRow {
  case: string;
  scenario: string;
  policy: string;
  /** one per engine, in the order asked */
  cells: string[];
  /** the row each cell came from */
  verdicts: (Verdict | undefined)[];
}

const keyOf = (v: Verdict): string => JSON.stringify([v.case, v.scenario, v.policy, v.control]);

export function engineMatrixRows(verdicts: readonly Verdict[], engines: readonly Engine[]): EngineMatrixRow[] {
  const keys = new Map<string, Verdict>();
  for (const v of verdicts) if (!keys.has(keyOf(v))) keys.set(keyOf(v), v);
  // Rows of one case together, in the order cases first appear (parallel cases interleave their rows).
  const caseOrder = [...new Set(verdicts.map((v) => v.case))];
  const ordered = [...keys.entries()].sort(([, a], [, b]) => caseOrder.indexOf(a.case) - caseOrder.indexOf(b.case));
  return ordered.map(([key, first]) => {
    const own = engines.map((e) => verdicts.find((v) => keyOf(v) === key && engineOf(v) === e));
    return {
      case: first.case,
      scenario: first.scenario,
      policy: first.control ? `${first.policy} (control)` : first.policy,
      cells: own.map((v) => (v ? outcome(v) : '-')),
      verdicts: own,
    };
  });
}

/** Why a cell is what it is, when it is not a plain PASS; a gap's reference is numbered (`references`), printed once under the notes. */
function cellReason(v: Verdict, references: string[]): string | undefined {
  const o = outcome(v);
  if (o === 'GAP') {
    if (!references.includes(v.engineGap!.reference)) references.push(v.engineGap!.reference);
    return `known engine gap: ${v.engineGap!.what} [${references.indexOf(v.engineGap!.reference) + 1}] — observed ${v.observed}`;
  }
  if (o === 'SKIP') return v.skipped;
  if (o === 'FAIL') return `expected ${v.expected}, observed ${v.observed}${v.failedAssertions?.length ? `; failed: ${v.failedAssertions.join('; ')}` : ''}`;
  return undefined;
}

/** The side-by-side table, then one line per cell that is a gap, a finding or a skip. */
export function formatEngineSideBySide(verdicts: readonly Verdict[], engines: readonly Engine[]): string {
  const rows = engineMatrixRows(verdicts, engines);
  if (rows.length === 0) return 'no verdicts from any engine';
  const header = ['case', 'scenario', 'policy', ...engines];
  const body = rows.map((r) => [r.case, r.scenario, r.policy, ...r.cells]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  const references: string[] = [];
  const notes = rows.flatMap((r) =>
    r.verdicts.flatMap((v, i) => {
      const why = v ? cellReason(v, references) : undefined;
      return why ? [`${engines[i]} ${r.cells[i]}: ${r.case} / ${r.scenario} / ${r.policy}`, `    ${why}`] : [];
    }),
  );
  return [
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...body.map(line),
    ...(notes.length > 0 ? ['', ...notes] : []),
    ...(references.length > 0 ? ['', ...references.map((ref, i) => `[${i + 1}] ${ref}`)] : []),
  ].join('\n');
}
