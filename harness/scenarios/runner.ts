/**
 * The runner: an Attempt judged once against its row's expectation, and that
 * judgement made both the tap assertion and the verdict row. A row whose
 * judgement is GAP (a documented engine gap alone) is a passing assertion
 * and a GAP row; anything else that is not PASS fails both.
 */
import type { Test } from 'tap';
import { recordRow } from '../testing/verdict-rows.ts';
import { POLICY_NOT_FOR_CRIU } from '../criu/known-gaps.ts';
import { verdictOf, type Attempt, type Expectation, type RowKey } from './attempt.ts';

/** Asserts and records `a` under `expectation`; returns whether the row is PASS or GAP. */
export function settle(t: Test, key: RowKey, expectation: Expectation, a: Attempt): boolean {
  const { verdict, message } = verdictOf(key, expectation, a);
  const held = verdict.pass || verdict.engineGap !== undefined;
  t.ok(held, message);
  if (a.registerDiff) t.comment(`register diff:\n${a.registerDiff}`);
  recordRow(t, verdict);
  return held;
}

/** A control policy of crh's restore core under engine criu: nothing to attempt, a SKIP row saying so (and a passing assertion). */
export function skipNotForCriu(t: Test, key: Omit<RowKey, 'engine'>): void {
  t.pass(POLICY_NOT_FOR_CRIU);
  recordRow(t, { ...key, engine: 'criu', control: true, expected: '-', observed: '-', pass: false, skipped: POLICY_NOT_FOR_CRIU });
}

/** A scenario not handed to CRIU at all: a SKIP row under CRIU's defaults saying why. */
export function recordCriuSkip(t: Test, key: { case: string; scenario: string }, why: string): void {
  recordRow(t, { ...key, policy: 'criu defaults', engine: 'criu', control: false, expected: '-', observed: '-', pass: false, skipped: why });
}
