/**
 * The scenario whose reference is the native run itself: a program that
 * uses the debug machinery on its own (TF, its own SIGTRAP handler, int3)
 * must print under the agent exactly what it prints with no tracer at all
 * (crh-native over SSH exec). That holds when the agent only traces it,
 * when our breakpoint or watchpoint is armed in it, and when it is
 * checkpointed at one of our hits and restored. Each run is an Attempt
 * judged against the native output and ending. The rows that expect parity
 * and the agent controls that must differ are judged by the same runner
 * (runner.ts settle).
 */
import path from 'node:path';
import type { RunResult } from '../agent/ops.ts';
import type { NativeRun } from '../guest/native-run.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../testing/native-reference.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, spawnArmed } from '../testing/scenario.ts';
import type { Checkpointed, Restored, Workload } from '../testing/scenario.ts';
import type { Attempt } from './attempt.ts';

/** How the agent runs the program: its RUN as it is, or with the trap handling from before issue 19 (every hit's SIGTRAP suppressed). */
export interface AgentRunOptions {
  legacyTraps?: boolean;
}

/** One run under the agent, judged against the native run. */
export interface ParityAttempt extends Attempt {
  /** the run to the end (after a checkpoint: the restored process's run) */
  run: RunResult;
  /** the whole output: after a checkpoint, the original's up to it and the restored process's after it */
  output: string;
  /** a checkpointed attempt: the original's run up to the stop, and the image */
  checkpointed?: Checkpointed;
  /** a checkpointed attempt: the restore and the run after it */
  restored?: Restored;
}

export interface NativeParityScenario {
  native: NativeRun;
  /** the native run in the rows' words: "exited 0; <its last line>" */
  expected: string;
  /** spawns `workload` under the agent (its breakpoints armed, if any) and runs it to the end */
  runUnderAgent(workload: Workload, tag: string, options?: AgentRunOptions): Promise<ParityAttempt>;
  /** runs `workload` to its `hit`-th hit, checkpoints it there (armed as it was), restores it under `policy` and runs it to the end */
  checkpointAndRestore(workload: Workload, hit: number, policy: RestorePolicy, tag: string): Promise<ParityAttempt>;
}

/** "exited 0; selfstep traps=12 sum=28": how a run ended and its last line. */
export function summarize(ended: string, output: string): string {
  return `${ended}; ${output.trim().split('\n').at(-1) ?? '(no output)'}`;
}

/** Prepares the scenario: the program's native run (no tracer), taken once. */
export async function nativeParityScenario(guest: Guest, program: Workload): Promise<NativeParityScenario> {
  const native = await nativeReference(guest, { binary: program.binary, argv: program.argv, ...(program.envp ? { envp: program.envp } : {}) });
  const judged = (run: RunResult, output: string): Pick<Attempt, 'matched' | 'observed' | 'witnesses'> => ({
    matched: output === native.output && endedAs(run) === endedAs(native),
    observed: summarize(endedAs(run), output),
    witnesses: { hits: run.hits.length, output, ended: endedAs(run) },
  });
  const name = path.basename(program.binary);
  return {
    native,
    expected: summarize(endedAs(native), native.output),
    async runUnderAgent(workload, tag, options = {}) {
      const out = `/tmp/${name}-${tag}.out`;
      const pid = await spawnArmed(guest, workload, out);
      const run = await guest.agent.call({
        op: 'RUN',
        pid,
        stopAfterHits: 0,
        timeoutMs: RUN_TIMEOUT_MS,
        ...(options.legacyTraps ? { legacyTraps: true } : {}),
      });
      const output = await readOutput(guest, out);
      return { run, output, ...judged(run, output) };
    },
    async checkpointAndRestore(workload, hit, policy, tag) {
      const checkpointed = await checkpointAtHit(guest, workload, hit, tag);
      if (!checkpointed.image) {
        const why = `the workload ended before hit ${hit} (${endedAs(checkpointed.run)})`;
        return { run: checkpointed.run, output: '', checkpointed, matched: false, observed: why, witnesses: { notRestored: why } };
      }
      const restored = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
      const output = (await readOutput(guest, `/tmp/${name}-${tag}.original.out`)) + restored.output;
      const j = judged(restored.run, output);
      return {
        run: restored.run,
        output,
        checkpointed,
        restored,
        ...j,
        witnesses: {
          ...j.witnesses,
          hits: checkpointed.run.hits.length + restored.run.hits.length,
          differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
        },
      };
    },
  };
}
