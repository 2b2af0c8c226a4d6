/**
 * The pure half of the kernel mutation score (scripts/kernel-mutants.ts):
 * the mutant list and its validation, applying one mutant to a source text,
 * and deciding from a `crh run --json` report whether the harness caught it.
 * No I/O here, so test/kernel-mutants.test.ts can check all of it.
 */

/** One single-line change a plausible kernel patch could introduce. */
export interface Mutant {
  id: string;
  /** a key of MutantSet.areas: says which cases are run against it */
  area: string;
  /** path inside the kernel source tree */
  file: string;
  /** a whole line of `file`, present exactly once */
  search: string;
  /** the line that replaces it */
  replace: string;
  description: string;
}

export interface MutantSet {
  /** the kernel source the lines were taken from */
  source: string;
  /** area → the `crh run --grep` expression selecting its cases */
  areas: Record<string, string>;
  mutants: Mutant[];
}

export class MutantListError extends Error {
  override readonly name = 'MutantListError';
}

/** Raised when a mutant's line is not in the file exactly once. */
export class MutantApplyError extends Error {
  override readonly name = 'MutantApplyError';
  constructor(
    message: string,
    readonly mutantId: string,
    readonly file: string,
  ) {
    super(message);
  }
}

const MUTANT_FIELDS = ['id', 'area', 'file', 'search', 'replace', 'description'] as const;
const ID = /^[a-z0-9][a-z0-9-]*$/;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Validates the parsed mutants.json; every problem is named with the mutant it belongs to. */
export function parseMutantSet(data: unknown): MutantSet {
  if (!isRecord(data)) throw new MutantListError('the mutant list is not a JSON object');
  const { source, areas, mutants } = data;
  if (typeof source !== 'string' || source.length === 0) throw new MutantListError('"source" must name the kernel source the lines come from');
  if (!isRecord(areas) || Object.keys(areas).length === 0) throw new MutantListError('"areas" must map each area to a --grep expression');
  const areaGreps: Record<string, string> = {};
  for (const [area, grep] of Object.entries(areas)) {
    if (typeof grep !== 'string' || grep.length === 0) throw new MutantListError(`area ${area}: the --grep expression must be a non-empty string`);
    try {
      new RegExp(grep);
    } catch (error) {
      throw new MutantListError(`area ${area}: --grep ${grep} is not a regular expression (${(error as Error).message})`);
    }
    areaGreps[area] = grep;
  }
  if (!Array.isArray(mutants) || mutants.length === 0) throw new MutantListError('"mutants" must be a non-empty array');
  const seen = new Set<string>();
  const parsed = mutants.map((raw, index): Mutant => {
    if (!isRecord(raw)) throw new MutantListError(`mutant #${index + 1} is not an object`);
    const where = typeof raw.id === 'string' ? `mutant ${raw.id}` : `mutant #${index + 1}`;
    for (const field of MUTANT_FIELDS) {
      if (typeof raw[field] !== 'string' || (raw[field] as string).length === 0) throw new MutantListError(`${where}: "${field}" must be a non-empty string`);
    }
    const m = Object.fromEntries(MUTANT_FIELDS.map((f) => [f, raw[f] as string])) as unknown as Mutant;
    if (!ID.test(m.id)) throw new MutantListError(`${where}: id must be lower-case words joined by hyphens`);
    if (seen.has(m.id)) throw new MutantListError(`${where}: id used twice`);
    seen.add(m.id);
    if (!(m.area in areaGreps)) throw new MutantListError(`${where}: area ${m.area} is not one of ${Object.keys(areaGreps).join(', ')}`);
    if (m.file.startsWith('/') || m.file.split('/').includes('..')) throw new MutantListError(`${where}: file ${m.file} must be a path inside the source tree`);
    for (const field of ['search', 'replace'] as const) {
      if (/[\r\n]/.test(m[field])) throw new MutantListError(`${where}: "${field}" must be one line`);
    }
    if (m.search.trim() === m.replace.trim()) throw new MutantListError(`${where}: the replacement does not change the line`);
    return m;
  });
  return { source, areas: areaGreps, mutants: parsed };
}

/** The text with the mutant's line replaced; throws unless that line occurs exactly once. */
export function applyMutant(text: string, m: Mutant): string {
  const lines = text.split('\n');
  const at = lines.flatMap((line, i) => (line === m.search ? [i] : []));
  if (at.length !== 1) {
    const why = at.length === 0 ? 'not found' : `found ${at.length} times (lines ${at.map((i) => i + 1).join(', ')})`;
    throw new MutantApplyError(`${m.id}: line ${JSON.stringify(m.search)} ${why} in ${m.file}`, m.id, m.file);
  }
  lines[at[0]!] = m.replace;
  return lines.join('\n');
}

/** The --grep selecting the cases of every given area, one alternative per area. */
export function unionGrep(set: MutantSet, mutants: readonly Mutant[]): string {
  const areas = [...new Set(mutants.map((m) => m.area))];
  return areas.map((a) => `(?:${set.areas[a]!})`).join('|');
}

/** The parts of a `crh run --json` report the decision reads. */
export interface RunReport {
  verdicts: Array<{ case: string; scenario: string; policy: string; expected: string; observed: string; pass: boolean; control: boolean; skipped?: string }>;
  infrastructureFailures: Array<{ case: string; error: string }>;
}

export interface CatchingRow {
  case: string;
  scenario: string;
  policy: string;
  control: boolean;
  expected: string;
  observed: string;
}

/**
 * caught/verdict: a verdict row FAILed (the strong catch).
 * caught/assertion: crh exited 1 and a case failed, but on a TAP assertion outside the verdict rows.
 * caught/boot: the mutated kernel did not come up (BootError) — a weaker catch: it says the kernel is broken, not which property.
 * caught/timeout: the run passed the script's wall-clock limit (a case hung) — weaker, like boot.
 * missed: exit 0 and every row as expected.
 * inconclusive: the infrastructure failed or crh said something the decision cannot read; not counted either way.
 */
export type Decision =
  | { outcome: 'caught'; by: 'verdict'; rows: CatchingRow[] }
  | { outcome: 'caught'; by: 'assertion'; failures: string[] }
  | { outcome: 'caught'; by: 'boot'; error: string }
  | { outcome: 'caught'; by: 'timeout'; limitSeconds: number }
  | { outcome: 'missed'; rows: number }
  | { outcome: 'inconclusive'; why: string };

export interface RunResult {
  exitCode: number | undefined;
  /** undefined when the run wrote no JSON */
  report: RunReport | undefined;
  /** the `not ok` lines of the TAP stream crh printed */
  tapFailures: string[];
  /** set when the script killed the run at its limit */
  timedOutAfterSeconds?: number;
}

/** The `not ok` lines of a TAP stream, indentation, test number and time dropped, duplicates once. */
export function tapFailures(stdout: string): string[] {
  const lines = stdout.split('\n').flatMap((l) => {
    const m = /^\s*not ok \d+ - (.*?)(?: # time=\S+)?$/.exec(l);
    return m ? [m[1]!.trim()] : [];
  });
  return [...new Set(lines)];
}

function firstLine(text: string): string {
  return text.split('\n')[0] ?? '';
}

/** Whether the harness caught a mutant, from what its run returned. */
export function decide(run: RunResult): Decision {
  if (run.timedOutAfterSeconds !== undefined) return { outcome: 'caught', by: 'timeout', limitSeconds: run.timedOutAfterSeconds };
  const failed = (run.report?.verdicts ?? []).filter((v) => v.skipped === undefined && !v.pass);
  if (run.exitCode !== 0 && run.exitCode !== undefined && failed.length > 0) {
    return {
      outcome: 'caught',
      by: 'verdict',
      rows: failed.map((v) => ({ case: v.case, scenario: v.scenario, policy: v.policy, control: v.control, expected: v.expected, observed: v.observed })),
    };
  }
  const infra = run.report?.infrastructureFailures ?? [];
  const boot = infra.find((f) => f.error.startsWith('BootError'));
  if (run.exitCode === 69 && boot) return { outcome: 'caught', by: 'boot', error: `${boot.case}: ${firstLine(boot.error)}` };
  if (run.exitCode === 69)
    return {
      outcome: 'inconclusive',
      why: `infrastructure failure: ${infra.map((f) => `${f.case}: ${firstLine(f.error)}`).join('; ') || 'exit 69 with none recorded'}`,
    };
  if (run.exitCode === 1) {
    if (run.tapFailures.length > 0) return { outcome: 'caught', by: 'assertion', failures: run.tapFailures };
    return { outcome: 'inconclusive', why: 'crh exited 1 with neither a FAIL row nor a failed TAP assertion' };
  }
  if (run.exitCode === 0) {
    if (!run.report) return { outcome: 'inconclusive', why: 'crh exited 0 but wrote no JSON report' };
    if (failed.length > 0) return { outcome: 'inconclusive', why: `crh exited 0 with ${failed.length} FAIL rows` };
    const ran = run.report.verdicts.filter((v) => v.skipped === undefined).length;
    if (ran === 0) return { outcome: 'inconclusive', why: 'every row was skipped: the selection tested nothing' };
    return { outcome: 'missed', rows: ran };
  }
  return { outcome: 'inconclusive', why: `crh exited ${run.exitCode ?? 'by a signal'}` };
}

/** One line saying what caught a mutant (or that nothing did). */
export function describeDecision(d: Decision): string {
  switch (d.outcome) {
    case 'caught':
      switch (d.by) {
        case 'verdict':
          return `CAUGHT by ${d.rows.length} verdict row${d.rows.length === 1 ? '' : 's'}: ${d.rows.map((r) => `${r.case} / ${r.scenario} / ${r.policy}`).join('; ')}`;
        case 'assertion':
          return `CAUGHT by a case assertion (no verdict row failed): ${d.failures.join('; ')}`;
        case 'boot':
          return `CAUGHT by a boot failure only (weaker): ${d.error}`;
        case 'timeout':
          return `CAUGHT by a hang only (weaker): the run passed ${d.limitSeconds} s and was stopped`;
      }
      break;
    case 'missed':
      return `MISSED: all ${d.rows} rows as expected`;
    case 'inconclusive':
      return `INCONCLUSIVE: ${d.why}`;
  }
}

export interface Score {
  caught: number;
  /** caught by a FAIL verdict row, the strong catch */
  byVerdict: number;
  missed: number;
  inconclusive: number;
  /** mutants that gave a verdict: caught + missed */
  decided: number;
}

export function score(decisions: readonly Decision[]): Score {
  const caught = decisions.filter((d) => d.outcome === 'caught').length;
  const byVerdict = decisions.filter((d) => d.outcome === 'caught' && d.by === 'verdict').length;
  const missed = decisions.filter((d) => d.outcome === 'missed').length;
  return { caught, byVerdict, missed, inconclusive: decisions.length - caught - missed, decided: caught + missed };
}
