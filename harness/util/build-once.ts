import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { uniqueSibling } from './atomic-write.ts';

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
  await mkdir(staging, { recursive: true });
  try {
    await build(staging);
    await writeFile(path.join(staging, 'complete'), new Date().toISOString());
    if (existsSync(dir) && !existsSync(marker)) await rm(dir, { recursive: true, force: true });
    try {
      await rename(staging, dir);
    } catch (error) {
      if (!existsSync(marker)) throw error;
    }
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
