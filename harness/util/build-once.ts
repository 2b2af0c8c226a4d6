import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { uniqueSibling } from './atomic-write.ts';
import { OWNED_MARKER, removeOwnedDir } from './owned-dir.ts';

/**
 * Produces a cache directory at most once: `build` fills a private staging
 * directory, which is renamed into place only when complete. Concurrent
 * builders race harmlessly — the first rename wins, the loser discards its
 * copy — and a crash never leaves a half-built directory under `dir`.
 */
export async function buildOnce(dir: string, build: (staging: string) => Promise<void>): Promise<void> {
  const marker = path.join(dir, 'complete');
  if (existsSync(marker)) return;
  // Unique per call: two builds of one directory in one process must not share a staging directory either.
  const staging = uniqueSibling(dir, 'partial');
  await mkdir(path.dirname(staging), { recursive: true, mode: 0o700 });
  // Not recursive: mkdir fails on anything already at the name (a planted symlink included), so the staging directory is ours alone.
  await mkdir(staging, { mode: 0o700 });
  try {
    await writeFile(path.join(staging, OWNED_MARKER), `staging of ${path.basename(dir)} (pid ${process.pid})\n`, { flag: 'wx' });
    await build(staging);
    await writeFile(path.join(staging, 'complete'), new Date().toISOString(), { flag: 'wx' });
    // An incomplete directory at `dir` is deleted only if crh made it.
    if (!existsSync(marker)) await removeOwnedDir(dir);
    try {
      await rename(staging, dir);
    } catch (error) {
      if (!existsSync(marker)) throw error;
    }
  } finally {
    // Still there only if the rename did not happen; it carries the marker written above.
    if (existsSync(staging)) await rm(staging, { recursive: true, force: true });
  }
}
