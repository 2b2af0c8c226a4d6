/**
 * Checkpoints a process and all its descendants — children of fork, vfork
 * (after their exec) and clone without CLONE_THREAD, at any depth — as a
 * tree (tree.ts): each process's pid, parent, group, session and exit
 * signal, and each one's own image (checkpoint.ts).
 *
 * The root is stopped under the agent already (RUN left it so). Its
 * descendants are found in /proc (every process's parent, from its stat)
 * and each is seized and stopped (ATTACH), until a look at /proc finds none
 * not yet stopped: a process that is stopped creates no more children, so
 * this ends, and once every process is stopped the tree's state is one that
 * really occurred — what each captures afterwards is consistent with the
 * others (the contents of memory they share read after all are stopped).
 *
 * A zombie in the tree (a child that exited, not yet waited for) is
 * recorded with its wait status and made again on restore (tree-zombies.ts).
 * Refused by name (uncapturable.ts, CheckpointError): a zombie a restore
 * cannot end as it ended (tree-zombies.ts says which);
 * a process reparented to the agent (a child of the agent's that is not the
 * root and that the agent does not trace: a daemon of this program whose
 * parent exited — restoring it needs a parent that then exits, not done
 * yet); a descendant running another binary than the root's (an exec in a
 * child: its stub would be a copy of the root's binary); shared anonymous
 * memory that cannot be one object after a restore (tree.ts); sessions and
 * groups that no sequence of setsid/setpgid can form again (tree.ts
 * planTreeSkeleton: e.g. a child forked before its parent's setsid, left in
 * a session led outside the tree); an open file description several
 * processes share that is not of a regular file (tree-files.ts); a FIFO
 * whose reader is outside the tree (tree-fifos.ts); a pipe that cannot be created once and
 * inherited, or holds too much (tree-pipes.ts); a socket that is not a unix
 * socketpair held in the tree, or one that holds what an image cannot
 * (tree-sockets.ts); a memfd that cannot be one object again (tree-memfds.ts).
 * The pipes and socketpairs between the processes are captured with their
 * queued data, the memfds they hold as descriptors with their contents and
 * seals, the open file descriptions of regular files they share with their
 * offset and the file's identity, the FIFOs they hold with their queued bytes.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError } from '../errors.ts';
import { checkpointProcess, type CheckpointProcessOptions } from './checkpoint.ts';
import type { PlatformFacts, ProcessInfo } from './image-model.ts';
import { PlanError } from './plan-step.ts';
import { FIRST_RESTORED_FD, parseFdinfo } from './files.ts';
import { sharedDescriptionGroups, type HeldFile } from './shared-descriptions.ts';
import { captureSharedFiles, sharedFileObject, withoutOwnFiles } from './tree-files.ts';
import { captureFifos, fifoObject } from './tree-fifos.ts';
import { capturePipes, pipeObject } from './tree-pipes.ts';
import { captureSocketpairs, socketpairObject } from './tree-sockets.ts';
import { captureMemfds, memfdName, memfdObject } from './tree-memfds.ts';
import { creatorOf } from './tree-shared-objects.ts';
import { sharedEventfdProblems } from './event-fds.ts';
import { creationOrder, planTreeSkeleton, sharedAnonymousObjects, type ProcessTree, type TreeMember, type TreeZombie } from './tree.ts';
import { uncapturableError, type Uncapturable } from './uncapturable.ts';
import { parseExitCode, zombieCaptureProblem } from './tree-zombies.ts';
import { readFdTable } from './fd-table.ts';

/** A process as /proc/PID/stat shows it. */
export interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
  pgid: number;
  sid: number;
  exitSignal: number;
}

/** Fields of /proc/PID/stat after the parenthesised name: state (3), ppid (4), pgrp (5), session (6), exit_signal (38). */
export function parseProcStat(pid: number, stat: string): ProcStat {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const n = (field: number): number => Number(fields[field - 3]);
  const parsed = { pid, state: fields[0] ?? '?', ppid: n(4), pgid: n(5), sid: n(6), exitSignal: n(38) };
  if (![parsed.ppid, parsed.pgid, parsed.sid, parsed.exitSignal].every(Number.isInteger))
    throw new CheckpointError(`cannot read /proc/${pid}/stat: ${stat.slice(0, 120)}`);
  return parsed;
}

/** Every process in /proc, with its stat (a process that ends while being read is left out). */
export async function scanProcesses(agent: AgentClient): Promise<Map<number, ProcStat>> {
  const found = new Map<number, ProcStat>();
  for (const entry of await agent.call({ op: 'LISTDIR', path: '/proc' })) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    try {
      found.set(pid, parseProcStat(pid, (await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/stat`, maxSize: 4096 })).toString('utf8')));
    } catch (error) {
      if (error instanceof AgentError) continue; // gone meanwhile
      throw error;
    }
  }
  return found;
}

/** The descendants of `root` among `all`, parents before children. */
export function descendantsOf(root: number, all: ReadonlyMap<number, ProcStat>): ProcStat[] {
  const found: ProcStat[] = [];
  const frontier = [root];
  while (frontier.length > 0) {
    const parent = frontier.shift()!;
    for (const p of [...all.values()].filter((s) => s.ppid === parent && s.pid !== root).sort((a, b) => a.pid - b.pid)) {
      found.push(p);
      frontier.push(p.pid);
    }
  }
  return found;
}

/** The descriptors from 3 up that name a path (files, directories, devices), of every process in `pids`. */
async function heldFiles(agent: AgentClient, pids: readonly number[]): Promise<HeldFile[]> {
  const held: HeldFile[] = [];
  for (const pid of pids) {
    for (const { fd, link: path } of (await readFdTable(agent, pid)).filter((d) => d.fd >= FIRST_RESTORED_FD)) {
      // A memfd's descriptors are one object of the tree's (tree-memfds.ts), not a file opened by path.
      if (!path.startsWith('/') || memfdName(path) !== undefined) continue;
      const { flags } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 65536 })).toString('utf8'));
      held.push({ pid, fd, path, flags });
    }
  }
  return held;
}

async function tracerOf(agent: AgentClient, pid: number): Promise<number> {
  const status = (await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/status`, maxSize: 65536 })).toString('utf8');
  return Number(/^TracerPid:\s*(\d+)$/m.exec(status)?.[1] ?? 0);
}

export async function checkpointTree(
  agent: AgentClient,
  root: ProcessInfo,
  platform: PlatformFacts,
  options: CheckpointProcessOptions = {},
): Promise<ProcessTree> {
  const { agentPid } = await agent.call({ op: 'HELLO' });
  // Stop every descendant, until none is left running.
  const stopped = new Set<number>([root.pid]);
  let all = await scanProcesses(agent);
  for (;;) {
    const running = descendantsOf(root.pid, all).filter((p) => !stopped.has(p.pid) && p.state !== 'Z' && p.state !== 'X');
    if (running.length === 0) break;
    for (const p of running) {
      // A child the agent traces already (a clone child, left in its first stop) is stopped.
      if ((await tracerOf(agent, p.pid)) !== agentPid) await agent.call({ op: 'ATTACH', pid: p.pid });
      stopped.add(p.pid);
    }
    all = await scanProcesses(agent);
  }

  const everyone = descendantsOf(root.pid, all);
  const members = everyone.filter((p) => p.state !== 'Z' && p.state !== 'X');
  const refused: Uncapturable[] = [];
  // Zombies are made again (tree-zombies.ts) where the restore can end them as they ended.
  const zombies: TreeZombie[] = [];
  for (const p of everyone.filter((x) => x.state === 'Z' || x.state === 'X')) {
    const stat = p.state === 'Z' ? await agent.call({ op: 'READ_FILE', path: `/proc/${p.pid}/stat`, maxSize: 4096 }).catch(() => undefined) : undefined;
    const waitStatus = stat === undefined ? undefined : parseExitCode(stat.toString('utf8'));
    if (waitStatus === undefined) {
      refused.push({ state: 'zombie', where: `pid ${p.pid}`, seen: `state ${p.state}: exited, its wait status unreadable (being reaped)` });
      continue;
    }
    const zombie: TreeZombie = { pid: p.pid, ppid: p.ppid, pgid: p.pgid, sid: p.sid, exitSignal: p.exitSignal, waitStatus };
    const parent = p.ppid === root.pid ? all.get(root.pid) : members.find((m) => m.pid === p.ppid);
    const threads = (await agent.call({ op: 'LISTDIR', path: `/proc/${p.pid}/task` }).catch(() => [])).length;
    const problem = parent
      ? zombieCaptureProblem(zombie, parent, threads)
      : { state: 'zombie', where: `pid ${p.pid}`, seen: `its parent ${p.ppid} is no live process of the tree` };
    if (problem) refused.push(problem);
    else zombies.push(zombie);
  }
  for (const p of all.values()) {
    if (p.ppid !== agentPid || p.pid === root.pid || p.state === 'Z' || p.state === 'X') continue;
    if ((await tracerOf(agent, p.pid).catch(() => agentPid)) === agentPid) continue;
    refused.push({
      state: 'reparented orphan',
      where: `pid ${p.pid}`,
      seen: `a child of the agent (pid ${agentPid}, a subreaper) that it did not spawn: a process whose parent exited (a daemon), which a restore cannot give a parent that exits`,
    });
  }
  const rootBinary = root.binary;
  for (const p of members.filter((m) => m.state !== 'Z' && m.state !== 'X')) {
    const exe = await agent.call({ op: 'READLINK', path: `/proc/${p.pid}/exe` });
    if (exe !== rootBinary)
      refused.push({
        state: 'exec in a child',
        where: `pid ${p.pid}`,
        seen: `runs ${exe}, not the root's ${rootBinary}: its restore would start from a copy of the root's binary`,
      });
  }
  if (refused.length > 0) throw uncapturableError(root.pid, refused);

  const rootStat = all.get(root.pid);
  if (!rootStat) throw new CheckpointError(`pid ${root.pid} is not in /proc`);
  const rootMember: TreeMember = { pid: root.pid, ppid: rootStat.ppid, pgid: rootStat.pgid, sid: rootStat.sid, exitSignal: rootStat.exitSignal };
  const ordered = creationOrder(
    rootMember,
    members.map((p) => ({ pid: p.pid, ppid: p.ppid, pgid: p.pgid, sid: p.sid, exitSignal: p.exitSignal })),
  );
  let tree: ProcessTree = { members: [] };
  for (const m of ordered) {
    const cmdline = (await agent.call({ op: 'READ_FILE', path: `/proc/${m.pid}/cmdline`, maxSize: 65536 })).toString('utf8').split('\0').slice(0, -1);
    const info: ProcessInfo = m.pid === root.pid ? root : { ...root, pid: m.pid, argv: cmdline };
    tree.members.push({ ...m, image: await checkpointProcess(agent, info, platform, { ...options, pipesCaptured: true }) });
  }
  // One eventfd inherited across fork is one counter (event-fds.ts): refused by name rather than made once per holder.
  if ((options.uncapturable ?? 'refuse') === 'refuse') {
    const held = tree.members.flatMap((m) => (m.image.task.eventfds ?? []).map((e) => ({ pid: m.pid, fd: e.fd })));
    const shared = await sharedEventfdProblems(agent, held);
    if (shared.length > 0) throw uncapturableError(root.pid, shared);
  }
  // FIFOs first (an fstat injected for each path descriptor): their descriptors are the FIFO's, never a shared file's.
  const fifos = await captureFifos(
    agent,
    tree.members.map((m) => m.pid),
  );
  const fifoFds = new Set(fifos.flatMap((f) => f.descriptions.flatMap((d) => d.ends.map((e) => `${e.pid}:${e.fd}`))));
  // One description inherited across fork, an offset the processes share (shared-descriptions.ts): one object of the
  // tree (tree-files.ts); after each process's own refusals. Descriptors 0-2 are whoever restores the tree's (the
  // root's stub gives every process its own, inherited).
  const sharedFiles = await captureSharedFiles(
    agent,
    await sharedDescriptionGroups(
      agent,
      (
        await heldFiles(
          agent,
          tree.members.map((m) => m.pid),
        )
      ).filter((h) => !fifoFds.has(`${h.pid}:${h.fd}`)),
    ),
  );
  // Both out of each process's own files: the tree opens them, once.
  tree = withoutOwnFiles(tree, [...fifos.flatMap((f) => f.descriptions.flatMap((d) => d.ends)), ...sharedFiles.flatMap((f) => f.ends)]);
  if (fifos.length > 0) tree.fifos = fifos;
  if (sharedFiles.length > 0) tree.sharedFiles = sharedFiles;
  // After every process's own state: the temporary pipe the copy of queued bytes uses is gone again by then.
  const pipes = await capturePipes(
    agent,
    tree.members.map((m) => m.pid),
  );
  if (pipes.length > 0) tree.pipes = pipes;
  const socketpairs = await captureSocketpairs(
    agent,
    tree.members.map((m) => m.pid),
  );
  if (socketpairs.length > 0) tree.socketpairs = socketpairs;
  const memfds = await captureMemfds(
    agent,
    tree.members.map((m) => m.pid),
  );
  if (memfds.length > 0) tree.memfds = memfds;
  if (zombies.length > 0) tree.zombies = zombies;
  // Shared memory that could not be one object again, and sessions and groups no sequence of calls can form again,
  // are refused now, not at restore.
  let anonymous;
  try {
    anonymous = sharedAnonymousObjects(tree);
  } catch (error) {
    if (error instanceof PlanError) throw new CheckpointError(error.message, { state: 'shared anonymous memory' });
    throw error;
  }
  try {
    planTreeSkeleton(tree.members, anonymous);
  } catch (error) {
    if (error instanceof PlanError) throw new CheckpointError(error.message, { state: 'process tree' });
    throw error;
  }
  // Every object shared through descriptors must have a holding ancestor to be created in (tree-shared-objects.ts).
  const objects = [
    ...pipes.map((p) => ({ state: 'pipe', object: pipeObject(p) })),
    ...socketpairs.map((p) => ({ state: 'socketpair', object: socketpairObject(p) })),
    ...memfds.map((m) => ({ state: 'memfd', object: memfdObject(m) })),
    ...sharedFiles.map((f) => ({ state: 'shared open file description', object: sharedFileObject(f) })),
    ...fifos.map((f) => ({ state: 'fifo', object: fifoObject(f) })),
  ];
  for (const { state, object } of objects) {
    try {
      creatorOf(tree.members, object);
    } catch (error) {
      if (error instanceof PlanError) throw new CheckpointError(error.message, { state });
      throw error;
    }
  }
  return tree;
}
