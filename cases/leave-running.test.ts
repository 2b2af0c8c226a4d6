// expect: the leave-running variant — a process checkpointed at the 2nd of 5 hardware-breakpoint hits goes on to its end
// with exactly the uninterrupted hits and checksum, and a copy restored beside it from the image (under a new pid, since
// the original holds the old one) does the same: both equal the uninterrupted run; asking for the original's pid while
// it lives is refused (PidInUseError) and kills nothing. Negative control: the copy restored under rf=clear re-triggers.
import t from 'tap';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { readCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { PidInUseError } from '../harness/restore/restore.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'leave-running';
const SCENARIO = 'leave-running: checkpoint at hit 2 of 5, original goes on, copy restored beside it';
const CALLS = 5;
const AT = 2;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent } = guest;
  const binary = guest.image.guestPaths.hwbreak!;
  const workload: Workload = { binary, argv: [binary, String(CALLS)], breakAt: guest.symbols.resolve('hwbreak:target') };
  const checksum = (text: string): string | undefined => /checksum=([0-9a-f]{16})/.exec(text)?.[1];

  const refPid = await spawnArmed(guest, workload, '/tmp/leave-running-reference.out');
  const ref = await agent.call({ op: 'RUN', pid: refPid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  const refOutput = await readOutput(guest, '/tmp/leave-running-reference.out');
  const refSum = checksum(refOutput);
  t.same([ref.code, ref.hits.length], [0, CALLS], `uninterrupted: ${CALLS} hits, checksum ${refSum}`);
  // The reference is a traced run: it must be what the program does with no tracer at all.
  const native = await nativeReference(guest, workload);
  t.equal(`${endedAs(ref)}\n${refOutput}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');

  const run = async (policy: RestorePolicy, tag: string) => {
    const checkpointed = await checkpointAtHit(guest, workload, AT, tag, { leaveRunning: true });
    const image = await readCheckpointImage(checkpointed.file);
    const refused = await restoreWitnessed(agent, image, { policy, stdoutPath: `/tmp/leave-running-${tag}.refused.out` }, `${tag}-old-pid`).then(
      () => undefined,
      (e: unknown) => e,
    );
    const copy = await restoreAndFinish(guest, checkpointed.file, policy, tag, {}, false);
    const original = await agent.call({ op: 'RUN', pid: checkpointed.process.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    const originalSum = checksum(await readOutput(guest, `/tmp/hwbreak-${tag}.original.out`));
    return { checkpointed, refused, copy, original, originalSum };
  };

  await t.test('default policy: the original and the copy both finish as the uninterrupted run', async (t) => {
    const { checkpointed, refused, copy, original, originalSum } = await run(DEFAULT_POLICY, 'default');
    t.ok(refused instanceof PidInUseError, `the original's pid is refused while it lives: ${(refused as Error | undefined)?.message}`);
    t.not(copy.pid, checkpointed.process.pid, `the copy runs as pid ${copy.pid} beside the original ${checkpointed.process.pid}`);
    t.same(
      [original.code, checkpointed.run.hits.length + original.hits.length, originalSum],
      [0, CALLS, refSum],
      'the original goes on: all hits, same checksum',
    );
    t.same([copy.run.code, AT + copy.run.hits.length, checksum(copy.output)], [0, CALLS, refSum], 'the copy: all hits, same checksum');
    const observed = `original ${checkpointed.run.hits.length + original.hits.length} hits ${originalSum}; copy ${AT + copy.run.hits.length} hits ${checksum(copy.output)}`;
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: `original ${CALLS} hits ${refSum}; copy ${CALLS} hits ${refSum}`,
      observed,
      matchedUninterrupted: observed === `original ${CALLS} hits ${refSum}; copy ${CALLS} hits ${refSum}`,
    });
  });

  await t.test('negative control rf=clear on the copy: it re-triggers, the original is unaffected', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, rf: 'clear' };
    const { checkpointed, copy, original, originalSum } = await run(policy, 'rf-clear');
    t.equal(checkpointed.run.hits.length + original.hits.length, CALLS, 'the original: all hits');
    t.equal(AT + copy.run.hits.length, CALLS + 1, 'the copy: one spurious hit');
    const observed = `original ${checkpointed.run.hits.length + original.hits.length} hits ${originalSum}; copy ${AT + copy.run.hits.length} hits ${checksum(copy.output)}`;
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(policy),
      control: true,
      expected: `original ${CALLS} hits ${refSum}; copy ${CALLS} hits ${refSum}`,
      observed,
      matchedUninterrupted: observed === `original ${CALLS} hits ${refSum}; copy ${CALLS} hits ${refSum}`,
    });
  });
});
