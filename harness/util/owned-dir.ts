/**
 * Directories crh creates at places a user names (artifacts, run
 * directories beside a bundle) carry a marker file. crh deletes such a
 * directory recursively only when the marker is there: a name that resolves
 * to `.`, `..`, the artifacts root or a user's own directory is never
 * removed.
 */
import { lstat, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CrhError } from '../errors.ts';

export const OWNED_MARKER = '.crh-owned';

export class NotOwnedError extends CrhError {
  override readonly name = 'NotOwnedError';
}

/** Throws unless `name` is a plain directory name: not empty, `.`, `..`, and without a slash. */
export function assertPlainName(name: string): void {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new NotOwnedError(`refusing to use ${JSON.stringify(name)} as the name of a directory crh creates and deletes`);
  }
}

/** Whether `dir` is a real directory (not a symlink) holding crh's marker. */
export async function isOwnedDir(dir: string): Promise<boolean> {
  try {
    const [self, marker] = await Promise.all([lstat(dir), lstat(path.join(dir, OWNED_MARKER))]);
    return self.isDirectory() && marker.isFile();
  } catch {
    return false;
  }
}

/** Creates `dir` (and its parents) and marks it as crh's. An existing directory must be crh's or empty. */
export async function createOwnedDir(dir: string): Promise<void> {
  assertPlainName(path.basename(dir));
  await mkdir(dir, { recursive: true });
  if (await isOwnedDir(dir)) return;
  const info = await lstat(dir);
  if (!info.isDirectory() || (await readdir(dir)).length > 0) {
    throw new NotOwnedError(`refusing to take over ${dir}: it exists and crh did not create it`, { marker: OWNED_MARKER });
  }
  await writeFile(path.join(dir, OWNED_MARKER), `created by crh (pid ${process.pid}) at ${new Date().toISOString()}\n`, { flag: 'wx' });
}

/** Deletes `dir` recursively if crh created it; nothing when absent; refuses anything else. */
export async function removeOwnedDir(dir: string): Promise<void> {
  assertPlainName(path.basename(dir));
  if (!(await lstat(dir).catch(() => undefined))) return;
  if (!(await isOwnedDir(dir))) throw new NotOwnedError(`refusing to delete ${dir}: crh did not create it (no ${OWNED_MARKER})`, { marker: OWNED_MARKER });
  await rm(dir, { recursive: true, force: true });
}

/** An empty directory of crh's at `dir`: a previous one of crh's is deleted first; a user's is refused. */
export async function replaceOwnedDir(dir: string): Promise<void> {
  await removeOwnedDir(dir);
  await createOwnedDir(dir);
}
