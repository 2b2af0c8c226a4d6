// expect: the leave-running variant — a process checkpointed at the 2nd of 5 hardware-breakpoint hits goes on to its end
// with exactly the uninterrupted hits and checksum, and a copy restored beside it from the image (under a new pid, since
// the original holds the old one) does the same: both equal the uninterrupted run; asking for the original's pid while
// it lives is refused (PidInUseError) and kills nothing. Negative control: the copy restored under rf=clear re-triggers.
import t from 'tap';
import { readCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import type { RunResult } from '../harness/agent/ops.ts';
import type { Attempt } from '../harness/scenarios/attempt.ts';
import { runTable, type TableScenario } from '../harness/scenarios/table.ts';
import { PidInUseError } from '../harness/restore/restore.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import {
  checkpointAtHit,
  readOutput,
  restoreAndFinish,
  RUN_TIMEOUT_MS,
  spawnArmed,
  type Checkpointed,
  type Restored,
  type Workload,
} from '../harness/testing/scenario.ts';

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

  // Checkpoint at hit 2 with the original left stopped; its pid refused to a restore; the copy restored beside it; both run on.
  const expected = `original ${CALLS} hits ${refSum}; copy ${CALLS} hits ${refSum}`;
  const scenario: TableScenario<LeaveRunningAttempt> = {
    name: SCENARIO,
    expected,
    async attempt(policy, tag) {
      const checkpointed = await checkpointAtHit(guest, workload, AT, tag, { leaveRunning: true });
      const image = await readCheckpointImage(checkpointed.file);
      const stdoutPath = `/tmp/leave-running-${tag}.refused.out`;
      const refused = await restoreWitnessed(agent, image, { policy, stdoutPath }, `${tag}-old-pid`).then(
        () => undefined,
        (e: unknown) => e,
      );
      const copy = await restoreAndFinish(guest, checkpointed.file, policy, tag, {}, false);
      const original = await agent.call({ op: 'RUN', pid: checkpointed.process.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
      const originalSum = checksum(await readOutput(guest, `/tmp/hwbreak-${tag}.original.out`));
      const originalHits = checkpointed.run.hits.length + original.hits.length;
      const observed = `original ${originalHits} hits ${originalSum}; copy ${AT + copy.run.hits.length} hits ${checksum(copy.output)}`;
      return {
        checkpointed,
        refused,
        copy,
        original,
        originalSum,
        matched: observed === expected,
        observed,
        witnesses: { hits: AT + copy.run.hits.length, output: copy.output, ended: endedAs(copy.run) },
      };
    },
  };

  await runTable(t, CASE, scenario, [
    {
      title: 'default policy: the original and the copy both finish as the uninterrupted run',
      policy: DEFAULT_POLICY,
      tag: 'default',
      expect: 'resumes',
      check: (t, { checkpointed, refused, copy, original, originalSum }) => {
        t.ok(refused instanceof PidInUseError, `the original's pid is refused while it lives: ${(refused as Error | undefined)?.message}`);
        t.not(copy.pid, checkpointed.process.pid, `the copy runs as pid ${copy.pid} beside the original ${checkpointed.process.pid}`);
        t.same(
          [original.code, checkpointed.run.hits.length + original.hits.length, originalSum],
          [0, CALLS, refSum],
          'the original goes on: all hits, same checksum',
        );
        t.same([copy.run.code, AT + copy.run.hits.length, checksum(copy.output)], [0, CALLS, refSum], 'the copy: all hits, same checksum');
      },
    },
    {
      title: 'negative control rf=clear on the copy: it re-triggers, the original is unaffected',
      policy: { ...DEFAULT_POLICY, rf: 'clear' },
      tag: 'rf-clear',
      expect: 'differs',
      check: (t, { checkpointed, copy, original }) => {
        t.equal(checkpointed.run.hits.length + original.hits.length, CALLS, 'the original: all hits');
        t.equal(AT + copy.run.hits.length, CALLS + 1, 'the copy: one spurious hit');
      },
    },
  ]);
});

/** One leave-running attempt: the judged Attempt, and the original, the refusal and the copy it is made of. */
interface LeaveRunningAttempt extends Attempt {
  checkpointed: Checkpointed;
  /** what restoring under the original's pid threw (PidInUseError), or undefined if it did not refuse */
  refused: unknown;
  copy: Restored & { pid: number };
  original: RunResult;
  originalSum: string | undefined;
}
