/**
 * Temporary directories crh creates under the system's tmpdir. mkdtemp
 * makes each one (mode 0700, a name no one else holds); this process keeps
 * the list, and removes only what is on it — a path that merely looks like
 * one of ours is refused. Each is registered for cleanup on a signal.
 */
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CrhError } from '../errors.ts';
import { onCleanup } from './cleanup.ts';

const created = new Map<string, () => void>(); // dir -> unregister its cleanup

/**
 * A new directory `<base>/<prefix>XXXXXX` (base: the system's tmpdir; /dev/shm
 * for what must live in memory), removed on SIGINT/SIGTERM if still there.
 */
export async function makeTempDir(prefix: string, base: string = tmpdir()): Promise<string> {
  if (prefix.includes('/') || !prefix.startsWith('crh-'))
    throw new CrhError(`temporary directory prefix must start with crh- and name no directory: ${prefix}`);
  const dir = await mkdtemp(path.join(base, prefix));
  created.set(
    dir,
    onCleanup(`temporary directory ${dir}`, () => rmSync(dir, { recursive: true, force: true })),
  );
  return dir;
}

/** Removes a directory makeTempDir created in this process; anything else is refused. Removing twice is fine. */
export async function removeTempDir(dir: string): Promise<void> {
  const unregister = created.get(dir);
  if (!unregister) throw new CrhError(`refusing to remove ${dir}: not a temporary directory this process created`);
  await rm(dir, { recursive: true, force: true });
  created.delete(dir);
  unregister();
}

/** Whether `dir` is a temporary directory this process created and has not removed. */
export function isOwnTempDir(dir: string): boolean {
  return created.has(dir);
}
