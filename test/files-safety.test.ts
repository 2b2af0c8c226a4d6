// expect: crh deletes recursively only what it created (a bundle named `..tar` or `...tar` deletes no artifacts), temporary files are created exclusively so a planted symlink is never followed, the cache root is private, and the image key depends on input bytes, not on where the inputs lie.
import t from 'tap';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runDirName } from '../harness/repro/command.ts';
import { createOwnedDir, OWNED_MARKER, removeOwnedDir, replaceOwnedDir } from '../harness/util/owned-dir.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';
import { ensureCacheDir } from '../harness/util/cache-dir.ts';
import { buildImage, imageKey, type ImageInputs } from '../harness/image/build.ts';
import { debianCloudRecipe } from '../images/debian-cloud/recipe.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
const scratch = (): Promise<string> => mkdtemp(path.join(tmpdir(), 'crh-files-test-'));

const rejection = async (p: Promise<unknown>): Promise<Error | undefined> => {
  try {
    await p;
  } catch (error) {
    return error as Error;
  }
  return undefined;
};

t.test('a bundle name without a stem never names the directory of all runs', async (t) => {
  t.equal(runDirName('/x/prog-keep.tar', 'prog'), 'prog-keep');
  t.equal(runDirName('.tar', 'prog'), 'prog');
  t.equal(runDirName('..tar', 'prog'), 'prog', '`..tar` would have been artifacts/repro itself');
  t.equal(runDirName('...tar', 'prog'), 'prog', '`...tar` would have been artifacts/ itself');
  t.equal(runDirName('out/..', 'prog'), 'prog');
  t.equal(runDirName('..tar', '..'), 'program', 'a program named `..` neither');
});

t.test('crh repro --out ..tar / ...tar / .tar deletes no artifacts', async (t) => {
  const artifacts = await scratch();
  const repro = path.join(artifacts, 'repro');
  await mkdir(path.join(repro, 'earlier-run'), { recursive: true });
  await writeFile(path.join(repro, 'earlier-run', 'console.log'), 'an earlier run\n');
  await writeFile(path.join(artifacts, 'report.html'), '<p>a report</p>\n');
  const source = path.join(artifacts, 'broken.c');
  // It does not compile: crh stops with a usage error after preparing the run directory, before any guest.
  await writeFile(source, 'int main(void) { return undeclared; }\n');
  for (const out of ['..tar', '...tar', '.tar']) {
    const run = await execa(process.execPath, [crh, 'repro', source, '--when-ready', '--out', path.join(artifacts, out), '--artifacts', artifacts], {
      reject: false,
      cwd: artifacts,
    });
    t.equal(run.exitCode, 2, `--out ${out}: usage error (does not compile): ${run.stderr.split('\n').slice(-3).join(' | ')}`);
    t.equal(await readFile(path.join(repro, 'earlier-run', 'console.log'), 'utf8'), 'an earlier run\n', `--out ${out}: an earlier run's artifacts are intact`);
    t.ok(existsSync(path.join(artifacts, 'report.html')), `--out ${out}: the artifacts root is intact`);
  }
  t.ok(existsSync(path.join(repro, 'broken', OWNED_MARKER)), "the run went to repro/broken, marked as crh's");
  // A directory of the user's where the run directory would go: refused with a usage error, kept.
  await mkdir(path.join(repro, 'mine'));
  await writeFile(path.join(repro, 'mine', 'notes.txt'), 'mine\n');
  const clash = await execa(process.execPath, [crh, 'repro', source, '--when-ready', '--out', path.join(artifacts, 'mine.tar'), '--artifacts', artifacts], {
    reject: false,
    cwd: artifacts,
  });
  t.equal(clash.exitCode, 2, "a user's directory at the run directory: usage error");
  t.match(clash.stderr, /refusing to delete .*mine: crh did not create it/);
  t.equal(await readFile(path.join(repro, 'mine', 'notes.txt'), 'utf8'), 'mine\n', 'and it is intact');
});

t.test("an owned directory is replaced; a user's directory at that name is refused and kept", async (t) => {
  const root = await scratch();
  const ours = path.join(root, 'ours');
  await createOwnedDir(ours);
  await writeFile(path.join(ours, 'old.log'), 'x');
  await replaceOwnedDir(ours);
  t.same(await readdir(ours), [OWNED_MARKER], 'replaced: empty but for the marker');

  const theirs = path.join(root, 'theirs');
  await mkdir(theirs);
  await writeFile(path.join(theirs, 'thesis.tex'), 'precious');
  const refused = await rejection(replaceOwnedDir(theirs));
  t.match(refused?.message, /refusing to delete .*theirs: crh did not create it/);
  t.equal(await readFile(path.join(theirs, 'thesis.tex'), 'utf8'), 'precious', "the user's file is intact");

  // A symlink to an owned directory is not the directory: refused, the target kept.
  const link = path.join(root, 'link');
  await symlink(ours, link);
  t.ok(await rejection(removeOwnedDir(link)), 'a symlink is refused');
  t.ok(existsSync(path.join(ours, OWNED_MARKER)), 'its target intact');

  for (const name of ['.', '..', '']) t.ok(await rejection(removeOwnedDir(`${root}/${name}`)), `${JSON.stringify(name)} refused`);
  t.ok(existsSync(root), 'the root survives all of them');
  await removeOwnedDir(ours);
  t.notOk(existsSync(ours), 'an owned directory is removed');
  await removeOwnedDir(ours);
  t.pass('removing an absent one is fine');
});

t.test('temporary directories: 0700, removed only when this process made them', async (t) => {
  const dir = await makeTempDir('crh-files-tmp-');
  t.equal((await stat(dir)).mode & 0o777, 0o700);
  const stranger = await scratch();
  t.match((await rejection(removeTempDir(stranger)))?.message, /not a temporary directory this process created/);
  t.ok(existsSync(stranger), 'a directory this process did not make is kept');
  await removeTempDir(dir);
  t.notOk(existsSync(dir));
  t.ok(await rejection(makeTempDir('../crh-')), 'a prefix naming a directory is refused');
});

t.test('temporary names are created exclusively: a planted symlink is not followed', async (t) => {
  const dir = await scratch();
  const victim = path.join(dir, 'victim');
  await writeFile(victim, 'untouched');
  const victimDir = path.join(dir, 'victim-dir');
  await mkdir(victimDir);
  await writeFile(path.join(victimDir, 'keep'), 'untouched');
  // The random part of the name made predictable, as an attacker who guessed it would have it.
  const { writeFileAtomic, tempNameSource } = await import('../harness/util/atomic-write.ts');
  const random = tempNameSource.randomHex;
  tempNameSource.randomHex = () => 'deadbeef';
  t.teardown(() => void (tempNameSource.randomHex = random));
  const target = path.join(dir, 'profile.json');
  await symlink(victim, `${target}.tmp-${process.pid}-deadbeef`);
  const failed = await rejection(writeFileAtomic(target, 'new'));
  t.match((failed as NodeJS.ErrnoException | undefined)?.code, 'EEXIST', 'writeFileAtomic fails on the planted name');
  t.equal(await readFile(victim, 'utf8'), 'untouched', 'the symlink target is not written');
  t.notOk(existsSync(target), 'nothing renamed into place');

  const { buildOnce } = await import('../harness/util/build-once.ts');
  const cacheEntry = path.join(dir, 'entry');
  await symlink(victimDir, `${cacheEntry}.partial-${process.pid}-deadbeef`);
  let built = false;
  const refused = await rejection(
    buildOnce(cacheEntry, async (staging) => {
      built = true;
      await writeFile(path.join(staging, 'keep'), 'overwritten');
    }),
  );
  t.match((refused as NodeJS.ErrnoException | undefined)?.code, 'EEXIST', 'buildOnce fails on the planted staging name');
  t.notOk(built, 'nothing was built into it');
  t.same((await readdir(victimDir)).sort(), ['keep'], 'the symlinked directory is untouched');
  t.equal(await readFile(path.join(victimDir, 'keep'), 'utf8'), 'untouched');

  // An incomplete entry crh did not make (no marker) is refused rather than deleted.
  const foreign = path.join(dir, 'foreign');
  await mkdir(foreign);
  await writeFile(path.join(foreign, 'data'), 'x');
  const { buildOnce: realBuildOnce } = await import('../harness/util/build-once.ts');
  t.ok(await rejection(realBuildOnce(foreign, async () => {})), 'an unmarked incomplete directory is refused');
  t.ok(existsSync(path.join(foreign, 'data')), 'and kept');
  const fresh = path.join(dir, 'fresh');
  await realBuildOnce(fresh, async (staging) => writeFile(path.join(staging, 'out'), 'y'));
  t.equal((await stat(fresh)).mode & 0o777, 0o700, 'a built cache entry is 0700');
  t.ok(existsSync(path.join(fresh, OWNED_MARKER)) && existsSync(path.join(fresh, 'complete')), 'marked and complete');
});

t.test("the cache root is private: created 0700, a wider one tightened, another user's refused", async (t) => {
  const saved = process.env.CRH_CACHE_DIR;
  t.teardown(() => {
    if (saved === undefined) delete process.env.CRH_CACHE_DIR;
    else process.env.CRH_CACHE_DIR = saved;
  });
  const parent = await scratch();
  process.env.CRH_CACHE_DIR = path.join(parent, 'new-cache');
  const states = await ensureCacheDir('states');
  t.equal((await stat(process.env.CRH_CACHE_DIR)).mode & 0o777, 0o700, 'a new root is 0700');
  t.equal((await stat(states)).mode & 0o777, 0o700, 'and so is what is made under it');
  const old = path.join(parent, 'old-cache');
  await mkdir(old);
  await chmod(old, 0o755);
  process.env.CRH_CACHE_DIR = old;
  await ensureCacheDir('images');
  t.equal((await stat(old)).mode & 0o777, 0o700, 'a root made 0755 by an older crh is tightened');
  if (process.getuid?.() === 0) {
    const foreign = path.join(parent, 'foreign-cache');
    await mkdir(foreign);
    await execa('chown', ['65534:65534', foreign]);
    process.env.CRH_CACHE_DIR = foreign;
    t.match((await rejection(ensureCacheDir('run')))?.message, /owned by uid 65534/, 'a root owned by another user is refused');
  }
});

t.test('the image key depends on input bytes, not on their paths', async (t) => {
  const copies: string[] = [];
  for (const name of ['clone-a', 'elsewhere/clone-b']) {
    const dir = path.join(await scratch(), name);
    await mkdir(dir, { recursive: true });
    for (const file of Object.values(debianCloudRecipe.files)) await copyFile(file, path.join(dir, path.basename(file)));
    await writeFile(path.join(dir, 'libfake.so'), 'library bytes');
    copies.push(dir);
  }
  const inputsAt = (dir: string): ImageInputs => ({
    recipe: {
      ...debianCloudRecipe,
      files: Object.fromEntries(Object.entries(debianCloudRecipe.files).map(([guest, file]) => [guest, path.join(dir, path.basename(file))])),
    } as typeof debianCloudRecipe,
    kernelSha256: 'k'.repeat(64),
    binariesKey: 'b'.repeat(16),
    hostFiles: new Map([['/lib/libfake.so', path.join(dir, 'libfake.so')]]),
    modules: [{ name: 'virtio_net', file: path.join(dir, 'libfake.so') }],
  });
  const [a, b] = [await imageKey(inputsAt(copies[0]!)), await imageKey(inputsAt(copies[1]!))];
  t.equal(a, b, `two copies at different paths: one key (${a})`);
  t.equal(await imageKey({ ...inputsAt(copies[0]!), recipe: debianCloudRecipe }), a, "the repository's own recipe files give that key too");
  await writeFile(path.join(copies[1]!, 'rcS'), `${await readFile(path.join(copies[1]!, 'rcS'), 'utf8')}# one more line\n`);
  t.not(await imageKey(inputsAt(copies[1]!)), a, 'a changed byte in a recipe file: another key');
  t.not(await imageKey({ ...inputsAt(copies[0]!), kernelSha256: 'c'.repeat(64) }), a, 'another kernel: another key');
});

t.test("a copy of the repository at another path finds this checkout's image: one key, nothing built", async (t) => {
  const here = await buildImage();
  const clone = path.join(await scratch(), 'another', 'clone');
  const files = (await execa('git', ['ls-files', '-z'], { cwd: REPO_ROOT })).stdout.split('\0').filter(Boolean);
  for (const file of files) {
    await mkdir(path.dirname(path.join(clone, file)), { recursive: true });
    await copyFile(path.join(REPO_ROOT, file), path.join(clone, file));
  }
  await symlink(path.join(REPO_ROOT, 'node_modules'), path.join(clone, 'node_modules'));
  const image = await execa(process.execPath, [path.join(clone, 'bin', 'crh.js'), 'image'], { cwd: clone, reject: false });
  t.equal(image.exitCode, 0, `crh image in ${clone}: ${image.stderr.split('\n').slice(-2).join(' | ')}`);
  t.equal((JSON.parse(image.stdout) as { key: string }).key, here.key, `the clone's image key is this checkout's (${here.key})`);
  t.notMatch(image.stderr, /building guest image/, 'and it built nothing');
});
