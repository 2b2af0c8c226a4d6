import t from 'tap';
import { asRefusal, movePolicy, namedMissing, type MoveAttempt } from '../harness/scenarios/move-scenario.ts';
import { IncompatibleTargetError } from '../harness/restore/platform-dependencies.ts';
import { DEFAULT_POLICY, describePolicy } from '../harness/restore/policy.ts';

const base = { checkpointed: {} as MoveAttempt['checkpointed'], dependencies: {} as MoveAttempt['dependencies'] };
const refusedFor = (features: string[], leftBehind = ''): MoveAttempt => {
  const refused = new IncompatibleTargetError(features.map((feature) => ({ feature, why: 'measured absent' })));
  return { ...base, refused, leftBehind, matched: false, observed: `refused: ${refused.message}`, witnesses: { notRestored: 'refused' } };
};
const restored: MoveAttempt = { ...base, leftBehind: '', matched: true, observed: 'exited 0: ok', witnesses: { ended: 'exited 0' } };

t.test('asRefusal: matched only for a refusal naming what the row expects, nothing left running', async (t) => {
  t.ok(asRefusal(refusedFor(['avx', 'avx2']), ['avx'], false).matched, 'naming avx among others, not exactly');
  t.notOk(asRefusal(refusedFor(['avx', 'avx2']), ['avx'], true).matched, 'exactly: avx2 is one name too many');
  t.ok(asRefusal(refusedFor(['pku', 'avx512f']), ['avx512f', 'pku'], true).matched, 'exactly, in any order');
  t.notOk(asRefusal(refusedFor(['pku']), ['pku', 'rtm'], true).matched, 'a name missing');
  t.notOk(asRefusal(refusedFor(['avx'], '123'), ['avx'], false).matched, 'a process left running in the target');
  t.notOk(asRefusal(restored, [], false).matched, 'a restore that ran is not a refusal');
  t.equal(asRefusal(refusedFor(['avx', 'fma']), ['avx'], false).observed, 'refused: avx, fma');
  t.same(namedMissing(restored), []);
});

t.test("movePolicy: the policy column, and 'dependencies=try' only when tried regardless", async (t) => {
  t.equal(movePolicy(DEFAULT_POLICY), describePolicy(DEFAULT_POLICY));
  t.equal(movePolicy(DEFAULT_POLICY, 'try'), `${describePolicy(DEFAULT_POLICY)} dependencies=try`);
});
