/**
 * The ZDTM verdict, read as ZDTM's own driver reads it: the word PASS among
 * the last lines of the test's outfile. The outfile is T.out once the test
 * has ended as the process it started as (its exit handler renames
 * T.out.inprogress), else T.out.inprogress — a test restored under another
 * pid, or an older ZDTM that writes T.out directly, still has a verdict.
 * Pure: the run modules read the files, this decides.
 */
import { outcome, type Engine, type Verdict } from '../report/verdicts.ts';

/** How many lines from the end the word PASS is looked for in. */
export const TAIL_LINES = 5;
export const OUTFILE = 'T.out';
export const INPROGRESS = `${OUTFILE}.inprogress`;
export const PIDFILE = 'T.pid';

export interface OutfileVerdict {
  pass: boolean;
  /** which file held the verdict; absent when neither exists */
  file?: typeof OUTFILE | typeof INPROGRESS;
  /** the last non-empty lines read */
  tail: string[];
}

/** The verdict of a test's outfiles (undefined: the file does not exist); T.out wins when both exist. */
export function outfileVerdict(out: string | undefined, inprogress: string | undefined): OutfileVerdict {
  const file = out !== undefined ? OUTFILE : inprogress !== undefined ? INPROGRESS : undefined;
  const text = out ?? inprogress;
  if (text === undefined || file === undefined) return { pass: false, tail: [] };
  const tail = text
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l.trim() !== '')
    .slice(-TAIL_LINES);
  return { pass: tail.some((line) => line.split(/\s+/).includes('PASS')), file, tail };
}

/** One line saying what an outfile verdict was, for rows and the terminal. */
export function describeOutfile(v: OutfileVerdict): string {
  if (!v.file) return `no outfile (neither ${OUTFILE} nor ${INPROGRESS})`;
  return `${v.pass ? 'PASS' : 'no PASS'} in ${v.file}${v.tail.length ? `: ${v.tail.at(-1)}` : ' (empty)'}`;
}

/** A test's two runs: natively, then with checkpoint → kill → restore. */
export interface ZdtmResult {
  /** the test's name and arguments, as rows show it */
  test: string;
  /** which engine checkpointed and restored it (absent: crh) */
  engine?: Engine;
  /** the native run: passed, or why not */
  native: { pass: boolean; summary: string };
  /** the checkpointed run; absent when the native run failed (no C/R verdict on a test that fails anyway) */
  checkpointed?: { pass: boolean; summary: string };
  durationMs: number;
}

/**
 * crh's exit code for a set of results: 1 when any test failed under C/R
 * (what crh zdtm is there to find), else 2 when any failed natively (the
 * test or its arguments are broken, as a usage error is: nothing was said
 * about C/R), else 0. Infrastructure (69) is thrown, never a result.
 */
export function zdtmExitCode(results: readonly ZdtmResult[]): 0 | 1 | 2 {
  if (results.some((r) => r.checkpointed && !r.checkpointed.pass)) return 1;
  if (results.some((r) => !r.native.pass)) return 2;
  return 0;
}

/**
 * The verdict rows, one per test, in crh run's shape (report writers,
 * JUnit, JSON). A test that fails natively is a skip naming why: it is
 * neither a C/R pass nor a C/R failure.
 */
export function zdtmRows(results: readonly ZdtmResult[], policy: string, cycles: number, criuPolicy = CRIU_POLICY): Verdict[] {
  return results.map((r) => ({
    case: 'zdtm',
    scenario: `${r.test}${cycles > 1 ? ` (${cycles} checkpoint/restore cycles)` : ''}`,
    ...(r.engine ? { engine: r.engine } : {}),
    policy: r.engine === 'criu' ? criuPolicy : policy,
    expected: 'PASS, as natively',
    observed: r.checkpointed ? r.checkpointed.summary : `native run: ${r.native.summary}`,
    pass: r.checkpointed?.pass ?? false,
    control: false,
    durationMs: r.durationMs,
    ...(r.native.pass ? {} : { skipped: `fails natively: ${r.native.summary}` }),
  }));
}

/** A CRIU row's policy: CRIU's own defaults (the restore core's policy switches do not apply to it). */
export const CRIU_POLICY = 'criu defaults';

/** PASS, FAIL or SKIP (failed natively) of a row, for the terminal. */
export function rowLabel(row: Verdict): string {
  const o = outcome(row);
  return o === 'SKIP' ? 'NATIVE-FAIL' : o;
}
