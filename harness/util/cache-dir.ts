import { chmod, mkdir, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { InfraError } from '../errors.ts';

/**
 * Root of everything the harness builds or downloads (kernels, images, saved
 * VM state). Outside the tracked tree; CRH_CACHE_DIR overrides it.
 */
export function cacheDir(...parts: string[]): string {
  return path.join(cacheRoot(), ...parts);
}

function cacheRoot(): string {
  return process.env.CRH_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), '.cache'), 'cr-harness');
}

/**
 * `cacheDir(...parts)`, created, with the cache root private to this user:
 * images hold SSH private keys and saved VM states hold guest memory. The
 * root is created 0700; one created wider (by an older crh) is tightened;
 * one owned by another user, or not a directory, is refused. Directories
 * under it are created 0700 too.
 */
export async function ensureCacheDir(...parts: string[]): Promise<string> {
  const root = cacheRoot();
  await mkdir(root, { recursive: true, mode: 0o700 });
  await assertPrivateDir(root);
  const dir = path.join(root, ...parts);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/** Tightens `dir` to 0700 when it is ours and wider; throws when it is someone else's or no directory. */
export async function assertPrivateDir(dir: string): Promise<void> {
  // stat, not lstat: CRH_CACHE_DIR may well be a symlink to a roomier disk — what counts is the directory it names.
  const info = await stat(dir);
  const uid = process.getuid?.();
  if (!info.isDirectory()) throw new InfraError(`cache ${dir} is not a directory`);
  if (uid !== undefined && info.uid !== uid)
    throw new InfraError(`refusing cache ${dir}: owned by uid ${info.uid}, not ${uid}`, { hint: 'set CRH_CACHE_DIR to a directory of your own' });
  if ((info.mode & 0o077) !== 0) await chmod(dir, 0o700);
}

/** The repository root (this file lives at harness/util/). */
export const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');
