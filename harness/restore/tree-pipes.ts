/**
 * Pipes between the processes of a tree, with the bytes queued in them.
 *
 * Checkpoint: every pipe descriptor of every process, grouped by the pipe's
 * inode (/proc/PID/fd/N reads pipe:[inode]); each descriptor's end (the
 * access mode), close-on-exec flag and O_NONBLOCK (fdinfo); the pipe's
 * buffer size (F_GETPIPE_SZ) and its queued bytes, copied without consuming
 * them: tee(2) from a read end into a temporary pipe of the holder, read
 * from there (FIONREAD says how many).
 *
 * Restore: the pipe is created once, in the holder that is an ancestor of
 * every other holder (its creator), right after that process exists and
 * before its children are cloned, so they inherit it; it gets its size, its
 * O_NONBLOCK flags and its queued bytes (written into the fresh pipe), and
 * its ends are parked at descriptors above every descriptor of the tree.
 * Once every process exists, each dup3s the ends it held to its own numbers
 * (close-on-exec as it was) and closes the parked ones; a process that held
 * none just closes them.
 * (tree-shared-objects.ts places it, as every object shared through
 * descriptors: pipeObject describes it.)
 *
 * Limits, refused by name: a pipe held by no ancestor of all its holders;
 * more than MAX_QUEUED_BYTES queued; one end reached through descriptions
 * with different O_NONBLOCK (the ends of a description cannot be told
 * apart from /proc). A pipe whose other end is held outside the tree cannot
 * be told from one whose other end was closed: it is restored as closed.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError } from '../errors.ts';
import { parseFdinfo, O } from './files.ts';
import { withScratchPage } from './scratch.ts';
import { creatorOf, endProblem, endsListProblem, withSharedObjects, type FieldProblem, type SharedObject } from './tree-shared-objects.ts';
import type { PipeEnd, TreeAction, TreeMember, TreePipe } from './tree.ts';
import { readFdTable } from './fd-table.ts';

export type { PipeEnd, TreePipe };

/** Queued bytes a pipe may hold in an image: they are written back from the stub's stack. */
export const MAX_QUEUED_BYTES = 32 * 1024;
export const DEFAULT_PIPE_BYTES = 65536;

const NR = { read: 0, close: 3, ioctl: 16, fcntl: 72, tee: 276, pipe2: 293 } as const;
const F_GETPIPE_SZ = 1032n;
const FIONREAD = 0x541bn;
const SPLICE_F_NONBLOCK = 2n;
const O_NONBLOCK = BigInt(O.NONBLOCK);
const O_CLOEXEC = BigInt(O.CLOEXEC);
const PIPE_LINK = /^pipe:\[(\d+)\]$/;

function failed(result: bigint): boolean {
  return result < 0n && result > -4096n;
}

/** Every pipe the processes `pids` hold (all stopped), with its queued bytes. */
export async function capturePipes(agent: AgentClient, pids: readonly number[]): Promise<TreePipe[]> {
  const byInode = new Map<number, { ends: PipeEnd[]; nonblock: { read: Set<boolean>; write: Set<boolean> } }>();
  for (const pid of pids) {
    for (const { fd, link } of await readFdTable(agent, pid)) {
      const inode = Number(PIPE_LINK.exec(link)?.[1] ?? 0);
      if (!inode) continue;
      const { flags } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 65536 })).toString('utf8'));
      const write = (flags & 3) === O.WRONLY;
      const pipe = byInode.get(inode) ?? { ends: [], nonblock: { read: new Set<boolean>(), write: new Set<boolean>() } };
      pipe.ends.push({ pid, fd, write, cloexec: (flags & O.CLOEXEC) !== 0 });
      pipe.nonblock[write ? 'write' : 'read'].add((flags & O.NONBLOCK) !== 0);
      byInode.set(inode, pipe);
    }
  }
  const pipes: TreePipe[] = [];
  for (const [inode, p] of byInode) {
    for (const side of ['read', 'write'] as const) {
      if (p.nonblock[side].size > 1)
        throw new CheckpointError(
          `pipe:[${inode}]: its ${side} end is open with and without O_NONBLOCK (two open file descriptions, which a restore cannot tell apart)`,
          { state: 'pipe', target: `pipe:[${inode}]` },
        );
    }
    const reader = p.ends.find((e) => !e.write);
    const { size, queued } = reader ? await readQueued(agent, `pipe:[${inode}]`, reader) : { size: await pipeSize(agent, p.ends[0]!), queued: Buffer.alloc(0) };
    pipes.push({ inode, ends: p.ends, nonblockRead: p.nonblock.read.has(true), nonblockWrite: p.nonblock.write.has(true), size, queued });
  }
  return pipes;
}

export async function pipeSize(agent: AgentClient, end: { pid: number; fd: number }): Promise<number> {
  const size = await agent.call({ op: 'INJECT_SYSCALL', pid: end.pid, nr: NR.fcntl, args: [BigInt(end.fd), F_GETPIPE_SZ] });
  if (failed(size)) throw new AgentError(`fcntl(F_GETPIPE_SZ) on fd ${end.fd} of pid ${end.pid}: errno ${-size}`, 'INJECT_SYSCALL', Number(-size));
  return Number(size);
}

/** The pipe's (or FIFO's: `what` names it) size and queued bytes, through a read end, without consuming them (tee into a temporary pipe). */
export async function readQueued(agent: AgentClient, what: string, reader: { pid: number; fd: number }): Promise<{ size: number; queued: Buffer }> {
  const { pid, fd } = reader;
  const size = await pipeSize(agent, reader);
  const queued = await withScratchPage(
    agent,
    pid,
    async (scratch) => {
      const call = async (nr: number, args: bigint[], action: string): Promise<bigint> => {
        const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr, args });
        if (failed(r)) throw new AgentError(`${action} in pid ${pid} (reading ${what}): errno ${-r}`, 'INJECT_SYSCALL', Number(-r));
        return r;
      };
      await call(NR.ioctl, [BigInt(fd), FIONREAD, scratch], `ioctl(${fd}, FIONREAD)`);
      const count = (await agent.call({ op: 'READ_MEM', pid, address: scratch, length: 4 })).readInt32LE(0);
      if (count === 0) return Buffer.alloc(0);
      if (count > MAX_QUEUED_BYTES)
        throw new CheckpointError(`${what} holds ${count} queued bytes, more than the ${MAX_QUEUED_BYTES} an image holds`, {
          state: 'pipe',
          target: what,
        });
      await call(NR.pipe2, [scratch, O_CLOEXEC | O_NONBLOCK], 'pipe2 (a temporary pipe)');
      const fds = await agent.call({ op: 'READ_MEM', pid, address: scratch, length: 8 });
      const [tmpRead, tmpWrite] = [BigInt(fds.readInt32LE(0)), BigInt(fds.readInt32LE(4))];
      try {
        const teed = await call(NR.tee, [BigInt(fd), tmpWrite, BigInt(count), SPLICE_F_NONBLOCK], `tee(${fd})`);
        const got = await call(NR.read, [tmpRead, scratch + 4096n, teed], 'read (the temporary pipe)');
        if (got !== BigInt(count)) throw new CheckpointError(`${what}: FIONREAD said ${count} bytes, tee and read gave ${got}`, { state: 'pipe' });
        return await agent.call({ op: 'READ_MEM', pid, address: scratch + 4096n, length: count });
      } finally {
        await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.close, args: [tmpRead] });
        await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.close, args: [tmpWrite] });
      }
    },
    4096 + MAX_QUEUED_BYTES,
  );
  return { size, queued };
}

/** A pipe as the shared-object planner places it: two parked ends, created with its size, flags and queued bytes. Pure. */
export function pipeObject(pipe: TreePipe): SharedObject {
  const name = `pipe:[${pipe.inode}]`;
  const holders = [...new Set(pipe.ends.map((e) => e.pid))].join(' ');
  return {
    name,
    slots: [`read end of ${name}`, `write end of ${name}`],
    ends: pipe.ends.map((e) => ({ ...e, slot: e.write ? 1 : 0, what: `the ${e.write ? 'write' : 'read'} end of ${name}` })),
    create: (pid, [read, write]) => ({
      kind: 'pipe-create',
      pid,
      read: read!,
      write: write!,
      nonblockRead: pipe.nonblockRead,
      nonblockWrite: pipe.nonblockWrite,
      size: pipe.size,
      queued: pipe.queued,
      why: `${name} created in pid ${pid} (held by ${holders}), parked at fds ${read} and ${write}, ${pipe.queued.length} queued bytes written back`,
    }),
  };
}

/** The holder of a pipe that is an ancestor of all its holders; PlanError when none is. */
export function pipeCreator(members: readonly TreeMember[], pipe: TreePipe): number {
  return creatorOf(members, pipeObject(pipe));
}

/** The skeleton with the pipes in it (tree-shared-objects.ts withSharedObjects). Pure. */
export function withPipes(actions: readonly TreeAction[], members: readonly TreeMember[], pipes: readonly TreePipe[], base: number): TreeAction[] {
  return withSharedObjects(actions, members, pipes.map(pipeObject), base);
}

/** Why a pipes list from tree.json is malformed, or undefined; `used` collects every descriptor of the tree's objects. */
export function pipesProblem(pipes: readonly TreePipe[], pids: ReadonlySet<number>, used = new Set<string>()): FieldProblem | undefined {
  for (const [i, p] of pipes.entries()) {
    if (!Number.isInteger(p.inode) || p.inode < 1) return { field: `pipes[${i}].inode`, why: `${p.inode} is no inode` };
    if (!Number.isInteger(p.size) || p.size < 4096 || p.size > 1 << 20 || (p.size & (p.size - 1)) !== 0)
      return { field: `pipes[${i}].size`, why: `${p.size} is no pipe size (a power of two, 4 KiB-1 MiB)` };
    if (p.queued.length > MAX_QUEUED_BYTES || p.queued.length > p.size)
      return { field: `pipes[${i}].queued`, why: `${p.queued.length} bytes, more than ${Math.min(MAX_QUEUED_BYTES, p.size)}` };
    const list = endsListProblem(p.ends, `pipes[${i}].ends`);
    if (list) return list;
    for (const [j, e] of p.ends.entries()) {
      const at = `pipes[${i}].ends[${j}]`;
      if (typeof e.write !== 'boolean') return { field: `${at}.write`, why: 'must be a boolean' };
      const problem = endProblem(e, at, pids, used);
      if (problem) return problem;
    }
  }
  return undefined;
}
