/**
 * The checkpointed run of a ZDTM-protocol test: the launcher spawned by the
 * agent with a clean environment (fds 0-2 only: SPAWN gives stdin
 * /dev/null and stdout/stderr on a file), run to its exit; the daemon its
 * pid file names seized (repro/pid-file.ts: a tree is refused), given the
 * settle time, then `cycles` times checkpointed, killed and restored with
 * the same pid — the test's exit handler renames its outfile only when its
 * pid is unchanged — its descriptors 0-2 given back (repro/daemon-stdio.ts);
 * then SIGTERM, and the verdict from its outfile once it has ended.
 *
 * A limitation of the C/R under test (a checkpoint refused, a restore that
 * fails, a process that ends or hangs where it should not) is a result: a
 * failed run with its reason. Infrastructure failures are thrown.
 */
import { isRunTimeout, runToEnd } from '../agent/run-to-end.ts';
import { stat } from 'node:fs/promises';
import type { AgentClient } from '../agent/client.ts';
import { CrhError } from '../errors.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { checkpointProcess } from '../restore/checkpoint.ts';
import { writeCheckpointImage, type PlatformFacts } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { restoreProcess } from '../restore/restore.ts';
import { captureStdio, reattachStdio } from '../repro/daemon-stdio.ts';
import { attachNamedProcess } from '../repro/pid-file.ts';
import { interruptibleRun } from '../repro/runs.ts';
import { launcherArgv, type ZdtmLaunch } from './native.ts';
import { PIDFILE } from './verdict.ts';

const SIGTERM = 15;
/** How long a restored test runs before the next checkpoint, or before SIGTERM. */
export const RESUME_SLICE_MS = 50;

export interface ZdtmRunContext {
  agent: AgentClient;
  platform: PlatformFacts;
  policy: RestorePolicy;
  cycles: number;
  settleMs: number;
  timeoutMs: number;
  /** guest directory for the restored processes' own stdout files */
  outDir: string;
  /** host path of the image of cycle N (the last one is kept) */
  imageFile: string;
  phase: (name: string, detail?: string) => Promise<void>;
}

export interface CycleTiming {
  checkpointMs: number;
  imageBytes: number;
  restoreMs: number;
}

export interface CheckpointedZdtmRun {
  /** why the run failed before the test could give a verdict (the C/R under test's limitation) */
  failure?: string;
  pid?: number;
  /** the pid the last restore gave it */
  restoredPid?: number;
  cycles: CycleTiming[];
}

export async function checkpointedZdtmRun(ctx: ZdtmRunContext, launch: ZdtmLaunch): Promise<CheckpointedZdtmRun> {
  const { agent } = ctx;
  const cycles: CycleTiming[] = [];
  await ctx.phase('launch', launcherArgv(launch).join(' '));
  const launcher = await agent.call({ op: 'SPAWN', path: launch.binary, argv: launcherArgv(launch), envp: [], stdoutPath: launch.launcherOut, noAslr: true });
  const launched = await runToEnd(agent, launcher.pid, ctx.timeoutMs);
  if (launched.outcome !== 'exited' || launched.code !== 0) return { failure: `traced, the launcher ${describeEnd(launched)} (natively it exited 0)`, cycles };

  let pid: number;
  try {
    pid = await attachNamedProcess(agent, `${launch.cwd}/${PIDFILE}`);
  } catch (error) {
    return { failure: resultOf(error), cycles };
  }
  let current = pid;
  const settled = await interruptibleRun(agent, pid, ctx.settleMs);
  if (settled) return { failure: `the test ended before the checkpoint, ${ctx.settleMs} ms after it was ready (${describeEnd(settled)})`, pid, cycles };

  for (let cycle = 1; cycle <= ctx.cycles; cycle++) {
    const tag = ctx.cycles > 1 ? `cycle ${cycle}/${ctx.cycles}: ` : '';
    await ctx.phase('checkpoint', `${tag}pid ${current}`);
    const started = Date.now();
    let restoredPid: number;
    let timing: CycleTiming;
    try {
      const stdio = await captureStdio(agent, current);
      const image = await checkpointProcess(agent, { binary: launch.binary, argv: launcherArgv(launch), envp: [], noAslr: true, pid: current }, ctx.platform);
      await writeCheckpointImage(image, ctx.imageFile);
      const checkpointMs = Date.now() - started;
      await agent.call({ op: 'KILL', pid: current });
      await ctx.phase('restore', `${tag}${image.regions.length} memory regions, pid ${current}`);
      const restoreStarted = Date.now();
      const restored = await restoreProcess(agent, image, { policy: ctx.policy, stdoutPath: `${ctx.outDir}/restored-${cycle}.out` });
      await reattachStdio(agent, restored.pid, stdio);
      restoredPid = restored.pid;
      timing = { checkpointMs, imageBytes: (await stat(ctx.imageFile)).size, restoreMs: Date.now() - restoreStarted };
    } catch (error) {
      // The process may still be stopped (a checkpoint refused): nothing of it is left for the next run.
      await agent.call({ op: 'KILL', pid: current }).catch(() => {});
      return { failure: `${tag}${resultOf(error)}`, pid, cycles };
    }
    cycles.push(timing);
    current = restoredPid;
    const ended = await interruptibleRun(agent, current, RESUME_SLICE_MS);
    if (ended) return { failure: `${tag}the restored test ended before SIGTERM (${describeEnd(ended)})`, pid, restoredPid: current, cycles };
  }

  await ctx.phase('SIGTERM', `pid ${current}`);
  await agent.call({ op: 'SIGNAL', pid: current, signo: SIGTERM });
  const end = await runToEnd(agent, current, ctx.timeoutMs);
  if (end.outcome === 'timed-out') return { failure: `the restored test did not end within ${ctx.timeoutMs} ms of SIGTERM (killed)`, pid, restoredPid: current, cycles };
  return { pid, restoredPid: current, cycles };
}



export function describeEnd(end: { outcome: string; code: number }): string {
  if (end.outcome === 'exited') return `exited with status ${end.code}`;
  if (end.outcome === 'killed') return `was killed by signal ${end.code}`;
  return `did not end within ${end.code} ms`;
}

/** A C/R limitation or failure as the run's result; infrastructure and bugs are rethrown. */
function resultOf(error: unknown): string {
  if (!(error instanceof CrhError) || isInfraFailure(error)) throw error;
  return `${error.name}: ${error.message}`;
}
