/**
 * The reproducer bundle: one tar with everything needed to look at a
 * verdict and to rerun it — written atomically (a temporary file renamed
 * into place), read back with the same caution as any archive from
 * elsewhere (plain relative names, regular files, bounded sizes).
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { UsageError } from './usage-error.ts';
import { uniqueSibling } from '../util/atomic-write.ts';

export interface BundleEntry {
  /** relative path inside the bundle */
  name: string;
  data: Buffer;
  /** 0o644 when absent */
  mode?: number;
}

/** Bounds for reading a bundle: a checkpoint image of a small program is a few MB. */
const LIMITS = { entryBytes: 1024 * 1024 * 1024, totalBytes: 2 * 1024 * 1024 * 1024, entries: 1024 } as const;
const SAFE_NAME = /^(?:[A-Za-z0-9_][A-Za-z0-9_.+-]*\/)?[A-Za-z0-9_][A-Za-z0-9_.+-]*$/;

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

/** The bundle's entries by name; anything but a plain bundle is a UsageError naming the entry. */
export async function readBundle(file: string): Promise<Map<string, BundleEntry>> {
  const entries = new Map<string, BundleEntry>();
  let total = 0;
  let rejection: UsageError | undefined;
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    stream.on('error', () => {});
    const fail = (why: string): void => {
      rejection ??= new UsageError(`${file}: entry ${JSON.stringify(header.name)}: ${why}`);
      stream.resume();
      extract.destroy(rejection);
    };
    if (header.type !== 'file') return fail(`type ${header.type} (a bundle holds regular files only)`);
    if (!SAFE_NAME.test(header.name)) return fail('not a plain relative name');
    if (entries.has(header.name)) return fail('appears twice');
    if (entries.size >= LIMITS.entries) return fail(`more than ${LIMITS.entries} entries`);
    const size = header.size ?? 0;
    total += size;
    if (size > LIMITS.entryBytes || total > LIMITS.totalBytes) return fail('too large');
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
    throw rejection ?? new UsageError(`${file} is not a readable bundle: ${(error as Error).message}`);
  }
  return entries;
}
