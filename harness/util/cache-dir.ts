import { homedir } from 'node:os';
import path from 'node:path';

/**
 * Root of everything the harness builds or downloads (kernels, images, saved
 * VM state). Outside the tracked tree; CRH_CACHE_DIR overrides it.
 */
export function cacheDir(...parts: string[]): string {
  const root = process.env.CRH_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), '.cache'), 'cr-harness');
  return path.join(root, ...parts);
}

/** The repository root (this file lives at harness/util/). */
export const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');
