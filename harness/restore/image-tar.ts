/**
 * The checkpoint image as a file: a tar (written and read with tar-stream)
 * holding a manifest — format version, the process, the platform profile,
 * and the SHA-256 and size of every other entry — plus registers, xstate,
 * debug registers, the memory map and the contents of every dumped mapping,
 * and manifest.sha256, the manifest's own digest, so that no byte of the
 * image goes unchecked. (The digests detect corruption; they authenticate
 * nothing: whoever can write the file can recompute them, which is why
 * validate.ts checks every field too.)
 *
 * Reading treats the file as hostile: tar structure, names, sizes and
 * digests are checked here, and what comes out is an UntrustedImage — raw
 * JSON values and buffers that only validate.ts turns into a
 * CheckpointImage. The file is never modified.
 */
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { createHash } from 'node:crypto';
import { ImageRejectedError } from '../errors.ts';
import { uniqueSibling } from '../util/atomic-write.ts';
import { sha256 } from '../util/hash.ts';
import { jsonNestingDepth } from '../util/json-depth.ts';
import { USER_REGS_FIELDS } from '../x86/registers.ts';
import { DEBUG_REG_NAMES, threadXstateEntry, type CheckpointImage, type PlatformFacts, type ProcessInfo } from './image-model.ts';
import { ldtJson } from './ldt.ts';
import { pkeysJson } from './pkeys.ts';
import { signalsJson } from './signals.ts';
import { sleepJson } from './sleep-deadline.ts';
import { packStored, storedRanges } from './stored-pages.ts';
import { dependenciesJson } from './platform-dependencies.ts';
import { threadsJson } from './threads.ts';
import { timersJson } from './timers.ts';
import { eventFdsJson } from './event-fds.ts';
import { clocksJson } from './time-namespace.ts';

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
 * (platform-dependencies.ts) — so a restore elsewhere is refused by name;
 * and a process tree (tree-image.ts): tree.json (each process's pid, parent,
 * group, session, exit signal) and tree/PID.bin, every process but the root
 * as an image of its own. A version 9 image is read as a one-process tree
 * that recorded no dependencies (a restore then says it could not check
 * them);
 * 11: clocks.json, the process's own CLOCK_MONOTONIC and CLOCK_BOOTTIME at
 * the checkpoint and the boot id they count from (time-namespace.ts), so a
 * restore in another boot continues them in a time namespace; memory.json
 * regions may carry `vmFlags`, the mapping attributes a restore gives back
 * (vma-flags.ts), written only when a region has one. A version 9
 * or 10 image is read with no clocks (a restore elsewhere then says the
 * clocks are the target boot's). Still 11, optional keys of task.json
 * written only when present (an image without them reads as before):
 * umask; eventfds (fd, counter as a decimal string, O_NONBLOCK/O_CLOEXEC
 * flags, semaphore), signalfds (fd, mask as a hex string, flags) and
 * membarrier (the private expedited registrations by name): event-fds.ts,
 * membarrier.ts.
 */
export const IMAGE_VERSION = 11;
/** Versions read as they are: 10 differs from 11 only in holding no clocks.json, 9 also no tree entries and no depends.json. */
const READABLE_VERSIONS = [9, 10, IMAGE_VERSION];
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

/** An image as the file holds it: every value still untyped, every buffer unchecked beyond its digest. */
export interface UntrustedImage {
  created: unknown;
  process: unknown;
  platform: unknown;
  regs: Record<string, unknown>;
  debugRegs: Record<string, unknown>;
  rseq: unknown;
  signals: unknown;
  task: unknown;
  threads: unknown;
  ldt: unknown;
  timers: unknown;
  sleep: unknown;
  pkeys: unknown;
  /** depends.json (platform-dependencies.ts); undefined in a version 9 image, which has none */
  dependencies: unknown;
  /** clocks.json (time-namespace.ts); undefined before version 11 */
  clocks: unknown;
  xstate: Buffer;
  maps: string;
  regions: unknown;
  entries: Map<string, Buffer>;
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

const json = (v: unknown): Buffer => Buffer.from(`${JSON.stringify(v, null, 2)}\n`);

/**
 * Serializes an image to its tar entries (manifest last, so it can list the
 * others). `extra` entries (a tree's: tree-image.ts) are listed in the
 * manifest with the rest.
 */
export function imageEntries(image: CheckpointImage, extra: ReadonlyMap<string, Buffer> = new Map()): Map<string, Buffer> {
  const entries = contentEntries(image, extra);
  return new Map([...entries, ...manifestEntries(image, entries, digestsOf(entries))]);
}

/** Every entry but the manifest and its digest. */
function contentEntries(image: CheckpointImage, extra: ReadonlyMap<string, Buffer>): Map<string, Buffer> {
  const entries = new Map<string, Buffer>();
  entries.set('regs.json', json(Object.fromEntries(USER_REGS_FIELDS.map((n) => [n, hex(image.regs[n])]))));
  entries.set('debugregs.json', json(Object.fromEntries(DEBUG_REG_NAMES.map((n) => [n, hex(image.debugRegs[n])]))));
  entries.set('rseq.json', json(image.rseq && { area: hex(image.rseq.area), size: image.rseq.size, signature: `0x${image.rseq.signature.toString(16)}` }));
  entries.set('signals.json', json(signalsJson(image.signals)));
  entries.set(
    'task.json',
    json({
      pgid: image.task.pgid,
      sid: image.task.sid,
      files: image.task.files.map((f) => ({ ...f, pos: f.pos.toString() })),
      userfaultfds: image.task.userfaultfds ?? [],
      ...(image.task.umask !== undefined ? { umask: image.task.umask } : {}),
      ...eventFdsJson(image.task),
      ...(image.task.membarrier?.length ? { membarrier: image.task.membarrier } : {}),
    }),
  );
  entries.set('threads.json', json(threadsJson(image)));
  entries.set('ldt.json', json(ldtJson(image.ldt)));
  entries.set('timers.json', json(timersJson(image.timers)));
  entries.set('sleep.json', json(sleepJson(image.sleep)));
  entries.set('pkeys.json', json(pkeysJson(image.pkeys)));
  entries.set('depends.json', json(dependenciesJson(image.dependencies)));
  entries.set('clocks.json', json(clocksJson(image.clocks)));
  entries.set('xstate.bin', image.xstate);
  for (const t of image.threads) entries.set(threadXstateEntry(t.tid), t.xstate);
  entries.set('maps.txt', Buffer.from(image.maps));
  entries.set(
    'memory.json',
    json(
      image.regions.map((r) => ({
        start: hex(r.start),
        end: hex(r.end),
        perms: r.perms,
        name: r.name,
        file: r.file,
        offset: hex(r.offset),
        entry: r.entry,
        userfault: r.userfault ?? 0,
        absent: (r.absent ?? []).map(([start, end]) => [hex(start), hex(end)]),
        stored: storedRanges(r).map(([start, end]) => [hex(start), hex(end)]),
        ...(r.vmFlags?.length ? { vmFlags: r.vmFlags } : {}),
      })),
    ),
  );
  for (const r of image.regions) {
    if (r.entry !== null) entries.set(r.entry, packStored(r, storedRanges(r), image.memory.get(r.entry)!));
  }
  for (const [name, data] of extra) entries.set(name, data);
  return entries;
}

/** The SHA-256 of each entry, by name. */
function digestsOf(entries: ReadonlyMap<string, Buffer>): Map<string, string> {
  return new Map([...entries].map(([name, data]) => [name, sha256(data)]));
}

/** manifest.json, listing `entries` with their `digests`, and manifest.sha256. */
function manifestEntries(image: CheckpointImage, entries: ReadonlyMap<string, Buffer>, digests: ReadonlyMap<string, string>): Map<string, Buffer> {
  const manifest: Manifest = {
    format: IMAGE_FORMAT,
    version: IMAGE_VERSION,
    created: image.created,
    process: image.process,
    platform: image.platform,
    entries: Object.fromEntries([...entries].map(([name, data]) => [name, { sha256: digests.get(name)!, size: data.length }])),
  };
  const manifestBytes = json(manifest);
  return new Map([
    ['manifest.json', manifestBytes],
    [MANIFEST_DIGEST, Buffer.from(`${sha256(manifestBytes)}\n`)],
  ]);
}

/**
 * Writes the image as a tar, atomically (a temporary file renamed into
 * place); `extra` as for imageEntries. The tar is packed in memory — its
 * chunks are the entries' own buffers between headers — and written in one
 * go: a stream to the file moved a 64 MiB image at a third of the speed.
 * The entries go to the file while their digests are computed (the write
 * runs on libuv's pool, SHA-256 here), then the manifest that lists them:
 * a 64 MiB image was written in 70-80 ms one after the other.
 */
export async function writeCheckpointImage(image: CheckpointImage, file: string, extra: ReadonlyMap<string, Buffer> = new Map()): Promise<void> {
  const entries = contentEntries(image, extra);
  const body = withoutEndOfArchive(await packTar(entries));
  const tmp = uniqueSibling(file, 'tmp');
  const handle = await open(tmp, 'wx', 0o644);
  try {
    try {
      const written = writeAll(handle, body);
      written.catch(() => {});
      const digests = digestsOf(entries);
      await written;
      await writeAll(handle, await packTar(manifestEntries(image, entries, digests)));
    } finally {
      await handle.close();
    }
    await rename(tmp, file);
  } catch (error) {
    await rm(tmp, { force: true });
    throw error;
  }
}

/** A packed tar's chunks without the two zero blocks that end it (tar-stream pushes them as the last chunk), so that more entries can follow. */
function withoutEndOfArchive(chunks: Buffer[]): Buffer[] {
  const last = chunks.at(-1);
  if (!last || last.length !== 1024 || last.some((b) => b !== 0)) throw new Error('tar-stream did not end the archive with one chunk of two zero blocks');
  return chunks.slice(0, -1);
}

/** Appends `chunks` to the file at its current end (one writev per IOV_MAX chunks, short writes continued). */
async function writeAll(handle: FileHandle, chunks: readonly Buffer[]): Promise<void> {
  const IOV_MAX = 1024;
  for (let from = 0; from < chunks.length; from += IOV_MAX) {
    let part = chunks.slice(from, from + IOV_MAX);
    let left = part.reduce((n, c) => n + c.length, 0);
    while (left > 0) {
      const { bytesWritten } = await handle.writev(part);
      if (bytesWritten === 0) throw new Error('the image file took no bytes');
      left -= bytesWritten;
      part = skipBytes(part, bytesWritten);
    }
  }
}

/** `chunks` without their first `n` bytes. */
function skipBytes(chunks: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) {
    if (n >= c.length) n -= c.length;
    else {
      out.push(n > 0 ? c.subarray(n) : c);
      n = 0;
    }
  }
  return out;
}

/** The tar of `entries`, as the chunks tar-stream emits (headers, the entries' buffers, padding). */
async function packTar(entries: ReadonlyMap<string, Buffer>): Promise<Buffer[]> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (chunk: unknown) => void chunks.push(chunk as Buffer));
  const ended = new Promise<void>((resolve, reject) => {
    pack.once('end', resolve);
    pack.once('error', reject);
  });
  for (const [name, data] of entries) {
    await new Promise<void>((resolve, reject) => {
      pack.entry({ name, size: data.length, mode: 0o644, mtime: new Date(0) }, data, (e) => (e ? reject(e) : resolve()));
    });
  }
  pack.finalize();
  await ended;
  return chunks;
}

const SAFE_NAME = /^(?:[a-z0-9_-]+\/)?[a-z0-9_-]+\.(?:json|bin|txt|sha256)$/;

/** What a tar holds besides its entries' bytes, at most: a header and padding per entry, the end blocks. */
const TAR_OVERHEAD_BYTES = (LIMITS.entries + 2) * 1024;

/** Reads tar entries (a file, or a tar already in memory: a tree's nested image) with the structural checks: names, types, duplicates, sizes. */
export async function readTarEntries(file: string | Buffer): Promise<Map<string, Buffer>> {
  return (await readTar(file)).entries;
}

/** A tar's entries and the SHA-256 of each, computed from the very buffers as they were read. */
export interface ReadTar {
  entries: Map<string, Buffer>;
  digests: Map<string, string>;
}

/** The bytes read ahead of the parse: the next piece is read (on libuv's pool) while this one is parsed and hashed. */
const READ_PIECE_BYTES = 4 * 1024 * 1024;

/**
 * readTarEntries, with each entry's SHA-256 taken as its bytes go by. A
 * file is read whole into one buffer (bounded first: one allocation, and
 * every entry a view of it, where a file stream parsed a 64 MiB image in
 * 0.6-2 s), piece by piece, each piece parsed and hashed while the next is
 * read: a 64 MiB image was read, then parsed, then hashed in 130-150 ms.
 */
export async function readTar(file: string | Buffer): Promise<ReadTar> {
  const entries = new Map<string, Buffer>();
  const digests = new Map<string, string>();
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
    const hash = createHash('sha256');
    stream.on('data', (chunk: unknown) => {
      chunks.push(chunk as Buffer);
      hash.update(chunk as Buffer);
    });
    stream.on('end', () => {
      // Pieces that are consecutive views of one buffer (the file read whole) stay a view: a copy of 64 MiB costs its page faults again.
      entries.set(header.name, joined(chunks));
      digests.set(header.name, hash.digest('hex'));
      next();
    });
  });
  try {
    await pipeline(Readable.from(typeof file === 'string' ? readPieces(file) : [file]), extract);
  } catch (error) {
    if (error instanceof ImageRejectedError) rejection ??= error;
    throw rejection ?? new ImageRejectedError(`not a readable tar: ${(error as Error).message}`, typeof file === 'string' ? file : '(nested image)', 'tar');
  }
  if (rejection) throw rejection;
  return { entries, digests };
}

/** The file, bounded, read into one buffer and yielded a piece at a time, the next piece's read already under way. */
async function* readPieces(file: string): AsyncGenerator<Buffer> {
  const handle = await open(file, 'r');
  try {
    const size = (await handle.stat()).size;
    if (size > LIMITS.totalBytes + TAR_OVERHEAD_BYTES)
      throw new ImageRejectedError(`image file is ${size} bytes, more than its entries' limit of ${LIMITS.totalBytes} bytes allows`, file, 'size');
    const whole = Buffer.allocUnsafe(size);
    const readPiece = async (from: number): Promise<Buffer> => {
      const to = Math.min(size, from + READ_PIECE_BYTES);
      for (let at = from; at < to;) {
        const { bytesRead } = await handle.read(whole, at, to - at, at);
        if (bytesRead === 0) throw new ImageRejectedError(`image file ended at byte ${at} of ${size} while being read`, file, 'size');
        at += bytesRead;
      }
      return whole.subarray(from, to);
    };
    let ahead = size > 0 ? readPiece(0) : undefined;
    for (let from = 0; ahead; from += READ_PIECE_BYTES) {
      const piece = await ahead;
      ahead = from + READ_PIECE_BYTES < size ? readPiece(from + READ_PIECE_BYTES) : undefined;
      // A read left pending when the consumer stops (a rejected entry) must not surface as an unhandled rejection.
      ahead?.catch(() => {});
      yield piece;
    }
  } finally {
    await handle.close();
  }
}

/** `chunks` as one buffer: a view when they are consecutive pieces of one buffer, else a copy. */
function joined(chunks: readonly Buffer[]): Buffer {
  if (chunks.length === 1) return chunks[0]!;
  if (chunks.length === 0) return Buffer.alloc(0);
  const first = chunks[0]!;
  let end = first.byteOffset + first.length;
  for (const c of chunks.slice(1)) {
    if (c.buffer !== first.buffer || c.byteOffset !== end) return Buffer.concat(chunks);
    end += c.length;
  }
  return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
}

/**
 * The image's entries as untyped values, once the manifest, its digest, the
 * version and every entry's size and SHA-256 check out — nothing more is
 * believed: validate.ts checks every field before anything else sees it.
 * `tree`: the caller reads the tree entries itself (tree-image.ts). Without
 * it, an image holding more than one process is refused: restoring its root
 * alone would silently lose the others. `digests`: each entry's SHA-256 as
 * readTar took it from these very buffers, so none is hashed twice.
 */
export function untrustedImage(
  entries: Map<string, Buffer>,
  { tree = false, digests }: { tree?: boolean; digests?: ReadonlyMap<string, string> } = {},
): UntrustedImage {
  const manifestRaw = entries.get('manifest.json');
  if (!manifestRaw) throw new ImageRejectedError('missing', 'manifest.json', '(entry)');
  const digest = entries.get(MANIFEST_DIGEST);
  if (!digest) throw new ImageRejectedError('missing', MANIFEST_DIGEST, '(entry)');
  if (digest.toString('latin1') !== `${sha256(manifestRaw)}\n`)
    throw new ImageRejectedError('does not match the SHA-256 of manifest.json', MANIFEST_DIGEST, 'sha256');
  const manifest = parseJson(manifestRaw, 'manifest.json') as Partial<Manifest>;
  if (manifest.format !== IMAGE_FORMAT)
    throw new ImageRejectedError(`is ${JSON.stringify(manifest.format)}, expected ${IMAGE_FORMAT}`, 'manifest.json', 'format');
  const older = typeof manifest.version === 'number' ? OLDER_VERSIONS[manifest.version] : undefined;
  if (older)
    throw new ImageRejectedError(
      `is ${manifest.version}, this harness reads ${IMAGE_VERSION}: a version ${manifest.version} image ${older}`,
      'manifest.json',
      'version',
    );
  if (!READABLE_VERSIONS.includes(manifest.version as number))
    throw new ImageRejectedError(`is ${JSON.stringify(manifest.version)}, this harness reads ${READABLE_VERSIONS.join(' and ')}`, 'manifest.json', 'version');
  const nested = [...entries.keys()].filter((name) => name.startsWith('tree/'));
  if (manifest.version === 9 && (nested.length > 0 || entries.has('tree.json')))
    throw new ImageRejectedError('a version 9 image holds no process tree', nested[0] ?? 'tree.json', '(entry)');
  if (nested.length > 0 && !tree)
    throw new ImageRejectedError(
      `holds a process tree (${nested.length + 1} processes): restore it as a tree (restoreTree), not its root alone`,
      nested[0]!,
      '(entry)',
    );
  if (typeof manifest.entries !== 'object' || manifest.entries === null) throw new ImageRejectedError('missing', 'manifest.json', 'entries');

  for (const name of entries.keys()) {
    if (name !== 'manifest.json' && name !== MANIFEST_DIGEST && !(name in manifest.entries))
      throw new ImageRejectedError('entry is not listed in the manifest', name, '(entry)');
  }
  for (const [name, meta] of Object.entries(manifest.entries)) {
    const data = entries.get(name);
    if (!data) throw new ImageRejectedError('listed in the manifest but absent', name, '(entry)');
    if (typeof meta !== 'object' || meta === null) throw new ImageRejectedError('malformed', 'manifest.json', `entries.${name}`);
    if (meta.size !== data.length) throw new ImageRejectedError(`is ${data.length} bytes, manifest says ${meta.size}`, name, 'size');
    if (meta.sha256 !== (digests?.get(name) ?? sha256(data))) throw new ImageRejectedError('SHA-256 does not match the manifest', name, 'sha256');
  }

  const regsJson = parseJson(required(entries, 'regs.json'), 'regs.json') as Record<string, unknown>;
  const drJson = parseJson(required(entries, 'debugregs.json'), 'debugregs.json') as Record<string, unknown>;
  const regionsJson = parseJson(required(entries, 'memory.json'), 'memory.json');
  return {
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
    dependencies: manifest.version === 9 ? undefined : parseJson(required(entries, 'depends.json'), 'depends.json'),
    clocks: manifest.version === IMAGE_VERSION ? parseJson(required(entries, 'clocks.json'), 'clocks.json') : undefined,
    xstate: required(entries, 'xstate.bin'),
    maps: required(entries, 'maps.txt').toString('utf8'),
    regions: regionsJson,
    entries,
  };
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
  if (jsonNestingDepth(text, LIMITS.jsonDepth) > LIMITS.jsonDepth)
    throw new ImageRejectedError(`JSON nests deeper than ${LIMITS.jsonDepth} levels`, entry, '(json)');
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ImageRejectedError(`invalid JSON: ${(error as Error).message}`, entry, '(json)');
  }
}
