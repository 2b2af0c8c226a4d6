/**
 * A daemon named by a pid file: the process to checkpoint is not the one
 * crh spawned (the launcher) but the one whose pid the program writes to a
 * file — a ZDTM test's T.pid, a service's `--pid-file`. The agent is a child
 * subreaper, so once the launcher has exited the daemon is the agent's own
 * child, and ATTACH seizes it like a spawned process.
 *
 * A daemon with children is checkpointed with them, as a process tree
 * (daemon-tree.ts); what a tree's restore cannot rebuild is refused by name
 * at the checkpoint.
 */
import { runFor } from '../agent/guest-run.ts';
import type { AgentClient } from '../agent/client.ts';
import { AgentError } from '../errors.ts';
import { CheckpointNotReachedError } from './usage-error.ts';

const ENOENT = 2;

/** The pid a pid file names: its first line, a positive whole number; undefined when the file is absent or holds none. */
export function parsePidFile(text: string | undefined): number | undefined {
  const first = text?.split('\n')[0]?.trim() ?? '';
  return /^[1-9]\d{0,9}$/.test(first) && Number(first) <= 0x3fffffff ? Number(first) : undefined;
}

/** Reads a guest file, undefined when it does not exist. */
export async function readIfPresent(agent: AgentClient, path: string, maxSize = 4096): Promise<string | undefined> {
  try {
    return (await agent.call({ op: 'READ_FILE', path, maxSize })).toString('utf8');
  } catch (error) {
    if (error instanceof AgentError && error.errno === ENOENT) return undefined;
    throw error;
  }
}

/** The one-letter state of /proc/PID/stat ("Z" a zombie), undefined when there is no such process. */
async function processState(agent: AgentClient, pid: number): Promise<string | undefined> {
  const stat = await readIfPresent(agent, `/proc/${pid}/stat`);
  return stat === undefined ? undefined : /\) (\S) /.exec(stat)?.[1];
}

/**
 * Runs the launcher (spawned, stopped) to its end and seizes the daemon its
 * pid file names. Ready when the launcher has exited 0 and `pidFile` names
 * a live process. A launcher that fails, hangs past `timeoutMs` or names no
 * live process never reached the checkpoint point (CheckpointNotReachedError).
 */
export async function runLauncherToDaemon(agent: AgentClient, launcherPid: number, pidFile: string, timeoutMs: number): Promise<{ pid: number; how: string }> {
  const launched = await runFor(agent, launcherPid, timeoutMs);
  if (launched.kind === 'interrupted') {
    await agent.call({ op: 'KILL', pid: launcherPid }).catch(() => {});
    throw new CheckpointNotReachedError(
      `the launcher (pid ${launcherPid}) did not exit within ${timeoutMs} ms; with --pid-file the program is ready once it has exited 0 and the pid file names a live process`,
    );
  }
  const { run } = launched;
  if (run.outcome !== 'exited' || run.code !== 0) {
    throw new CheckpointNotReachedError(
      `the launcher (pid ${launcherPid}) ${run.outcome === 'exited' ? `exited with status ${run.code}` : `was killed by signal ${run.code}`}: it must exit 0 once the daemon is ready`,
    );
  }
  const pid = await attachNamedProcess(agent, pidFile);
  return { pid, how: `the launcher exited 0 and ${pidFile} names pid ${pid}` };
}

/** Seizes the live process `pidFile` names (ATTACH: every thread stopped; its descendants run on). */
export async function attachNamedProcess(agent: AgentClient, pidFile: string): Promise<number> {
  const text = await readIfPresent(agent, pidFile, 64);
  const pid = parsePidFile(text);
  if (pid === undefined) {
    throw new CheckpointNotReachedError(
      text === undefined ? `the pid file ${pidFile} was not written` : `the pid file ${pidFile} holds ${JSON.stringify(text.slice(0, 40))}, not a pid`,
    );
  }
  const state = await processState(agent, pid);
  if (state === undefined || state === 'Z')
    throw new CheckpointNotReachedError(
      `pid ${pid}, named by ${pidFile}, is ${state === 'Z' ? 'a zombie' : 'not running'}: the daemon ended before it could be checkpointed`,
    );
  await agent.call({ op: 'ATTACH', pid });
  return pid;
}
