/**
 * One attempt at a scenario — checkpoint, restore (by either engine),
 * run to the end under the oracle — as data: the witnesses it has, and
 * whether it was indistinguishable from the uninterrupted run. A row's
 * expectation is judged against an Attempt once, here (verdictOf), and both
 * the tap assertion and the verdict row are that one judgement (runner.ts),
 * so the two cannot disagree.
 */
import type { Engine, EngineGap, Verdict } from '../report/verdicts.ts';

/** What an attempt saw, witness by witness; a scenario fills in the ones it has. */
export interface Witnesses {
  /** breakpoint or watchpoint hits the agent counted, the original's up to the checkpoint and the restored run's */
  hits?: number;
  /** the restored run's output */
  output?: string;
  /** how the restored run ended: "exited 0", "killed 11" (native-reference.ts endedAs) */
  ended?: string;
  /** the CPU oracle: #DB at the watched address after the restore, and whether the watched first execution was reached */
  oracle?: { debugTraps: number; firstReached: boolean };
  /** what the kernel holds differently from what the restore asked (its read-back), one line each */
  differences?: readonly string[];
  /** why no restored run was judged: the restore was refused, or the workload ended before the stop */
  notRestored?: string;
}

export interface Attempt {
  /** indistinguishable from the uninterrupted run, by every witness the scenario has */
  matched: boolean;
  /** what the attempt showed, in the row's words */
  observed: string;
  witnesses: Witnesses;
  /** registers whose value in the CPU (or as restored) differs from the image, one per line */
  registerDiff?: string;
  /** platform-profile values the expectation depends on */
  conditions?: Record<string, string>;
  /** an engine's documented gap that is the whole difference (only ever set with matched false) */
  gap?: EngineGap;
}

/** What a row expects of its attempt. */
export type Expectation =
  /** resumes as the uninterrupted run, which `expected` describes; a documented engine gap alone makes the row GAP */
  | { kind: 'resumes'; expected: string }
  /** a negative control: a restored run that differs from the uninterrupted one (described by `from`) in any way */
  | { kind: 'differs'; from: string }
  /** a negative control with a precise bug to show (`expected`, e.g. "6 hits (spurious re-trigger)"): that, and not the uninterrupted run */
  | { kind: 'shows'; expected: string; holds: (a: Attempt) => boolean };

export const resumes = (expected: string): Expectation => ({ kind: 'resumes', expected });
export const differs = (from: string): Expectation => ({ kind: 'differs', from });
export const shows = (expected: string, holds: (a: Attempt) => boolean): Expectation => ({ kind: 'shows', expected, holds });

/** Which row an attempt makes: the table's coordinates. */
export interface RowKey {
  case: string;
  scenario: string;
  policy: string;
  engine?: Engine;
}

/** The one judgement of `a` against `expectation`: the verdict row, and the tap assertion's message. */
export function verdictOf(key: RowKey, expectation: Expectation, a: Attempt): { verdict: Verdict; message: string } {
  const control = expectation.kind !== 'resumes';
  const expected =
    expectation.kind === 'resumes' ? expectation.expected : expectation.kind === 'differs' ? `differs from: ${expectation.from}` : expectation.expected;
  // A control's difference must come from a restored run: a restore that never ran (refused, or no stop) shows no bug, unless the row says that is its bug.
  const pass =
    expectation.kind === 'resumes'
      ? a.matched
      : expectation.kind === 'differs'
        ? !a.matched && a.witnesses.notRestored === undefined
        : !a.matched && expectation.holds(a);
  // A gap explains a difference from the uninterrupted run, so only a row that expects that run can be GAP.
  const gap = expectation.kind === 'resumes' && !a.matched ? a.gap : undefined;
  const verdict: Verdict = {
    ...key,
    control,
    expected,
    observed: a.observed,
    pass,
    ...(a.conditions ? { conditions: a.conditions } : {}),
    ...(a.registerDiff ? { registerDiff: a.registerDiff } : {}),
    ...(gap ? { engineGap: gap } : {}),
  };
  const what =
    expectation.kind === 'resumes'
      ? gap
        ? `differs from the uninterrupted run by a known gap alone (${gap.what})`
        : 'resumed as the uninterrupted run'
      : expectation.kind === 'differs'
        ? 'the control differs from the uninterrupted run'
        : 'the control shows its bug';
  // The expectation is said where the attempt fell short of it; a held one would only repeat the observation.
  return { verdict, message: `${what}: ${a.observed}${pass || gap ? '' : ` (expected ${expected})`}` };
}
