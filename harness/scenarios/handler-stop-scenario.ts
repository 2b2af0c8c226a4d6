/**
 * The scenario of a workload stopped inside a signal handler: a timer
 * interrupts the workload's work, and the checkpoint is taken at the first
 * hit of a breakpoint in the handler. Counting hits instead would not do:
 * hits of other armed breakpoints before it vary with timing. The debug
 * registers are left as asked, the workload is restored under a policy, and
 * it runs to its end. The uninterrupted run is armed as the checkpointed one.
 * It is compared with the native run through the case's view of the output,
 * which masks what depends on where the timer lands.
 */
import type { Test } from 'tap';
import path from 'node:path';
import type { RunResult } from '../agent/ops.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../testing/native-reference.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, spawnArmed } from '../testing/scenario.ts';
import type { Checkpointed, Restored, Workload } from '../testing/scenario.ts';
import type { Attempt } from './attempt.ts';
import type { TableScenario } from './table.ts';

/** The uninterrupted run, armed as the checkpointed one is. */
export interface HandlerReference {
  result: RunResult;
  output: string;
}

/** The original's run up to the stop and the restored process's run after it: what the case's judge reads. */
export interface HandlerRestoredRun {
  checkpointRun: RunResult;
  run: RunResult;
  output: string;
}

export interface HandlerStopAttempt extends Attempt {
  checkpointed: Checkpointed;
  restored?: Restored;
}

export interface HandlerStopSpec {
  name: string;
  workload: Workload;
  /** names the reference's output (/tmp/BINARY-TAG.reference.out) and, with the policy's suffix, each row's tag */
  tag: string;
  /** where the checkpoint is taken: the first hit there */
  stopAt: bigint;
  /** DR7 left for the restored process */
  dr7After: bigint;
  /** the case's view of an output: what must agree between runs, the timing masked */
  view(output: string): string;
  /** why this reference cannot be held to the native run; the native run is still made and shown */
  incomparable?: string;
}

/** What the case's judge says of the uninterrupted run and of each restored one. */
export interface HandlerJudge {
  /** the uninterrupted run in the rows' words */
  expected: string;
  /** a restored run in the rows' words; it matches when it reads as `expected` */
  observe(run: HandlerRestoredRun): string;
  conditions?: Record<string, string>;
}

export interface HandlerStopScenario {
  reference: HandlerReference;
  /** the rows' scenario, judged as `judge` says */
  judgedBy(judge: HandlerJudge): TableScenario<HandlerStopAttempt>;
}

/** Prepares the scenario: the uninterrupted run, asserted in `t` to end as the native run does, with the same view of its output. */
export async function handlerStopScenario(t: Test, guest: Guest, spec: HandlerStopSpec): Promise<HandlerStopScenario> {
  const out = `/tmp/${path.basename(spec.workload.binary)}-${spec.tag}.reference.out`;
  const pid = await spawnArmed(guest, spec.workload, out);
  const result = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  const output = await readOutput(guest, out);
  t.equal(result.code, 0, `uninterrupted: ${output.trim()}`);
  // The reference is a traced run: it must be what the program does with no tracer at all, through the case's view.
  const native = await nativeReference(guest, spec.workload);
  if (spec.incomparable) t.comment(`not compared with the native run (${spec.incomparable}); natively: ${endedAs(native)}, ${native.output.trim()}`);
  else
    t.equal(
      `${endedAs(result)}\n${spec.view(output)}`,
      `${endedAs(native)}\n${spec.view(native.output)}`,
      'the traced reference is the native run (no tracer), attempts and progress masked',
    );
  return {
    reference: { result, output },
    judgedBy(judge) {
      return {
        name: spec.name,
        expected: judge.expected,
        async attempt(policy: RestorePolicy, tag: string): Promise<HandlerStopAttempt> {
          const checkpointed = await checkpointAtHit(guest, spec.workload, { at: spec.stopAt }, tag, { dr7: spec.dr7After });
          if (checkpointed.run.outcome !== 'hit-limit') {
            // The timer never landed inside the work (the workload retries): nothing to restore.
            const why = `no checkpoint: the run ended (${checkpointed.run.outcome} ${checkpointed.run.code}) before the handler`;
            return { checkpointed, matched: false, observed: why, witnesses: { notRestored: why } };
          }
          const restored = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
          const observed = judge.observe({ checkpointRun: checkpointed.run, run: restored.run, output: restored.output });
          return {
            checkpointed,
            restored,
            matched: observed === judge.expected,
            observed,
            witnesses: {
              hits: checkpointed.run.hits.length + restored.run.hits.length,
              output: restored.output,
              ended: endedAs(restored.run),
              differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
            },
            ...(judge.conditions ? { conditions: judge.conditions } : {}),
          };
        },
      };
    },
  };
}
