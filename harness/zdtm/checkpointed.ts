/**
 * The checkpointed run of a ZDTM-protocol test: the launcher spawned by the
 * agent with a clean environment (fds 0-2 only: SPAWN gives stdin
 * /dev/null and stdout/stderr on a file), run to its exit; the daemon its
 * pid file names seized (repro/pid-file.ts), given the settle time, then
 * `cycles` times checkpointed with all its descendants, killed and restored
 * with the same pids (repro/daemon-tree.ts) — the test's exit handler
 * renames its outfile only when its pid is unchanged — each process's
 * descriptors 0-2 given back (repro/daemon-stdio.ts);
 * then SIGTERM, and the verdict from its outfile once it has ended.
 *
 * A limitation of the C/R under test (a checkpoint refused, a restore that
 * fails, a process that ends or hangs where it should not) is a result: a
 * failed run with its reason. Infrastructure failures are thrown.
 */
import { runToEnd } from '../agent/run-to-end.ts';
import type { AgentClient } from '../agent/client.ts';
import { CrhError } from '../errors.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import type { PlatformFacts } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { checkpointDaemon, describeTreeShape, killDaemonTree, restoreDaemon, writeDaemonImage } from '../repro/daemon-tree.ts';
import { attachNamedProcess } from '../repro/pid-file.ts';
import { interruptibleRun } from '../repro/runs.ts';
import { launcherArgv, type ZdtmLaunch } from './native.ts';
import { PIDFILE } from './verdict.ts';
import { UsageError } from '../repro/usage-error.ts';

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
  /** restore in another guest (--restore-cpu, --restore-kernel): the test is moved once, and ends there */
  elsewhere?: ZdtmElsewhere;
}

/**
 * The restore guest of a move: its agent, whether a target lacking what the
 * test depends on is tried anyway, and `carry`, which copies the checkpoint
 * guest's working directory and the given files (the daemon's own output)
 * to the same paths there — a restored process reopens its files by path.
 */
export interface ZdtmElsewhere {
  agent: AgentClient;
  anyway: boolean;
  carry: (files: readonly string[]) => Promise<void>;
}

export interface CycleTiming {
  checkpointMs: number;
  imageBytes: number;
  restoreMs: number;
  /** processes checkpointed and restored: the daemon and its descendants (undefined: the engine does not say, CRIU) */
  processes?: number;
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
  // Where the restored test runs: this guest, or the restore guest of a move (from its first restore on).
  const there = ctx.elsewhere?.agent ?? agent;
  if (ctx.elsewhere && ctx.cycles > 1)
    throw new UsageError('a restore in another guest moves the test once: --iters goes without --restore-cpu and --restore-kernel');
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
      const checkpoint = await checkpointDaemon(
        agent,
        { binary: launch.binary, argv: launcherArgv(launch), envp: [], noAslr: true, pid: current },
        ctx.platform,
      );
      const imageBytes = await writeDaemonImage(checkpoint, ctx.imageFile);
      const checkpointMs = Date.now() - started;
      for (const m of checkpoint.tree.members) await agent.call({ op: 'KILL', pid: m.pid });
      if (ctx.elsewhere) await ctx.elsewhere.carry([...checkpoint.stdio.values()].flat().flatMap((f) => (f.path ? [f.path] : [])));
      await ctx.phase(
        'restore',
        `${tag}${describeTreeShape(checkpoint.tree)}, ${checkpoint.tree.members[0]!.image.regions.length} memory regions in the root${ctx.elsewhere ? ', in the restore guest' : ''}`,
      );
      const restoreStarted = Date.now();
      const restored = await restoreDaemon(there, checkpoint, {
        policy: ctx.policy,
        stdoutPath: `${ctx.outDir}/restored-${cycle}.out`,
        ...(ctx.elsewhere?.anyway ? { dependencies: 'try' as const } : {}),
      });
      if (restored.dependencyNotes.length > 0) await ctx.phase('restored', restored.dependencyNotes.join('; '));
      restoredPid = restored.pid;
      timing = { checkpointMs, imageBytes, restoreMs: Date.now() - restoreStarted, processes: restored.pids.length };
    } catch (error) {
      // The tree may still be stopped (a checkpoint refused): nothing of it is left for the next run.
      await killDaemonTree(cycle > 1 ? there : agent, current).catch(() => {});
      return { failure: `${tag}${resultOf(error)}`, pid, cycles };
    }
    cycles.push(timing);
    current = restoredPid;
    const ended = await interruptibleRun(there, current, RESUME_SLICE_MS);
    if (ended) return { failure: `${tag}the restored test ended before SIGTERM (${describeEnd(ended)})`, pid, restoredPid: current, cycles };
  }

  await ctx.phase('SIGTERM', `pid ${current}`);
  await there.call({ op: 'SIGNAL', pid: current, signo: SIGTERM });
  const end = await runToEnd(there, current, ctx.timeoutMs);
  if (end.outcome === 'timed-out')
    return { failure: `the restored test did not end within ${ctx.timeoutMs} ms of SIGTERM (killed)`, pid, restoredPid: current, cycles };
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
