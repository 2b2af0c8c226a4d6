/**
 * The config of the kernel a guest boots, from the best source there is:
 * 1. a config file named for it (`--kernel-config`, or the config-<release>
 *    a Debian package ships),
 * 2. the config embedded in the bzImage (CONFIG_IKCONFIG) — authoritative
 *    for that very binary,
 * 3. a config file beside the bzImage (a build tree's .config, or
 *    config-<release> next to vmlinuz-<release>) — a guess that can be stale,
 *    so it comes last.
 * Without any of them the config is unknown, and `source` says why.
 * Extracting IKCONFIG decompresses the whole kernel (about a second), so the
 * result is cached per bzImage hash.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { GuestKernel } from '../image/kernel.ts';
import { cacheDir } from '../util/cache-dir.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { extractIkconfigFile, type IkconfigResult } from './ikconfig.ts';
import { parseKernelConfig, type KernelConfig } from './kernel-config.ts';

export interface KnownKernelConfig {
  /** undefined when no config is known */
  config: KernelConfig | undefined;
  /** where the config came from, or why none is known */
  source: string;
}

/** Config files that may sit beside a bzImage, most specific first. */
export function configFilesBeside(bzImage: string): string[] {
  const dir = path.dirname(bzImage);
  const base = path.basename(bzImage);
  const candidates: string[] = [];
  if (base.startsWith('vmlinuz-')) candidates.push(path.join(dir, `config-${base.slice('vmlinuz-'.length)}`));
  candidates.push(path.join(dir, '.config'), path.join(dir, 'config'));
  // A kernel build tree: arch/x86/boot/bzImage, with .config at the top.
  const tree = /^(.*)\/arch\/x86(?:_64)?\/boot$/.exec(dir)?.[1];
  if (tree !== undefined) candidates.push(path.join(tree, '.config'));
  return candidates;
}

export async function guestKernelConfig(kernel: Pick<GuestKernel, 'bzImage' | 'config' | 'sha256'>): Promise<KnownKernelConfig> {
  if (kernel.config) return { config: parseKernelConfig(await readFile(kernel.config, 'utf8')), source: kernel.config };
  const embedded = await cachedIkconfig(kernel.bzImage, kernel.sha256);
  if (embedded.found) return { config: parseKernelConfig(embedded.config), source: embedded.how };
  const beside = configFilesBeside(kernel.bzImage).find((f) => existsSync(f));
  if (beside) return { config: parseKernelConfig(await readFile(beside, 'utf8')), source: `${beside} (found beside the bzImage; ${embedded.how})` };
  return { config: undefined, source: `unknown: no --kernel-config; ${embedded.how}; no config file beside ${kernel.bzImage}` };
}

async function cachedIkconfig(bzImage: string, sha256: string): Promise<IkconfigResult> {
  const file = cacheDir('ikconfig', `${sha256.slice(0, 32)}.json`);
  if (existsSync(file)) return JSON.parse(await readFile(file, 'utf8')) as IkconfigResult;
  const result = await extractIkconfigFile(bzImage);
  // A kernel this host could not read (a missing decompressor) may be readable tomorrow: only a definite answer is kept.
  if (!result.found && result.why === 'unreadable') return result;
  // Cases in parallel may extract the same kernel at once.
  await writeFileAtomic(file, JSON.stringify(result));
  return result;
}
