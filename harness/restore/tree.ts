/**
 * A process tree as a checkpoint holds it, and the pure part of restoring
 * one: in which order the processes are created, and which setsid/setpgid
 * calls give each its session and process group — checked against the
 * kernel's rules by simulating them, so a tree no sequence of calls can
 * rebuild is refused by name before anything touches the guest.
 *
 * The kernel's rules (kernel/sys.c): a child starts in its parent's session
 * and group; setsid() fails for a group leader and makes the caller leader
 * of a new session and group; setpgid(0, G) fails for a session leader and
 * needs a group G that already has a member in the caller's session (or
 * G = the caller's pid: a new group). So a session leader calls setsid
 * before it creates its children (they inherit the session), and groups are
 * formed once every process exists: leaders first, then members.
 */
import type { CheckpointImage } from './image-model.ts';
import { PlanError } from './plan-step.ts';
import { parseMaps } from './proc-maps.ts';

export const SIGCHLD = 17;

/** One process's place in the tree. */
export interface TreeMember {
  pid: number;
  /** the parent's pid; for the root, whatever it was outside the tree (the agent) */
  ppid: number;
  pgid: number;
  sid: number;
  /** the signal the parent gets when it ends (SIGCHLD for fork; clone may choose another, or 0) */
  exitSignal: number;
}

export interface PipeEnd {
  pid: number;
  fd: number;
  /** the write end (else the read end) */
  write: boolean;
  cloexec: boolean;
}

export interface TreePipe {
  /** the pipe's inode at checkpoint time: its identity in the image */
  inode: number;
  ends: PipeEnd[];
  nonblockRead: boolean;
  nonblockWrite: boolean;
  /** F_GETPIPE_SZ */
  size: number;
  queued: Buffer;
}

/** A descriptor on one socket of a socketpair. */
export interface SocketEnd {
  pid: number;
  fd: number;
  cloexec: boolean;
  nonblock: boolean;
}

/** A unix socketpair between processes of the tree (tree-sockets.ts). */
export interface TreeSocketPair {
  type: 'stream' | 'dgram';
  /** the two sockets' inodes at checkpoint time */
  inodes: [number, number];
  /** the descriptors on each socket */
  ends: [SocketEnd[], SocketEnd[]];
  /** what each socket would read next: a stream's bytes as one buffer, a datagram socket's datagrams one each */
  queued: [Buffer[], Buffer[]];
}

/** A descriptor on a memfd of the tree (every descriptor of one memfd is one open file description). */
export interface MemfdEnd {
  pid: number;
  fd: number;
  cloexec: boolean;
}

/** A memfd held as descriptors by processes of the tree (tree-memfds.ts). */
export interface TreeMemfd {
  /** its inode at checkpoint time: its identity in the image */
  inode: number;
  /** what memfd_create was given (the link reads /memfd:NAME (deleted)) */
  name: string;
  /** F_GET_SEALS */
  seals: number;
  /** the description's O_APPEND and O_NONBLOCK (it is read-write) */
  flags: number;
  /** the description's offset */
  pos: number;
  /** every byte of it: its size is their number */
  contents: Buffer;
  /** its descriptors (none when it is only mapped) */
  ends: MemfdEnd[];
  /** where processes map it MAP_SHARED (absent: nowhere): inherited across fork, at one range in every holder */
  maps?: MemfdMapping[];
}

/** A process's MAP_SHARED mapping of a tree's memfd. */
export interface MemfdMapping {
  pid: number;
  start: bigint;
  end: bigint;
  /** the file offset of `start` */
  offset: bigint;
}

/** A descriptor on an open file description processes of the tree share. */
export interface FileEnd {
  pid: number;
  fd: number;
  cloexec: boolean;
}

/** A regular file's open file description held by several processes of the tree (inherited across fork): one offset (tree-files.ts). */
export interface TreeSharedFile {
  path: string;
  /** the description's access mode and status flags (fdinfo's flags without O_CLOEXEC, which is each descriptor's) */
  flags: number;
  /** the description's offset */
  pos: number;
  /** the file's identity at checkpoint (st_dev, st_ino, st_size): a restore refuses another file at the path */
  dev: number;
  ino: number;
  size: number;
  ends: FileEnd[];
}

/** One open file description of a FIFO: its access mode and status flags, and the descriptors on it. */
export interface FifoDescription {
  /** O_RDONLY, O_WRONLY or O_RDWR, with O_NONBLOCK and O_APPEND as they were (fdinfo's flags without O_CLOEXEC and O_LARGEFILE) */
  flags: number;
  ends: FileEnd[];
}

/** A FIFO (a named pipe, opened by path) held by processes of the tree, with the bytes queued in it (tree-fifos.ts). */
export interface TreeFifo {
  path: string;
  /** F_GETPIPE_SZ */
  size: number;
  queued: Buffer;
  /** its open file descriptions (each opened by path once, at checkpoint time), each with its descriptors */
  descriptions: FifoDescription[];
}

/** A checkpointed tree: every process's own image and its place. The root comes first, then the others in creation order. */
export interface ProcessTree {
  members: Array<TreeMember & { image: CheckpointImage }>;
  /** the pipes its processes hold (tree-pipes.ts); absent: none */
  pipes?: TreePipe[];
  /** the unix socketpairs between them (tree-sockets.ts); absent: none */
  socketpairs?: TreeSocketPair[];
  /** the memfds its processes hold as descriptors (tree-memfds.ts); absent: none */
  memfds?: TreeMemfd[];
  /** the open file descriptions of regular files its processes share (tree-files.ts); absent: none */
  sharedFiles?: TreeSharedFile[];
  /** the FIFOs its processes hold (tree-fifos.ts); absent: none */
  fifos?: TreeFifo[];
  /** its children that have exited and that their parents have not waited for (tree-zombies.ts); absent: none */
  zombies?: TreeZombie[];
}

/** A zombie of the tree: no image, only its place and the wait status its parent's wait collects. */
export interface TreeZombie extends TreeMember {
  /** /proc/PID/stat exit_code, as waitpid reports it */
  waitStatus: number;
}

/** A step of building the tree's skeleton: stubs, their parent links, sessions and groups. */
export type TreeAction =
  | { kind: 'spawn-root'; pid: number; why: string }
  | { kind: 'clone'; parent: number; pid: number; exitSignal: number; why: string }
  | { kind: 'setsid'; pid: number; why: string }
  | { kind: 'setpgid'; pid: number; pgid: number; why: string }
  | { kind: 'map-shared'; pid: number; start: bigint; end: bigint; why: string }
  | { kind: 'unmap-inherited'; pid: number; start: bigint; end: bigint; why: string }
  | { kind: 'pipe-create'; pid: number; read: number; write: number; nonblockRead: boolean; nonblockWrite: boolean; size: number; queued: Buffer; why: string }
  | {
      kind: 'socketpair-create';
      pid: number;
      type: 'stream' | 'dgram';
      fds: readonly [number, number];
      nonblock: [boolean, boolean];
      queued: [Buffer[], Buffer[]];
      why: string;
    }
  | {
      kind: 'memfd-create';
      pid: number;
      fd: number;
      name: string;
      seals: number;
      flags: number;
      pos: number;
      contents: Buffer;
      /** mapped MAP_SHARED in `pid` right after, at these ranges (its children inherit them) */
      maps?: ReadonlyArray<{ start: bigint; end: bigint; offset: bigint }>;
      why: string;
    }
  | { kind: 'fifo-open'; pid: number; path: string; fds: readonly number[]; flags: readonly number[]; size: number; queued: Buffer; why: string }
  | { kind: 'file-open'; pid: number; fd: number; path: string; flags: number; pos: number; why: string }
  | { kind: 'fd-dup'; pid: number; from: number; to: number; cloexec: boolean; why: string }
  | { kind: 'fd-close'; pid: number; fd: number; why: string };

/** Why a tree is malformed (checked as hostile input), or undefined. */
export function treeShapeProblem(members: readonly TreeMember[]): { field: string; why: string } | undefined {
  const isPid = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 1 && (n as number) <= 4194304;
  // /proc shows a session or group as 0 when its leader lives in an ancestor pid namespace (a
  // container's runner started the tree): that is "outside", legal for the whole tree but never led by it.
  const isPidOrOutside = (n: unknown): boolean => n === 0 || isPid(n);
  if (members.length === 0) return { field: 'members', why: 'no process' };
  if (members.length > 1024) return { field: 'members', why: `${members.length} processes, limit 1024` };
  const pids = new Set<number>();
  for (const [i, m] of members.entries()) {
    if (!isPid(m.pid)) return { field: `members[${i}].pid`, why: `${m.pid} is not a pid` };
    for (const key of ['pgid', 'sid'] as const)
      if (!isPidOrOutside(m[key])) return { field: `members[${i}].${key}`, why: `${m[key]} is not a pid (or 0: led outside the pid namespace)` };
    if (!Number.isInteger(m.ppid) || m.ppid < 0 || m.ppid > 4194304) return { field: `members[${i}].ppid`, why: `${m.ppid} is not a pid` };
    if (!Number.isInteger(m.exitSignal) || m.exitSignal < 0 || m.exitSignal > 64)
      return { field: `members[${i}].exitSignal`, why: `${m.exitSignal} is no signal` };
    if (pids.has(m.pid)) return { field: `members[${i}].pid`, why: `pid ${m.pid} appears twice` };
    pids.add(m.pid);
  }
  // Parents before children: the root first, then each process after its parent.
  const seen = new Set<number>([members[0]!.pid]);
  for (const [i, m] of members.entries()) {
    if (i === 0) continue;
    if (!seen.has(m.ppid))
      return {
        field: `members[${i}].ppid`,
        why: `pid ${m.pid}'s parent ${m.ppid} is ${pids.has(m.ppid) ? 'listed after it' : 'not in the tree (a process reparented to the agent, whose parent exited: not restorable yet)'}`,
      };
    seen.add(m.pid);
  }
  return undefined;
}

/**
 * The actions that rebuild the tree's processes, parent links, sessions and
 * groups, in order. `members[0]` is the root; its session and group, when
 * they are not its own, stand for whatever started it (on restore, the
 * agent), which every process may share. Throws PlanError naming the process when the kernel's rules leave no way.
 */
export function planTreeSkeleton(members: readonly TreeMember[], shared: readonly SharedAnonymous[] = []): TreeAction[] {
  const problem = treeShapeProblem(members);
  if (problem) throw new PlanError(`process tree: ${problem.field}: ${problem.why}`);
  const root = members[0]!;
  const byPid = new Map(members.map((m) => [m.pid, m]));
  const children = new Map<number, TreeMember[]>();
  for (const m of members.slice(1)) children.set(m.ppid, [...(children.get(m.ppid) ?? []), m]);
  // The session and group the simulated kernel gives each process so far.
  const now = new Map<number, { pgid: number; sid: number }>();
  const actions: TreeAction[] = [];

  // The session or group of whatever spawns the root (on restore, the agent's), when the root's own are not kept:
  // the root's image values stand for "outside" when they are not the root's pid.
  // -1: no image value (0 included, which names a leader outside the pid namespace) is ever equal to it.
  const OUTSIDE = -1;
  const wanted = (m: TreeMember): { pgid: number; sid: number } => ({
    sid: byPid.has(m.sid) || m.sid === root.sid ? m.sid : Number.NaN,
    pgid: byPid.has(m.pgid) || m.pgid === root.pgid ? m.pgid : Number.NaN,
  });
  for (const m of members) {
    const w = wanted(m);
    if (Number.isNaN(w.sid))
      throw new PlanError(`process tree: pid ${m.pid} is in session ${m.sid}, led by no process of the tree and not the root's: it cannot be created again`);
    if (Number.isNaN(w.pgid))
      throw new PlanError(
        `process tree: pid ${m.pid} is in process group ${m.pgid}, led by no process of the tree and not the root's: it cannot be created again`,
      );
    if (m.sid === m.pid && m.pgid !== m.pid)
      throw new PlanError(`process tree: pid ${m.pid} leads session ${m.sid} but is in group ${m.pgid} (a session leader leads its group)`);
  }

  const create = (m: TreeMember, parent: TreeMember | undefined): void => {
    if (!parent) {
      actions.push({ kind: 'spawn-root', pid: m.pid, why: `the root, pid ${m.pid}, spawned by the agent` });
      now.set(m.pid, { pgid: m.pgid === m.pid ? OUTSIDE : root.pgid, sid: m.sid === m.pid ? OUTSIDE : root.sid });
    } else {
      actions.push({
        kind: 'clone',
        parent: parent.pid,
        pid: m.pid,
        exitSignal: m.exitSignal,
        why: `pid ${m.pid}, child of ${parent.pid}: clone3 in its parent with set_tid`,
      });
      now.set(m.pid, { ...now.get(parent.pid)! });
    }
    // Before its children exist: they inherit the session.
    if (m.sid === m.pid) {
      actions.push({
        kind: 'setsid',
        pid: m.pid,
        why: `setsid: pid ${m.pid} leads session ${m.sid}${children.has(m.pid) ? ', before its children are created (they inherit it)' : ''}`,
      });
      now.set(m.pid, { pgid: m.pid, sid: m.pid });
    }
    // Its shared objects before its children exist: they inherit them, and so share them.
    for (const o of shared.filter((x) => x.creator === m.pid)) {
      actions.push({
        kind: 'map-shared',
        pid: m.pid,
        start: o.start,
        end: o.end,
        why: `map ${o.start.toString(16)}-${o.end.toString(16)} shared anonymous in pid ${m.pid}, before its children are created: one object for ${o.holders.join(' ')} (shmem inode ${o.inode} at checkpoint)`,
      });
    }
    for (const c of children.get(m.pid) ?? []) create(c, m);
  };
  create(root, undefined);

  // Group leaders, then members: a group exists once one process of the session is in it.
  const leaders = members.filter((m) => m.pgid === m.pid && m.sid !== m.pid);
  for (const m of leaders) {
    actions.push({ kind: 'setpgid', pid: m.pid, pgid: m.pid, why: `setpgid(0, 0): pid ${m.pid} leads process group ${m.pid}` });
    now.set(m.pid, { pgid: m.pid, sid: now.get(m.pid)!.sid });
  }
  for (const m of members) {
    const state = now.get(m.pid)!;
    if (state.pgid === m.pgid || m.pgid === m.pid) continue;
    const exists = [...now.values()].some((s) => s.pgid === m.pgid && s.sid === state.sid);
    if (!exists)
      throw new PlanError(
        `process tree: pid ${m.pid} is in process group ${m.pgid}, which has no member in its session once the tree is built: setpgid would fail`,
      );
    actions.push({ kind: 'setpgid', pid: m.pid, pgid: m.pgid, why: `setpgid(0, ${m.pgid}): pid ${m.pid} joins process group ${m.pgid}` });
    now.set(m.pid, { pgid: m.pgid, sid: state.sid });
  }

  // A descendant of a creator that did not hold the object inherited it all the same.
  for (const o of shared) {
    for (const m of members) {
      if (m.pid === o.creator || o.holders.includes(m.pid) || !isAncestor(members, o.creator, m.pid)) continue;
      actions.push({
        kind: 'unmap-inherited',
        pid: m.pid,
        start: o.start,
        end: o.end,
        why: `unmap ${o.start.toString(16)}-${o.end.toString(16)} in pid ${m.pid}: inherited from ${o.creator}, not held at checkpoint`,
      });
    }
  }

  // What the simulation arrived at must be the image's, process by process.
  for (const m of members) {
    const { sid, pgid } = now.get(m.pid)!;
    if (sid !== m.sid)
      throw new PlanError(
        `process tree: pid ${m.pid} would be in session ${sid}, the image says ${m.sid} (a session is inherited from the parent or created by setsid)`,
      );
    if (pgid !== m.pgid) throw new PlanError(`process tree: pid ${m.pid} would be in process group ${pgid}, the image says ${m.pgid}`);
  }
  return actions;
}

/** Members in creation order: each after its parent, children by ascending pid (depth first). */
export function creationOrder<M extends TreeMember>(root: M, others: readonly M[]): M[] {
  const children = new Map<number, M[]>();
  for (const m of [...others].sort((a, b) => a.pid - b.pid)) children.set(m.ppid, [...(children.get(m.ppid) ?? []), m]);
  const order: M[] = [];
  const visit = (m: M): void => {
    order.push(m);
    for (const c of children.get(m.pid) ?? []) visit(c);
  };
  visit(root);
  return order;
}

/**
 * One shared anonymous memory object (MAP_SHARED | MAP_ANONYMOUS) that
 * several processes of the tree map: one shmem inode in every holder's
 * maps, at the same range (inherited across fork). Restored as one object:
 * `creator` (a holder that is an ancestor of every other holder) maps it
 * before its children are created, so they inherit it; a descendant of the
 * creator that does not hold it unmaps it again.
 */
export interface SharedAnonymous {
  inode: number;
  start: bigint;
  end: bigint;
  holders: number[];
  creator: number;
}

/** Where a process's shared anonymous regions are, with their shmem inode (from the image's maps). */
function sharedAnonymousRegions(image: CheckpointImage): Array<{ start: bigint; end: bigint; inode: number }> {
  const maps = parseMaps(image.maps);
  // A memfd's mapping is the memfd's (tree-memfds.ts), not an anonymous object.
  return image.regions
    .filter((r) => r.file === null && r.perms[3] === 's' && !r.name.startsWith('/memfd:'))
    .map((r) => ({ start: r.start, end: r.end, inode: maps.find((m) => m.start === r.start)?.inode ?? 0 }));
}

/** Whether `ancestor` is `pid` or one of its ancestors in the tree. */
export function isAncestor(members: readonly TreeMember[], ancestor: number, pid: number): boolean {
  const parent = new Map(members.map((m) => [m.pid, m.ppid]));
  for (let p: number | undefined = pid; p !== undefined; p = parent.get(p)) if (p === ancestor) return true;
  return false;
}

/** The one of `holders` that is an ancestor of all of them (where an object they share is created once and inherited), or undefined. */
export function holdingAncestor(members: readonly TreeMember[], holders: readonly number[]): number | undefined {
  return holders.find((c) => holders.every((p) => isAncestor(members, c, p)));
}

/**
 * The shared anonymous objects held by more than one process. Throws
 * PlanError naming the object when it cannot be one object after a restore
 * (held at different ranges, or by no common ancestor among its holders):
 * giving each process a private copy instead would be silent divergence.
 */
export function sharedAnonymousObjects(tree: ProcessTree): SharedAnonymous[] {
  const byInode = new Map<number, Array<{ pid: number; start: bigint; end: bigint }>>();
  for (const m of tree.members) {
    for (const r of sharedAnonymousRegions(m.image)) {
      if (r.inode === 0) continue;
      byInode.set(r.inode, [...(byInode.get(r.inode) ?? []), { pid: m.pid, start: r.start, end: r.end }]);
    }
  }
  const objects: SharedAnonymous[] = [];
  for (const [inode, held] of byInode) {
    const pids = [...new Set(held.map((h) => h.pid))];
    if (pids.length < 2) continue;
    const where = held.map((h) => `pid ${h.pid} at ${h.start.toString(16)}-${h.end.toString(16)}`).join(', ');
    if (held.length !== pids.length || held.some((h) => h.start !== held[0]!.start || h.end !== held[0]!.end)) {
      throw new PlanError(
        `shared anonymous memory (shmem inode ${inode}) is mapped at different ranges (${where}): only an object every holder maps whole at one range (inherited across fork) is restored as one object`,
      );
    }
    const creator = holdingAncestor(tree.members, pids);
    if (creator === undefined)
      throw new PlanError(
        `shared anonymous memory (shmem inode ${inode}) is held by ${where}, none an ancestor of the others: it cannot be created once and inherited`,
      );
    objects.push({ inode, start: held[0]!.start, end: held[0]!.end, holders: pids, creator });
  }
  return objects;
}
