/**
 * The results of scripts/zdtm-suite.ts, one line per test: native result,
 * crh's verdict, CRIU's verdict, time — read from the verdict rows `crh zdtm
 * --json` wrote (one row per test and engine; a test that fails natively
 * is a skipped row saying so). Pure.
 */
import type { Verdict } from '../report/verdicts.ts';
import type { SelectedTest } from './suite-selection.ts';

export type Cell = 'PASS' | 'FAIL' | 'not run';

export interface SuiteLine {
  test: string;
  category: string;
  args: string[];
  native: Cell;
  crh: Cell;
  criu?: Cell;
  crhMs?: number;
  criuMs?: number;
  /** why a cell is not PASS: the row's observation, or the invocation's trouble */
  notes: string[];
}

/** One `crh zdtm` invocation of a group of tests: its rows (from --json), its exit code, and what went wrong around it. */
export interface GroupRun {
  tests: readonly SelectedTest[];
  rows: readonly Verdict[];
  exitCode: number;
  /** an infrastructure failure or a crash of the invocation (no rows for some tests) */
  trouble?: string;
  wallMs: number;
}

/** The row of `test` under `engine` ('crh' when a row names none): its scenario is the test's name, then its arguments or cycles. */
export function rowOf(rows: readonly Verdict[], test: SelectedTest, engine: 'crh' | 'criu'): Verdict | undefined {
  const title = [test.name, ...test.args].join(' ');
  return rows.find((r) => (r.engine ?? 'crh') === engine && (r.scenario === title || r.scenario.startsWith(`${title} (`)));
}

/** The table's lines, in the groups' order; `engines` says which engine columns were asked for. */
export function suiteLines(groups: readonly GroupRun[], engines: readonly ('crh' | 'criu')[]): SuiteLine[] {
  const lines: SuiteLine[] = [];
  for (const group of groups)
    for (const test of group.tests) {
      const notes: string[] = [];
      const crhRow = rowOf(group.rows, test, 'crh');
      const criuRow = engines.includes('criu') ? rowOf(group.rows, test, 'criu') : undefined;
      const anyRow = crhRow ?? criuRow;
      let native: Cell = 'not run';
      if (anyRow) native = anyRow.skipped ? 'FAIL' : 'PASS';
      if (anyRow?.skipped) notes.push(`natively: ${anyRow.skipped}`);
      if (!anyRow) notes.push(group.trouble ? `not run: ${group.trouble}` : `no row for it (crh zdtm exited ${group.exitCode})`);
      const cell = (row: Verdict | undefined, engine: string): Cell => {
        if (!row || row.skipped) return 'not run';
        if (!row.pass) notes.push(`${engine}: ${row.observed}`);
        return row.pass ? 'PASS' : 'FAIL';
      };
      lines.push({
        test: test.name,
        category: test.category,
        args: test.args,
        native,
        crh: cell(crhRow, 'crh'),
        ...(engines.includes('criu') ? { criu: cell(criuRow, 'criu') } : {}),
        ...(crhRow && !crhRow.skipped ? { crhMs: crhRow.durationMs } : {}),
        ...(criuRow && !criuRow.skipped ? { criuMs: criuRow.durationMs } : {}),
        notes,
      });
    }
  return lines;
}

/**
 * The script's exit code: 1 when a test that passes natively fails
 * through crh (what the suite is there to find); else 69 when an
 * invocation failed as infrastructure, leaving tests without a verdict;
 * else 0. A test that fails natively, or only under CRIU, fails nothing.
 */
export function suiteExitCode(lines: readonly SuiteLine[], groups: readonly GroupRun[]): 0 | 1 | 69 {
  if (lines.some((l) => l.native === 'PASS' && l.crh !== 'PASS')) return 1;
  if (groups.some((g) => g.trouble !== undefined) || lines.some((l) => l.native === 'not run')) return 69;
  return 0;
}

const seconds = (ms: number | undefined): string => (ms === undefined ? '' : (ms / 1000).toFixed(1));

/** The table in Markdown (what docs/zdtm.md shows), one line per test; the notes below it. */
export function formatSuiteTable(lines: readonly SuiteLine[]): string {
  const withCriu = lines.some((l) => l.criu !== undefined);
  const head = ['test', 'what', 'native', 'crh', ...(withCriu ? ['criu'] : []), 'crh s', ...(withCriu ? ['criu s'] : [])];
  const out = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const l of lines) {
    const name = l.args.length > 0 ? `${l.test} ${l.args.join(' ')}` : l.test;
    const cells = [`\`${name}\``, l.category, l.native, l.crh, ...(withCriu ? [l.criu ?? ''] : []), seconds(l.crhMs), ...(withCriu ? [seconds(l.criuMs)] : [])];
    out.push(`| ${cells.join(' | ')} |`);
  }
  const notes = lines.flatMap((l) => l.notes.map((n) => `- ${l.test}: ${n}`));
  return `${out.join('\n')}\n${notes.length > 0 ? `\n${notes.join('\n')}\n` : ''}`;
}

/** One line of totals: how many passed natively, through crh, through CRIU. */
export function suiteTotals(lines: readonly SuiteLine[]): string {
  const count = (f: (l: SuiteLine) => boolean): number => lines.filter(f).length;
  const parts = [
    `${lines.length} tests`,
    `${count((l) => l.native === 'PASS')} pass natively`,
    `${count((l) => l.crh === 'PASS')} pass through crh`,
    `${count((l) => l.native === 'PASS' && l.crh !== 'PASS')} fail through crh`,
  ];
  if (lines.some((l) => l.criu !== undefined))
    parts.push(`${count((l) => l.criu === 'PASS')} pass through CRIU`, `${count((l) => l.native === 'PASS' && l.criu !== 'PASS')} fail through CRIU`);
  return parts.join(', ');
}
