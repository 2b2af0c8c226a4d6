/**
 * crh's private apt configurations, one per Debian suite the host's apt
 * does not know (trixie for CRIU, bookworm-backports or trixie for another
 * kernel). The host's apt configuration is left alone: each suite gets a
 * sources file naming it, its own lists and package cache under crh's
 * cache, passed to apt-get and apt-cache with -o. Packages are only ever
 * downloaded and unpacked with dpkg-deb -x, never installed.
 */
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { ensureCacheDir } from '../util/cache-dir.ts';

/** A suite name as Debian spells them (bookworm, bookworm-backports, trixie). */
export const DEBIAN_SUITE = /^[a-z][a-z0-9-]{1,40}$/;

/** The apt-get/apt-cache options of crh's private configuration rooted at `dir`. */
export function privateAptOptions(dir: string): string[] {
  return [
    `Dir::Etc::sourcelist=${path.join(dir, 'sources.list')}`,
    'Dir::Etc::sourceparts=/dev/null',
    `Dir::State::Lists=${path.join(dir, 'lists')}`,
    `Dir::Cache=${path.join(dir, 'cache')}`,
    // A private list directory needs no lock shared with the system's apt.
    'Debug::NoLocking=1',
  ].flatMap((o) => ['-o', o]);
}

/**
 * What a private configuration indexes: binary packages (`deb`: kernels,
 * CRIU) or source packages (`deb-src`: the ZDTM suite, built from CRIU's
 * source). Each has its own configuration directory, so a binary one is
 * never updated with source indexes it does not need, nor the reverse.
 */
export type AptArchiveKind = 'deb' | 'deb-src';

/** The one line of crh's private sources file: the suite's main component, signed by Debian's archive keyring. */
export function privateSourcesLine(suite: string, kind: AptArchiveKind = 'deb'): string {
  return `${kind} [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian ${suite} main\n`;
}

/**
 * The options for `suite`'s private configuration of `kind`, its lists
 * fetched (apt-get update) the first time. apt checks the InRelease
 * signature against the keyring, and every index and every file fetched
 * through them (a .deb, a source tarball) against the checksums there.
 */
export async function privateApt(suite: string, log: (line: string) => void, kind: AptArchiveKind = 'deb'): Promise<string[]> {
  if (!DEBIAN_SUITE.test(suite)) throw new InfraError(`"${suite}" is not a Debian suite name`);
  // The binary configuration keeps its old place (caches made before deb-src existed stay valid).
  const dir = kind === 'deb' ? await ensureCacheDir('apt', suite) : await ensureCacheDir('apt-src', suite);
  await mkdir(path.join(dir, 'lists', 'partial'), { recursive: true });
  await mkdir(path.join(dir, 'cache', 'archives', 'partial'), { recursive: true });
  await writeFile(path.join(dir, 'sources.list'), privateSourcesLine(suite, kind));
  const options = privateAptOptions(dir);
  const hasLists = (await readdir(path.join(dir, 'lists'))).some((f) => f.endsWith('_Packages') || f.endsWith('InRelease'));
  if (!hasLists) {
    log(`apt-get update of crh's private ${suite} ${kind} sources (${dir})`);
    const update = await execa('apt-get', [...options, 'update'], { reject: false });
    if (update.exitCode !== 0)
      throw new InfraError(`apt-get update of the private ${suite} sources failed`, {
        command: `apt-get ${options.join(' ')} update`,
        output: `${update.stdout}\n${update.stderr}`,
      });
  }
  return options;
}

/** Package name -> candidate version, from `apt-cache policy A B ...` (a "NAME:" line opens each section). */
export function candidateVersions(policyOutput: string): Map<string, string> {
  const versions = new Map<string, string>();
  let current: string | undefined;
  for (const line of policyOutput.split('\n')) {
    const section = line.match(/^(\S+):$/);
    if (section) current = section[1];
    const candidate = line.match(/^\s+Candidate:\s*(\S+)/);
    if (candidate && current) versions.set(current, candidate[1]!);
  }
  return versions;
}
