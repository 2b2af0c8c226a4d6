/**
 * Builds the guest programs listed in guests/binaries.json with the host's
 * gcc: static, warnings as errors, each at its own text address. Outputs are
 * cached by a hash of the sources, flags and compiler version.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { REPO_ROOT, ensureCacheDir } from '../util/cache-dir.ts';
import { sha256 } from '../util/hash.ts';
import { buildOnce } from '../util/build-once.ts';

export const GUESTS_DIR = path.join(REPO_ROOT, 'guests');
export const GUEST_BIN_DIR = '/usr/local/bin';

export interface GuestBinarySpec {
  name: string;
  sources: string[];
  /** headers the sources include: not compiled, but part of the cache key, so that changing one rebuilds */
  headers?: string[];
  textSegment: string;
}

export interface GuestBinaries {
  /** host path of each built binary, by name */
  hostPath: Record<string, string>;
  /** hash of everything that went into the build */
  key: string;
}

export async function readGuestManifest(): Promise<{ cflags: string[]; binaries: GuestBinarySpec[] }> {
  return JSON.parse(await readFile(path.join(GUESTS_DIR, 'binaries.json'), 'utf8'));
}

export function guestPath(name: string): string {
  return `${GUEST_BIN_DIR}/${name}`;
}

export async function buildGuestBinaries(log: (line: string) => void = () => {}): Promise<GuestBinaries> {
  const manifest = await readGuestManifest();
  const gcc = (await execa('gcc', ['--version'])).stdout.split('\n')[0] ?? '';
  const parts: string[] = [gcc, JSON.stringify(manifest)];
  for (const spec of manifest.binaries) {
    for (const src of [...spec.sources, ...(spec.headers ?? [])]) parts.push(src, await readFile(path.join(GUESTS_DIR, src), 'utf8'));
  }
  const key = sha256(parts.join('\0')).slice(0, 16);
  const dir = path.join(await ensureCacheDir('guest-bin'), key);
  const hostPath = Object.fromEntries(manifest.binaries.map((b) => [b.name, path.join(dir, b.name)]));
  await buildOnce(dir, async (staging) => {
    for (const spec of manifest.binaries) {
      log(`compiling ${spec.name}`);
      const args = [
        ...manifest.cflags,
        `-Wl,-Ttext-segment=${spec.textSegment}`,
        '-o',
        path.join(staging, spec.name),
        ...spec.sources.map((s) => path.join(GUESTS_DIR, s)),
      ];
      const result = await execa('gcc', args, { reject: false });
      if (result.exitCode !== 0) {
        throw new InfraError(`gcc failed building ${spec.name}`, { command: `gcc ${args.join(' ')}`, output: result.stderr });
      }
    }
  });
  return { hostPath, key };
}
