import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * Writes `file` so that a reader sees the old content or the new, never a
 * part: the data goes to a temporary file beside it, then is renamed over
 * it. The temporary name is unique per call, so writers in parallel — other
 * processes, or other machines in this one — never write into each other's;
 * and it is created exclusively (O_CREAT|O_EXCL), so a file or symlink
 * someone planted at that name fails the write instead of being followed.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = uniqueSibling(file, 'tmp');
  try {
    await writeFile(tmp, data, { flag: 'wx', mode });
    await rename(tmp, file);
  } catch (error) {
    await rm(tmp, { force: true });
    throw error;
  }
}

/**
 * `<file>.<tag>-<pid>-<random>`: a name beside `file` no other writer picks.
 * Create it exclusively (flag 'wx', or mkdir without `recursive`): the name
 * is hard to guess, not impossible.
 */
/**
 * Where temporary names get their randomness. A test swaps it to plant a
 * link at the very name an attacker who guessed it would use (module mocks
 * would do the same but leave tapmock:// URLs that c8's report cannot read).
 */
export const tempNameSource = { randomHex: (bytes: number): string => randomBytes(bytes).toString('hex') };

export function uniqueSibling(file: string, tag: string): string {
  return `${file}.${tag}-${process.pid}-${tempNameSource.randomHex(4)}`;
}
