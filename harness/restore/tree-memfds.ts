/**
 * Memfds held as descriptors by several processes of a tree (one open file
 * description inherited across fork), restored as one memfd object.
 *
 * Checkpoint: every descriptor whose link is /memfd:NAME (deleted), grouped
 * by the memfd's inode (fdinfo ino:); its name, its contents and size, read
 * by the agent through /proc/PID/fd/N (a new description of its own: the
 * processes' offsets are not moved), its seals (F_GET_SEALS, injected into a
 * holder), and the one description's status flags and offset (fdinfo).
 * That all descriptors of one memfd are one description is asked of the
 * kernel (kcmp KCMP_FILE), as shared-descriptions.ts does.
 *
 * Restore: the memfd is created once (memfd_create, MFD_ALLOW_SEALING) in
 * the holder that is an ancestor of every other holder, right after that
 * process exists and before its children are cloned, so they inherit it;
 * its contents written back (pwrite from the stub's stack, a chunk at a
 * time), its size set (ftruncate), its seals added (F_ADD_SEALS: a memfd
 * made without MFD_ALLOW_SEALING has F_SEAL_SEAL, added last), its status
 * flags and offset set; parked above every descriptor of the tree, then
 * dup3'ed to each holder's numbers (tree-pipes.ts withPipes does the same
 * for pipes).
 *
 * Refused by name: a memfd more than MAX_MEMFD_BYTES long; one reached
 * through several open file descriptions (opened again through /proc: two
 * offsets a restore would merge), or not read-write; one held by no
 * ancestor of all its holders; a kernel whose fdinfo shows no inode. A
 * memfd mapped MAP_SHARED stays refused (checkpoint.ts: a mapping of a
 * deleted file).
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError } from '../errors.ts';
import { O, parseFdinfo } from './files.ts';
import { creatorOf, endProblem, endsListProblem, withSharedObjects, type FieldProblem, type SharedObject } from './tree-shared-objects.ts';
import type { MemfdEnd, TreeAction, TreeMember, TreeMemfd } from './tree.ts';

export type { MemfdEnd, TreeMemfd };

/** Bytes a memfd may hold in an image (tree.json holds them, base64, and is at most 1 MiB). */
export const MAX_MEMFD_BYTES = 256 * 1024;
/** memfd_create's limit on a name (MFD_NAME_MAX_LEN). */
export const MAX_MEMFD_NAME = 249;
/** F_SEAL_SEAL | SHRINK | GROW | WRITE | FUTURE_WRITE | EXEC */
export const KNOWN_SEALS = 0x3f;

const NR = { fcntl: 72, kcmp: 312 } as const;
const F_GET_SEALS = 1034n;
const KCMP_FILE = 0n;
const MEMFD_LINK = /^\/memfd:(.*) \(deleted\)$/;
/** Status flags a memfd's description keeps besides its access mode (F_SETFL sets them). */
const SETTABLE = O.APPEND | O.NONBLOCK;

function failed(result: bigint): boolean {
  return result < 0n && result > -4096n;
}

/** The name in a memfd's link (/memfd:NAME (deleted)), or undefined for any other link. Pure. */
export function memfdName(link: string): string | undefined {
  return MEMFD_LINK.exec(link)?.[1];
}

/** The inode fdinfo shows (the ino: line, Linux 5.14 on), or undefined. Pure. */
export function fdinfoInode(fdinfo: string): number | undefined {
  const m = /^ino:\s*(\d+)$/m.exec(fdinfo);
  return m ? Number(m[1]) : undefined;
}

/** Every memfd descriptor the processes `pids` hold (all stopped), each memfd once with its contents and seals. */
export async function captureMemfds(agent: AgentClient, pids: readonly number[]): Promise<TreeMemfd[]> {
  const byInode = new Map<number, { name: string; flags: number; pos: number; ends: MemfdEnd[] }>();
  for (const pid of pids) {
    for (const fd of (await agent.call({ op: 'LISTDIR', path: `/proc/${pid}/fd` })).map(Number).sort((a, b) => a - b)) {
      const link = await agent.call({ op: 'READLINK', path: `/proc/${pid}/fd/${fd}` });
      const name = memfdName(link);
      if (name === undefined) continue;
      const fdinfo = (await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 65536 })).toString('utf8');
      const inode = fdinfoInode(fdinfo);
      if (inode === undefined)
        throw new CheckpointError(`pid ${pid} fd ${fd} (${link}): fdinfo shows no inode (a kernel before 5.14), which telling memfds apart needs`, {
          state: 'memfd',
          target: link,
        });
      const { flags, pos } = parseFdinfo(fdinfo);
      const memfd = byInode.get(inode) ?? { name, flags, pos: Number(pos), ends: [] as MemfdEnd[] };
      memfd.ends.push({ pid, fd, cloexec: (flags & O.CLOEXEC) !== 0 });
      byInode.set(inode, memfd);
    }
  }
  const memfds: TreeMemfd[] = [];
  for (const [inode, m] of byInode) {
    const first = m.ends[0]!;
    const where = m.ends.map((e) => `pid ${e.pid} fd ${e.fd}`).join(', ');
    const refuse = (why: string): never => {
      throw new CheckpointError(`memfd:${m.name} (inode ${inode}; ${where}): ${why}`, { state: 'memfd', target: `memfd:${m.name}` });
    };
    for (const e of m.ends.slice(1)) {
      const same = await agent.call({
        op: 'INJECT_SYSCALL',
        pid: first.pid,
        nr: NR.kcmp,
        args: [BigInt(first.pid), BigInt(e.pid), KCMP_FILE, BigInt(first.fd), BigInt(e.fd)],
      });
      if (failed(same))
        throw new AgentError(`kcmp(KCMP_FILE) of pid ${first.pid} fd ${first.fd} and pid ${e.pid} fd ${e.fd}: errno ${-same}`, 'INJECT_SYSCALL', Number(-same));
      if (same !== 0n)
        refuse(`pid ${e.pid} fd ${e.fd} is another open file description of it (opened again through /proc): two offsets, which a restore would merge`);
    }
    if ((m.flags & 3) !== O.RDWR)
      refuse(`its description is not read-write (flags 0o${m.flags.toString(8)}): opened again through /proc, not as memfd_create made it`);
    const seals = await agent.call({ op: 'INJECT_SYSCALL', pid: first.pid, nr: NR.fcntl, args: [BigInt(first.fd), F_GET_SEALS] });
    if (failed(seals)) throw new AgentError(`fcntl(F_GET_SEALS) on fd ${first.fd} of pid ${first.pid}: errno ${-seals}`, 'INJECT_SYSCALL', Number(-seals));
    if ((Number(seals) & ~KNOWN_SEALS) !== 0) refuse(`seals 0x${seals.toString(16)}, some unknown to the restore`);
    // Read through a description of the agent's own: the processes' offset stays where it is.
    const contents = await agent.call({ op: 'READ_FILE', path: `/proc/${first.pid}/fd/${first.fd}`, maxSize: MAX_MEMFD_BYTES + 1 });
    if (contents.length > MAX_MEMFD_BYTES) refuse(`more than the ${MAX_MEMFD_BYTES} bytes an image holds`);
    if (Buffer.byteLength(m.name) > MAX_MEMFD_NAME) refuse(`a name longer than ${MAX_MEMFD_NAME} bytes`);
    memfds.push({ inode, name: m.name, seals: Number(seals), flags: m.flags & SETTABLE, pos: m.pos, contents, ends: m.ends });
  }
  return memfds;
}

/** A memfd as the shared-object planner places it: one parked descriptor, created with its contents, seals, flags and offset. Pure. */
export function memfdObject(memfd: TreeMemfd): SharedObject {
  const m = memfd;
  return {
    name: `memfd:${m.name} (inode ${m.inode})`,
    slots: [`memfd:${m.name}`],
    ends: m.ends.map((e) => ({ ...e, slot: 0, what: `memfd:${m.name}` })),
    create: (pid, [fd]) => ({
      kind: 'memfd-create',
      pid,
      fd: fd!,
      name: m.name,
      seals: m.seals,
      flags: m.flags,
      pos: m.pos,
      contents: m.contents,
      why: `memfd:${m.name} (inode ${m.inode} at checkpoint) created in pid ${pid} (held by ${[...new Set(m.ends.map((e) => e.pid))].join(' ')}), parked at fd ${fd}: ${m.contents.length} bytes, seals 0x${m.seals.toString(16)}, offset ${m.pos}`,
    }),
  };
}

/** The holder of a memfd that is an ancestor of all its holders; PlanError when none is. */
export function memfdCreator(members: readonly TreeMember[], memfd: TreeMemfd): number {
  return creatorOf(members, memfdObject(memfd));
}

/**
 * One memfd per holding process instead of one for all (omit=mapping-kinds,
 * the control): each gets its own copy, so a write by one is not seen by
 * another. Pure.
 */
export function privateCopies(memfds: readonly TreeMemfd[]): TreeMemfd[] {
  return memfds.flatMap((m) => [...new Set(m.ends.map((e) => e.pid))].map((pid) => ({ ...m, ends: m.ends.filter((e) => e.pid === pid) })));
}

/** The skeleton with the memfds in it (tree-shared-objects.ts withSharedObjects). Pure. */
export function withMemfds(actions: readonly TreeAction[], members: readonly TreeMember[], memfds: readonly TreeMemfd[], base: number): TreeAction[] {
  return withSharedObjects(actions, members, memfds.map(memfdObject), base);
}

/** Why a memfds list from tree.json is malformed, or undefined; `used` collects every descriptor of the tree's objects. */
export function memfdsProblem(memfds: readonly TreeMemfd[], pids: ReadonlySet<number>, used = new Set<string>()): FieldProblem | undefined {
  let total = 0;
  for (const [i, m] of memfds.entries()) {
    const at = `memfds[${i}]`;
    if (!Number.isInteger(m.inode) || m.inode < 1) return { field: `${at}.inode`, why: `${m.inode} is no inode` };
    if (typeof m.name !== 'string' || Buffer.byteLength(m.name) > MAX_MEMFD_NAME || m.name.includes('\0') || m.name.includes('/'))
      return { field: `${at}.name`, why: `not a memfd name (at most ${MAX_MEMFD_NAME} bytes, no NUL, no slash)` };
    if (!Number.isInteger(m.seals) || m.seals < 0 || (m.seals & ~KNOWN_SEALS) !== 0) return { field: `${at}.seals`, why: `${m.seals} is no set of seals` };
    if (!Number.isInteger(m.flags) || (m.flags & ~SETTABLE) !== 0)
      return { field: `${at}.flags`, why: `0o${Number(m.flags).toString(8)}: only O_APPEND and O_NONBLOCK` };
    if (!Number.isSafeInteger(m.pos) || m.pos < 0) return { field: `${at}.pos`, why: `${m.pos} is no offset` };
    total += m.contents.length;
    if (m.contents.length > MAX_MEMFD_BYTES || total > MAX_MEMFD_BYTES)
      return { field: `${at}.contents`, why: `more than the ${MAX_MEMFD_BYTES} bytes an image holds` };
    const list = endsListProblem(m.ends, `${at}.ends`);
    if (list) return list;
    for (const [j, e] of m.ends.entries()) {
      const problem = endProblem(e, `${at}.ends[${j}]`, pids, used);
      if (problem) return problem;
    }
  }
  return undefined;
}
