// expect: `crh zdtm` as a user runs it, against a real guest: two of our ZDTM-protocol tests in one guest, one failing
// under checkpoint/restore (--omit timers: zdtm-itimer's timer stalls) — exit 1, a line per test, JSON and JUnit rows
// for both (one pass, one failure); the same with a test that fails natively (`-- fail`) — exit 2, its row a skip that
// says so; --engine crh,criu: one native run and a row per engine side by side (and in the JSON), CRIU dumping the
// process it restored for the second cycle; a tree whose child is in another session fails CRIU's restore, its reason
// the row's.
import t from 'tap';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import type { RunReport } from '../harness/report/write-reports.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');

async function crhRun(args: string[]): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const r = await execa(process.execPath, [crh, ...args], { reject: false, cwd: REPO_ROOT });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

t.test('crh zdtm', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-zdtm-cli-'));
  const bins = await buildGuestBinaries();

  await t.test('a C/R failure beside a pass: exit 1, rows for both', async (t) => {
    const json = path.join(dir, 'run.json');
    const junit = path.join(dir, 'run.xml');
    const r = await crhRun([
      'zdtm',
      bins.hostPath['zdtm-wait']!,
      bins.hostPath['zdtm-itimer']!,
      '--omit',
      'timers',
      '--json',
      json,
      '--junit',
      junit,
      '--artifacts',
      path.join(dir, 'a1'),
    ]);
    if (!t.equal(r.exitCode, 1, 'exit 1')) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
    t.match(r.stdout, /^PASS  zdtm-wait: PASS in T\.out: PASS$/m, 'zdtm-wait passes (it has no timer)');
    t.match(r.stdout, /^FAIL  zdtm-itimer: no PASS in T\.out: FAIL: the timer stalled/m, 'zdtm-itimer fails, naming the stall');
    const report = JSON.parse(await readFile(json, 'utf8')) as RunReport;
    t.same(
      report.verdicts.map((v) => [v.case, v.scenario, v.pass]),
      [
        ['zdtm', 'zdtm-wait', true],
        ['zdtm', 'zdtm-itimer', false],
      ],
    );
    t.match(report.verdicts[0]!.policy, /omit=timers/);
    t.same(report.infrastructureFailures, []);
    const xml = await readFile(junit, 'utf8');
    t.match(xml, /<testcase [^>]*name="[^"]*zdtm-itimer[^"]*"[^>]*>\s*(?:<properties>.*?<\/properties>)?\s*<failure/, 'JUnit: zdtm-itimer a failure');
  });

  await t.test('a test that fails natively: exit 2, a skip saying so', async (t) => {
    const json = path.join(dir, 'native.json');
    const r = await crhRun(['zdtm', bins.hostPath['zdtm-wait']!, '--json', json, '--artifacts', path.join(dir, 'a2'), '--', 'fail']);
    if (!t.equal(r.exitCode, 2, 'exit 2')) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
    t.match(r.stdout, /^NATIVE-FAIL  zdtm-wait fail: fails natively: no PASS in T\.out: FAIL: asked to fail/m);
    const report = JSON.parse(await readFile(json, 'utf8')) as RunReport;
    t.match(report.verdicts[0]!.skipped, /fails natively/);
  });

  await t.test(
    "--engine crh,criu: one native run, a row per engine side by side; CRIU's refusal of a tree whose child is in another session is its FAIL",
    async (t) => {
      const json = path.join(dir, 'engines.json');
      const r = await crhRun([
        'zdtm',
        bins.hostPath['zdtm-wait']!,
        '--engine',
        'crh,criu',
        '--iters',
        '2',
        '--json',
        json,
        '--artifacts',
        path.join(dir, 'a3'),
      ]);
      if (!t.equal(r.exitCode, 0, 'exit 0: both engines passed')) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
      t.match(
        r.stdout,
        /^PASS  crh   zdtm-wait \(2 checkpoint\/restore cycles\): PASS in T\.out: PASS\nPASS  criu  zdtm-wait \(2 checkpoint\/restore cycles\): PASS in T\.out: PASS$/m,
        "crh's row, then CRIU's",
      );
      t.equal(r.stderr.match(/native run: zdtm-wait/g)?.length, 1, 'one native run for both engines');
      t.match(r.stderr, /criu dump: cycle 2\/2: the tree rooted at pid/, 'CRIU dumped it twice, the second time the process it restored');
      const report = JSON.parse(await readFile(json, 'utf8')) as RunReport;
      t.same(
        report.verdicts.map((v) => [v.engine, v.pass]),
        [
          ['crh', true],
          ['criu', true],
        ],
      );
      t.match(report.verdicts[1]!.policy, /^criu defaults \(criu 4\.1\.1/);

      // The negative control: a child forked before the daemon's setsid stays in the launcher's session, outside the tree.
      const tree = await crhRun(['zdtm', bins.hostPath['zdtm-wait']!, '--engine', 'criu', '--artifacts', path.join(dir, 'a4'), '--', 'child']);
      if (!t.equal(tree.exitCode, 1, 'exit 1')) t.comment(`${tree.stdout}\n${tree.stderr.slice(-3000)}`);
      t.match(
        tree.stdout,
        /^FAIL  zdtm-wait child: CRIU 4\.1\.1\S*: criu restore failed \(exit 1\): .*Error \(criu\/cr-restore\.c:\d+\): Can't fork for \d+: File exists/m,
        "CRIU's own reason",
      );
    },
  );
});
