/**
 * Hands a process the agent holds stopped to CRIU in the guest and takes the
 * restored process back: DETACH (left in a job-control stop, untraced),
 * `criu dump -t PID` (images and logs on the guest's tmpfs; the dump kills
 * it), REAP (its zombie holds the pid the restore needs), REAP_ORPHANS (the
 * zombies of its descendants, which the dump killed too, come to the agent
 * — a child subreaper — when their parent dies, and hold their pids just
 * the same: `criu restore` then failed with "Can't fork for PID: File
 * exists" on every tree with a child), `criu restore -d`,
 * ATTACH (every thread in a ptrace stop again). A refusal or failure of CRIU
 * is an answer, with CRIU's own reason and log, not an exception: it is the
 * verdict about CRIU. What the agent or the guest cannot do still throws.
 */
import type { AgentClient } from '../agent/client.ts';
import { readGuestText } from '../agent/read-file.ts';
import { AgentError, CrhError } from '../errors.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { shellQuote } from '../machine/qemu-args.ts';
import { criuDumpArgs, criuRestoreArgs, runCriu, type GuestExec } from './commands.ts';

/** How long a dumped process may take to be reported dead (CRIU SIGKILLs it at the end of the dump). */
const REAP_TIMEOUT_MS = 10_000;
const LOG_MAX_BYTES = 256 * 1024;

export interface CriuInGuest {
  /** the guest command (the wrapper at /usr/sbin/criu) */
  command: string;
  version: string;
  exec: GuestExec;
}

interface Logs {
  dumpMs: number;
  restoreMs?: number;
  imageBytes?: number;
  dumpLog: string;
  restoreLog?: string;
}

export type Handoff = ({ ok: true; restoredPid: number } & Logs) | ({ ok: false; stage: 'dump' | 'restore' | 'attach'; reason: string } & Logs);

/** Called as each CRIU command starts (crh repro shows them as phases); the restore's with the size of the images. */
export type HandoffStage = (stage: { name: 'dump' } | { name: 'restore'; imageBytes: number }) => Promise<void>;

/** Hands the stopped process `pid` to CRIU and takes the restored one back; `dir` (a guest path) is emptied first. */
export async function handOffToCriu(agent: AgentClient, criu: CriuInGuest, pid: number, dir: string, onStage: HandoffStage = async () => {}): Promise<Handoff> {
  const pidFile = `${dir}/restored.pid`;
  const prepared = await criu.exec(`rm -rf ${shellQuote(dir)} && mkdir -p ${shellQuote(dir)}`);
  if (prepared.code !== 0) throw new CrhError(`could not prepare ${dir} in the guest for CRIU's images`, { stderr: prepared.stderr });
  const readLog = async (name: string): Promise<string> => tail(await readGuestText(agent, `${dir}/${name}`, LOG_MAX_BYTES * 4).catch(() => `(no ${name})`));

  await onStage({ name: 'dump' });
  const tree = await descendants(agent, pid);
  await agent.call({ op: 'DETACH', pid });
  const dump = await runCriu(criu.exec, criuDumpArgs(criu.command, pid, dir));
  const dumpLog = await readLog('dump.log');
  if (!dump.ok) {
    // CRIU refused: the process may still be there, stopped; it is the agent's child, so end it and collect it.
    await criu.exec(`kill -9 ${pid} 2>/dev/null; true`);
    await agent.call({ op: 'REAP', pid, timeoutMs: REAP_TIMEOUT_MS }).catch(() => {});
    return { ok: false, stage: 'dump', reason: `criu dump failed (exit ${dump.code}): ${criuFailure(dumpLog || dump.stderr)}`, dumpMs: dump.wallMs, dumpLog };
  }
  await reapDumped(agent, criu, pid);
  // The descendants' pids must be free too: orphans of the agent are reaped by it, others by their parent (init).
  await agent.call({ op: 'REAP_ORPHANS', pids: tree, timeoutMs: REAP_TIMEOUT_MS });
  const du = await criu.exec(`du -sk ${shellQuote(dir)} | cut -f1`);
  const imageBytes = Number(du.stdout.trim()) * 1024;

  await onStage({ name: 'restore', imageBytes });
  const restore = await runCriu(criu.exec, criuRestoreArgs(criu.command, dir, pidFile));
  const restoreLog = await readLog('restore.log');
  const logs = { dumpMs: dump.wallMs, restoreMs: restore.wallMs, imageBytes, dumpLog, restoreLog };
  if (!restore.ok)
    return { ok: false, stage: 'restore', reason: `criu restore failed (exit ${restore.code}): ${criuFailure(restoreLog || restore.stderr)}`, ...logs };
  const restoredPid = Number((await readGuestText(agent, pidFile, 64)).trim());
  if (!Number.isInteger(restoredPid) || restoredPid <= 0)
    throw new CrhError(`criu restore wrote no pid to ${pidFile}`, { restoreLog: restoreLog.slice(-4096) });
  try {
    await agent.call({ op: 'ATTACH', pid: restoredPid });
  } catch (error) {
    if (!(error instanceof CrhError) || isInfraFailure(error)) throw error;
    await criu.exec(`kill -9 ${restoredPid} 2>/dev/null; true`);
    return { ok: false, stage: 'attach', reason: `the restored process ${restoredPid} could not be attached: ${error.message}`, ...logs };
  }
  return { ok: true, restoredPid, ...logs };
}

const ECHILD = 10;

/**
 * Waits until the dumped process is gone, so its pid is free for the
 * restore. The agent's child (spawned, or a daemon left to the agent as
 * child subreaper) is reaped by the agent; one CRIU restored before (a
 * chain of dumps) is init's child — `criu restore -d` exits and leaves it
 * there — and the agent's waitpid says ECHILD: init reaps it, and the wait
 * is for /proc/PID to go.
 */
async function reapDumped(agent: AgentClient, criu: CriuInGuest, pid: number): Promise<void> {
  try {
    await agent.call({ op: 'REAP', pid, timeoutMs: REAP_TIMEOUT_MS });
    return;
  } catch (error) {
    if (!(error instanceof AgentError) || error.errno !== ECHILD) throw error;
  }
  const polls = Math.ceil(REAP_TIMEOUT_MS / 10);
  const gone = await criu.exec(`i=0; while [ -e /proc/${pid} ] && [ $i -lt ${polls} ]; do sleep 0.01; i=$((i+1)); done; [ ! -e /proc/${pid} ]`);
  if (gone.code !== 0)
    throw new CrhError(`process ${pid}, dumped by CRIU, was still there ${REAP_TIMEOUT_MS} ms after the dump (init did not reap it)`, { stderr: gone.stderr });
}

/** Every descendant of `pid` (the children of each of its threads, recursively), read while they still live. */
export async function descendants(agent: Pick<AgentClient, 'call'>, pid: number): Promise<number[]> {
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const parent = queue.shift()!;
    const tids = await agent.call({ op: 'LISTDIR', path: `/proc/${parent}/task` }).catch(() => [] as string[]);
    for (const tid of tids) {
      const children = await readGuestText(agent, `/proc/${parent}/task/${tid}/children`, 64 * 1024).catch(() => '');
      for (const child of children.split(/\s+/).filter(Boolean).map(Number)) {
        if (!Number.isInteger(child) || child <= 0 || found.includes(child)) continue;
        found.push(child);
        queue.push(child);
      }
    }
  }
  return found;
}

function tail(log: string): string {
  return log.length > LOG_MAX_BYTES ? `(first ${log.length - LOG_MAX_BYTES} bytes cut)\n${log.slice(-LOG_MAX_BYTES)}` : log;
}

/** CRIU's first "Error (file:line): ..." line says why (the later ones say that it failed); else the last lines. */
export function criuFailure(text: string): string {
  const lines = text.trim().split('\n');
  const first = lines.find((l) => /\bError \(/.test(l));
  return first ? first.replace(/^\(\s*[\d.]+\)\s*/, '') : lines.slice(-3).join(' | ');
}
