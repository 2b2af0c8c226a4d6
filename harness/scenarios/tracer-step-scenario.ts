/**
 * The scenario where the tracer single-steps the workload: it runs to an
 * execute breakpoint where the stepped sequence begins (disarmed there). The
 * tracer steps it with the agent's STEP up to a stop address, and then lets
 * it go to its end. The uninterrupted run is stepped once under the CPU
 * oracle, which counts #DB at one address. A stop `n` steps in is checkpointed
 * once. Each attempt restores that image, steps on as the tracer did (as many
 * steps in one STEP, then one at a time up to the stop address), lets it go,
 * and is judged by its whole list of stepped IPs and its output.
 */
import type { SingleStep, StepResult } from '../agent/ops.ts';
import { observeCpu, type Observation } from '../oracle/cpu-oracle.ts';
import { readCheckpointImage, type CheckpointImage } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import type { PlanStep } from '../restore/plan.ts';
import { CrhError } from '../errors.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { restoreWitnessed } from '../testing/restore-witness.ts';
import { checkpointStopped, readOutput, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../testing/scenario.ts';
import { debugRegOffset, EFLAGS, hex } from '../x86/registers.ts';
import type { Attempt } from './attempt.ts';
import type { TableScenario } from './table.ts';

export interface TracerStepSpec {
  name: string;
  /** the workload, its breakpoint (breakAt) where the tracer starts stepping */
  workload: Workload;
  /** names the output files: /tmp/NAME-reference.out, /tmp/NAME.original.out, /tmp/NAME-TAG.restored.out */
  outputName: string;
  /** where the tracer stops stepping and lets the program go */
  stepUntil: bigint;
  /** more steps than the sequence has: a tracer that never reaches stepUntil stops after these */
  maxSteps: number;
  /** where the oracle counts #DB, in the reference and in every attempt */
  countDebugTrapsAt: bigint;
  /** a stepped IP in the rows' words */
  label(rip: bigint): string;
  /** rows' conditions */
  conditions?: Record<string, string>;
}

/** The uninterrupted stepped run. */
export interface SteppedReference {
  /** the stop at the breakpoint where stepping begins */
  atStart: StepStart;
  steps: SingleStep[];
  observation: Observation;
  /** the program's output once let go, with how it ended when not "exited 0" */
  output: string;
}

export interface StepStart {
  pid: number;
  /** the breakpoint's hit that stopped it */
  hitRip: bigint | undefined;
}

/** The image of a stop `steps` steps into the sequence. */
export interface SteppedStop {
  atStart: StepStart;
  /** the STEP that brought it there */
  toStop: StepResult;
  file: string;
  image: CheckpointImage;
}

export interface TracerStepAttempt extends Attempt {
  /** the steps after the restore */
  steps: SingleStep[];
  /** the whole stepped list, before and after the checkpoint, in the rows' words */
  list: string;
  output: string;
  plan: PlanStep[];
  /** #DB the oracle counted at countDebugTrapsAt after the restore */
  debugTraps: number;
}

export interface TracerStepScenario {
  reference: SteppedReference;
  list(steps: readonly SingleStep[]): string;
  /** checkpoints a fresh run `steps` steps into the sequence (one STEP), under `tag`, and kills it */
  checkpointAfter(steps: number, tag: string): Promise<SteppedStop>;
  /** the rows' scenario: restores of `stop`, stepped on to stepUntil, judged against the reference */
  restoresOf(stop: SteppedStop): TableScenario<TracerStepAttempt>;
}

export async function tracerStepScenario(guest: Guest, spec: TracerStepSpec): Promise<TracerStepScenario> {
  const { agent, symbols } = guest;
  const list = (steps: readonly SingleStep[]): string => steps.map((s) => spec.label(s.rip)).join(',');
  /** Spawned and run to its breakpoint, DR7 cleared: the tracer steps from here. */
  const start = async (out: string): Promise<StepStart> => {
    const pid = await spawnArmed(guest, spec.workload, out);
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
    return { pid, hitRip: run.hits[0]?.rip };
  };
  const step = async (pid: number, count: number): Promise<StepResult> => agent.call({ op: 'STEP', pid, count, timeoutMs: RUN_TIMEOUT_MS });
  /** `first` steps in one STEP, then one at a time until stepUntil (what follows it is not stepped). */
  const stepToEnd = async (pid: number, first: number): Promise<SingleStep[]> => {
    const steps: SingleStep[] = [];
    for (let count = first; steps.length < spec.maxSteps && steps.at(-1)?.rip !== spec.stepUntil; count = 1) {
      const r = await step(pid, count);
      steps.push(...r.steps);
      if (r.outcome !== 'stepped') throw new CrhError(`STEP ended with ${r.outcome} ${r.code} after ${list(steps)}`);
    }
    return steps;
  };
  const underOracle = (pid: number, first: number) =>
    observeCpu(guest.machine.gdbSocket, symbols, { countDebugTrapsAt: spec.countDebugTrapsAt }, () => stepToEnd(pid, first));
  /** Let go by the tracer: the process runs to its end and prints what its handler saw. */
  const finish = async (pid: number, out: string): Promise<string> => {
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    const text = (await readOutput(guest, out)).trim();
    return run.outcome === 'exited' && run.code === 0 ? text : `${text} (${run.outcome} ${run.code})`;
  };

  const refOut = `/tmp/${spec.outputName}-reference.out`;
  const atStart = await start(refOut);
  const { result: refSteps, observation } = await underOracle(atStart.pid, 1);
  const reference: SteppedReference = { atStart, steps: refSteps, observation, output: await finish(atStart.pid, refOut) };
  const expected = `ips=${list(refSteps)}; ${reference.output}`;

  return {
    reference,
    list,
    async checkpointAfter(steps, tag) {
      const atStart = await start(`/tmp/${spec.outputName}.original.out`);
      const { pid } = atStart;
      try {
        const toStop = await step(pid, steps);
        const taken = await checkpointStopped(guest, { binary: spec.workload.binary, argv: spec.workload.argv, envp: [], noAslr: true, pid }, tag);
        return { atStart, toStop, ...taken };
      } finally {
        await agent.call({ op: 'KILL', pid }).catch(() => {});
      }
    },
    restoresOf(stop) {
      return {
        name: spec.name,
        expected,
        async attempt(policy: RestorePolicy, tag: string): Promise<TracerStepAttempt> {
          const out = `/tmp/${spec.outputName}-${tag}.restored.out`;
          const image = await readCheckpointImage(stop.file);
          const restored = await restoreWitnessed(agent, image, { policy, stdoutPath: out }, `traced-${tag}`);
          const { result: steps, observation } = await underOracle(restored.pid, refSteps.length - stop.toStop.steps.length);
          const output = await finish(restored.pid, out);
          const whole = list([...stop.toStop.steps, ...steps]);
          const observed = `ips=${whole}; ${output}`;
          return {
            steps,
            list: whole,
            output,
            plan: restored.plan,
            debugTraps: observation.debugTraps.length,
            matched: observed === expected,
            observed,
            witnesses: {
              output,
              oracle: { debugTraps: observation.debugTraps.length, firstReached: false },
              differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
            },
            ...(spec.conditions ? { conditions: spec.conditions } : {}),
          };
        },
        // No assertion of its own: what each stop after the restore was, for the reader of a failed row.
        assertWitnesses(t, a) {
          const tf = a.steps.map((s) => ((s.eflags & EFLAGS.TF) !== 0n ? 'TF' : '-')).join(' ');
          t.comment(
            `after restore ${list(a.steps)} (DR6 ${a.steps.map((s) => hex(s.dr6)).join(' ')}; eflags ${tf}); #DB at ${spec.label(spec.countDebugTrapsAt)}: ${a.debugTraps}; output: ${a.output}`,
          );
        },
      };
    },
  };
}
