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
import { CrhError } from '../errors.ts';
import { cacheDir } from '../util/cache-dir.ts';
import { sha256 } from '../util/hash.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { extractIkconfigFile, type IkconfigResult } from './ikconfig.ts';
import { parseKernelConfig, type KernelConfig } from './kernel-config.ts';

export interface KnownKernelConfig {
  /** undefined when no config is known */
  config: KernelConfig | undefined;
  /** where the config came from, or why none is known */
  source: string;
  /** sha256 of the config text used, when one is known */
  sha256?: string;
}

/** An option a config file and the kernel's embedded config disagree on ("n" for unset or absent). */
export interface ConfigContradiction {
  option: string;
  file: string;
  embedded: string;
}

/**
 * `--kernel-config` says one thing and the bzImage's own IKCONFIG another:
 * the file belongs to another build, and every decision taken from it (skip
 * or run a case) would be about a kernel that is not the one booted.
 */
export class KernelConfigConflictError extends CrhError {
  override readonly name: string = 'KernelConfigConflictError';
  constructor(
    readonly file: string,
    readonly contradictions: readonly ConfigContradiction[],
  ) {
    const shown = contradictions.slice(0, 20).map((c) => `${c.option} (${file}: ${c.file}, embedded: ${c.embedded})`);
    super(
      `${file} contradicts the config embedded in the kernel (IKCONFIG) on ${contradictions.length} option(s): ${shown.join(', ')}${contradictions.length > shown.length ? ', …' : ''}`,
      { hint: "give the .config of this very build, or leave --kernel-config out: the embedded config is the kernel's own" },
    );
  }
}

/** Every option on which two configs disagree, sorted; an option one of them lacks counts as "n" there. */
export function configContradictions(file: KernelConfig, embedded: KernelConfig): ConfigContradiction[] {
  const options = [...new Set([...file.keys(), ...embedded.keys()])].sort();
  return options.map((option) => ({ option, file: file.get(option) ?? 'n', embedded: embedded.get(option) ?? 'n' })).filter((c) => c.file !== c.embedded);
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

/**
 * The config of `kernel`, from the best source there is (see above). A
 * config file given for it is checked against the embedded config when the
 * kernel has one: a contradiction throws KernelConfigConflictError.
 */
export async function guestKernelConfig(kernel: Pick<GuestKernel, 'bzImage' | 'config' | 'sha256'>): Promise<KnownKernelConfig> {
  const embedded = await cachedIkconfig(kernel.bzImage, kernel.sha256);
  if (kernel.config) {
    const text = await readFile(kernel.config, 'utf8');
    const config = parseKernelConfig(text);
    if (embedded.found) {
      const contradictions = configContradictions(config, parseKernelConfig(embedded.config));
      if (contradictions.length > 0) throw new KernelConfigConflictError(kernel.config, contradictions);
    }
    return { config, source: embedded.found ? `${kernel.config} (agrees with the embedded IKCONFIG)` : kernel.config, sha256: sha256(text) };
  }
  if (embedded.found) return { config: parseKernelConfig(embedded.config), source: embedded.how, sha256: sha256(embedded.config) };
  const beside = configFilesBeside(kernel.bzImage).find((f) => existsSync(f));
  if (beside) {
    const text = await readFile(beside, 'utf8');
    return { config: parseKernelConfig(text), source: `${beside} (found beside the bzImage; ${embedded.how})`, sha256: sha256(text) };
  }
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
