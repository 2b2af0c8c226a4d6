// expect: the criu engine's pure parts: the private apt configuration names only crh's own files, candidate versions
// are read per package from one apt-cache policy answer, the guest wrapper runs CRIU through trixie's loader and
// library path only, CRIU's dump and restore command lines carry the options a spawned process needs, --engine is
// parsed (policy switches with criu are a usage error naming them), a rerun record keeps the engine and refuses any
// other, and the default image's key does not change while the CRIU variant gets its own.
import t from 'tap';
import { criuBundlePath, sideBySideExitCode } from '../harness/repro/command.ts';
import type { ReproVerdict } from '../harness/repro/verdict.ts';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { candidateVersions, criuWrapper, privateAptOptions, privateSourcesLine, CRIU_PREFIX } from '../harness/image/criu.ts';
import { criuDumpArgs, criuRestoreArgs } from '../harness/criu/commands.ts';
import { criuFailure } from '../harness/repro/criu-run.ts';
import { parseReproArgs, requestFlags, type ReproRequest } from '../harness/repro/options.ts';
import { parseRerunRecord, rerunRecord } from '../harness/repro/rerun-record.ts';
import { UsageError } from '../harness/repro/usage-error.ts';
import { BundleRejectedError } from '../harness/repro/usage-error.ts';
import { imageKey } from '../harness/image/build.ts';
import { debianCloudRecipe } from '../images/debian-cloud/recipe.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';

t.test("private apt configuration: crh's own sources, lists and cache, no system sources.list.d", async (t) => {
  const opts = privateAptOptions('/c/apt/trixie');
  t.same(opts, [
    '-o',
    'Dir::Etc::sourcelist=/c/apt/trixie/sources.list',
    '-o',
    'Dir::Etc::sourceparts=/dev/null',
    '-o',
    'Dir::State::Lists=/c/apt/trixie/lists',
    '-o',
    'Dir::Cache=/c/apt/trixie/cache',
    '-o',
    'Debug::NoLocking=1',
  ]);
  t.equal(privateSourcesLine('trixie'), 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n');
});

t.test("candidate versions come from each package's own section", async (t) => {
  const answer =
    'criu:\n  Installed: (none)\n  Candidate: 4.1.1-1\n  Version table:\n     4.1.1-1 500\nlibc6:\n  Installed: 2.36-9+deb12u10\n  Candidate: 2.41-12\nlibgone:\n  Installed: (none)\n  Candidate: (none)\n';
  t.same(
    [...candidateVersions(answer)],
    [
      ['criu', '4.1.1-1'],
      ['libc6', '2.41-12'],
      ['libgone', '(none)'],
    ],
  );
});

t.test("the guest wrapper runs trixie's criu through trixie's loader and libraries only", async (t) => {
  t.equal(criuWrapper(), `#!/bin/sh\nexec ${CRIU_PREFIX}/lib/ld-linux-x86-64.so.2 --library-path ${CRIU_PREFIX}/lib ${CRIU_PREFIX}/bin/criu "$@"\n`);
});

t.test('dump and restore command lines', async (t) => {
  t.same(criuDumpArgs('/usr/sbin/criu', 138, '/tmp/img'), ['/usr/sbin/criu', 'dump', '-t', '138', '-D', '/tmp/img', '--shell-job', '-v4', '-o', 'dump.log']);
  t.same(criuRestoreArgs('/usr/sbin/criu', '/tmp/img', '/tmp/pid'), [
    '/usr/sbin/criu',
    'restore',
    '-D',
    '/tmp/img',
    '--shell-job',
    '-d',
    '--pidfile',
    '/tmp/pid',
    '-v4',
    '-o',
    'restore.log',
  ]);
});

t.test('--engine on crh repro and crh cr', async (t) => {
  const base = ['x.c', '--checkpoint-at', 'f'];
  const crh = parseReproArgs('repro', base) as ReproRequest;
  t.equal(crh.engine, undefined, 'default: crh (no field)');
  t.equal((parseReproArgs('repro', [...base, '--engine', 'crh']) as ReproRequest).engine, undefined, '--engine crh: the default');
  const criu = parseReproArgs('repro', [...base, '--engine', 'criu']) as ReproRequest;
  t.equal(criu.engine, 'criu');
  t.same(
    requestFlags(criu).filter((f) => f.startsWith('--')),
    ['--checkpoint-at', '--hit', '--engine', '--timeout'],
    'rerun flags: --engine criu and no policy switch',
  );
  t.ok(requestFlags(crh).includes('--rf') && !requestFlags(crh).includes('--engine'), 'crh: policy switches as before');
  t.throws(
    () => parseReproArgs('repro', [...base, '--engine', 'criu', '--rf', 'keep', '--restorer', 'popf']),
    new UsageError(
      "--rf, --restorer are policies of crh's restore core and cannot apply to --engine criu (CRIU restores by its own rules); drop them or use --engine crh",
    ),
  );
  t.throws(
    () => parseReproArgs('cr', ['--binary', '/bin/true', '--when-ready', '--engine', 'criu', '--omit', 'rseq']),
    /--omit is a policy of crh's restore core/,
  );
  const both = parseReproArgs('repro', [...base, '--engine', 'criu,crh', '--rf', 'clear']) as ReproRequest;
  t.same(
    [both.engine, both.engines, both.policy.rf],
    [undefined, ['crh', 'criu'], 'clear'],
    "--engine criu,crh: both, crh first, the policy switches for crh's run",
  );
  t.throws(
    () => parseReproArgs('repro', [...base, '--engine', 'crh,criu', '--cycles', '3']),
    /--cycles chains crh's own checkpoints; with --engine crh,criu a run takes one checkpoint/,
  );
  t.throws(
    () => parseReproArgs('repro', ['x.c', '--sweep', 'f', '--count', '12', '--engine', 'crh,criu']),
    /--sweep restores through crh's restore core at every point; it goes without --engine crh,criu/,
  );
  t.throws(
    () => parseReproArgs('cr', ['--binary', '/bin/true', '--when-ready', '--pid-file', 'p', '--engine', 'crh,criu']),
    /--pid-file is crh's own attach; --engine crh,criu/,
  );
  t.throws(() => parseReproArgs('repro', [...base, '--engine', 'crh,crh']), /crh is named twice/);
  t.throws(() => parseReproArgs('repro', [...base, '--engine', 'gdb']), /"gdb" is not an engine \(crh or criu/);
  t.ok(parseReproArgs('repro', [...base, '--engine', 'crh', '--rf', 'clear']), 'policy switches stay valid with --engine crh');
});

t.test('a rerun record keeps the engine and refuses any other', async (t) => {
  const request = parseReproArgs('repro', ['x.c', '--checkpoint-at', 'f', '--engine', 'criu']) as ReproRequest;
  const record = rerunRecord(request, { source: 'source/x.c', binary: 'binary/x', files: [] });
  t.equal(record.engine, 'criu');
  t.same(parseRerunRecord(JSON.parse(JSON.stringify(record)), 'b.tar'), record, 'read back as written');
  t.throws(() => parseRerunRecord({ ...record, engine: 'crh2' }, 'b.tar'), BundleRejectedError);
  const crh = rerunRecord(parseReproArgs('repro', ['x.c', '--checkpoint-at', 'f']) as ReproRequest, { source: 'source/x.c', binary: 'binary/x', files: [] });
  t.notOk('engine' in crh, 'a crh record has no engine field (as before the criu engine)');
});

t.test("the CRIU variant has its own image key; the default's does not change", async (t) => {
  const dir = await makeTempDir('crh-criu-key-');
  t.teardown(() => removeTempDir(dir));
  const file = path.join(dir, 'busybox');
  await writeFile(file, 'bytes');
  const inputs = { recipe: debianCloudRecipe, kernelSha256: 'k', binariesKey: 'b', hostFiles: new Map([['/bin/busybox', file]]), modules: [] };
  const plain = await imageKey(inputs);
  t.equal(await imageKey({ ...inputs }), plain, 'same inputs, same key');
  const withCriu = await imageKey({ ...inputs, criuWrapper: criuWrapper() });
  t.not(withCriu, plain, 'the CRIU variant differs');
});

t.test('a CRIU failure is summed up by its first Error line', async (t) => {
  const log =
    '(01.96) inet: Collected\n(01.969191) Error (criu/sk-inet.c:191): inet: Connected TCP socket, consider using --tcp-established option.\n(01.99) Error (criu/cr-dump.c:2111): Dumping FAILED.\n';
  t.equal(criuFailure(log), 'Error (criu/sk-inet.c:191): inet: Connected TCP socket, consider using --tcp-established option.');
  t.equal(criuFailure('a\nb\nc\nd\n'), 'b | c | d', 'no Error line: the last three lines');
});

t.test("--engine crh,criu on crh repro: the exit code of two verdicts and where CRIU's bundle goes", async (t) => {
  const v = (pass: boolean, perturbed = false) => ({ pass, perturbed }) as ReproVerdict;
  t.equal(sideBySideExitCode([v(true), v(true)]), 0, 'both passed: 0');
  t.equal(sideBySideExitCode([v(true), v(false)]), 1, 'CRIU failed: 1');
  t.equal(sideBySideExitCode([v(false), v(true)]), 1, 'crh failed: 1');
  t.equal(sideBySideExitCode([v(false, true), v(false, true)]), 3, 'the harness perturbs the program (the shared uninterrupted run): 3');
  t.equal(criuBundlePath('/a/checksum.tar'), '/a/checksum-criu.tar');
  t.equal(criuBundlePath('/a/bundle'), '/a/bundle-criu.tar');
});
