/**
 * The scenario whose stop is made once: the workload is run to a breakpoint
 * that chooses the moment, the debug registers are left as the state to keep
 * (the breakpoint disarmed, say, a watchpoint kept), and then it runs on until
 * RUN's bound interrupts it wherever it waits. It is checkpointed there,
 * once. Each attempt restores that one image under a policy and runs the
 * restored process to its end, with no oracle. The case's judge reads the
 * run against the uninterrupted one, in the rows' words.
 */
import type { RunResult } from '../agent/ops.ts';
import { isRunTimeout } from '../agent/run-to-end.ts';
import { readCheckpointImage, type CheckpointImage } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import type { Difference } from '../restore/restore.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { endedAs } from '../testing/native-reference.ts';
import { restoreWitnessed } from '../testing/restore-witness.ts';
import { checkpointStopped, readOutput, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../testing/scenario.ts';
import { debugRegOffset } from '../x86/registers.ts';
import type { Attempt } from './attempt.ts';
import type { TableScenario } from './table.ts';

export interface InterruptedStop {
  /** the run to the breakpoint that chose the moment (its hits, the last one that breakpoint's) */
  toBreakpoint: RunResult;
  /** "interrupted" when RUN's bound caught the workload still running, "ended first: exited 0" when it did not */
  waited: string;
  file: string;
  image: CheckpointImage;
}

export interface InterruptedStopSpec {
  /** the workload, its breakpoint (breakAt) and whatever else it has armed */
  workload: Workload;
  /** names the original's output (/tmp/TAG-original.out) and the image (checkpoint-TAG.tar) */
  tag: string;
  /** the hits to run to: the breakpoint's, counted with the other debug registers' */
  hits: number;
  /** DR7 from the breakpoint on: what stays armed in the image */
  dr7: bigint;
  /** how long the workload runs on before RUN's bound interrupts it */
  runOnMs: number;
}

/** Provokes and checkpoints the stop: to the breakpoint, DR7 as asked, `runOnMs` more, interrupted, checkpointed, killed. */
export async function checkpointInterrupted(guest: Guest, spec: InterruptedStopSpec): Promise<InterruptedStop> {
  const { agent } = guest;
  const { workload } = spec;
  const pid = await spawnArmed(guest, workload, `/tmp/${spec.tag}-original.out`);
  try {
    const toBreakpoint = await agent.call({ op: 'RUN', pid, stopAfterHits: spec.hits, timeoutMs: RUN_TIMEOUT_MS });
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: spec.dr7 });
    const waited = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: spec.runOnMs }).then(
      (run) => `ended first: ${endedAs(run)}`,
      (error: unknown) => {
        if (isRunTimeout(error)) return 'interrupted';
        throw error;
      },
    );
    const taken = await checkpointStopped(guest, { binary: workload.binary, argv: workload.argv, envp: [], noAslr: true, pid }, spec.tag);
    return { toBreakpoint, waited, ...taken };
  } finally {
    await agent.call({ op: 'KILL', pid }).catch(() => {});
  }
}

/** A restored process's run to its end. */
export interface ImageRun {
  run: RunResult;
  output: string;
  /** what the kernel holds differently from what the restore asked */
  differences: Difference[];
}

export interface ImageAttempt extends Attempt {
  restoredRun: ImageRun;
}

export interface ImageScenarioSpec {
  name: string;
  /** the uninterrupted run in the rows' words */
  expected: string;
  /** the image file, read back (and validated) by every attempt */
  file: string;
  /** the restored run in the rows' words; it matches when it reads as `expected` */
  observe(run: ImageRun): string;
}

/** The rows' scenario: each attempt restores `spec.file` under its policy and runs the restored process to its end. */
export function imageScenario(guest: Guest, spec: ImageScenarioSpec): TableScenario<ImageAttempt> {
  return {
    name: spec.name,
    expected: spec.expected,
    async attempt(policy: RestorePolicy, tag: string): Promise<ImageAttempt> {
      const image = await readCheckpointImage(spec.file);
      const stdoutPath = `/tmp/${tag}.restored.out`;
      const restored = await restoreWitnessed(guest.agent, image, { policy, stdoutPath }, tag);
      const run = await guest.agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
      const restoredRun: ImageRun = { run, output: await readOutput(guest, stdoutPath), differences: restored.differences };
      const observed = spec.observe(restoredRun);
      return {
        restoredRun,
        matched: observed === spec.expected,
        observed,
        witnesses: {
          hits: run.hits.length,
          output: restoredRun.output,
          ended: endedAs(run),
          differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
        },
      };
    },
  };
}
