/**
 * The reproducer bundle: one tar with everything needed to look at a
 * verdict and to rerun it — written atomically (a temporary file renamed
 * into place), read back with the same caution as any archive from
 * elsewhere (plain relative names, regular files, bounded sizes).
 */
import { constants, createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { BundleRejectedError, type UsageError } from './usage-error.ts';
import { uniqueSibling } from '../util/atomic-write.ts';

export interface BundleEntry {
  /** relative path inside the bundle */
  name: string;
  data: Buffer;
  /** 0o644 when absent */
  mode?: number;
}

/**
 * Bounds for reading a bundle, which is held in memory: a checkpoint image
 * of a small program is a few MB, its static binary under 1 MB.
 */
export const BUNDLE_LIMITS = { entryBytes: 256 * 1024 * 1024, totalBytes: 512 * 1024 * 1024, entries: 256 } as const;
/** One path segment: no leading dot (so never `.` or `..`), no slash, no control character, bounded. */
export const SAFE_SEGMENT = '[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}';
/** A plain relative name: at most one directory level, each segment safe. */
export const SAFE_NAME = new RegExp(`^(?:${SAFE_SEGMENT}/)?${SAFE_SEGMENT}$`);

export async function writeBundle(file: string, entries: readonly BundleEntry[]): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = uniqueSibling(file, 'tmp');
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(tmp, { flags: 'wx' }));
  try {
    for (const e of entries) {
      if (!SAFE_NAME.test(e.name)) throw new Error(`bundle entry name ${JSON.stringify(e.name)} is not a plain relative name`);
      await new Promise<void>((resolve, reject) =>
        pack.entry({ name: e.name, size: e.data.length, mode: e.mode ?? 0o644, mtime: new Date() }, e.data, (error) => (error ? reject(error) : resolve())),
      );
    }
    pack.finalize();
    await written;
    await rename(tmp, file);
  } catch (error) {
    pack.destroy();
    await written.catch(() => {});
    await rm(tmp, { force: true });
    throw error;
  }
}

/**
 * The bundle's entries by name, read into memory and never onto the disk;
 * anything but a plain bundle — a link, a device, a directory, a name with a
 * `..` or a leading `/`, an entry or a whole too large — is a
 * BundleRejectedError naming the entry, raised at its header, before its
 * data is read.
 */
export async function readBundle(file: string): Promise<Map<string, BundleEntry>> {
  const entries = new Map<string, BundleEntry>();
  let total = 0;
  let rejection: UsageError | undefined;
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    stream.on('error', () => {});
    const fail = (why: string): void => {
      rejection ??= new BundleRejectedError(file, `entry ${JSON.stringify(header.name)}`, why);
      stream.resume();
      extract.destroy(rejection);
    };
    if (header.type !== 'file') return fail(`type ${header.type} (a bundle holds regular files only)`);
    if (!SAFE_NAME.test(header.name)) return fail('not a plain relative name');
    if (entries.has(header.name)) return fail('appears twice');
    if (entries.size >= BUNDLE_LIMITS.entries) return fail(`more than ${BUNDLE_LIMITS.entries} entries`);
    const size = header.size ?? 0;
    total += size;
    if (size > BUNDLE_LIMITS.entryBytes) return fail(`too large: ${size} bytes, more than the ${BUNDLE_LIMITS.entryBytes} an entry may hold`);
    if (total > BUNDLE_LIMITS.totalBytes)
      return fail(`too large: the entries so far hold ${total} bytes, more than the ${BUNDLE_LIMITS.totalBytes} a bundle may hold`);
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: unknown) => void chunks.push(chunk as Buffer));
    stream.on('end', () => {
      entries.set(header.name, { name: header.name, data: Buffer.concat(chunks), mode: (header.mode ?? 0o644) & 0o755 });
      next();
    });
  });
  try {
    await pipeline(createReadStream(file), extract);
  } catch (error) {
    throw rejection ?? new BundleRejectedError(file, 'tar', `not a readable bundle: ${(error as Error).message}`);
  }
  return entries;
}

/**
 * Writes `entries` into `dir`, a directory this process just made private
 * (mkdtemp, 0700): each file created new (O_EXCL) without following a link
 * (O_NOFOLLOW), readable by its owner only, so nothing already there — and
 * nothing outside `dir` — can be written through a name. Returns each
 * entry's path by name.
 */
export async function extractEntries(dir: string, entries: readonly BundleEntry[]): Promise<Map<string, string>> {
  const paths = new Map<string, string>();
  for (const entry of entries) {
    if (!SAFE_NAME.test(entry.name)) throw new Error(`bundle entry name ${JSON.stringify(entry.name)} is not a plain relative name`);
    const file = path.join(dir, entry.name);
    const parent = path.dirname(file);
    if (parent !== dir)
      await mkdir(parent, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'EEXIST') throw error;
      });
    const handle = await open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      await handle.writeFile(entry.data);
    } finally {
      await handle.close();
    }
    paths.set(entry.name, file);
  }
  return paths;
}
