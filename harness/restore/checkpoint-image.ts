/**
 * The checkpoint image: a tar (written and read with tar-stream) holding a
 * manifest — format version, the process, the platform profile, and the
 * SHA-256 and size of every other entry — plus registers, xstate, debug
 * registers, the memory map and the contents of every dumped mapping, and
 * manifest.sha256, the manifest's own digest, so that no byte of the image
 * goes unchecked. (The digests detect corruption; they authenticate nothing:
 * whoever can write the file can recompute them, which is why every field is
 * validated too.)
 *
 * Reading treats the file as hostile: tar structure, sizes, checksums and
 * every field are checked (validate.ts) before anything else sees it, and
 * the file is never modified.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { ImageRejectedError } from '../errors.ts';
import { sha256 } from '../util/hash.ts';
import { jsonNestingDepth } from '../util/json-depth.ts';
import { USER_REGS_FIELDS, type UserRegs } from '../x86/registers.ts';
import { validateImage } from './validate.ts';
import type { RseqState } from './rseq.ts';
import { signalsJson, type SignalState } from './signals.ts';
import type { TaskState } from './files.ts';
import { threadsJson, threadXstateEntry, type ThreadLinks, type ThreadState } from './threads.ts';
import { ldtJson, type LdtEntry } from './ldt.ts';
import { timersJson, type TimerState } from './timers.ts';
import { sleepJson, type SleepDeadline } from './sleep-deadline.ts';
import { pkeysJson, type PkeyState } from './pkeys.ts';
import { uniqueSibling } from '../util/atomic-write.ts';
import { packStored, storedRanges } from './stored-pages.ts';
import { dependenciesJson, parseDependencies, type PlatformDependencies } from './platform-dependencies.ts';

export const IMAGE_FORMAT = 'cr-harness-checkpoint';
/**
 * 2: rseq.json (the rseq registration) joined the image; 3: signals.json and
 * task.json; 4: threads.json (every thread but the main one, and each
 * thread's clear_child_tid and robust list) with threads/TID-xstate.bin;
 * 5: every mapping (shared ones too, and other files' text): memory.json
 * regions carry the mapped file and offset, and a shared file mapping no
 * entry (its contents are the file's); 6: userfaultfds — task.json lists
 * them, and a region carries its registration mode and the pages the fault
 * server had not provided (userfaultfd.ts); 7: ldt.json, the entries the
 * process installed in its LDT with modify_ldt (ldt.ts); 8: timers.json, the
 * interval timers, POSIX timers and timerfds (timers.ts); sleep.json, the
 * deadline of a sleep the checkpoint interrupted (sleep-deadline.ts), and
 * pkeys.json, the allocated protection keys and tagged mappings (pkeys.ts);
 * 9: a memory entry holds only the pages its region's `stored` ranges name
 * (untouched pages and anonymous zero pages are left out: stored-pages.ts);
 * 10: depends.json, what the process may depend on in the platform — XCR0
 * and the xstate components in use, the CPU flags it could have seen, the
 * vDSO/vvar layout and symbols, the rseq feature size and alignment
 * (platform-dependencies.ts) — so a restore elsewhere is refused by name.
 */
export const IMAGE_VERSION = 10;
/**
 * Read as well as the current version: a version 9 image lacks only
 * depends.json, and reads as one that recorded no dependencies (a restore
 * then says it could not check them).
 */
const READABLE_OLDER_VERSIONS = [9];
/**
 * Earlier versions are refused, each naming what it lacks: reading one as
 * the current version would invent the missing state as "none" — for an
 * LDT, a process whose LDT selectors then fault with #GP, far from the cause.
 */
const OLDER_VERSIONS: Record<number, string> = {
  8: 'has no stored page ranges in memory.json: every memory entry would have to hold its whole region (take the checkpoint again)',
  7: 'has no timers.json, sleep.json or pkeys.json, nor stored page ranges in memory.json: it cannot say whether the process had timers armed, a sleep it interrupted would start over, and its protection keys would be lost (take the checkpoint again)',
  6: 'has no ldt.json: it cannot say whether the process had an LDT (take the checkpoint again)',
};
const MANIFEST_DIGEST = 'manifest.sha256';

export const LIMITS = {
  entryBytes: 512 * 1024 * 1024,
  totalBytes: 2 * 1024 * 1024 * 1024,
  entries: 4096,
  jsonBytes: 4 * 1024 * 1024,
  /** nesting of arrays and objects in a JSON entry (the image's own entries use fewer than 8) */
  jsonDepth: 64,
} as const;

export interface ProcessInfo {
  /** guest path of the program, re-exec'd on restore */
  binary: string;
  argv: string[];
  envp: string[];
  noAslr: boolean;
  pid: number;
}

/** Facts about the platform the checkpoint was taken on (the platform profile). */
export type PlatformFacts = Record<string, string | number | boolean | null>;

export interface DebugRegs {
  dr0: bigint;
  dr1: bigint;
  dr2: bigint;
  dr3: bigint;
  dr6: bigint;
  dr7: bigint;
}

export const DEBUG_REG_NAMES = ['dr0', 'dr1', 'dr2', 'dr3', 'dr6', 'dr7'] as const;

export interface MemoryRegion {
  start: bigint;
  end: bigint;
  /** "rw-p"; an "s" last means shared (MAP_SHARED) */
  perms: string;
  name: string;
  /** the file mapped, opened again on restore; null for anonymous memory (private or shared) */
  file: string | null;
  /** the file offset of `start`; 0 for anonymous memory */
  offset: bigint;
  /** tar entry holding the region's bytes; null for a shared file mapping, whose bytes are the file's */
  entry: string | null;
  /** UFFDIO_REGISTER_MODE_* bits of its userfaultfd registration; absent or 0 when none */
  userfault?: number;
  /**
   * pages of a registered region the fault server had not provided, as
   * sorted [start, end) ranges: zeros in the entry, never written on
   * restore, so that touching them faults to the server again
   */
  absent?: Array<[bigint, bigint]>;
  /**
   * the [start, end) page ranges the entry holds, sorted, concatenated in
   * this order (format 9, stored-pages.ts); every other page reads as the
   * mapping's backing: zeros, or the file. Absent in an image built in
   * memory: every page but the absent ones.
   */
  stored?: Array<[bigint, bigint]>;
}

export interface CheckpointImage {
  created: string;
  process: ProcessInfo;
  platform: PlatformFacts;
  regs: UserRegs;
  xstate: Buffer;
  debugRegs: DebugRegs;
  /** the rseq registration; null when the task had none */
  rseq: RseqState | null;
  /** dispositions, mask, alternate stack, pending queues */
  signals: SignalState;
  /** process group, session and open files */
  task: TaskState;
  /** the main thread's clear_child_tid and robust list (its other state is above) */
  links: ThreadLinks;
  /** every other thread, ascending by tid */
  threads: ThreadState[];
  /** the entries installed in the process's LDT, ascending by entry number; [] when it has none */
  ldt: LdtEntry[];
  /** interval timers, POSIX timers, timerfds */
  timers: TimerState;
  /** the deadline of the sleep the checkpoint interrupted (ERESTART_RESTARTBLOCK); null when none */
  sleep: SleepDeadline | null;
  /** the protection keys the process had allocated and the mappings tagged with one (pkeys.ts) */
  pkeys: PkeyState;
  /** what the process may depend on in the platform (platform-dependencies.ts); absent when not recorded (a version 9 image) */
  dependencies?: PlatformDependencies;
  /** /proc/PID/maps at checkpoint time */
  maps: string;
  regions: MemoryRegion[];
  memory: Map<string, Buffer>;
}

interface ManifestEntry {
  sha256: string;
  size: number;
}

interface Manifest {
  format: string;
  version: number;
  created: string;
  process: ProcessInfo;
  platform: PlatformFacts;
  entries: Record<string, ManifestEntry>;
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

export function memoryEntryName(index: number): string {
  return `memory/${String(index).padStart(4, '0')}.bin`;
}

/** Serializes an image to its tar entries (manifest last, so it can list the others). */
export function imageEntries(image: CheckpointImage): Map<string, Buffer> {
  const entries = new Map<string, Buffer>();
  const json = (v: unknown): Buffer => Buffer.from(`${JSON.stringify(v, null, 2)}\n`);
  entries.set('regs.json', json(Object.fromEntries(USER_REGS_FIELDS.map((n) => [n, hex(image.regs[n])]))));
  entries.set('debugregs.json', json(Object.fromEntries(DEBUG_REG_NAMES.map((n) => [n, hex(image.debugRegs[n])]))));
  entries.set('rseq.json', json(image.rseq && { area: hex(image.rseq.area), size: image.rseq.size, signature: `0x${image.rseq.signature.toString(16)}` }));
  entries.set('signals.json', json(signalsJson(image.signals)));
  entries.set('task.json', json({ pgid: image.task.pgid, sid: image.task.sid, files: image.task.files.map((f) => ({ ...f, pos: f.pos.toString() })), userfaultfds: image.task.userfaultfds ?? [] }));
  entries.set('threads.json', json(threadsJson(image)));
  entries.set('ldt.json', json(ldtJson(image.ldt)));
  entries.set('timers.json', json(timersJson(image.timers)));
  entries.set('sleep.json', json(sleepJson(image.sleep)));
  entries.set('pkeys.json', json(pkeysJson(image.pkeys)));
  entries.set('depends.json', json(dependenciesJson(image.dependencies)));
  entries.set('xstate.bin', image.xstate);
  for (const t of image.threads) entries.set(threadXstateEntry(t.tid), t.xstate);
  entries.set('maps.txt', Buffer.from(image.maps));
  entries.set(
    'memory.json',
    json(
      image.regions.map((r) => ({
        start: hex(r.start), end: hex(r.end), perms: r.perms, name: r.name, file: r.file, offset: hex(r.offset), entry: r.entry,
        userfault: r.userfault ?? 0, absent: (r.absent ?? []).map(([start, end]) => [hex(start), hex(end)]),
        stored: storedRanges(r).map(([start, end]) => [hex(start), hex(end)]),
      })),
    ),
  );
  for (const r of image.regions) {
    if (r.entry !== null) entries.set(r.entry, packStored(r, storedRanges(r), image.memory.get(r.entry)!));
  }
  const manifest: Manifest = {
    format: IMAGE_FORMAT,
    version: IMAGE_VERSION,
    created: image.created,
    process: image.process,
    platform: image.platform,
    entries: Object.fromEntries([...entries].map(([name, data]) => [name, { sha256: sha256(data), size: data.length }])),
  };
  const manifestBytes = json(manifest);
  entries.set('manifest.json', manifestBytes);
  entries.set(MANIFEST_DIGEST, Buffer.from(`${sha256(manifestBytes)}\n`));
  return entries;
}

/** Writes the image as a tar, atomically (a temporary file renamed into place). */
export async function writeCheckpointImage(image: CheckpointImage, file: string): Promise<void> {
  const pack = tar.pack();
  const tmp = uniqueSibling(file, 'tmp');
  const written = pipeline(pack, createWriteStream(tmp, { flags: 'wx' }));
  written.catch(() => {}); // awaited below; a failed write may also end the packing first
  const packed = (async () => {
    for (const [name, data] of imageEntries(image)) {
      await new Promise<void>((resolve, reject) => {
        // The entry's stream errors when the file's does (ENOSPC); the error reaches us through `written`.
        pack.entry({ name, size: data.length, mode: 0o644, mtime: new Date(0) }, data, (e) => (e ? reject(e) : resolve())).on('error', () => {});
      });
    }
    pack.finalize();
  })();
  packed.catch(() => {});
  try {
    // A failed write destroys the pack: an entry's callback may then never come, so the write's failure ends the wait.
    await Promise.race([packed, written]);
    await packed;
    await written;
    await rename(tmp, file);
  } catch (error) {
    await rm(tmp, { force: true });
    throw error;
  }
}

const SAFE_NAME = /^(?:[a-z0-9_-]+\/)?[a-z0-9_-]+\.(?:json|bin|txt|sha256)$/;

/** Reads tar entries with the structural checks: names, types, duplicates, sizes. */
export async function readTarEntries(file: string): Promise<Map<string, Buffer>> {
  const entries = new Map<string, Buffer>();
  let total = 0;
  let rejection: ImageRejectedError | undefined;
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    // The entry stream dies with the extractor; its error is reported through the pipeline.
    stream.on('error', () => {});
    const fail = (field: string, why: string): void => {
      rejection ??= new ImageRejectedError(why, header.name, field);
      stream.resume();
      extract.destroy(rejection);
    };
    if (header.type !== 'file') return fail('type', `entry type ${header.type} is not allowed (regular files only)`);
    if (!SAFE_NAME.test(header.name) || header.name.includes('..')) return fail('name', 'entry name is not a plain relative name');
    if (entries.has(header.name)) return fail('name', 'duplicate entry');
    if (entries.size >= LIMITS.entries) return fail('count', `more than ${LIMITS.entries} entries`);
    const size = header.size ?? 0;
    if (size > LIMITS.entryBytes) return fail('size', `entry is ${size} bytes, limit ${LIMITS.entryBytes}`);
    total += size;
    if (total > LIMITS.totalBytes) return fail('size', `image exceeds ${LIMITS.totalBytes} bytes in total`);
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: unknown) => void chunks.push(chunk as Buffer));
    stream.on('end', () => {
      entries.set(header.name, Buffer.concat(chunks));
      next();
    });
  });
  try {
    await pipeline(createReadStream(file), extract);
  } catch (error) {
    throw rejection ?? new ImageRejectedError(`not a readable tar: ${(error as Error).message}`, file, 'tar');
  }
  if (rejection) throw rejection;
  return entries;
}

/**
 * Reads and validates an image. Throws ImageRejectedError naming the entry
 * and field of the first problem; on success every field is within range.
 */
export async function readCheckpointImage(file: string): Promise<CheckpointImage> {
  return parseImageEntries(await readTarEntries(file));
}

export function parseImageEntries(entries: Map<string, Buffer>): CheckpointImage {
  const manifestRaw = entries.get('manifest.json');
  if (!manifestRaw) throw new ImageRejectedError('missing', 'manifest.json', '(entry)');
  const digest = entries.get(MANIFEST_DIGEST);
  if (!digest) throw new ImageRejectedError('missing', MANIFEST_DIGEST, '(entry)');
  if (digest.toString('latin1') !== `${sha256(manifestRaw)}\n`) throw new ImageRejectedError('does not match the SHA-256 of manifest.json', MANIFEST_DIGEST, 'sha256');
  const manifest = parseJson(manifestRaw, 'manifest.json') as Partial<Manifest>;
  if (manifest.format !== IMAGE_FORMAT) throw new ImageRejectedError(`is ${JSON.stringify(manifest.format)}, expected ${IMAGE_FORMAT}`, 'manifest.json', 'format');
  const older = typeof manifest.version === 'number' ? OLDER_VERSIONS[manifest.version] : undefined;
  if (older) throw new ImageRejectedError(`is ${manifest.version}, this harness reads ${IMAGE_VERSION}: a version ${manifest.version} image ${older}`, 'manifest.json', 'version');
  const readable = manifest.version === IMAGE_VERSION || READABLE_OLDER_VERSIONS.includes(manifest.version as number);
  if (!readable) throw new ImageRejectedError(`is ${JSON.stringify(manifest.version)}, this harness reads ${IMAGE_VERSION}`, 'manifest.json', 'version');
  if (typeof manifest.entries !== 'object' || manifest.entries === null) throw new ImageRejectedError('missing', 'manifest.json', 'entries');

  for (const name of entries.keys()) {
    if (name !== 'manifest.json' && name !== MANIFEST_DIGEST && !(name in manifest.entries)) throw new ImageRejectedError('entry is not listed in the manifest', name, '(entry)');
  }
  for (const [name, meta] of Object.entries(manifest.entries)) {
    const data = entries.get(name);
    if (!data) throw new ImageRejectedError('listed in the manifest but absent', name, '(entry)');
    if (typeof meta !== 'object' || meta === null) throw new ImageRejectedError('malformed', 'manifest.json', `entries.${name}`);
    if (meta.size !== data.length) throw new ImageRejectedError(`is ${data.length} bytes, manifest says ${meta.size}`, name, 'size');
    if (meta.sha256 !== sha256(data)) throw new ImageRejectedError('SHA-256 does not match the manifest', name, 'sha256');
  }

  const regsJson = parseJson(required(entries, 'regs.json'), 'regs.json') as Record<string, unknown>;
  const drJson = parseJson(required(entries, 'debugregs.json'), 'debugregs.json') as Record<string, unknown>;
  const regionsJson = parseJson(required(entries, 'memory.json'), 'memory.json');
  const image = validateImage({
    created: manifest.created,
    process: manifest.process,
    platform: manifest.platform,
    regs: regsJson,
    debugRegs: drJson,
    rseq: parseJson(required(entries, 'rseq.json'), 'rseq.json'),
    signals: parseJson(required(entries, 'signals.json'), 'signals.json'),
    task: parseJson(required(entries, 'task.json'), 'task.json'),
    threads: parseJson(required(entries, 'threads.json'), 'threads.json'),
    ldt: parseJson(required(entries, 'ldt.json'), 'ldt.json'),
    timers: parseJson(required(entries, 'timers.json'), 'timers.json'),
    sleep: parseJson(required(entries, 'sleep.json'), 'sleep.json'),
    pkeys: parseJson(required(entries, 'pkeys.json'), 'pkeys.json'),
    xstate: required(entries, 'xstate.bin'),
    maps: required(entries, 'maps.txt').toString('utf8'),
    regions: regionsJson,
    entries,
  });
  // Version 9 has no depends.json; in version 10 it is required like every other entry.
  const dependencies = manifest.version === IMAGE_VERSION ? parseDependencies(parseJson(required(entries, 'depends.json'), 'depends.json')) : undefined;
  return dependencies ? { ...image, dependencies } : image;
}

function required(entries: Map<string, Buffer>, name: string): Buffer {
  const data = entries.get(name);
  if (!data) throw new ImageRejectedError('missing', name, '(entry)');
  return data;
}

function parseJson(data: Buffer, entry: string): unknown {
  if (data.length > LIMITS.jsonBytes) throw new ImageRejectedError(`JSON entry larger than ${LIMITS.jsonBytes} bytes`, entry, 'size');
  const text = data.toString('utf8');
  // Our entries nest a few levels; a deeper one is hostile and would overflow the stack of whatever walks it.
  if (jsonNestingDepth(text, LIMITS.jsonDepth) > LIMITS.jsonDepth) throw new ImageRejectedError(`JSON nests deeper than ${LIMITS.jsonDepth} levels`, entry, '(json)');
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ImageRejectedError(`invalid JSON: ${(error as Error).message}`, entry, '(json)');
  }
}
