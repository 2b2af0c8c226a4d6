/**
 * An open file description of a regular file that several processes of a
 * tree share (opened before a fork and inherited): one offset and one set
 * of status flags, so a read or write by one moves the offset the others
 * read and write at.
 *
 * Checkpoint: the descriptors that are one description (kcmp, in
 * shared-descriptions.ts sharedDescriptionGroups) become one object of the
 * tree: the path, the description's access mode and status flags and its
 * offset (fdinfo), each descriptor's close-on-exec, and the file's identity
 * (st_dev, st_ino, st_size from an fstat injected into a holder). The
 * descriptors leave each process's own image (whose files are opened once
 * per process).
 *
 * Restore: opened once, by path (never creating or truncating), in the
 * holder that is an ancestor of every other holder, before its children
 * are cloned; its offset set; parked and dup3'ed into each holder by the
 * shared-object planner (tree-shared-objects.ts). Before anything is
 * opened, the path is stat'ed in the root's stub: a file that no longer
 * exists, or another file at the path (device, inode) or one of another
 * size, is refused naming the object's field.
 *
 * A directory's shared description is left to each holder, as shared-descriptions.ts does for those opened
 * O_DIRECTORY (the kernel's file type decides, not the open flags). Refused by name: any other shared
 * description that is not of a regular file.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError } from '../errors.ts';
import { fileKind, O, O_KNOWN, parseFdinfo } from './files.ts';
import { PlanError } from './plan-step.ts';
import { withScratchPage } from './scratch.ts';
import type { HeldFile } from './shared-descriptions.ts';
import { endProblem, endsListProblem, type FieldProblem, type SharedObject } from './tree-shared-objects.ts';
import type { FileEnd, ProcessTree, TreeSharedFile } from './tree.ts';

export type { FileEnd, TreeSharedFile };

const NR = { fstat: 5, newfstatat: 262 } as const;
const AT_FDCWD = BigInt.asUintN(64, -100n);
/** struct stat (x86-64): st_dev at 0, st_ino at 8, st_mode at 24, st_size at 48; 144 bytes. */
export const STAT_BYTES = 144;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const ENOENT = 2n;
/** Flags a description never keeps after its open (and that would change the file if passed to open again). */
const OPEN_ONLY = O.CREAT | O.EXCL | O.TRUNC | O.NOCTTY;

function failed(result: bigint): boolean {
  return result < 0n && result > -4096n;
}

/** A file's identity and kind, as struct stat gives them. */
export interface StatIdentity {
  dev: number;
  ino: number;
  mode: number;
  size: number;
}

/** A file's identity and kind, from struct stat. Pure. */
export function parseStat(stat: Buffer): StatIdentity {
  return { dev: Number(stat.readBigUInt64LE(0)), ino: Number(stat.readBigUInt64LE(8)), mode: stat.readUInt32LE(24), size: Number(stat.readBigInt64LE(48)) };
}

/** struct stat of `fd` in the stopped process `pid` (an fstat injected into it). */
async function fstatIn(agent: AgentClient, pid: number, fd: number): Promise<StatIdentity> {
  return withScratchPage(agent, pid, async (scratch) => {
    const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.fstat, args: [BigInt(fd), scratch] });
    if (failed(r)) throw new AgentError(`fstat(${fd}) in pid ${pid}: errno ${-r}`, 'INJECT_SYSCALL', Number(-r));
    return parseStat(await agent.call({ op: 'READ_MEM', pid, address: scratch, length: STAT_BYTES }));
  });
}

/** Each group of descriptors that are one description (sharedDescriptionGroups) as one shared file, with its identity. */
export async function captureSharedFiles(agent: AgentClient, groups: readonly (readonly HeldFile[])[]): Promise<TreeSharedFile[]> {
  const files: TreeSharedFile[] = [];
  for (const group of groups) {
    const first = group[0]!;
    const where = group.map((f) => `pid ${f.pid} fd ${f.fd}`).join(', ');
    const fdinfo = (await agent.call({ op: 'READ_FILE', path: `/proc/${first.pid}/fdinfo/${first.fd}`, maxSize: 65536 })).toString('utf8');
    const { pos, flags } = parseFdinfo(fdinfo);
    const stat = await fstatIn(agent, first.pid, first.fd);
    // A directory opened without O_DIRECTORY (ZDTM's test_init: open(".", O_RDONLY), then fork) is what
    // shared-descriptions.ts lets through for O_DIRECTORY ones: its offset is a file-system cookie, each holder
    // opens it again (files.ts).
    if ((stat.mode & S_IFMT) === S_IFDIR) continue;
    if ((stat.mode & S_IFMT) !== S_IFREG || fileKind(first.path, flags) !== 'file')
      throw new CheckpointError(
        `shared open file description (${where}): ${first.path} (mode 0o${stat.mode.toString(8)}) is not a regular file: opened again by path, it would not be the same object`,
        { state: 'shared open file description', target: first.path },
      );
    const ends: FileEnd[] = [];
    for (const f of group) ends.push({ pid: f.pid, fd: f.fd, cloexec: (f.flags & O.CLOEXEC) !== 0 });
    files.push({ path: first.path, flags: flags & ~O.CLOEXEC, pos: Number(pos), dev: stat.dev, ino: stat.ino, size: stat.size, ends });
  }
  return files;
}

/** The tree with the descriptors `ends` out of its processes' own files (the tree restores them as objects of its own). Pure. */
export function withoutOwnFiles(tree: ProcessTree, ends: readonly FileEnd[]): ProcessTree {
  const taken = new Set(ends.map((e) => `${e.pid}:${e.fd}`));
  return {
    ...tree,
    members: tree.members.map((m) => ({
      ...m,
      image: { ...m.image, task: { ...m.image.task, files: m.image.task.files.filter((f) => !taken.has(`${m.pid}:${f.fd}`)) } },
    })),
  };
}

/** A shared file as the shared-object planner places it: opened once, parked at one descriptor. Pure. */
export function sharedFileObject(file: TreeSharedFile): SharedObject {
  const name = `${file.path} (one open file description, inode ${file.ino})`;
  return {
    name,
    slots: [name],
    ends: file.ends.map((e) => ({ ...e, slot: 0, what: `${file.path}, the description it shares` })),
    create: (pid, [fd]) => ({
      kind: 'file-open',
      pid,
      fd: fd!,
      path: file.path,
      flags: file.flags & ~OPEN_ONLY,
      pos: file.pos,
      why: `open ${file.path} once in pid ${pid} (held by ${[...new Set(file.ends.map((e) => e.pid))].join(' ')}), flags 0o${file.flags.toString(8)}, parked at fd ${fd}, offset ${file.pos}`,
    }),
  };
}

/**
 * One description per holding process instead of one for all
 * (omit=shared-descriptions, the control): each opens the file itself at
 * the offset, so a read or write by one no longer moves another's. Pure.
 */
export function privateDescriptions(files: readonly TreeSharedFile[]): TreeSharedFile[] {
  return files.flatMap((f) => [...new Set(f.ends.map((e) => e.pid))].map((pid) => ({ ...f, ends: f.ends.filter((e) => e.pid === pid) })));
}

/**
 * Refuses (PlanError naming the field) a shared file that no longer exists
 * at its path, or is another file there (device and inode) or no longer
 * has its size: what `stat` says of each path now (undefined: ENOENT).
 * Pure.
 */
export function identityProblem(files: readonly TreeSharedFile[], now: readonly (StatIdentity | undefined)[]): PlanError | undefined {
  for (const [i, f] of files.entries()) {
    const s = now[i];
    const at = `sharedFiles[${i}] (${f.path})`;
    if (!s) return new PlanError(`${at}: no longer exists: the description the processes shared cannot be opened again`);
    if (s.dev !== f.dev || s.ino !== f.ino)
      return new PlanError(
        `${at}: another file is at the path (device ${s.dev} inode ${s.ino}, not ${f.dev} ${f.ino}): it is not the file the processes shared`,
      );
    if (s.size !== f.size) return new PlanError(`${at}: ${s.size} bytes long, ${f.size} at checkpoint: the file changed since`);
  }
  return undefined;
}

/** stat of each of `paths`, from the stopped stub `pid` (its stack at `scratch` is free, 8 KiB of it): undefined where ENOENT. */
export async function statPaths(agent: AgentClient, pid: number, scratch: bigint, paths: readonly string[]): Promise<Array<StatIdentity | undefined>> {
  const now: Array<StatIdentity | undefined> = [];
  for (const path of paths) {
    const buf = scratch + 4096n;
    await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: Buffer.from(`${path}\0`) });
    const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.newfstatat, args: [AT_FDCWD, scratch, buf, 0n] });
    if (r === -ENOENT) now.push(undefined);
    else if (failed(r)) throw new AgentError(`stat ${path} in pid ${pid}: errno ${-r}`, 'INJECT_SYSCALL', Number(-r));
    else now.push(parseStat(await agent.call({ op: 'READ_MEM', pid, address: buf, length: STAT_BYTES })));
  }
  return now;
}

/** Why a sharedFiles list from tree.json is malformed, or undefined; `used` collects every descriptor of the tree's objects. */
export function sharedFilesProblem(files: readonly TreeSharedFile[], pids: ReadonlySet<number>, used = new Set<string>()): FieldProblem | undefined {
  const isCount = (n: unknown): boolean => Number.isSafeInteger(n) && (n as number) >= 0;
  for (const [i, f] of files.entries()) {
    const at = `sharedFiles[${i}]`;
    if (typeof f.path !== 'string' || !/^\/[^\0]{0,4094}$/.test(f.path) || f.path.split('/').includes('..'))
      return { field: `${at}.path`, why: `${JSON.stringify(f.path)?.slice(0, 60)} is not an absolute path without ".."` };
    if (
      !Number.isInteger(f.flags) ||
      f.flags < 0 ||
      f.flags >= 2 ** 31 ||
      (f.flags & ~O_KNOWN) !== 0 ||
      (f.flags & (OPEN_ONLY | O.CLOEXEC | O.PATH | O.DIRECTORY)) !== 0
    )
      return {
        field: `${at}.flags`,
        why: `0o${Number(f.flags).toString(8)}: not the flags of a regular file's description (no creating, truncating, O_PATH, O_DIRECTORY or O_CLOEXEC)`,
      };
    if ((f.flags & 3) === 3) return { field: `${at}.flags`, why: 'no access mode' };
    if (fileKind(f.path, f.flags) !== 'file') return { field: `${at}.path`, why: `${f.path} is no regular file a restore opens (a device, /proc or /sys)` };
    if (!isCount(f.pos) || f.pos >= 2 ** 52) return { field: `${at}.pos`, why: `${String(f.pos).slice(0, 20)} is no offset` };
    if (!isCount(f.dev)) return { field: `${at}.dev`, why: `${String(f.dev).slice(0, 20)} is no device number` };
    if (!isCount(f.ino) || f.ino < 1) return { field: `${at}.ino`, why: `${String(f.ino).slice(0, 20)} is no inode` };
    if (!isCount(f.size)) return { field: `${at}.size`, why: `${String(f.size).slice(0, 20)} is no size` };
    const list = endsListProblem(f.ends, `${at}.ends`);
    if (list) return list;
    for (const [j, e] of f.ends.entries()) {
      const problem = endProblem(e, `${at}.ends[${j}]`, pids, used);
      if (problem) return problem;
    }
  }
  return undefined;
}
