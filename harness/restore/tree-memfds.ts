/**
 * Memfds held as descriptors by several processes of a tree (one open file
 * description inherited across fork), or mapped MAP_SHARED by them, or
 * both, restored as one memfd object.
 *
 * Checkpoint: every descriptor whose link is /memfd:NAME (deleted), grouped
 * by the memfd's inode (fdinfo ino:); its name, its contents and size, read
 * by the agent through /proc/PID/fd/N (a new description of its own: the
 * processes' offsets are not moved), its seals (F_GET_SEALS, injected into a
 * holder), and the one description's status flags and offset (fdinfo).
 * That all descriptors of one memfd are one description is asked of the
 * kernel (kcmp KCMP_FILE), as shared-descriptions.ts does. Its MAP_SHARED
 * mappings from every process's maps (same inode): range and file offset
 * (a memfd only mapped is read through /proc/PID/map_files, its seals
 * asked through a descriptor opened there in the holder for the call).
 *
 * Restore: the memfd is created once (memfd_create, MFD_ALLOW_SEALING) in
 * the holder that is an ancestor of every other holder, right after that
 * process exists and before its children are cloned, so they inherit it;
 * its contents written back (pwrite from the stub's stack, a chunk at a
 * time), its size set (ftruncate), its seals added (F_ADD_SEALS: a memfd
 * made without MFD_ALLOW_SEALING has F_SEAL_SEAL, added last), its status
 * flags and offset set; parked above every descriptor of the tree, then
 * dup3'ed to each holder's numbers (tree-shared-objects.ts places it, as
 * every object shared through descriptors). Its mappings are made in the
 * creator right after it (MAP_SHARED, at the checkpoint's range and
 * offset), so every descendant inherits the very mapping; one that did
 * not map it unmaps it again right after its clone; each process's own
 * restore finds it in place (inherited, as shared anonymous memory is) and
 * writes its pages and protections.
 *
 * Refused by name: a memfd more than MAX_MEMFD_BYTES long; one reached
 * through several open file descriptions (opened again through /proc: two
 * offsets a restore would merge), or not read-write; one held by no
 * ancestor of all its holders; a kernel whose fdinfo shows no inode;
 * mappings at different ranges in different holders, or in holders but
 * not in the creator (mapped after a fork: not inherited). A memfd mapped
 * by a process checkpointed alone stays refused (checkpoint.ts: a mapping
 * of a deleted file).
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError } from '../errors.ts';
import { O, parseFdinfo } from './files.ts';
import { creatorOf, endProblem, endsListProblem, withSharedObjects, type FieldProblem, type SharedObject } from './tree-shared-objects.ts';
import { isAncestor, type MemfdEnd, type MemfdMapping, type TreeAction, type TreeMember, type TreeMemfd } from './tree.ts';
import { PlanError } from './plan-step.ts';
import { parseMaps } from './proc-maps.ts';
import { withScratchPage } from './scratch.ts';
import { readFdTable } from './fd-table.ts';

export type { MemfdEnd, MemfdMapping, TreeMemfd };

/** Bytes a memfd may hold in an image (tree.json holds them, base64, and is at most 1 MiB). */
export const MAX_MEMFD_BYTES = 256 * 1024;
/** memfd_create's limit on a name (MFD_NAME_MAX_LEN). */
export const MAX_MEMFD_NAME = 249;
/** F_SEAL_SEAL | SHRINK | GROW | WRITE | FUTURE_WRITE | EXEC */
export const KNOWN_SEALS = 0x3f;

const NR = { close: 3, fcntl: 72, openat: 257, kcmp: 312 } as const;
const AT_FDCWD = BigInt.asUintN(64, -100n);
const PAGE = 4096n;
/** The top of x86-64 user space (4-level paging). */
const USER_TOP = 0x7ffffffff000n;
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

/** map_files' name for a mapping (lowercase hex, no 0x). Pure. */
export function mapFilesName(start: bigint, end: bigint): string {
  return `${start.toString(16)}-${end.toString(16)}`;
}

/**
 * Why a memfd's mappings cannot be one object inherited across fork (every
 * process that maps it maps it at the same ranges and offsets), or
 * undefined. Pure.
 */
export function memfdMapsProblem(maps: readonly MemfdMapping[]): string | undefined {
  const byPid = new Map<number, string>();
  for (const m of maps)
    byPid.set(m.pid, [byPid.get(m.pid) ?? '', `${m.start.toString(16)}-${m.end.toString(16)}@${m.offset.toString(16)}`].filter(Boolean).join(' '));
  const shapes = new Set(byPid.values());
  if (shapes.size > 1)
    return `mapped at different ranges (${[...byPid].map(([pid, r]) => `pid ${pid} at ${r}`).join(', ')}): only one every holder maps at one range (inherited across fork) is restored as one object`;
  return undefined;
}

/** F_GET_SEALS of a memfd `pid` only maps: through /proc/self/map_files, opened in it for the time of the call. */
async function sealsOfMapping(agent: AgentClient, pid: number, map: MemfdMapping): Promise<bigint> {
  return withScratchPage(agent, pid, async (scratch) => {
    await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: Buffer.from(`/proc/self/map_files/${mapFilesName(map.start, map.end)}\0`) });
    const fd = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.openat, args: [AT_FDCWD, scratch, BigInt(O.CLOEXEC), 0n] });
    if (failed(fd))
      throw new AgentError(`open /proc/self/map_files/${mapFilesName(map.start, map.end)} in pid ${pid}: errno ${-fd}`, 'INJECT_SYSCALL', Number(-fd));
    try {
      return await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.fcntl, args: [fd, F_GET_SEALS] });
    } finally {
      await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.close, args: [fd] });
    }
  });
}

/** Every memfd the processes `pids` hold (all stopped) as descriptors or MAP_SHARED mappings, each once with its contents and seals. */
export async function captureMemfds(agent: AgentClient, pids: readonly number[]): Promise<TreeMemfd[]> {
  const byInode = new Map<number, { name: string; flags: number; pos: number; ends: MemfdEnd[]; maps: MemfdMapping[] }>();
  for (const pid of pids) {
    for (const { fd, link } of await readFdTable(agent, pid)) {
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
      const memfd = byInode.get(inode) ?? { name, flags, pos: Number(pos), ends: [] as MemfdEnd[], maps: [] as MemfdMapping[] };
      memfd.ends.push({ pid, fd, cloexec: (flags & O.CLOEXEC) !== 0 });
      byInode.set(inode, memfd);
    }
  }
  // Its MAP_SHARED mappings (a private one holds a copy of its own, in the process's image). A memfd only mapped has
  // no description: its offset is 0 and the one a restore makes is read-write, as memfd_create makes it.
  for (const pid of pids) {
    const maps = parseMaps((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: 1 << 20 })).toString('utf8'));
    for (const m of maps) {
      const name = memfdName(m.name);
      if (name === undefined || m.perms[3] !== 's') continue;
      const memfd = byInode.get(m.inode) ?? { name, flags: O.RDWR, pos: 0, ends: [] as MemfdEnd[], maps: [] as MemfdMapping[] };
      memfd.maps.push({ pid, start: m.start, end: m.end, offset: m.offset });
      byInode.set(m.inode, memfd);
    }
  }
  const memfds: TreeMemfd[] = [];
  for (const [inode, m] of byInode) {
    const first = m.ends[0];
    const where = [...m.ends.map((e) => `pid ${e.pid} fd ${e.fd}`), ...m.maps.map((x) => `pid ${x.pid} maps ${mapFilesName(x.start, x.end)}`)].join(', ');
    const refuse = (why: string): never => {
      throw new CheckpointError(`memfd:${m.name} (inode ${inode}; ${where}): ${why}`, { state: 'memfd', target: `memfd:${m.name}` });
    };
    for (const e of m.ends.slice(1)) {
      const same = await agent.call({
        op: 'INJECT_SYSCALL',
        pid: first!.pid,
        nr: NR.kcmp,
        args: [BigInt(first!.pid), BigInt(e.pid), KCMP_FILE, BigInt(first!.fd), BigInt(e.fd)],
      });
      if (failed(same))
        throw new AgentError(
          `kcmp(KCMP_FILE) of pid ${first!.pid} fd ${first!.fd} and pid ${e.pid} fd ${e.fd}: errno ${-same}`,
          'INJECT_SYSCALL',
          Number(-same),
        );
      if (same !== 0n)
        refuse(`pid ${e.pid} fd ${e.fd} is another open file description of it (opened again through /proc): two offsets, which a restore would merge`);
    }
    if ((m.flags & 3) !== O.RDWR)
      refuse(`its description is not read-write (flags 0o${m.flags.toString(8)}): opened again through /proc, not as memfd_create made it`);
    const mapsProblem = memfdMapsProblem(m.maps);
    if (mapsProblem) refuse(mapsProblem);
    const seals = first
      ? await agent.call({ op: 'INJECT_SYSCALL', pid: first.pid, nr: NR.fcntl, args: [BigInt(first.fd), F_GET_SEALS] })
      : await sealsOfMapping(agent, m.maps[0]!.pid, m.maps[0]!);
    if (failed(seals)) throw new AgentError(`fcntl(F_GET_SEALS) on memfd:${m.name} in ${where}: errno ${-seals}`, 'INJECT_SYSCALL', Number(-seals));
    if ((Number(seals) & ~KNOWN_SEALS) !== 0) refuse(`seals 0x${seals.toString(16)}, some unknown to the restore`);
    // Read through a description of the agent's own: the processes' offset stays where it is.
    const through = first ? `/proc/${first.pid}/fd/${first.fd}` : `/proc/${m.maps[0]!.pid}/map_files/${mapFilesName(m.maps[0]!.start, m.maps[0]!.end)}`;
    const contents = await agent.call({ op: 'READ_FILE', path: through, maxSize: MAX_MEMFD_BYTES + 1 });
    if (contents.length > MAX_MEMFD_BYTES) refuse(`more than the ${MAX_MEMFD_BYTES} bytes an image holds`);
    if (Buffer.byteLength(m.name) > MAX_MEMFD_NAME) refuse(`a name longer than ${MAX_MEMFD_NAME} bytes`);
    memfds.push({
      inode,
      name: m.name,
      seals: Number(seals),
      flags: m.flags & SETTABLE,
      pos: m.pos,
      contents,
      ends: m.ends,
      ...(m.maps.length > 0 ? { maps: m.maps } : {}),
    });
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
    holders: (m.maps ?? []).map((x) => x.pid),
    create: (pid, [fd]) => ({
      kind: 'memfd-create',
      pid,
      fd: fd!,
      name: m.name,
      seals: m.seals,
      flags: m.flags,
      pos: m.pos,
      contents: m.contents,
      ...(m.maps?.length ? { maps: creatorMaps(m, pid) } : {}),
      why: `memfd:${m.name} (inode ${m.inode} at checkpoint) created in pid ${pid} (held by ${[...new Set(m.ends.map((e) => e.pid))].join(' ')}), parked at fd ${fd}: ${m.contents.length} bytes, seals 0x${m.seals.toString(16)}, offset ${m.pos}`,
    }),
  };
}

/** The ranges `creator` maps a memfd at, which every other mapping holder inherits; PlanError when it maps none. Pure. */
function creatorMaps(m: TreeMemfd, creator: number): Array<{ start: bigint; end: bigint; offset: bigint }> {
  const own = (m.maps ?? []).filter((x) => x.pid === creator).map(({ start, end, offset }) => ({ start, end, offset }));
  if (own.length === 0)
    throw new PlanError(
      `memfd:${m.name} (inode ${m.inode}) is mapped by ${[...new Set((m.maps ?? []).map((x) => `pid ${x.pid}`))].join(', ')} but not by pid ${creator}, where it is created: its mappings cannot be inherited`,
    );
  return own;
}

/**
 * The memfd mappings a process of the tree inherited without holding them
 * (a descendant of the creator that did not map it), unmapped again once
 * every process exists. Pure.
 */
export function memfdUnmaps(members: readonly TreeMember[], memfds: readonly TreeMemfd[]): TreeAction[] {
  const actions: TreeAction[] = [];
  for (const m of memfds) {
    if (!m.maps?.length) continue;
    const creator = creatorOf(members, memfdObject(m));
    const holders = new Set(m.maps.map((x) => x.pid));
    for (const p of members) {
      if (p.pid === creator || holders.has(p.pid) || !isAncestor(members, creator, p.pid)) continue;
      for (const x of creatorMaps(m, creator))
        actions.push({
          kind: 'unmap-inherited',
          pid: p.pid,
          start: x.start,
          end: x.end,
          why: `unmap ${x.start.toString(16)}-${x.end.toString(16)} in pid ${p.pid}: memfd:${m.name} inherited from ${creator}, not mapped at checkpoint`,
        });
    }
  }
  return actions;
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
  return memfds.flatMap((m) =>
    [...new Set([...m.ends.map((e) => e.pid), ...(m.maps ?? []).map((x) => x.pid)])].map((pid) => {
      const maps = (m.maps ?? []).filter((x) => x.pid === pid);
      return { ...m, ends: m.ends.filter((e) => e.pid === pid), ...(maps.length > 0 ? { maps } : { maps: undefined }) };
    }),
  );
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
    const maps = m.maps ?? [];
    // Held as descriptors, mapped, or both: never neither.
    const list = maps.length > 0 && Array.isArray(m.ends) && m.ends.length === 0 ? undefined : endsListProblem(m.ends, `${at}.ends`);
    if (list) return list;
    for (const [j, e] of m.ends.entries()) {
      const problem = endProblem(e, `${at}.ends[${j}]`, pids, used);
      if (problem) return problem;
    }
    if (!Array.isArray(maps) || maps.length > 4096) return { field: `${at}.maps`, why: 'not a list of mappings, or too many' };
    const size = BigInt(m.contents.length);
    for (const [j, x] of maps.entries()) {
      const mat = `${at}.maps[${j}]`;
      if (!pids.has(x.pid)) return { field: `${mat}.pid`, why: `${String(x.pid).slice(0, 20)} is no process of the tree` };
      if (x.start % PAGE !== 0n || x.end % PAGE !== 0n || x.start >= x.end || x.start < PAGE || x.end > USER_TOP)
        return { field: `${mat}.end`, why: `${x.start.toString(16)}-${x.end.toString(16)} is no user range of whole pages` };
      if (x.offset % PAGE !== 0n || x.offset + (x.end - x.start) > ((size + PAGE - 1n) / PAGE) * PAGE)
        return { field: `${mat}.offset`, why: `0x${x.offset.toString(16)}: not page aligned, or the mapping reaches past the memfd's ${size} bytes` };
    }
    const mapsProblem = memfdMapsProblem(maps);
    if (mapsProblem) return { field: `${at}.maps`, why: mapsProblem };
  }
  return undefined;
}
