// expect: `crh run --jobs 3` runs three guest-booting cases at once without a collision — each guest up while the
// others are, on its own SSH port, QMP socket, gdbstub socket and QEMU process, its artifacts in its own folder — also
// from an empty cache, where all three boot cold, save the same VM state and measure the same platform profile at
// once (the state they leave starts all three next time); run one at a time, the same cases never meet (the check
// can fail).
import t, { type Test } from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import type { Verdict } from '../harness/report/verdicts.ts';
import { cacheDir, REPO_ROOT } from '../harness/util/cache-dir.ts';
import type { BarrierRecord } from './support/parallel-guest.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
const CASES = ['parallel-guest-a', 'parallel-guest-b', 'parallel-guest-c'];

async function run(jobs: number, options: { barrierMs: number; cache?: string }) {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-jobs-'));
  const started = Date.now();
  const r = await execa(
    process.execPath,
    [crh, 'run', '--cases', 'test/fixtures/parallel-cases', '--jobs', String(jobs), '--artifacts', dir, '--json', path.join(dir, 'run.json')],
    {
      cwd: REPO_ROOT,
      reject: false,
      env: { CRH_PARALLEL_GUESTS: '3', CRH_PARALLEL_BARRIER_MS: String(options.barrierMs), ...(options.cache ? { CRH_CACHE_DIR: options.cache } : {}) },
    },
  );
  const json = JSON.parse(await readFile(path.join(dir, 'run.json'), 'utf8')) as { verdicts: Verdict[] };
  const up = await Promise.all(
    CASES.map(async (c) => {
      const file = path.join(dir, 'barrier-up', `${c}.json`);
      return existsSync(file) ? (JSON.parse(await readFile(file, 'utf8')) as BarrierRecord) : undefined;
    }),
  );
  return { ...r, dir, verdicts: json.verdicts, up: up.filter((b) => b !== undefined), elapsedMs: Date.now() - started };
}

type Run = Awaited<ReturnType<typeof run>>;

async function checkNoCollision(t: Test, r: Run): Promise<void> {
  t.equal(r.exitCode, 0, `crh run --jobs 3 exits 0 (${r.elapsedMs} ms)`);
  if (r.exitCode !== 0) t.comment(`${r.stdout.slice(-4000)}\n${r.stderr.slice(-4000)}`);
  t.same(
    r.verdicts.map((v) => [v.case, v.pass]).sort(),
    CASES.map((c) => [c, true]),
    'each case met the others and reached its own guest',
  );
  const distinct = (f: (b: BarrierRecord) => unknown): number => new Set(r.up.map(f)).size;
  t.equal(
    distinct((b) => b.sshPort),
    3,
    `SSH ports ${r.up.map((b) => b.sshPort).join(' ')}`,
  );
  t.equal(
    distinct((b) => b.qemuPid),
    3,
    `QEMU pids ${r.up.map((b) => b.qemuPid).join(' ')}`,
  );
  t.equal(
    distinct((b) => b.machineName),
    3,
    `machine names ${r.up.map((b) => b.machineName).join(' ')}`,
  );
  t.equal(
    distinct((b) => path.dirname(b.gdbSocket)),
    3,
    'each machine has its own socket directory (QMP and gdbstub)',
  );
  for (const b of r.up) {
    const files = await readdir(path.join(r.dir, b.case));
    t.ok(files.includes('console.log') && files.includes('qmp.log'), `${b.case}: console and QMP logs in artifacts/${b.case}/`);
    const names = [...(await readFile(path.join(r.dir, b.case, 'qmp.log'), 'utf8')).matchAll(/"name": "([^"]+)"/g)].map((m) => m[1]);
    t.same(names, [b.machineName], `${b.case}: its QMP log holds its own machine's exchange only`);
  }
  t.notOk(
    r.up.some((b) => existsSync(path.dirname(b.gdbSocket))),
    'every socket directory is gone: no QEMU left running',
  );
}

t.test('--jobs 3 from an empty cache: three cold boots saving one state, three profiles measured at once', async (t) => {
  // Empty but for the kernel packages, which would otherwise be downloaded again.
  const cache = await mkdtemp(path.join(tmpdir(), 'crh-jobs-cache-'));
  t.teardown(() => rm(cache, { recursive: true, force: true })); // removes the link, not the kernels
  await symlink(cacheDir('kernels'), path.join(cache, 'kernels'));
  const cold = await run(3, { barrierMs: 240_000, cache });
  await checkNoCollision(t, cold);
  t.same(
    cold.up.map((b) => b.fromSavedState),
    [false, false, false],
    'all three booted cold: there was no state yet',
  );
  const states = await readdir(path.join(cache, 'states'));
  t.equal(states.filter((f) => f.endsWith('.vmstate')).length, 1, `one saved state, written by all three: ${states.join(' ')}`);
  t.same(
    states.filter((f) => f.includes('.partial-')),
    [],
    'no half-written state left behind',
  );
  const profiles = await readdir(path.join(cache, 'profiles'));
  t.equal(profiles.length, 1, `one profile file: ${profiles.join(' ')}`);
  t.doesNotThrow(() => JSON.parse(readFileSync(path.join(cache, 'profiles', profiles[0]!), 'utf8')), 'and it is whole JSON');

  const warm = await run(3, { barrierMs: 120_000, cache });
  await checkNoCollision(t, warm);
  t.same(
    warm.up.map((b) => b.fromSavedState),
    [true, true, true],
    'the state the three wrote at once starts all three',
  );
});

t.test('--jobs 1 (negative control): the same cases never meet', async (t) => {
  const r = await run(1, { barrierMs: 2000 });
  t.comment(`crh run --jobs 1: ${r.elapsedMs} ms`);
  t.equal(r.exitCode, 1, 'the barrier check fails when the guests run one after another');
  t.ok(r.verdicts.length === 3 && r.verdicts.every((v) => !v.pass && /alone at the barrier/.test(v.observed)), 'each guest was alone');
});
