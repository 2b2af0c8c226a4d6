/**
 * Where the guest kernel's symbols come from. A real System.map is used when
 * the kernel ships one (a user's own build). Debian's package does not: its
 * System.map is a one-line stub pointing at the 283 MB -dbg package. Then the
 * symbols are read once from the booted guest's /proc/kallsyms — valid as a
 * System.map because guests boot with nokaslr, which is checked — and
 * cached per kernel.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { GuestImage } from '../image/build.ts';
import type { SshSession } from '../ssh/session.ts';
import { cacheDir } from '../util/cache-dir.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { sha256 } from '../util/hash.ts';
import { parseSystemMap, SymbolError } from './symbols.ts';

/** Fewer symbols than this is a stub, not a System.map. */
const MIN_SYMBOLS = 1000;

export interface KernelSymbolSource {
  file: string;
  /** "System.map" or "/proc/kallsyms of the booted guest (nokaslr)" */
  origin: string;
}

export async function kernelSymbolFile(image: GuestImage, ssh: SshSession): Promise<KernelSymbolSource> {
  const map = image.kernel.systemMap;
  if (map && existsSync(map) && parseSystemMap(await readFile(map, 'utf8')).length >= MIN_SYMBOLS) {
    return { file: map, origin: 'System.map' };
  }
  const file = cacheDir('kallsyms', `${sha256(`${image.kernel.sha256}\0${image.cmdline.join(' ')}`).slice(0, 20)}.map`);
  const origin = '/proc/kallsyms of the booted guest (nokaslr)';
  if (existsSync(file)) return { file, origin };
  const cmdline = await ssh.run('cat /proc/cmdline');
  if (!/(^|\s)nokaslr(\s|$)/.test(cmdline)) {
    throw new SymbolError('the guest kernel runs with KASLR: its /proc/kallsyms addresses are of this boot only', { cmdline });
  }
  const kallsyms = await ssh.run('cat /proc/kallsyms');
  const count = parseSystemMap(kallsyms).length;
  if (count < MIN_SYMBOLS) throw new SymbolError(`/proc/kallsyms gave ${count} symbols (addresses hidden by kptr_restrict?)`);
  // Machines started together (crh run --jobs, or several in one process) may all get here for a new kernel.
  await writeFileAtomic(file, kallsyms);
  return { file, origin };
}
