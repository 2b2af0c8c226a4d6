/**
 * Verdict rows — scenario × policy × expected × observed — appended by cases
 * as JSON lines and read back by `crh run` for the verdict table.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../util/cache-dir.ts';
import { runConfiguration, type Engine } from '../flags/run-configuration.ts';

// The engines are run configuration (flags/run-configuration.ts); named here too for the rows and reports that have always taken them from here.
export { ENGINES, type Engine } from '../flags/run-configuration.ts';

/**
 * A difference from the uninterrupted run that the engine is documented or
 * measured to make: not a harness failure, not a finding, counted on its own.
 */
export interface EngineGap {
  /** what the engine does not restore, e.g. "the task's debug registers (DR0-DR3, DR7)" */
  what: string;
  /** where that is documented or measured: a source file and behaviour of the engine, or our own measurement */
  reference: string;
}

export interface Verdict {
  case: string;
  scenario: string;
  policy: string;
  /** the engine that checkpointed and restored; absent (rows from before engines) reads as crh */
  engine?: Engine;
  /** set when the row's difference is exactly a known gap of its engine (outcome GAP) */
  engineGap?: EngineGap;
  expected: string;
  observed: string;
  /** whether observed matched expected */
  pass: boolean;
  /** a negative control: expected to show the historic bug */
  control: boolean;
  /** platform-profile values the expectation depends on */
  conditions?: Record<string, string>;
  /** registers whose observed value differs from the image, one per line (`rbx: image 0x…, cpu 0x…`) */
  registerDiff?: string;
  /** the case file that recorded the row, relative to the repository */
  file?: string;
  /** the case's artifacts folder, absolute or relative to the artifacts root (default: `<root>/<case>`) */
  artifacts?: string;
  /** wall time of the scenario × policy run */
  durationMs?: number;
  /**
   * Why the case did not run — the guest kernel lacks an option it needs,
   * named here. A skip is neither a pass nor a failure; `pass` is false so
   * that a reader unaware of skips does not count it as a pass.
   */
  skipped?: string;
  /**
   * Assertions of the row's own tap scope that failed (their names): a row
   * with any is FAIL whatever its own comparison said, so a verdict never
   * reads PASS beside a failed check of the same run (testing/verdict-rows.ts).
   */
  failedAssertions?: string[];
  /**
   * What each restore of the row asked of the kernel and what the kernel
   * holds after it (the restore core's read-back), one entry per restore the
   * row made: an empty `differences` list is the kernel accepting all of it.
   */
  restores?: RestoreWitness[];
}

/** The kernel's answer to one restore: the read-back differences, or the refusal. */
export interface RestoreWitness {
  /** the restore's tag (its artifacts carry it) */
  tag: string;
  /** each field the kernel holds differently from what was asked */
  differences: { what: string; requested: string; accepted: string }[];
  /** the restore was refused before or while it ran (the error's message) */
  refused?: string;
  /** what the CPU oracle counted while the restored process ran (first execution reached, #DB count, VM stops) */
  oracle?: string;
}

/** GAP: a known engine gap (engineGap), neither a pass nor a harness failure. */
export type Outcome = 'PASS' | 'FAIL' | 'SKIP' | 'GAP';

/**
 * The case file this process runs (its main script, relative to the
 * repository), stamped on every row and failure it records: what ties a row
 * to the file that made it when a case names itself otherwise
 * (cases/reports/criu-rseq.test.ts records "report-criu-rseq").
 */
export function caseFile(): string | undefined {
  const main = process.argv[1];
  if (main && main.endsWith('.test.ts')) return path.relative(REPO_ROOT, path.resolve(main));
  const compiledFrom = process.env[CASE_FILE_ENV];
  return compiledFrom ? path.relative(REPO_ROOT, path.resolve(compiledFrom)) : undefined;
}

/** A case process `crh run` starts from compiled output is told its source here (its process.argv[1] names the output). */
export const CASE_FILE_ENV = 'CRH_CASE_FILE';

export function outcome(v: Verdict): Outcome {
  if (v.skipped !== undefined) return 'SKIP';
  // A failed assertion of the row's own scope outweighs the gap: the gap explains one difference, not every check.
  if (v.engineGap !== undefined && !v.failedAssertions?.length) return 'GAP';
  return v.pass ? 'PASS' : 'FAIL';
}

/** The row's engine: crh for a row recorded before engines were a dimension. */
export function engineOf(v: Verdict): Engine {
  return v.engine ?? 'crh';
}

/** "known engine gap: WHAT (REFERENCE)", as every reporter prints a GAP row's reason. */
export function describeGap(gap: EngineGap): string {
  return `known engine gap: ${gap.what} (${gap.reference})`;
}

/** Where this process's run puts its artifacts (the run configuration's). */
export function artifactsRoot(): string {
  return runConfiguration().artifactsDir;
}

/** Where this process's run records its verdict rows (the run configuration's). */
export function verdictsFile(): string {
  return runConfiguration().verdictsFile;
}

/** When this process recorded its last verdict (or loaded this module): cases record one verdict per run, in order. */
let lastRecordedAt = Date.now();

/** The wall time since the previous row (or since this module loaded), and the clock restarted: what a row without its own durationMs gets. */
export function takeElapsedSinceLastRow(): number {
  const now = Date.now();
  const elapsed = now - lastRecordedAt;
  lastRecordedAt = now;
  return elapsed;
}

/**
 * Appends a verdict. Without a durationMs of its own, the row gets the wall
 * time since the case process's previous verdict — the checkpoint, restore
 * and run that produced it (the first row also carries the guest's start).
 */
export function recordVerdict(verdict: Verdict): void {
  const source = caseFile();
  const row = { ...verdict, durationMs: verdict.durationMs ?? takeElapsedSinceLastRow(), ...(source && !verdict.file ? { file: source } : {}) };
  const file = verdictsFile();
  mkdirSync(path.dirname(file), { recursive: true });
  appendFileSync(file, `${JSON.stringify(row)}\n`);
}

/**
 * Records a scenario × policy row from whether the restored run was
 * indistinguishable from the uninterrupted one. A negative control passes
 * when it was not — it must show its historic bug — so its expectation
 * reads "differs from …".
 */
export function recordOutcome(row: OutcomeRow): void {
  recordVerdict(outcomeVerdict(row));
}

export type OutcomeRow = Omit<Verdict, 'pass'> & { matchedUninterrupted: boolean };

/** The row recordOutcome writes, as data. */
export function outcomeVerdict(row: OutcomeRow): Verdict {
  const { matchedUninterrupted, ...verdict } = row;
  return {
    ...verdict,
    expected: verdict.control ? `differs from: ${verdict.expected}` : verdict.expected,
    pass: verdict.control ? !matchedUninterrupted : matchedUninterrupted,
  };
}

/** The witnesses that explain a row, one line each: failed assertions, the kernel's read-back, the oracle's counts, the register diff. */
export function witnessLines(v: Verdict): string[] {
  const lines: string[] = [];
  for (const name of v.failedAssertions ?? []) lines.push(`failed assertion: ${name}`);
  for (const r of v.restores ?? []) {
    if (r.refused !== undefined) lines.push(`restore ${r.tag}: refused: ${r.refused}`);
    else if (r.differences.length === 0) lines.push(`restore ${r.tag}: the kernel accepted everything as requested`);
    else for (const d of r.differences) lines.push(`restore ${r.tag}: ${d.what} asked ${d.requested}, the kernel has ${d.accepted}`);
    if (r.oracle !== undefined) lines.push(`oracle ${r.tag}: ${r.oracle}`);
  }
  if (v.registerDiff) for (const l of v.registerDiff.split('\n')) lines.push(`register diff: ${l}`);
  if (v.engineGap) lines.push(describeGap(v.engineGap));
  return lines;
}

/** "k=v, k=v": the platform-profile values an expectation was conditioned on. */
export function formatConditions(conditions: Verdict['conditions']): string {
  return Object.entries(conditions ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
}

export function readVerdicts(file = verdictsFile()): Verdict[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => withEngine(JSON.parse(l) as Verdict));
}

/** A row with its engine stated: rows recorded before engines were a dimension are crh's. */
export function withEngine(v: Verdict): Verdict {
  return v.engine ? v : { ...v, engine: 'crh' };
}

/** A plain-text table, one row per verdict, widths fitted to the content. */
export function formatVerdictTable(verdicts: readonly Verdict[]): string {
  const header = ['case', 'scenario', 'engine', 'policy', 'expected', 'observed', 'depends on', 'time', 'verdict'];
  const rows = verdicts.map((v) => [
    v.case,
    v.scenario,
    engineOf(v),
    v.control ? `${v.policy} (control)` : v.policy,
    v.expected,
    v.observed,
    formatConditions(v.conditions),
    v.durationMs === undefined ? '' : `${(v.durationMs / 1000).toFixed(1)} s`,
    v.skipped !== undefined
      ? `SKIP: ${v.skipped}`
      : v.failedAssertions?.length
        ? `FAIL: ${v.failedAssertions.join('; ')}`
        : v.engineGap
          ? `GAP: ${describeGap(v.engineGap)}`
          : outcome(v),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
