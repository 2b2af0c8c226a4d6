/**
 * A case as a table: a scenario (its reference taken once), and one row per
 * policy — the policy, what the row expects (resumes as uninterrupted, or a
 * negative control's difference), and the row's own extra assertions. Each
 * row is a tap subtest: attempt, extra assertions, then one judgement that is
 * both the tap assertion and the verdict row (runner.ts).
 */
import type { Test } from 'tap';
import { describePolicy, type RestorePolicy } from '../restore/policy.ts';
import { runsEngine } from '../testing/criu-engine.ts';
import { differs, resumes, type Attempt, type Expectation } from './attempt.ts';
import { settle } from './runner.ts';

/** A scenario as the table runs it: a name (the rows' scenario column) and an attempt per policy. */
export interface TableScenario<A extends Attempt> {
  name: string;
  /** the uninterrupted run in the rows' words: what `'resumes'` expects and `'differs'` differs from */
  expected: string;
  attempt(policy: RestorePolicy, tag: string): Promise<A>;
  /** the witnesses every row of this scenario asserts before its verdict (stopped where it should, the kernel's read-back) */
  assertWitnesses?(t: Test, a: A, expectation: Expectation): void;
}

export interface Row<A extends Attempt> {
  /** the subtest's title: what the row shows */
  title: string;
  policy: RestorePolicy;
  /** the row's policy column; default describePolicy(policy) */
  policyName?: string;
  /** names the attempt's artifacts (checkpoint-TAG.tar, oracle-TAG.log) */
  tag: string;
  /** 'resumes' and 'differs' are judged against the scenario's uninterrupted run */
  expect: 'resumes' | 'differs' | Expectation;
  /** the row's own assertions on its attempt, made before the verdict (a failed one fails the row too) */
  check?(t: Test, a: A): void | Promise<void>;
}

/** Runs every row of `scenario` as a subtest of `t`, recording the rows of case `caseName` (engine crh). */
export async function runTable<A extends Attempt>(t: Test, caseName: string, scenario: TableScenario<A>, rows: readonly Row<A>[]): Promise<void> {
  // The crh engine's rows run unless the run asked for criu alone.
  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
  for (const row of rows) {
    await t.test(row.title, crhOnly, async (t) => {
      const expectation = row.expect === 'resumes' ? resumes(scenario.expected) : row.expect === 'differs' ? differs(scenario.expected) : row.expect;
      const a = await scenario.attempt(row.policy, row.tag);
      scenario.assertWitnesses?.(t, a, expectation);
      await row.check?.(t, a);
      settle(t, { case: caseName, scenario: scenario.name, policy: row.policyName ?? describePolicy(row.policy) }, expectation, a);
    });
  }
}
