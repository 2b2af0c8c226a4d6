/**
 * crh's exit codes, and the rule that turns a run's verdict rows into one.
 * docs/ci.md lists what produces each; test/exit-codes.test.ts produces each.
 */
import { outcome, type Verdict } from '../report/verdicts.ts';
import { EXIT_PERTURBED } from '../repro/verdict.ts';

export const EXIT = {
  /** every verdict as expected, at least one of them a pass */
  ok: 0,
  /** a case or verdict failed, or the run proved nothing (no row, or every row skipped) */
  failed: 1,
  /** the command line cannot be carried out as given */
  usage: 2,
  /** crh repro/cr: the traced uninterrupted run differs from the native one, so no verdict on the restore */
  perturbed: EXIT_PERTURBED,
  /** infrastructure (BSD sysexits EX_UNAVAILABLE): QEMU, the image, a kernel that cannot boot, a guest lost mid-run */
  infra: 69,
} as const;

/**
 * The exit code of a run whose infrastructure held: 1 when the test runner
 * failed or any row is FAIL, and also when no row is PASS — a run in which
 * every case was skipped (the kernel lacks what the cases need) tested
 * nothing, and CI must not read that as green. Skips beside passes are fine.
 */
export function verdictsExitCode(verdicts: readonly Verdict[], runnerExitCode = 0): number {
  if (runnerExitCode !== 0) return EXIT.failed;
  if (verdicts.some((v) => outcome(v) === 'FAIL')) return EXIT.failed;
  return verdicts.some((v) => outcome(v) === 'PASS') ? EXIT.ok : EXIT.failed;
}
