/**
 * A case as a table: a scenario (its reference taken once), and one row per
 * policy — the policy, what the row expects (resumes as uninterrupted, or a
 * negative control's difference), and the row's own extra assertions. Each
 * row is a tap subtest: attempt, extra assertions, then one judgement that is
 * both the tap assertion and the verdict row (runner.ts).
 */
import type { Test } from 'tap';
import { describePolicy, type RestorePolicy } from '../restore/policy.ts';
import { runsEngine, type CriuAttemptOptions } from '../testing/criu-engine.ts';
import { POLICY_NOT_FOR_CRIU } from '../criu/known-gaps.ts';
import { differs, resumes, type Attempt, type Expectation } from './attempt.ts';
import { settle, skipNotForCriu } from './runner.ts';

/** A scenario as the table runs it: a name (the rows' scenario column) and an attempt per policy. */
export interface TableScenario<A extends Attempt> {
  name: string;
  /** the uninterrupted run in the rows' words: what `'resumes'` expects and `'differs'` differs from */
  expected: string;
  attempt(policy: RestorePolicy, tag: string): Promise<A>;
  /** the same stop handed to CRIU instead (crh run --engine …criu), with the harness's changes around its restore */
  attemptThroughCriu?(options: CriuRowOptions, tag: string): Promise<A>;
  /** the witnesses every row of this scenario asserts before its verdict (stopped where it should, the kernel's read-back) */
  assertWitnesses?(t: Test, a: A, expectation: Expectation): void;
}

/** What the harness does around CRIU's restore in a row of engine criu (criu-engine.ts CriuAttemptOptions): nothing, for CRIU's own defaults. */
export type CriuRowOptions = Pick<CriuAttemptOptions, 'rearmDebugRegisters' | 'tamper' | 'afterRestore'>;

interface RowCommon<A extends Attempt> {
  /** the subtest's title: what the row shows */
  title: string;
  /** names the attempt's artifacts (checkpoint-TAG.tar, oracle-TAG.log, criu-TAG-dump.log) */
  tag: string;
  /** 'resumes' and 'differs' are judged against the scenario's uninterrupted run */
  expect: 'resumes' | 'differs' | Expectation;
  /** the row's own assertions on its attempt, made before the verdict (a failed one fails the row too) */
  check?(t: Test, a: A): void | Promise<void>;
}

/** A row of engine crh: a restore policy (its column default: describePolicy). */
export interface CrhRow<A extends Attempt> extends RowCommon<A> {
  policy: RestorePolicy;
  policyName?: string;
  /** whether the policy is a switch of crh's restore core that CRIU has no counterpart for (a SKIP row under criu); default: for controls */
  notForCriu?: boolean;
}

/** A row of engine criu: CRIU's restore, and what the harness does around it (its column default: "criu defaults"). */
export interface CriuRow<A extends Attempt> extends RowCommon<A> {
  criu: CriuRowOptions;
  policyName?: string;
}

export type Row<A extends Attempt> = CrhRow<A> | CriuRow<A>;

/**
 * Runs every row of `scenario` as a subtest of `t`, recording the rows of
 * case `caseName`. Rows of engine crh run unless the run asked for criu
 * alone; rows of engine criu run when it asked for criu, and then each crh
 * control's policy, which is a switch of crh's restore core, is a SKIP row of
 * engine criu saying so.
 */
export async function runTable<A extends Attempt>(t: Test, caseName: string, scenario: TableScenario<A>, rows: readonly Row<A>[]): Promise<void> {
  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
  const expectationOf = (row: Row<A>): Expectation =>
    row.expect === 'resumes' ? resumes(scenario.expected) : row.expect === 'differs' ? differs(scenario.expected) : row.expect;
  const key = (policy: string, engine: 'crh' | 'criu') => ({ case: caseName, scenario: scenario.name, policy, ...(engine === 'criu' ? { engine } : {}) });
  for (const row of rows) {
    if ('criu' in row) continue;
    await t.test(row.title, crhOnly, async (t) => {
      const expectation = expectationOf(row);
      const a = await scenario.attempt(row.policy, row.tag);
      scenario.assertWitnesses?.(t, a, expectation);
      await row.check?.(t, a);
      settle(t, key(row.policyName ?? describePolicy(row.policy), 'crh'), expectation, a);
    });
  }
  const criuRows = rows.filter((row): row is CriuRow<A> => 'criu' in row);
  if (criuRows.length === 0 || !runsEngine('criu')) return;
  const throughCriu = scenario.attemptThroughCriu;
  if (!throughCriu) throw new Error(`${caseName}: rows of engine criu for a scenario that cannot be handed to CRIU`);
  for (const row of criuRows) {
    await t.test(row.title, async (t) => {
      const expectation = expectationOf(row);
      const a = await throughCriu.call(scenario, row.criu, row.tag);
      scenario.assertWitnesses?.(t, a, expectation);
      await row.check?.(t, a);
      settle(t, key(row.policyName ?? 'criu defaults', 'criu'), expectation, a);
    });
  }
  // crh's controls (and the rows that say so) are policies of its restore core: under CRIU each is a SKIP saying so.
  for (const row of rows) {
    if ('criu' in row || !(row.notForCriu ?? expectationOf(row).kind !== 'resumes')) continue;
    const policy = row.policyName ?? describePolicy(row.policy);
    await t.test(`engine criu: ${policy} ${POLICY_NOT_FOR_CRIU}`, async (t) => {
      skipNotForCriu(t, { case: caseName, scenario: scenario.name, policy });
    });
  }
}

/**
 * `scenario` with the attempts of its crh `rows` started now, one after
 * another (they share the scenario's guest, whose agent runs one program at a
 * time): runTable later answers each row with its attempt's result, in the
 * table's order, while other scenarios' attempts ran in other guests
 * meanwhile. Nothing is started when the run did not ask for engine crh, whose
 * rows are then skipped. `done` settles when the last attempt has.
 */
export function attemptsUnderWay<A extends Attempt>(scenario: TableScenario<A>, rows: readonly Row<A>[]): TableScenario<A> & { done: Promise<void> } {
  if (!runsEngine('crh')) return { ...scenario, done: Promise.resolve() };
  const byTag = new Map<string, { policy: RestorePolicy; result: Promise<A> }>();
  let previous: Promise<unknown> = Promise.resolve();
  for (const row of rows) {
    if ('criu' in row) continue;
    const result = previous.then(() => scenario.attempt(row.policy, row.tag));
    // Awaited by its row later; a failure is that row's, and the next attempt still runs.
    result.catch(() => {});
    previous = result.catch(() => {});
    byTag.set(row.tag, { policy: row.policy, result });
  }
  return {
    ...scenario,
    done: previous.then(() => {}),
    attempt: (policy, tag) => {
      const started = byTag.get(tag);
      if (!started || started.policy !== policy) throw new Error(`${scenario.name}: no attempt under way for row ${tag} under this policy`);
      return started.result;
    },
  };
}
