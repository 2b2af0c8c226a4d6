/**
 * A process tree's checkpoint image (format 10): the root's image as every
 * image is, plus tree.json — each process's pid, parent, process group,
 * session and exit signal, the root first and every process after its
 * parent; the pipes and (when there are any: optional fields) the unix
 * socketpairs between them with their queued data, the memfds they hold and
 * the open file descriptions of regular files they share (sharedFiles: path,
 * flags, offset, the file's dev/ino/size, each holder's fd) and the FIFOs
 * they hold (fifos: path, size, queued bytes, each description's flags and
 * holders), and the zombies (format 11, only when there are any: each
 * one's pid, parent, group, session, exit signal and wait status;
 * tree-zombies.ts) — and
 * tree/PID.bin for every other process: that process's own
 * image, a tar of the same entries a one-process image has (its manifest
 * and digests included), nested. The outer manifest's digest covers each
 * nested tar; each is read with the same checks as a top-level image.
 * A version 9 image (and a version 10 one without tree.json) is a tree of
 * one process.
 */
import * as tar from 'tar-stream';
import { ImageRejectedError } from '../errors.ts';
import { imageEntries, parseImageEntries, readTar, writeCheckpointImage, type CheckpointImage } from './checkpoint-image.ts';
import { pipesProblem } from './tree-pipes.ts';
import { socketpairsProblem } from './tree-sockets.ts';
import { memfdsProblem } from './tree-memfds.ts';
import { sharedFilesProblem } from './tree-files.ts';
import { fifosProblem } from './tree-fifos.ts';
import {
  treeShapeProblem,
  type MemfdEnd,
  type ProcessTree,
  type SocketEnd,
  type TreeMember,
  type TreeMemfd,
  type TreeFifo,
  type TreePipe,
  type TreeSharedFile,
  type TreeSocketPair,
  type TreeZombie,
} from './tree.ts';
import { zombieJson, zombiesProblem } from './tree-zombies.ts';

export const TREE_ENTRY = 'tree.json';

export function nestedEntryName(pid: number): string {
  return `tree/${pid}.bin`;
}

interface TreeJsonPipe {
  inode: number;
  ends: Array<{ pid: number; fd: number; write: boolean; cloexec: boolean }>;
  nonblockRead: boolean;
  nonblockWrite: boolean;
  size: number;
  /** the queued bytes, base64 */
  queued: string;
}

interface TreeJsonSocketpair {
  type: 'stream' | 'dgram';
  inodes: [number, number];
  ends: [SocketEnd[], SocketEnd[]];
  /** what each socket would read next, base64: one string for a stream's bytes, one per datagram */
  queued: [string[], string[]];
}

interface TreeJsonMemfd {
  inode: number;
  name: string;
  seals: number;
  flags: number;
  pos: number;
  /** every byte, base64 */
  contents: string;
  ends: MemfdEnd[];
  /** where it is mapped MAP_SHARED (only when it is): start, end, offset as 0x hex strings */
  maps?: Array<{ pid: number; start: string; end: string; offset: string }>;
}

interface TreeJsonMember extends TreeMember {
  /** tree/PID.bin for every process but the root (whose image is the top level's): null for the root */
  entry: string | null;
}

/** A tar of `entries`, in memory. */
async function packTar(entries: ReadonlyMap<string, Buffer>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (chunk: unknown) => void chunks.push(chunk as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  for (const [name, data] of entries) pack.entry({ name, size: data.length, mode: 0o644, mtime: new Date(0) }, data);
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/** tree.json and the nested images, the extra entries of the root's image. */
export async function treeEntries(tree: ProcessTree): Promise<Map<string, Buffer>> {
  const [root, ...others] = tree.members;
  if (!root) throw new RangeError('a process tree has at least its root');
  const extra = new Map<string, Buffer>();
  const members: TreeJsonMember[] = tree.members.map((m, i) => ({
    pid: m.pid,
    ppid: m.ppid,
    pgid: m.pgid,
    sid: m.sid,
    exitSignal: m.exitSignal,
    entry: i === 0 ? null : nestedEntryName(m.pid),
  }));
  const pipes: TreeJsonPipe[] = (tree.pipes ?? []).map((p) => ({
    inode: p.inode,
    ends: p.ends,
    nonblockRead: p.nonblockRead,
    nonblockWrite: p.nonblockWrite,
    size: p.size,
    queued: p.queued.toString('base64'),
  }));
  // socketpairs only when there are any: a tree without is written as before them.
  const socketpairs: TreeJsonSocketpair[] = (tree.socketpairs ?? []).map((p) => ({
    type: p.type,
    inodes: p.inodes,
    ends: p.ends,
    queued: [p.queued[0].map((b) => b.toString('base64')), p.queued[1].map((b) => b.toString('base64'))],
  }));
  // memfds likewise (format 11's optional field, written only when present).
  const memfds: TreeJsonMemfd[] = (tree.memfds ?? []).map((m) => ({
    inode: m.inode,
    name: m.name,
    seals: m.seals,
    flags: m.flags,
    pos: m.pos,
    contents: m.contents.toString('base64'),
    ends: m.ends,
    ...(m.maps?.length
      ? { maps: m.maps.map((x) => ({ pid: x.pid, start: `0x${x.start.toString(16)}`, end: `0x${x.end.toString(16)}`, offset: `0x${x.offset.toString(16)}` })) }
      : {}),
  }));
  // sharedFiles likewise: { path, flags, pos, dev, ino, size, ends } as they are, numbers all.
  const sharedFiles = tree.sharedFiles ?? [];
  const optional = {
    ...(socketpairs.length > 0 ? { socketpairs } : {}),
    ...(memfds.length > 0 ? { memfds } : {}),
    ...(sharedFiles.length > 0 ? { sharedFiles } : {}),
    // fifos likewise: { path, size, queued (base64), descriptions: [{ flags, ends }] }.
    ...((tree.fifos ?? []).length > 0 ? { fifos: tree.fifos!.map((f) => ({ ...f, queued: f.queued.toString('base64') })) } : {}),
    // zombies likewise: { pid, ppid, pgid, sid, exitSignal, waitStatus }, numbers all (tree-zombies.ts).
    ...((tree.zombies ?? []).length > 0 ? { zombies: tree.zombies!.map(zombieJson) } : {}),
  };
  extra.set(TREE_ENTRY, Buffer.from(`${JSON.stringify({ members, pipes, ...optional }, null, 2)}\n`));
  for (const m of others) extra.set(nestedEntryName(m.pid), await packTar(imageEntries(m.image)));
  return extra;
}

/** Writes the tree as one image file (atomically, as writeCheckpointImage does). */
export async function writeTreeImage(tree: ProcessTree, file: string): Promise<void> {
  await writeCheckpointImage(tree.members[0]!.image, file, await treeEntries(tree));
}

export async function readTreeImage(file: string): Promise<ProcessTree> {
  const { entries, digests } = await readTar(file);
  return parseTreeEntries(entries, digests);
}

/**
 * Validates and reads a tree from an image's entries; every nested image is
 * checked as a top-level one is. `digests`: as parseImageEntries takes them.
 */
export async function parseTreeEntries(entries: Map<string, Buffer>, digests?: ReadonlyMap<string, string>): Promise<ProcessTree> {
  const rootImage = parseImageEntries(entries, { tree: true, digests });
  const raw = entries.get(TREE_ENTRY);
  if (!raw) {
    // A one-process image: its own session and group, no parent in the image.
    return { members: [{ pid: rootImage.process.pid, ppid: 0, pgid: rootImage.task.pgid, sid: rootImage.task.sid, exitSignal: 17, image: rootImage }] };
  }
  const { members, pipes, socketpairs, memfds, sharedFiles, fifos, zombies } = validateTreeJson(parseTreeJson(raw));
  const listed = new Set(members.slice(1).map((m) => m.entry));
  for (const name of entries.keys()) {
    if (name.startsWith('tree/') && !listed.has(name)) throw new ImageRejectedError('nested image not listed in tree.json', name, '(entry)');
  }
  const tree: ProcessTree = { members: [] };
  for (const [i, m] of members.entries()) {
    let image: CheckpointImage;
    if (i === 0) image = rootImage;
    else {
      const nested = entries.get(m.entry!);
      if (!nested) throw new ImageRejectedError('listed in tree.json but absent', m.entry!, '(entry)');
      const read = await readTar(nested);
      image = parseImageEntries(read.entries, { digests: read.digests });
    }
    if (image.process.pid !== m.pid)
      throw new ImageRejectedError(`holds pid ${image.process.pid}, tree.json says ${m.pid}`, i === 0 ? 'manifest.json' : m.entry!, 'process.pid');
    if (image.task.pgid !== m.pgid || image.task.sid !== m.sid)
      throw new ImageRejectedError(`task.json says pgid ${image.task.pgid} sid ${image.task.sid}, tree.json ${m.pgid} ${m.sid}`, TREE_ENTRY, `members[${i}]`);
    tree.members.push({ pid: m.pid, ppid: m.ppid, pgid: m.pgid, sid: m.sid, exitSignal: m.exitSignal, image });
  }
  if (pipes.length > 0) tree.pipes = pipes;
  if (socketpairs.length > 0) tree.socketpairs = socketpairs;
  if (memfds.length > 0) tree.memfds = memfds;
  // A shared file's or a FIFO's descriptor is the tree's to open, not also one of the process's own files.
  const ownFiles = (ends: readonly { pid: number; fd: number }[], at: string): void => {
    for (const [j, e] of ends.entries()) {
      const own = tree.members.find((m) => m.pid === e.pid)!.image.task.files.some((x) => x.fd === e.fd);
      if (own) throw new ImageRejectedError(`pid ${e.pid} fd ${e.fd} is also one of its own files in its image`, TREE_ENTRY, `${at}[${j}].fd`);
    }
  };
  for (const [i, f] of sharedFiles.entries()) ownFiles(f.ends, `sharedFiles[${i}].ends`);
  for (const [i, f] of fifos.entries()) for (const [k, d] of f.descriptions.entries()) ownFiles(d.ends, `fifos[${i}].descriptions[${k}].ends`);
  if (sharedFiles.length > 0) tree.sharedFiles = sharedFiles;
  if (fifos.length > 0) tree.fifos = fifos;
  if (zombies.length > 0) tree.zombies = zombies;
  return tree;
}

function parseTreeJson(raw: Buffer): unknown {
  if (raw.length > 1024 * 1024) throw new ImageRejectedError('larger than 1 MiB', TREE_ENTRY, 'size');
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (error) {
    throw new ImageRejectedError(`invalid JSON: ${(error as Error).message}`, TREE_ENTRY, '(json)');
  }
}

function validateTreeJson(raw: unknown): {
  members: TreeJsonMember[];
  pipes: TreePipe[];
  socketpairs: TreeSocketPair[];
  memfds: TreeMemfd[];
  sharedFiles: TreeSharedFile[];
  fifos: TreeFifo[];
  zombies: TreeZombie[];
} {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ImageRejectedError('is not an object', TREE_ENTRY, '(root)');
  const extra = Object.keys(raw).find((k) => !['members', 'pipes', 'socketpairs', 'memfds', 'sharedFiles', 'fifos', 'zombies'].includes(k));
  if (extra) throw new ImageRejectedError('unknown field', TREE_ENTRY, extra);
  const list = (raw as { members?: unknown }).members;
  if (!Array.isArray(list)) throw new ImageRejectedError('is not an array', TREE_ENTRY, 'members');
  const members = list.map((m: unknown, i): TreeJsonMember => {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new ImageRejectedError('is not an object', TREE_ENTRY, `members[${i}]`);
    const o = m as Record<string, unknown>;
    const unknownKey = Object.keys(o).find((k) => !['pid', 'ppid', 'pgid', 'sid', 'exitSignal', 'entry'].includes(k));
    if (unknownKey) throw new ImageRejectedError('unknown field', TREE_ENTRY, `members[${i}].${unknownKey}`);
    const want = i === 0 ? null : nestedEntryName(o.pid as number);
    if (o.entry !== want)
      throw new ImageRejectedError(`is ${JSON.stringify(o.entry)?.slice(0, 40)}, expected ${JSON.stringify(want)}`, TREE_ENTRY, `members[${i}].entry`);
    return { pid: o.pid as number, ppid: o.ppid as number, pgid: o.pgid as number, sid: o.sid as number, exitSignal: o.exitSignal as number, entry: want };
  });
  const problem = treeShapeProblem(members);
  if (problem) throw new ImageRejectedError(problem.why, TREE_ENTRY, problem.field);
  // One set of descriptors across every object: one descriptor is a pipe end, a socket or a memfd, never two of them.
  const pids = new Set(members.map((m) => m.pid));
  const used = new Set<string>();
  const pipes = validatePipesJson((raw as { pipes?: unknown }).pipes ?? [], pids, used);
  const socketpairs = validateSocketpairsJson((raw as { socketpairs?: unknown }).socketpairs ?? [], pids, used);
  const memfds = validateMemfdsJson((raw as { memfds?: unknown }).memfds ?? [], pids, used);
  const sharedFiles = validateSharedFilesJson((raw as { sharedFiles?: unknown }).sharedFiles ?? [], pids, used);
  const fifos = validateFifosJson((raw as { fifos?: unknown }).fifos ?? [], pids, used);
  return { members, pipes, socketpairs, memfds, sharedFiles, fifos, zombies: validateZombiesJson((raw as { zombies?: unknown }).zombies, members) };
}

/** tree.json's zombies (format 11, optional): absent is none; present, every field checked (tree-zombies.ts). */
function validateZombiesJson(raw: unknown, members: readonly TreeMember[]): TreeZombie[] {
  if (raw === undefined) return [];
  const problem = zombiesProblem(raw, members);
  if (problem) throw new ImageRejectedError(problem.why, TREE_ENTRY, problem.field);
  (raw as Array<Record<string, unknown>>).forEach((z, i) => {
    const unknownKey = Object.keys(z).find((k) => !['pid', 'ppid', 'pgid', 'sid', 'exitSignal', 'waitStatus'].includes(k));
    if (unknownKey) throw new ImageRejectedError('unknown field', TREE_ENTRY, `zombies[${i}].${unknownKey}`);
  });
  return (raw as TreeZombie[]).map(zombieJson);
}

function validateFifosJson(raw: unknown, pids: ReadonlySet<number>, used: Set<string>): TreeFifo[] {
  if (!Array.isArray(raw)) throw new ImageRejectedError('is not an array', TREE_ENTRY, 'fifos');
  if (raw.length > 1024) throw new ImageRejectedError(`${raw.length} FIFOs, limit 1024`, TREE_ENTRY, 'fifos');
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const fifos = raw.map((f: unknown, i): TreeFifo => {
    const at = `fifos[${i}]`;
    if (!isObject(f)) throw new ImageRejectedError('is not an object', TREE_ENTRY, at);
    const unknownKey = Object.keys(f).find((k) => !['path', 'size', 'queued', 'descriptions'].includes(k));
    if (unknownKey) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${at}.${unknownKey}`);
    if (typeof f.queued !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(f.queued)) throw new ImageRejectedError('is not base64', TREE_ENTRY, `${at}.queued`);
    if (!Array.isArray(f.descriptions)) throw new ImageRejectedError('is not an array', TREE_ENTRY, `${at}.descriptions`);
    const descriptions = f.descriptions.map((d: unknown, k) => {
      const dat = `${at}.descriptions[${k}]`;
      if (!isObject(d)) throw new ImageRejectedError('is not an object', TREE_ENTRY, dat);
      const badKey = Object.keys(d).find((x) => !['flags', 'ends'].includes(x));
      if (badKey) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${dat}.${badKey}`);
      if (!Array.isArray(d.ends)) throw new ImageRejectedError('is not an array', TREE_ENTRY, `${dat}.ends`);
      const ends = d.ends.map((e: unknown, j) => {
        if (!isObject(e)) throw new ImageRejectedError('is not an object', TREE_ENTRY, `${dat}.ends[${j}]`);
        const bad = Object.keys(e).find((x) => !['pid', 'fd', 'cloexec'].includes(x));
        if (bad) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${dat}.ends[${j}].${bad}`);
        return { pid: e.pid as number, fd: e.fd as number, cloexec: e.cloexec as boolean };
      });
      return { flags: d.flags as number, ends };
    });
    return { path: f.path as string, size: f.size as number, queued: Buffer.from(f.queued, 'base64'), descriptions };
  });
  const problem = fifosProblem(fifos, pids, used);
  if (problem) throw new ImageRejectedError(problem.why, TREE_ENTRY, problem.field);
  return fifos;
}

function validateSharedFilesJson(raw: unknown, pids: ReadonlySet<number>, used: Set<string>): TreeSharedFile[] {
  if (!Array.isArray(raw)) throw new ImageRejectedError('is not an array', TREE_ENTRY, 'sharedFiles');
  if (raw.length > 1024) throw new ImageRejectedError(`${raw.length} shared files, limit 1024`, TREE_ENTRY, 'sharedFiles');
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const files = raw.map((f: unknown, i): TreeSharedFile => {
    const at = `sharedFiles[${i}]`;
    if (!isObject(f)) throw new ImageRejectedError('is not an object', TREE_ENTRY, at);
    const unknownKey = Object.keys(f).find((k) => !['path', 'flags', 'pos', 'dev', 'ino', 'size', 'ends'].includes(k));
    if (unknownKey) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${at}.${unknownKey}`);
    if (!Array.isArray(f.ends)) throw new ImageRejectedError('is not an array', TREE_ENTRY, `${at}.ends`);
    const ends = f.ends.map((e: unknown, j) => {
      if (!isObject(e)) throw new ImageRejectedError('is not an object', TREE_ENTRY, `${at}.ends[${j}]`);
      const bad = Object.keys(e).find((k) => !['pid', 'fd', 'cloexec'].includes(k));
      if (bad) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${at}.ends[${j}].${bad}`);
      return { pid: e.pid as number, fd: e.fd as number, cloexec: e.cloexec as boolean };
    });
    return {
      path: f.path as string,
      flags: f.flags as number,
      pos: f.pos as number,
      dev: f.dev as number,
      ino: f.ino as number,
      size: f.size as number,
      ends,
    };
  });
  const problem = sharedFilesProblem(files, pids, used);
  if (problem) throw new ImageRejectedError(problem.why, TREE_ENTRY, problem.field);
  return files;
}

function validateMemfdsJson(raw: unknown, pids: ReadonlySet<number>, used: Set<string>): TreeMemfd[] {
  if (!Array.isArray(raw)) throw new ImageRejectedError('is not an array', TREE_ENTRY, 'memfds');
  if (raw.length > 1024) throw new ImageRejectedError(`${raw.length} memfds, limit 1024`, TREE_ENTRY, 'memfds');
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const memfds = raw.map((m: unknown, i): TreeMemfd => {
    const at = `memfds[${i}]`;
    if (!isObject(m)) throw new ImageRejectedError('is not an object', TREE_ENTRY, at);
    const unknownKey = Object.keys(m).find((k) => !['inode', 'name', 'seals', 'flags', 'pos', 'contents', 'ends', 'maps'].includes(k));
    if (unknownKey) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${at}.${unknownKey}`);
    if (typeof m.contents !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(m.contents))
      throw new ImageRejectedError('is not base64', TREE_ENTRY, `${at}.contents`);
    if (!Array.isArray(m.ends)) throw new ImageRejectedError('is not an array', TREE_ENTRY, `${at}.ends`);
    const ends = m.ends.map((e: unknown, j): MemfdEnd => {
      if (!isObject(e)) throw new ImageRejectedError('is not an object', TREE_ENTRY, `${at}.ends[${j}]`);
      const bad = Object.keys(e).find((k) => !['pid', 'fd', 'cloexec'].includes(k));
      if (bad) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${at}.ends[${j}].${bad}`);
      return { pid: e.pid as number, fd: e.fd as number, cloexec: e.cloexec as boolean };
    });
    const hexField = (v: unknown, field: string): bigint => {
      if (typeof v !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(v)) throw new ImageRejectedError('is not a 0x hex number', TREE_ENTRY, field);
      return BigInt(v);
    };
    if (m.maps !== undefined && (!Array.isArray(m.maps) || m.maps.length === 0))
      throw new ImageRejectedError('is not a list of mappings', TREE_ENTRY, `${at}.maps`);
    const maps = ((m.maps ?? []) as unknown[]).map((x, j) => {
      const mat = `${at}.maps[${j}]`;
      if (!isObject(x)) throw new ImageRejectedError('is not an object', TREE_ENTRY, mat);
      const bad = Object.keys(x).find((k) => !['pid', 'start', 'end', 'offset'].includes(k));
      if (bad) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${mat}.${bad}`);
      return {
        pid: x.pid as number,
        start: hexField(x.start, `${mat}.start`),
        end: hexField(x.end, `${mat}.end`),
        offset: hexField(x.offset, `${mat}.offset`),
      };
    });
    return {
      ...(maps.length > 0 ? { maps } : {}),
      inode: m.inode as number,
      name: m.name as string,
      seals: m.seals as number,
      flags: m.flags as number,
      pos: m.pos as number,
      contents: Buffer.from(m.contents, 'base64'),
      ends,
    };
  });
  const problem = memfdsProblem(memfds, pids, used);
  if (problem) throw new ImageRejectedError(problem.why, TREE_ENTRY, problem.field);
  return memfds;
}

function validatePipesJson(raw: unknown, pids: ReadonlySet<number>, used: Set<string>): TreePipe[] {
  if (!Array.isArray(raw)) throw new ImageRejectedError('is not an array', TREE_ENTRY, 'pipes');
  if (raw.length > 1024) throw new ImageRejectedError(`${raw.length} pipes, limit 1024`, TREE_ENTRY, 'pipes');
  const pipes = raw.map((p: unknown, i): TreePipe => {
    if (typeof p !== 'object' || p === null || Array.isArray(p)) throw new ImageRejectedError('is not an object', TREE_ENTRY, `pipes[${i}]`);
    const o = p as Record<string, unknown>;
    const unknownKey = Object.keys(o).find((k) => !['inode', 'ends', 'nonblockRead', 'nonblockWrite', 'size', 'queued'].includes(k));
    if (unknownKey) throw new ImageRejectedError('unknown field', TREE_ENTRY, `pipes[${i}].${unknownKey}`);
    if (typeof o.nonblockRead !== 'boolean' || typeof o.nonblockWrite !== 'boolean')
      throw new ImageRejectedError('must be booleans', TREE_ENTRY, `pipes[${i}].nonblock`);
    if (typeof o.queued !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(o.queued))
      throw new ImageRejectedError('is not base64', TREE_ENTRY, `pipes[${i}].queued`);
    if (!Array.isArray(o.ends)) throw new ImageRejectedError('is not an array', TREE_ENTRY, `pipes[${i}].ends`);
    const ends = o.ends.map((e: unknown, j) => {
      if (typeof e !== 'object' || e === null || Array.isArray(e)) throw new ImageRejectedError('is not an object', TREE_ENTRY, `pipes[${i}].ends[${j}]`);
      const x = e as Record<string, unknown>;
      const bad = Object.keys(x).find((k) => !['pid', 'fd', 'write', 'cloexec'].includes(k));
      if (bad) throw new ImageRejectedError('unknown field', TREE_ENTRY, `pipes[${i}].ends[${j}].${bad}`);
      return { pid: x.pid as number, fd: x.fd as number, write: x.write as boolean, cloexec: x.cloexec as boolean };
    });
    return {
      inode: o.inode as number,
      ends,
      nonblockRead: o.nonblockRead,
      nonblockWrite: o.nonblockWrite,
      size: o.size as number,
      queued: Buffer.from(o.queued, 'base64'),
    };
  });
  const problem = pipesProblem(pipes, pids, used);
  if (problem) throw new ImageRejectedError(problem.why, TREE_ENTRY, problem.field);
  return pipes;
}

function validateSocketpairsJson(raw: unknown, pids: ReadonlySet<number>, used: Set<string>): TreeSocketPair[] {
  if (!Array.isArray(raw)) throw new ImageRejectedError('is not an array', TREE_ENTRY, 'socketpairs');
  if (raw.length > 1024) throw new ImageRejectedError(`${raw.length} socketpairs, limit 1024`, TREE_ENTRY, 'socketpairs');
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const pairs = raw.map((p: unknown, i): TreeSocketPair => {
    const at = `socketpairs[${i}]`;
    if (!isObject(p)) throw new ImageRejectedError('is not an object', TREE_ENTRY, at);
    const unknownKey = Object.keys(p).find((k) => !['type', 'inodes', 'ends', 'queued'].includes(k));
    if (unknownKey) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${at}.${unknownKey}`);
    const sides = (v: unknown, field: string): [unknown[], unknown[]] => {
      if (!Array.isArray(v) || v.length !== 2 || !v.every(Array.isArray)) throw new ImageRejectedError('is not two lists', TREE_ENTRY, `${at}.${field}`);
      return v as [unknown[], unknown[]];
    };
    const queued = sides(p.queued, 'queued').map((list, side) =>
      list.map((q, j) => {
        if (typeof q !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(q))
          throw new ImageRejectedError('is not base64', TREE_ENTRY, `${at}.queued[${side}][${j}]`);
        return Buffer.from(q, 'base64');
      }),
    ) as [Buffer[], Buffer[]];
    const ends = sides(p.ends, 'ends').map((list, side) =>
      list.map((e, j) => {
        if (!isObject(e)) throw new ImageRejectedError('is not an object', TREE_ENTRY, `${at}.ends[${side}][${j}]`);
        const bad = Object.keys(e).find((k) => !['pid', 'fd', 'cloexec', 'nonblock'].includes(k));
        if (bad) throw new ImageRejectedError('unknown field', TREE_ENTRY, `${at}.ends[${side}][${j}].${bad}`);
        return { pid: e.pid as number, fd: e.fd as number, cloexec: e.cloexec as boolean, nonblock: e.nonblock as boolean };
      }),
    ) as [SocketEnd[], SocketEnd[]];
    return { type: p.type as 'stream' | 'dgram', inodes: p.inodes as [number, number], ends, queued };
  });
  const problem = socketpairsProblem(pairs, pids, used);
  if (problem) throw new ImageRejectedError(problem.why, TREE_ENTRY, problem.field);
  return pairs;
}
