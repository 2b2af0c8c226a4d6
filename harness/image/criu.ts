/**
 * CRIU for the guest, from Debian's packages, fetched only when a run asks
 * for the criu engine.
 *
 * Which CRIU: trixie's (4.1.1 when this was written). Its binary needs
 * GLIBC_2.38 and the guest's libc is bookworm's 2.36, so it cannot use the
 * guest's libraries: it gets its own closure — trixie's libc and dynamic
 * loader included — under CRIU_PREFIX, and a wrapper at /usr/sbin/criu runs
 * it through that loader with that library path only. Nothing else in the
 * guest sees those libraries. (bookworm's 3.17 would share the guest's libc;
 * the newer CRIU is the better peer to measure against.)
 *
 * The host's apt configuration is left alone: trixie is not among its
 * sources, so crh keeps a private one in its cache — a sources file naming
 * the suite, its own lists and package cache — and passes it to apt-get and
 * apt-cache with -o. The .debs are unpacked with dpkg-deb -x, never installed.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, realpath, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { ensureCacheDir } from '../util/cache-dir.ts';
import { buildOnce } from '../util/build-once.ts';
import { sha256 } from '../util/hash.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { candidateVersions, privateApt } from './private-apt.ts';

export { candidateVersions, privateAptOptions, privateSourcesLine } from './private-apt.ts';

export const CRIU_SUITE = 'trixie';
export const CRIU_PACKAGE = 'criu';
/** Where CRIU and its own library closure live in the guest. */
export const CRIU_PREFIX = '/opt/criu';
export const CRIU_GUEST_COMMAND = '/usr/sbin/criu';
const LOADER = 'ld-linux-x86-64.so.2';

/**
 * Kernel modules `criu check` needs in this guest kind (measured on Debian's
 * 6.1 cloud kernel: without them kernel-feature detection fails); their own
 * dependencies (libcrc32c, ...) come from each module's modinfo.
 */
export const CRIU_MODULES = [
  'nfnetlink',
  'nf_tables',
  'ip_set',
  'unix_diag',
  'inet_diag',
  'tcp_diag',
  'udp_diag',
  'netlink_diag',
  'af_packet_diag',
  'tun',
  'veth',
] as const;

export interface GuestCriu {
  /** the Debian package version, e.g. 4.1.1-1 */
  version: string;
  suite: string;
  /** guest path -> host path: the binary, its libraries, the loader */
  files: ReadonlyMap<string, string>;
  /** the wrapper script's text, installed at CRIU_GUEST_COMMAND */
  wrapper: string;
}

/** The packages `criu` depends on, recursively (Depends only), with the candidate version of each. */
async function packageClosure(options: string[]): Promise<Array<{ name: string; version: string }>> {
  const deps = await execa(
    'apt-cache',
    [...options, 'depends', '--recurse', '--no-recommends', '--no-suggests', '--no-conflicts', '--no-breaks', '--no-replaces', '--no-enhances', CRIU_PACKAGE],
    { reject: false },
  );
  if (deps.exitCode !== 0) throw new InfraError(`apt-cache depends ${CRIU_PACKAGE} (${CRIU_SUITE}) failed`, { output: deps.stderr });
  // Top-level lines are package names; virtual packages show as <name> and are skipped.
  const names = [...new Set(deps.stdout.split('\n').filter((l) => /^[a-z0-9][a-z0-9+.-]+$/.test(l)))];
  // One apt-cache call for all of them: each call parses the whole package list (~0.5 s).
  const policy = await execa('apt-cache', [...options, 'policy', ...names], { reject: false });
  if (policy.exitCode !== 0) throw new InfraError(`apt-cache policy (${CRIU_SUITE}) failed`, { output: policy.stderr });
  const candidates = candidateVersions(policy.stdout);
  const packages = names.map((name) => {
    const version = candidates.get(name);
    if (!version || version === '(none)') throw new InfraError(`no ${CRIU_SUITE} candidate for ${name}`, { output: policy.stdout });
    return { name, version };
  });
  return packages;
}

/**
 * The package closure, resolved once per state of the private lists: apt-cache
 * parses the whole package list on every call (~6 s for the closure on these
 * machines), and the answer can only change when the lists do.
 */
async function resolvedOnce(options: string[]): Promise<Array<{ name: string; version: string }>> {
  const dir = await ensureCacheDir('apt', CRIU_SUITE);
  const lists = path.join(dir, 'lists');
  const release = (await readdir(lists)).filter((f) => f.endsWith('InRelease')).sort();
  const listsKey = sha256((await Promise.all(release.map((f) => readFile(path.join(lists, f))))).map((b) => sha256(b)).join('\0')).slice(0, 16);
  const memo = path.join(dir, `resolved-${CRIU_PACKAGE}-${listsKey}.json`);
  if (release.length > 0 && existsSync(memo)) {
    const saved = JSON.parse(await readFile(memo, 'utf8')) as unknown;
    if (Array.isArray(saved) && saved.every((p) => typeof p?.name === 'string' && typeof p?.version === 'string'))
      return saved as Array<{ name: string; version: string }>;
  }
  const packages = await packageClosure(options);
  if (release.length > 0) await writeFileAtomic(memo, JSON.stringify(packages));
  return packages;
}

/**
 * CRIU from Debian trixie with its library closure, unpacked into crh's
 * cache (once per version set) and described as guest files.
 */
export async function debianCriu(log: (line: string) => void = () => {}): Promise<GuestCriu> {
  const options = await privateApt(CRIU_SUITE, log);
  const packages = await resolvedOnce(options);
  const criu = packages.find((p) => p.name === CRIU_PACKAGE);
  if (!criu) throw new InfraError(`apt-cache did not list ${CRIU_PACKAGE} itself`);
  const key = packages
    .map((p) => `${p.name}=${p.version}`)
    .sort()
    .join(' ');
  const dir = path.join(await ensureCacheDir('criu'), `${criu.version}-${sha256(key).slice(0, 12)}`);
  await buildOnce(dir, async (staging) => {
    log(`fetching ${CRIU_PACKAGE} ${criu.version} from ${CRIU_SUITE} with ${packages.length - 1} library packages`);
    const debs = path.join(staging, 'debs');
    await mkdir(debs);
    const download = await execa('apt-get', [...options, 'download', ...packages.map((p) => `${p.name}=${p.version}`)], { cwd: debs, reject: false });
    if (download.exitCode !== 0) throw new InfraError(`apt-get download (${CRIU_SUITE}) failed`, { output: `${download.stdout}\n${download.stderr}` });
    for (const deb of await readdir(debs)) {
      const x = await execa('dpkg-deb', ['-x', path.join(debs, deb), path.join(staging, 'root')], { reject: false });
      if (x.exitCode !== 0) throw new InfraError(`dpkg-deb -x ${deb} failed`, { output: x.stderr });
    }
    await writeFile(path.join(staging, 'packages'), `${key.split(' ').join('\n')}\n`);
  });
  const root = path.join(dir, 'root');
  const binary = path.join(root, 'usr/sbin/criu');
  const libDir = path.join(root, 'usr/lib/x86_64-linux-gnu');
  const files = new Map<string, string>([[`${CRIU_PREFIX}/bin/criu`, binary]]);
  for (const lib of await criuLibraries(binary, libDir, root)) files.set(`${CRIU_PREFIX}/lib/${path.basename(lib.soname)}`, lib.file);
  return { version: criu.version, suite: CRIU_SUITE, files, wrapper: criuWrapper() };
}

/** The guest's /usr/sbin/criu: trixie's loader, trixie's libraries only. */
export function criuWrapper(): string {
  return `#!/bin/sh\nexec ${CRIU_PREFIX}/lib/${LOADER} --library-path ${CRIU_PREFIX}/lib ${CRIU_PREFIX}/bin/criu "$@"\n`;
}

/**
 * The libraries `binary` loads, resolved by trixie's own loader (`--list`)
 * against trixie's library directory; each must come from `root`, else a
 * host library would stand in for a trixie one in the guest.
 */
async function criuLibraries(binary: string, libDir: string, root: string): Promise<Array<{ soname: string; file: string }>> {
  const loader = path.join(libDir, LOADER);
  if (!existsSync(loader)) throw new InfraError(`${CRIU_SUITE}'s dynamic loader is missing from ${libDir}`);
  const list = await execa(loader, ['--library-path', libDir, '--list', binary], { reject: false });
  if (list.exitCode !== 0) throw new InfraError(`${loader} --list ${binary} failed`, { output: `${list.stdout}\n${list.stderr}` });
  const libs: Array<{ soname: string; file: string }> = [{ soname: LOADER, file: await realpath(loader) }];
  for (const line of list.stdout.split('\n')) {
    if (/=>\s+not found/.test(line)) throw new InfraError(`criu needs a library no ${CRIU_SUITE} package provided`, { line, list: list.stdout });
    const m = line.match(/^\s*(\S+)\s+=>\s+(\/\S+)\s+\(0x/);
    if (!m) continue;
    const [, soname, file] = m as unknown as [string, string, string];
    const real = await realpath(file);
    if (!real.startsWith(`${root}/`)) throw new InfraError(`criu's ${soname} resolved outside the ${CRIU_SUITE} closure`, { file: real, root });
    libs.push({ soname, file: real });
  }
  return libs;
}
