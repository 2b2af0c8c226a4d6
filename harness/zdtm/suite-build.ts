/**
 * CRIU's ZDTM suite built the way a user builds it, in crh's cache and
 * never in the repository: the verified upstream tarball (suite-source.ts)
 * unpacked once per SHA-256, ZDTM's own Makefiles run — the library
 * (test/zdtm/lib/libzdtmtst.a), then the chosen tests of test/zdtm/static
 * with LDFLAGS=-static (the guest runs static programs only) — so each
 * test gets the compiler flags and libraries its Makefile gives it.
 * make is incremental: tests built before are not built again.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { buildOnce } from '../util/build-once.ts';
import { ensureCacheDir } from '../util/cache-dir.ts';
import { parseDesc, parseStaticMakefile, type ZdtmDesc, type ZdtmMakefile } from './suite-selection.ts';
import { verifySourceTarball, type ZdtmSource } from './suite-source.ts';

/** The unpacked tree, its library built; what selection reads from it. */
export interface ZdtmTree {
  /** host path of test/zdtm/static */
  staticDir: string;
  makefile: ZdtmMakefile;
  /** names with a .c in static/ */
  sources: Set<string>;
  /** name -> parsed .desc (an Error when the .desc is not a literal) */
  descs: Map<string, ZdtmDesc | Error>;
}

/** The source tree of `source`, unpacked (once per tarball SHA-256) with ZDTM's library built. */
export async function zdtmTree(source: ZdtmSource, log: (line: string) => void): Promise<ZdtmTree> {
  const dir = path.join(await ensureCacheDir('zdtm', 'build'), `${source.package}_${source.version}-${source.tarball.sha256.slice(0, 16)}`);
  await buildOnce(dir, async (staging) => {
    // The tarball is verified again right before it is unpacked: what is built is what the index named.
    verifySourceTarball(await readFile(source.file), source.tarball);
    log(`unpacking ${source.tarball.name} (SHA-256 ${source.tarball.sha256})`);
    const tar = await execa('tar', ['-xf', source.file, '-C', staging, '--no-same-owner', '--no-same-permissions'], { reject: false });
    if (tar.exitCode !== 0) throw new InfraError(`tar -xf ${source.file} failed`, { output: tar.stderr });
    const top = (await readdir(staging)).filter((n) => n.startsWith(`${source.package}-`));
    if (top.length !== 1) throw new InfraError(`${source.tarball.name} did not unpack into one ${source.package}-VERSION directory`, { found: top.join(' ') });
    await writeFile(path.join(staging, 'top'), top[0]!);
    log('building test/zdtm/lib (libzdtmtst.a)');
    await make(path.join(staging, top[0]!, 'test/zdtm/lib'), ['libzdtmtst.a']);
  });
  const top = (await readFile(path.join(dir, 'top'), 'utf8')).trim();
  const staticDir = path.join(dir, top, 'test/zdtm/static');
  const files = await readdir(staticDir);
  const descs = new Map<string, ZdtmDesc | Error>();
  for (const f of files.filter((n) => n.endsWith('.desc'))) {
    try {
      descs.set(f.slice(0, -'.desc'.length), parseDesc(await readFile(path.join(staticDir, f), 'utf8'), f));
    } catch (error) {
      descs.set(f.slice(0, -'.desc'.length), error as Error);
    }
  }
  return {
    staticDir,
    makefile: parseStaticMakefile(await readFile(path.join(staticDir, 'Makefile'), 'utf8')),
    sources: new Set(files.filter((n) => n.endsWith('.c')).map((n) => n.slice(0, -2))),
    descs,
  };
}

/**
 * `make -k LDFLAGS=-static TESTS` in static/: the binaries that exist
 * afterwards, and for each test that did not build, make's last lines.
 */
export async function buildZdtmTests(tree: ZdtmTree, tests: readonly string[]): Promise<{ built: Map<string, string>; failed: Map<string, string> }> {
  const result = await execa('make', ['-k', `-j${Math.max(1, Math.min(2, tests.length))}`, 'LDFLAGS=-static', ...tests], {
    cwd: tree.staticDir,
    reject: false,
    all: true,
  });
  const built = new Map<string, string>();
  const failed = new Map<string, string>();
  for (const t of tests) {
    const binary = path.join(tree.staticDir, t);
    if (existsSync(binary)) built.set(t, binary);
    else {
      const lines = (result.all ?? '').split('\n').filter((l) => l.includes(`${t}.`) || l.includes(`${t}:`));
      failed.set(t, lines.slice(-3).join(' | ') || `make exited ${result.exitCode}`);
    }
  }
  return { built, failed };
}

async function make(cwd: string, targets: string[]): Promise<void> {
  const result = await execa('make', ['-j2', ...targets], { cwd, reject: false, all: true });
  if (result.exitCode !== 0) throw new InfraError(`make ${targets.join(' ')} in ${cwd} failed`, { output: (result.all ?? '').slice(-4000) });
}
