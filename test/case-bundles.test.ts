// expect: bundleCases compiles case files in one build — each entry runs under plain node, a module shared by two
// cases lands in a chunk, each module's import.meta is its own source's (not the chunk's), and a case told its
// source by CRH_CASE_FILE stamps that file on its rows; a file that does not compile rejects naming it and leaves no
// output behind; dispose removes the run's output and may be called twice.
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { bundleCases } from '../harness/run/case-bundles.ts';
import { CASE_FILE_ENV } from '../harness/report/verdicts.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

/** A repository of its own whose packages are this one's, so the output resolves `tap` and friends as a case's does. */
async function fixtureRepo(t: Test): Promise<string> {
  const root = await mkdtemp(path.join(tmpdir(), 'crh-bundles-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  // Its own node_modules (each package a link to ours): the output under it is this test's alone.
  await mkdir(path.join(root, 'node_modules'));
  for (const name of await readdir(path.join(REPO_ROOT, 'node_modules')))
    if (name !== '.cache') await symlink(path.join(REPO_ROOT, 'node_modules', name), path.join(root, 'node_modules', name));
  await writeFile(path.join(root, 'tsconfig.json'), JSON.stringify({ compilerOptions: { allowImportingTsExtensions: true, noEmit: true } }));
  await mkdir(path.join(root, 'lib'));
  await mkdir(path.join(root, 'cases'));
  await writeFile(
    path.join(root, 'lib', 'where.ts'),
    'export const where = (): { dirname: string; url: string; stack: string } =>\n  ({ dirname: import.meta.dirname, url: import.meta.url, stack: new Error().stack! });\n',
  );
  const verdicts = pathToFileURL(path.join(REPO_ROOT, 'harness', 'report', 'verdicts.ts')).pathname;
  for (const name of ['a', 'b'])
    await writeFile(
      path.join(root, 'cases', `${name}.test.ts`),
      `import { where } from '../lib/where.ts';\nimport { caseFile } from '${verdicts}';\n` +
        `const own: string = import.meta.url;\nconsole.log(JSON.stringify({ name: '${name}', lib: where(), own, caseFile: caseFile() }));\n`,
    );
  return root;
}

const bundleDirs = (root: string): Promise<string[]> => readdir(path.join(root, 'node_modules', '.cache', 'cr-harness', 'case-bundles')).catch(() => []);

t.test('two cases compiled in one build run under plain node, each module with its own import.meta', async (t) => {
  const root = await fixtureRepo(t);
  const files = ['a', 'b'].map((n) => path.join(root, 'cases', `${n}.test.ts`));
  const bundles = await bundleCases(files, root);
  t.teardown(() => bundles.dispose());
  for (const [i, file] of files.entries()) {
    const entry = bundles.entryOf(file);
    t.match(entry, /\.mjs$/, `${path.basename(file)} → ${path.basename(entry)}`);
    const r = await execa(process.execPath, ['--enable-source-maps', entry], { env: { [CASE_FILE_ENV]: file } });
    const out = JSON.parse(r.stdout) as { name: string; lib: { dirname: string; url: string; stack: string }; own: string; caseFile: string };
    t.equal(out.name, ['a', 'b'][i], 'the entry is its own case');
    t.equal(out.lib.dirname, path.join(root, 'lib'), "the shared module's import.meta.dirname is its source's directory");
    t.equal(out.lib.url, pathToFileURL(path.join(root, 'lib', 'where.ts')).href, 'and its import.meta.url its source');
    t.equal(out.own, pathToFileURL(file).href, "the case's own import.meta.url is the case file");
    t.match(out.lib.stack.split('\n')[1], `${path.join(root, 'lib', 'where.ts')}:2:`, 'a stack trace names the TypeScript source and line');
    t.equal(out.caseFile, path.relative(REPO_ROOT, file), `rows are stamped with the source CRH_CASE_FILE names (${out.caseFile})`);
  }
  const chunks = await readdir(path.join(path.dirname(path.dirname(bundles.entryOf(files[0]!))), 'chunks'));
  t.ok(chunks.length >= 1, `the shared module is compiled once, into a chunk (${chunks.join(', ')})`);
  t.throws(() => bundles.entryOf(path.join(root, 'cases', 'c.test.ts')), /c\.test\.ts was not among the files compiled/, 'a file not compiled is named');
});

t.test('a case file that does not compile rejects the build, naming it, and leaves nothing behind', async (t) => {
  const root = await fixtureRepo(t);
  const broken = path.join(root, 'cases', 'broken.test.ts');
  await writeFile(broken, 'const x: number = ;\n');
  await t.rejects(bundleCases([path.join(root, 'cases', 'a.test.ts'), broken], root), /broken\.test\.ts/);
  t.same(await bundleDirs(root), [], 'no output directory left');
});

t.test('dispose removes the output and can be called again', async (t) => {
  const root = await fixtureRepo(t);
  const file = path.join(root, 'cases', 'a.test.ts');
  const bundles = await bundleCases([file], root);
  const entry = bundles.entryOf(file);
  t.ok(existsSync(entry), 'compiled');
  await bundles.dispose();
  t.notOk(existsSync(entry), 'removed');
  t.same(await bundleDirs(root), [], 'the run directory with it');
  await bundles.dispose();
  t.pass('a second dispose is harmless');
});
