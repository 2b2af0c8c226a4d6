/**
 * What `crh run` shows a person: on a terminal, one status line saying which
 * cases run and in which phase (the subtest each is in); one line per case
 * as it finishes (✓/✗, rows, controls, time); then a summary that fits 100
 * columns, with every row that is not as expected spelled out and the paths
 * to its artifacts and the HTML report. Colour only on a TTY without
 * NO_COLOR. The full TAP of every case stays in its artifacts.
 */
import { describeGap, engineOf, outcome, witnessLines, type Verdict } from './verdicts.ts';
import type { CaseEvent } from '../run/case-pool.ts';

export const SUMMARY_COLUMNS = 100;
/** a case line: mark, name, what happened, time — 2 + 36 + 1 + 52 + 1 + 7 = 99 columns */
const NAME_COLUMNS = 36;
const WHAT_COLUMNS = 52;

export interface ReporterOutput {
  write(text: string): void;
  isTTY: boolean;
  columns?: number;
}

interface Style {
  ok(s: string): string;
  bad(s: string): string;
  dim(s: string): string;
}

function style(color: boolean): Style {
  const wrap = (code: number) => (s: string) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
  return { ok: wrap(32), bad: wrap(31), dim: wrap(2) };
}

/** Cuts `text` to `width` columns, marking the cut. */
export function fit(text: string, width: number): string {
  const flat = text.replace(/\s+/g, ' ');
  return flat.length <= width ? flat : `${flat.slice(0, Math.max(0, width - 1))}…`;
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

/** The one-line result of a case file, from its rows and its process's exit. */
export function caseLine(name: string, rows: readonly Verdict[], exitCode: number | null, durationMs: number, infra: boolean, s: Style = style(false)): string {
  const failed = rows.filter((v) => outcome(v) === 'FAIL').length;
  const skipped = rows.filter((v) => outcome(v) === 'SKIP');
  const controls = rows.filter((v) => v.control).length;
  const gaps = rows.filter((v) => outcome(v) === 'GAP').length;
  const time = seconds(durationMs).padStart(7);
  if (infra) return `${s.bad('!')} ${fit(name, NAME_COLUMNS).padEnd(NAME_COLUMNS)} ${'infrastructure failure'.padEnd(WHAT_COLUMNS)} ${time}`;
  if (rows.length > 0 && skipped.length === rows.length)
    return `${s.dim('-')} ${fit(name, NAME_COLUMNS).padEnd(NAME_COLUMNS)} ${fit(`skipped: ${skipped[0]!.skipped}`, WHAT_COLUMNS).padEnd(WHAT_COLUMNS)} ${time}`;
  const counts = `${rows.length} rows, ${controls} controls${gaps > 0 ? `, ${gaps} engine gaps` : ''}${failed > 0 ? `, ${failed} not as expected` : ''}`;
  const bad = failed > 0 || exitCode !== 0 || rows.length === 0;
  const why = bad && failed === 0 ? (rows.length === 0 ? 'no verdict row' : `assertions failed (exit ${exitCode})`) : counts;
  return `${bad ? s.bad('✗') : s.ok('✓')} ${fit(name, NAME_COLUMNS).padEnd(NAME_COLUMNS)} ${fit(why, WHAT_COLUMNS).padEnd(WHAT_COLUMNS)} ${time}`;
}

export interface SummaryInput {
  verdicts: readonly Verdict[];
  infraCases: readonly string[];
  failedCases: readonly string[];
  elapsedMs: number;
  artifactsRoot: string;
  htmlReport: string;
  /** e.g. "tcg (KVM unusable: ...)" and the kernel's identity */
  context: readonly string[];
}

/** Witness lines shown under a failing row in the summary; the HTML report has them all. */
const WITNESS_LINES = 6;

/** The closing summary; no line wider than SUMMARY_COLUMNS. */
export function summary(input: SummaryInput, s: Style = style(false)): string {
  const count = (o: string): number => input.verdicts.filter((v) => outcome(v) === o).length;
  const lines: string[] = [];
  const rule = '─'.repeat(SUMMARY_COLUMNS);
  lines.push(rule);
  for (const c of input.context) lines.push(fit(c, SUMMARY_COLUMNS));
  const notAsExpected = input.verdicts.filter((v) => outcome(v) === 'FAIL');
  // Rows of another engine than crh name it: a CRIU row not as expected is a finding about CRIU.
  const engineTag = (v: Verdict): string => (engineOf(v) === 'crh' ? '' : ` [${engineOf(v)}]`);
  for (const v of notAsExpected) {
    lines.push(s.bad(fit(`✗ ${v.case}${engineTag(v)}: ${v.scenario} under ${v.policy}${v.control ? ' (control)' : ''}`, SUMMARY_COLUMNS)));
    lines.push(fit(`    expected ${v.expected}`, SUMMARY_COLUMNS));
    lines.push(fit(`    observed ${v.observed}`, SUMMARY_COLUMNS));
    // The cause beside the verdict: the failed assertions, what the kernel refused of the restore, the oracle's counts.
    const witnesses = witnessLines({ ...v, engineGap: undefined });
    for (const w of witnesses.slice(0, WITNESS_LINES)) lines.push(fit(`    ${w}`, SUMMARY_COLUMNS));
    if (witnesses.length > WITNESS_LINES) lines.push(`    … ${witnesses.length - WITNESS_LINES} more in the HTML report`);
    lines.push(fit(`    artifacts ${v.artifacts ?? `${input.artifactsRoot}/${v.case}`}`, SUMMARY_COLUMNS));
  }
  for (const c of input.failedCases)
    if (!notAsExpected.some((v) => v.case === c))
      lines.push(s.bad(fit(`✗ ${c}: assertions failed outside any verdict row (see its TAP in ${input.artifactsRoot}/tap/)`, SUMMARY_COLUMNS)));
  for (const c of input.infraCases) lines.push(s.bad(fit(`! ${c}: infrastructure failure (${input.artifactsRoot}/infra-failures.jsonl)`, SUMMARY_COLUMNS)));
  // Known engine gaps are listed, one line each with their reference, and counted apart from passes and failures.
  for (const v of input.verdicts.filter((r) => outcome(r) === 'GAP')) {
    lines.push(s.dim(fit(`~ ${v.case}${engineTag(v)}: ${v.scenario} under ${v.policy}`, SUMMARY_COLUMNS)));
    lines.push(fit(`    ${describeGap(v.engineGap!)}`, SUMMARY_COLUMNS));
  }
  const controls = input.verdicts.filter((v) => v.control && outcome(v) === 'PASS').length;
  const engines = [...new Set(input.verdicts.map(engineOf))];
  lines.push(
    `${count('PASS')} passed, ${count('FAIL')} failed${count('GAP') > 0 ? `, ${count('GAP')} known engine gaps` : ''}${count('SKIP') > 0 ? `, ${count('SKIP')} skipped` : ''}` +
      (engines.length > 1 || engines[0] !== 'crh' ? ` (engines: ${engines.join(', ')})` : ''),
  );
  lines.push(fit(`${input.verdicts.length} verdict rows (${controls} negative controls showed their bug) in ${seconds(input.elapsedMs)}`, SUMMARY_COLUMNS));
  lines.push(fit(`artifacts: ${input.artifactsRoot}`, SUMMARY_COLUMNS));
  lines.push(fit(`HTML report: ${input.htmlReport}`, SUMMARY_COLUMNS));
  return `${lines.join('\n')}\n`;
}

/** Live progress and per-case lines from the case pool's events. */
export class ConsoleReporter {
  private readonly phases = new Map<string, string>();
  private readonly s: Style;
  private statusShown = false;

  constructor(
    private readonly out: ReporterOutput,
    private readonly rowsOf: (caseName: string) => Verdict[],
    private readonly infraIn: (caseName: string) => boolean,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.s = style(out.isTTY && env.NO_COLOR === undefined && env.TERM !== 'dumb');
  }

  onEvent(event: CaseEvent): void {
    if (event.type === 'start') {
      this.phases.set(event.name, 'starting');
      this.status();
    } else if (event.type === 'line') {
      const m = /^\s*# Subtest: (.*)$/.exec(event.line);
      if (m) {
        this.phases.set(event.name, m[1]!);
        this.status();
      }
    } else {
      this.phases.delete(event.name);
      this.clearStatus();
      this.out.write(`${caseLine(event.name, this.rowsOf(event.name), event.exitCode, event.durationMs, this.infraIn(event.name), this.s)}\n`);
      this.status();
    }
  }

  /** Removes the status line before anything else is printed. */
  clearStatus(): void {
    if (this.statusShown) this.out.write('\r\x1b[K');
    this.statusShown = false;
  }

  private status(): void {
    if (!this.out.isTTY || this.phases.size === 0) return;
    const width = Math.min(this.out.columns ?? 80, SUMMARY_COLUMNS) - 1;
    const text = [...this.phases].map(([name, phase]) => `${name}: ${phase}`).join(' | ');
    this.out.write(`\r\x1b[K${this.s.dim(fit(`… ${text}`, width))}`);
    this.statusShown = true;
  }
}
