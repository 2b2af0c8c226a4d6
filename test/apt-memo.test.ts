// expect: an apt-cache answer is asked once per state of apt's view (lists, sources), again when either changes, and a failed one is not kept;
// a remembered kernel package is believed only in Debian's name and version syntax.
import t from 'tap';
import { mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { aptStateStamp, rememberedAptAnswer } from '../harness/image/apt-memo.ts';
import { isKernelPackageVersion } from '../harness/image/kernel.ts';

const isAnswer = (v: unknown): v is { n: number } => typeof v === 'object' && v !== null && typeof (v as { n?: unknown }).n === 'number';

t.test('asked once, then remembered; asked again when a list changes; a failed answer is not kept', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-apt-memo-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const lists = path.join(dir, 'lists');
  await writeFile(path.join(dir, 'sources.list'), 'deb x y main\n');
  await mkdir(lists);
  await writeFile(path.join(lists, 'deb.example_dists_y_InRelease'), 'one');
  const apt = ['-o', `Dir::State::Lists=${lists}`, '-o', `Dir::Etc::sourcelist=${path.join(dir, 'sources.list')}`, '-o', 'Dir::Etc::sourceparts=/dev/null'];
  let asked = 0;
  const ask = async () => ({ n: ++asked });
  const question = `test question ${dir}`;

  t.same(await rememberedAptAnswer(question, apt, isAnswer, ask), { n: 1 }, 'first: asked');
  t.same(await rememberedAptAnswer(question, apt, isAnswer, ask), { n: 1 }, 'second: remembered, not asked');
  t.same(await rememberedAptAnswer(`${question} other`, apt, isAnswer, ask), { n: 2 }, 'another question is asked');

  const before = await aptStateStamp(apt);
  await writeFile(path.join(lists, 'deb.example_dists_y_InRelease'), 'two, longer');
  await utimes(path.join(lists, 'deb.example_dists_y_InRelease'), new Date(), new Date(Date.now() + 5000));
  t.not(await aptStateStamp(apt), before, 'the stamp follows the lists');
  t.same(await rememberedAptAnswer(question, apt, isAnswer, ask), { n: 3 }, 'lists changed: asked again');

  await writeFile(path.join(dir, 'sources.list'), 'deb x z main\n');
  t.same(await rememberedAptAnswer(question, apt, isAnswer, ask), { n: 4 }, 'sources changed: asked again');

  const failing = async (): Promise<{ n: number }> => {
    throw new Error('apt-cache failed');
  };
  await t.rejects(rememberedAptAnswer(`${question} failing`, apt, isAnswer, failing), /apt-cache failed/, 'a failure propagates');
  t.same(await rememberedAptAnswer(`${question} failing`, apt, isAnswer, ask), { n: 5 }, 'and was not kept: asked the next time');
});

t.test('a remembered kernel package is believed only in Debian syntax: nothing in it can leave the kernels directory', async (t) => {
  t.ok(isKernelPackageVersion({ name: 'linux-image-6.1.0-50-cloud-amd64', version: '6.1.176-1' }), 'bookworm');
  t.ok(isKernelPackageVersion({ name: 'linux-image-6.12.12+bpo-cloud-amd64', version: '6.12.12-1~bpo12+1' }), 'backports');
  for (const hostile of [
    { name: 'linux-image-6.1.0-50-cloud-amd64', version: '../../../etc' },
    { name: 'linux-image-6.1.0-50-cloud-amd64/../../x', version: '6.1.176-1' },
    { name: 'linux-image-6.1.0-50-cloud-amd64', version: '6.1 ; rm -rf /' },
    { name: 'linux-image-cloud-amd64', version: '6.1.176-1' },
    { name: 'linux-image-6.1.0-50-cloud-amd64' },
    null,
  ])
    t.notOk(isKernelPackageVersion(hostile), `refused: ${JSON.stringify(hostile)}`);
});
