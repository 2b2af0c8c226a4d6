/**
 * CRIU's source from Debian, for building its ZDTM suite outside this
 * repository (scripts/zdtm-suite.ts). Nothing of ZDTM is in the repository:
 * the user's machine fetches Debian's source package and builds it.
 *
 * How it is fetched and verified: crh's private apt configuration of the
 * suite's `deb-src` archive (image/private-apt.ts; the host's sources are
 * left alone). `apt-get update` checks the InRelease signature against
 * Debian's archive keyring and the Sources index against InRelease;
 * `apt-get source --download-only --tar-only` fetches the upstream tarball
 * and checks it against the Sources index. Then, independently of apt's
 * own check, the tarball's SHA-256 and size are compared with the
 * Checksums-Sha256 entry `apt-cache showsrc` reads from those verified
 * lists (verifySourceTarball), once at download and again before every
 * unpack: a cached tarball that changed is refused, not built.
 *
 * Only the upstream tarball is fetched (--tar-only): Debian's packaging
 * (.dsc, debian.tar.xz) changes nothing under test/zdtm, and this
 * platform's mirror answers 404 for those two files.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { privateApt } from '../image/private-apt.ts';
import { buildOnce } from '../util/build-once.ts';
import { ensureCacheDir } from '../util/cache-dir.ts';
import { sha256 } from '../util/hash.ts';

export const ZDTM_SOURCE_SUITE = 'trixie';
export const ZDTM_SOURCE_PACKAGE = 'criu';

/** One file of a source package as the Sources index lists it. */
export interface SourceFile {
  name: string;
  sha256: string;
  size: number;
}

/** A source package's record (one stanza of `apt-cache showsrc`). */
export interface SourceRecord {
  package: string;
  version: string;
  /** pool directory, e.g. pool/main/c/criu */
  directory: string;
  files: SourceFile[];
}

/** The records of `apt-cache showsrc` output (stanzas separated by blank lines), each with its Checksums-Sha256 files. */
export function parseShowsrc(text: string): SourceRecord[] {
  const records: SourceRecord[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const field = (name: string): string | undefined => new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(stanza)?.[1]?.trim();
    const pkg = field('Package');
    const version = field('Version');
    if (!pkg || !version) continue;
    const files: SourceFile[] = [];
    const block = /^Checksums-Sha256:[ \t]*\n((?:[ \t]+.*(?:\n|$))*)/m.exec(stanza)?.[1] ?? '';
    for (const line of block.split('\n')) {
      const m = /^\s+([0-9a-f]{64})\s+(\d+)\s+(\S+)\s*$/.exec(line);
      if (m) files.push({ sha256: m[1]!, size: Number(m[2]), name: m[3]! });
    }
    records.push({ package: pkg, version, directory: field('Directory') ?? '', files });
  }
  return records;
}

/** The upstream tarball of a record (NAME_UPSTREAM.orig.tar.{xz,gz,bz2}); an InfraError when it lists none. */
export function origTarball(record: SourceRecord): SourceFile {
  const orig = record.files.find((f) => /\.orig\.tar\.(xz|gz|bz2)$/.test(f.name));
  if (!orig)
    throw new InfraError(`the Sources record of ${record.package} ${record.version} lists no upstream tarball with a SHA-256`, {
      files: record.files.map((f) => f.name).join(' '),
    });
  return orig;
}

/**
 * Refuses a tarball whose size or SHA-256 is not the Sources index's: an
 * InfraError naming the file, what was expected and what was found.
 */
export function verifySourceTarball(data: Uint8Array, expected: SourceFile): void {
  if (data.length !== expected.size)
    throw new InfraError(`${expected.name}: ${data.length} bytes, the Sources index says ${expected.size}; refusing it`, {
      expectedSha256: expected.sha256,
    });
  const found = sha256(data);
  if (found !== expected.sha256)
    throw new InfraError(`${expected.name}: SHA-256 ${found}, the Sources index says ${expected.sha256}; refusing it`, { size: String(data.length) });
}

/** The fetched and verified upstream source of CRIU. */
export interface ZdtmSource {
  package: string;
  version: string;
  suite: string;
  /** where it came from, for the record */
  uri: string;
  tarball: SourceFile;
  /** host path of the verified tarball in crh's cache */
  file: string;
}

/**
 * CRIU's upstream tarball from `suite` (default trixie), fetched once into
 * crh's cache (keyed by its SHA-256) and verified as the module comment says.
 */
export async function fetchZdtmSource(log: (line: string) => void, suite = ZDTM_SOURCE_SUITE): Promise<ZdtmSource> {
  const options = await privateApt(suite, log, 'deb-src');
  const showsrc = await execa('apt-cache', [...options, 'showsrc', '--only-source', ZDTM_SOURCE_PACKAGE], { reject: false });
  if (showsrc.exitCode !== 0) throw new InfraError(`apt-cache showsrc ${ZDTM_SOURCE_PACKAGE} (${suite}) failed`, { output: showsrc.stderr });
  const record = parseShowsrc(showsrc.stdout).find((r) => r.package === ZDTM_SOURCE_PACKAGE);
  if (!record) throw new InfraError(`${suite}'s Sources index has no ${ZDTM_SOURCE_PACKAGE} record`, { output: showsrc.stdout.slice(0, 2000) });
  const tarball = origTarball(record);
  const dir = path.join(await ensureCacheDir('zdtm', 'source'), `${record.package}_${record.version}-${tarball.sha256.slice(0, 16)}`);
  await buildOnce(dir, async (staging) => {
    log(`apt-get source --download-only --tar-only ${record.package}=${record.version} (${suite})`);
    const got = await execa('apt-get', [...options, 'source', '--download-only', '--tar-only', `${record.package}=${record.version}`], {
      cwd: staging,
      reject: false,
    });
    if (got.exitCode !== 0)
      throw new InfraError(`apt-get source ${record.package}=${record.version} (${suite}) failed`, { output: `${got.stdout}\n${got.stderr}` });
    if (!(await readdir(staging)).includes(tarball.name)) throw new InfraError(`apt-get source left no ${tarball.name}`, { output: got.stdout });
    verifySourceTarball(await readFile(path.join(staging, tarball.name)), tarball);
  });
  const file = path.join(dir, tarball.name);
  // Verified again on every use: the cache is a directory of the user's, not a promise.
  verifySourceTarball(await readFile(file), tarball);
  return {
    package: record.package,
    version: record.version,
    suite,
    uri: `http://deb.debian.org/debian/${record.directory}/${tarball.name}`,
    tarball,
    file,
  };
}
