/**
 * FIFOs (named pipes, opened by path) held by the processes of a tree, with
 * the bytes queued in them.
 *
 * Checkpoint: every descriptor whose path names a FIFO (an fstat injected
 * into its process), grouped by the FIFO's device and inode, and within one
 * FIFO by open file description (kcmp): each description's access mode and
 * status flags and its descriptors; the FIFO's buffer size and its queued
 * bytes, copied without consuming them through a read end (tree-pipes.ts
 * readQueued: tee into a temporary pipe). The descriptors leave each
 * process's own files (which would open the path once per process, and
 * block).
 *
 * Restore: before anything is opened the path must still name a FIFO (a
 * stat in the root's stub). In the holder that is an ancestor of every
 * other holder, before its children are cloned: the FIFO opened read-write
 * and non-blocking (a helper: it never blocks, and is the reader that lets
 * a write-only open succeed), each description opened again with its
 * access mode (non-blocking, then its own status flags set), parked; the
 * queued bytes written back through the helper, which is closed. The
 * shared-object planner (tree-shared-objects.ts) dup3s each description
 * into its holders.
 *
 * Refused by name: a FIFO with no read end in the tree (its reader is
 * outside: the restored writers would have none); more than
 * MAX_QUEUED_BYTES queued; at restore, a path that no longer names a FIFO.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError } from '../errors.ts';
import { O, parseFdinfo } from './files.ts';
import { PlanError } from './plan-step.ts';
import { withScratchPage } from './scratch.ts';
import { parseStat, STAT_BYTES, type StatIdentity } from './tree-files.ts';
import { MAX_QUEUED_BYTES, readQueued } from './tree-pipes.ts';
import { endProblem, endsListProblem, type FieldProblem, type SharedObject } from './tree-shared-objects.ts';
import type { FifoDescription, FileEnd, TreeFifo } from './tree.ts';
import { readFdTable } from './fd-table.ts';

export type { FifoDescription, TreeFifo };

const NR = { fstat: 5, kcmp: 312 } as const;
const KCMP_FILE = 0n;
const S_IFMT = 0o170000;
const S_IFIFO = 0o010000;
/** What a FIFO description keeps of fdinfo's flags: the access mode and the status flags F_SETFL sets. */
export const FIFO_FLAGS = 3 | O.NONBLOCK | O.APPEND;
const MODE = ['read-only', 'write-only', 'read-write'] as const;

function failed(result: bigint): boolean {
  return result < 0n && result > -4096n;
}

/** A descriptor as the FIFO capture sees it. */
interface HeldFifo extends FileEnd {
  path: string;
  flags: number;
  key: string;
}

/** The descriptors of `pid` from 3 up whose path names a FIFO (an fstat injected for each path). */
async function fifoDescriptors(agent: AgentClient, pid: number): Promise<HeldFifo[]> {
  const byPath: Array<{ fd: number; path: string }> = [];
  for (const { fd, link: path } of (await readFdTable(agent, pid)).filter((d) => d.fd >= 3)) {
    if (path.startsWith('/') && !path.endsWith(' (deleted)') && !/^\/(dev|proc|sys)\//.test(path)) byPath.push({ fd, path });
  }
  if (byPath.length === 0) return [];
  const held: HeldFifo[] = [];
  await withScratchPage(agent, pid, async (scratch) => {
    for (const { fd, path } of byPath) {
      const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.fstat, args: [BigInt(fd), scratch] });
      if (failed(r)) throw new AgentError(`fstat(${fd}) in pid ${pid}: errno ${-r}`, 'INJECT_SYSCALL', Number(-r));
      const st = parseStat(await agent.call({ op: 'READ_MEM', pid, address: scratch, length: STAT_BYTES }));
      if ((st.mode & S_IFMT) !== S_IFIFO) continue;
      const { flags } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 65536 })).toString('utf8'));
      held.push({ pid, fd, cloexec: (flags & O.CLOEXEC) !== 0, path, flags, key: `${st.dev}:${st.ino}` });
    }
  });
  return held;
}

/** Every FIFO the processes `pids` hold (all stopped), each with its descriptions and queued bytes. */
export async function captureFifos(agent: AgentClient, pids: readonly number[]): Promise<TreeFifo[]> {
  const byFifo = new Map<string, HeldFifo[]>();
  for (const pid of pids) for (const h of await fifoDescriptors(agent, pid)) byFifo.set(h.key, [...(byFifo.get(h.key) ?? []), h]);
  const fifos: TreeFifo[] = [];
  for (const held of byFifo.values()) {
    const path = held[0]!.path;
    const descriptions: Array<{ first: HeldFifo; ends: HeldFifo[] }> = [];
    for (const h of held) {
      let found: (typeof descriptions)[number] | undefined;
      for (const d of descriptions) {
        const same = await agent.call({
          op: 'INJECT_SYSCALL',
          pid: d.first.pid,
          nr: NR.kcmp,
          args: [BigInt(d.first.pid), BigInt(h.pid), KCMP_FILE, BigInt(d.first.fd), BigInt(h.fd)],
        });
        if (failed(same))
          throw new AgentError(
            `kcmp(KCMP_FILE) of pid ${d.first.pid} fd ${d.first.fd} and pid ${h.pid} fd ${h.fd}: errno ${-same}`,
            'INJECT_SYSCALL',
            Number(-same),
          );
        if (same === 0n) {
          found = d;
          break;
        }
      }
      if (found) found.ends.push(h);
      else descriptions.push({ first: h, ends: [h] });
    }
    const reader = descriptions.find((d) => (d.first.flags & 3) !== O.WRONLY);
    if (!reader)
      throw new CheckpointError(
        `fifo ${path} (${held.map((h) => `pid ${h.pid} fd ${h.fd}`).join(', ')}): no read end in the tree: its reader is outside, which a restore cannot give back`,
        { state: 'fifo', target: path },
      );
    const { size, queued } = await readQueued(agent, `fifo ${path}`, reader.first);
    fifos.push({
      path,
      size,
      queued,
      descriptions: descriptions.map((d) => ({ flags: d.first.flags & FIFO_FLAGS, ends: d.ends.map((e) => ({ pid: e.pid, fd: e.fd, cloexec: e.cloexec })) })),
    });
  }
  return fifos;
}

/** A FIFO as the shared-object planner places it: one parked descriptor per description, created with its queued bytes. Pure. */
export function fifoObject(fifo: TreeFifo): SharedObject {
  const name = `fifo ${fifo.path}`;
  const describe = (d: FifoDescription, i: number): string => `${MODE[d.flags & 3] ?? '?'} description ${i} of ${name}`;
  return {
    name,
    slots: fifo.descriptions.map(describe),
    ends: fifo.descriptions.flatMap((d, i) => d.ends.map((e) => ({ ...e, slot: i, what: describe(d, i) }))),
    create: (pid, fds) => ({
      kind: 'fifo-open',
      pid,
      path: fifo.path,
      fds,
      flags: fifo.descriptions.map((d) => d.flags),
      size: fifo.size,
      queued: fifo.queued,
      why: `${name} opened in pid ${pid} (held by ${[...new Set(fifo.descriptions.flatMap((d) => d.ends.map((e) => e.pid)))].join(' ')}): ${fifo.descriptions.length} description(s) parked at fds ${fds.join(' ')}, ${fifo.queued.length} queued bytes written back`,
    }),
  };
}

/** Refuses (PlanError naming the field) a FIFO whose path no longer names a FIFO: what `stat` says of each path now (undefined: ENOENT). Pure. */
export function fifoPathProblem(fifos: readonly TreeFifo[], now: readonly (StatIdentity | undefined)[]): PlanError | undefined {
  for (const [i, f] of fifos.entries()) {
    const s = now[i];
    if (!s) return new PlanError(`fifos[${i}] (${f.path}): no longer exists: the FIFO cannot be opened again`);
    if ((s.mode & S_IFMT) !== S_IFIFO)
      return new PlanError(
        `fifos[${i}] (${f.path}): no longer names a FIFO (mode 0o${s.mode.toString(8)}): opened again, it would not be the FIFO the processes held`,
      );
  }
  return undefined;
}

/** Why a fifos list from tree.json is malformed, or undefined; `used` collects every descriptor of the tree's objects. */
export function fifosProblem(fifos: readonly TreeFifo[], pids: ReadonlySet<number>, used = new Set<string>()): FieldProblem | undefined {
  for (const [i, f] of fifos.entries()) {
    const at = `fifos[${i}]`;
    if (typeof f.path !== 'string' || !/^\/[^\0]{0,4094}$/.test(f.path) || f.path.split('/').includes('..') || /^\/(dev|proc|sys)\//.test(f.path))
      return { field: `${at}.path`, why: `${JSON.stringify(f.path)?.slice(0, 60)} is not an absolute path without "..", outside /dev, /proc and /sys` };
    if (!Number.isInteger(f.size) || f.size < 4096 || f.size > 1 << 20 || (f.size & (f.size - 1)) !== 0)
      return { field: `${at}.size`, why: `${f.size} is no pipe size (a power of two, 4 KiB-1 MiB)` };
    if (f.queued.length > MAX_QUEUED_BYTES || f.queued.length > f.size)
      return { field: `${at}.queued`, why: `${f.queued.length} bytes, more than ${Math.min(MAX_QUEUED_BYTES, f.size)}` };
    if (!Array.isArray(f.descriptions) || f.descriptions.length === 0 || f.descriptions.length > 64)
      return { field: `${at}.descriptions`, why: 'no description, or more than 64' };
    for (const [k, d] of f.descriptions.entries()) {
      const dat = `${at}.descriptions[${k}]`;
      if (!Number.isInteger(d.flags) || d.flags < 0 || (d.flags & ~FIFO_FLAGS) !== 0 || (d.flags & 3) === 3)
        return { field: `${dat}.flags`, why: `0o${Number(d.flags).toString(8)}: an access mode with O_NONBLOCK and O_APPEND only` };
      const list = endsListProblem(d.ends, `${dat}.ends`);
      if (list) return list;
      for (const [j, e] of d.ends.entries()) {
        const problem = endProblem(e, `${dat}.ends[${j}]`, pids, used);
        if (problem) return problem;
      }
    }
    if (!f.descriptions.some((d) => (d.flags & 3) !== O.WRONLY)) return { field: `${at}.descriptions`, why: 'no read end' };
  }
  return undefined;
}
