/**
 * The checkpointed run of a ZDTM-protocol test with CRIU as the engine: the
 * launcher spawned and run to its exit as for crh (checkpointed.ts), the
 * process its pid file names seized (its root only: CRIU dumps the whole
 * tree rooted there, children included, so nothing is refused), given the
 * settle time, then `cycles` times handed to CRIU in the guest
 * (criu/handoff.ts: DETACH, `criu dump -t PID --shell-job`, the dumped
 * process gone, `criu restore -d`, ATTACH) — CRIU restores the pids and the
 * descriptors itself — then SIGTERM, and the verdict from the outfile once
 * it has ended, read by the caller as for crh.
 *
 * CRIU's refusal or failure is the run's result, with CRIU's own reason;
 * infrastructure failures are thrown.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runToEnd } from '../agent/run-to-end.ts';
import type { AgentClient } from '../agent/client.ts';
import { handOffToCriu, type CriuInGuest } from '../criu/handoff.ts';
import { AgentError } from '../errors.ts';
import { parsePidFile, readIfPresent } from '../repro/pid-file.ts';
import { interruptibleRun } from '../repro/runs.ts';
import { describeEnd, RESUME_SLICE_MS, type CheckpointedZdtmRun, type CycleTiming } from './checkpointed.ts';
import { launcherArgv, type ZdtmLaunch } from './native.ts';
import { PIDFILE } from './verdict.ts';

const SIGTERM = 15;
const SIGCONT = 18;
const ESRCH = 3;
const ATTACH_ATTEMPTS = 5;

/**
 * ATTACH, again when one of the process's threads ended between the
 * agent's listing of /proc/PID/task and its seize (measured: ZDTM's
 * pthread_timers_h, whose SIGEV_THREAD timers start and end threads —
 * "PTRACE_SEIZE 909: No such process" ended the whole invocation as
 * infrastructure). The agent undoes a half attach leaving the process
 * SIGSTOPped, so once attached it is sent SIGCONT, as it ran before. A
 * process that is gone is no retry: that error stands.
 */
async function attachRoot(agent: AgentClient, pid: number): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await agent.call({ op: 'ATTACH', pid });
      if (attempt > 1) await agent.call({ op: 'SIGNAL', pid, signo: SIGCONT });
      return;
    } catch (error) {
      if (!(error instanceof AgentError) || error.errno !== ESRCH || attempt >= ATTACH_ATTEMPTS) throw error;
      const stat = await readIfPresent(agent, `/proc/${pid}/stat`);
      if (stat === undefined || /\) Z /.test(stat)) throw error;
    }
  }
}

export interface CriuZdtmContext {
  agent: AgentClient;
  criu: CriuInGuest;
  cycles: number;
  settleMs: number;
  timeoutMs: number;
  /** guest directory for CRIU's images and logs (emptied before each dump) */
  imagesDir: string;
  /** host directory CRIU's dump and restore logs are copied to, one pair per cycle */
  logsDir: string;
  phase: (name: string, detail?: string) => Promise<void>;
}

export async function criuZdtmRun(ctx: CriuZdtmContext, launch: ZdtmLaunch): Promise<CheckpointedZdtmRun> {
  const { agent, criu } = ctx;
  const cycles: CycleTiming[] = [];
  await ctx.phase('launch', launcherArgv(launch).join(' '));
  const launcher = await agent.call({ op: 'SPAWN', path: launch.binary, argv: launcherArgv(launch), envp: [], stdoutPath: launch.launcherOut, noAslr: true });
  const launched = await runToEnd(agent, launcher.pid, ctx.timeoutMs);
  if (launched.outcome !== 'exited' || launched.code !== 0) return { failure: `traced, the launcher ${describeEnd(launched)} (natively it exited 0)`, cycles };

  const pidFile = `${launch.cwd}/${PIDFILE}`;
  const text = await readIfPresent(agent, pidFile, 64);
  const pid = parsePidFile(text);
  if (pid === undefined) return { failure: text === undefined ? `the pid file ${pidFile} was not written` : `the pid file ${pidFile} holds no pid`, cycles };
  const stat = await readIfPresent(agent, `/proc/${pid}/stat`);
  if (stat === undefined || /\) Z /.test(stat)) return { failure: `pid ${pid}, named by ${pidFile}, ended before it could be checkpointed`, cycles };
  // The root only: its children (if any) run on untraced; CRIU freezes and dumps the tree itself.
  await attachRoot(agent, pid);
  let current = pid;
  const settled = await interruptibleRun(agent, pid, ctx.settleMs);
  if (settled) return { failure: `the test ended before the checkpoint, ${ctx.settleMs} ms after it was ready (${describeEnd(settled)})`, pid, cycles };

  for (let cycle = 1; cycle <= ctx.cycles; cycle++) {
    const tag = ctx.cycles > 1 ? `cycle ${cycle}/${ctx.cycles}: ` : '';
    const handoff = await handOffToCriu(agent, criu, current, ctx.imagesDir, (stage) =>
      stage.name === 'dump'
        ? ctx.phase('criu dump', `${tag}the tree rooted at pid ${current}`)
        : ctx.phase('criu restore', `${tag}${stage.imageBytes} bytes of images`),
    );
    const logs = path.join(ctx.logsDir, `criu-${path.basename(launch.binary)}${ctx.cycles > 1 ? `-${cycle}` : ''}`);
    await writeFile(`${logs}-dump.log`, handoff.dumpLog);
    if (handoff.restoreLog !== undefined) await writeFile(`${logs}-restore.log`, handoff.restoreLog);
    if (!handoff.ok) return { failure: `${tag}CRIU ${criu.version}: ${handoff.reason}`, pid, cycles };
    cycles.push({ checkpointMs: handoff.dumpMs, imageBytes: handoff.imageBytes ?? 0, restoreMs: handoff.restoreMs ?? 0 });
    current = handoff.restoredPid;
    const ended = await interruptibleRun(agent, current, RESUME_SLICE_MS);
    if (ended) return { failure: `${tag}the restored test ended before SIGTERM (${describeEnd(ended)})`, pid, restoredPid: current, cycles };
  }

  await ctx.phase('SIGTERM', `pid ${current}`);
  await agent.call({ op: 'SIGNAL', pid: current, signo: SIGTERM });
  const end = await runToEnd(agent, current, ctx.timeoutMs);
  if (end.outcome === 'timed-out')
    return { failure: `the restored test did not end within ${ctx.timeoutMs} ms of SIGTERM (killed)`, pid, restoredPid: current, cycles };
  return { pid, restoredPid: current, cycles };
}
