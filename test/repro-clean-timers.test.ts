// expect: through `crh repro`/`crh cr` against a real guest, a program that leaves a daemon behind and claims files with O_EXCL passes (each run starts clean: the reference's daemon and files are gone), a daemon living on a 1 ms interval timer, POSIX timers and a timerfd checkpointed at an arbitrary moment ends with its uninterrupted output (exit 0), and the same restored with --omit timers exits 1 (the control).
import t from 'tap';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { readBundle } from '../harness/repro/bundle.ts';
import { parseVerdict } from '../harness/repro/verdict.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');

async function crhRun(args: string[]): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const r = await execa(process.execPath, [crh, ...args], { reject: false, cwd: REPO_ROOT });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

t.test('clean runs and timers through crh repro', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-repro-timers-'));
  const artifacts = path.join(dir, 'artifacts');
  const ticker = (await buildGuestBinaries()).hostPath.ticker!;

  await t.test('a daemon and O_EXCL files: every run starts clean', async (t) => {
    const bundle = path.join(dir, 'exclusive-daemon.tar');
    const r = await crhRun([
      'repro',
      path.join(REPO_ROOT, 'examples', 'repro', 'exclusive-daemon.c'),
      '--checkpoint-at',
      'checkpoint_here',
      '--out',
      bundle,
      '--artifacts',
      artifacts,
    ]);
    if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
    t.match(r.stderr, /killed what the previous run left running/, "the previous run's daemon was killed");
    const verdict = parseVerdict((await readBundle(bundle)).get('verdict.json')!.data.toString('utf8'));
    t.match(verdict.restored?.output, /^daemon\.lock exists\nclaimed main\.lock\nsum \d+\n$/, 'the checkpointed run claimed its files afresh');
  });

  for (const ms of [150, 400]) {
    await t.test(`ticker (1 ms ITIMER_REAL, POSIX timers, a timerfd) checkpointed ${ms} ms in`, async (t) => {
      const bundle = path.join(dir, `ticker-${ms}.tar`);
      const r = await crhRun(['cr', '--binary', ticker, '--checkpoint-after', String(ms), '--out', bundle, '--artifacts', artifacts]);
      if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
      t.match(r.stdout, /^verdict: PASS/m);
      const verdict = parseVerdict((await readBundle(bundle)).get('verdict.json')!.data.toString('utf8'));
      t.match(verdict.restored?.output, /^ticker ids=0,2 session=1 real=ok virtual=ok prof=ok posix0=ok posix2=ok timerfd=ok fd7=timerfd bad=0\n$/);
    });
  }

  await t.test('control --omit timers: the restored ticker stalls, exit 1', async (t) => {
    const r = await crhRun([
      'cr',
      '--binary',
      ticker,
      '--checkpoint-after',
      '300',
      '--omit',
      'timers',
      '--out',
      path.join(dir, 'ticker-omit.tar'),
      '--artifacts',
      artifacts,
    ]);
    t.equal(r.exitCode, 1, 'exit 1');
    t.match(r.stdout, /^verdict: FAIL/m);
    t.match(r.stdout, /stalled/, 'the output that differs names the stall');
  });
});
