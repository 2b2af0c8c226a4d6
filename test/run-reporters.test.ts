// expect: `crh run` shows a person a line per case and a summary within 100 columns (no escapes when piped), prints
// TAP, KTAP, JUnit or JSON on request, and `--shard i/3` runs three disjoint shards that `crh report` merges back into
// exactly the rows of the whole run; a failing row and a failing assertion beside a passing row both fail the run.
import t from 'tap';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { XMLParser } from 'fast-xml-parser';
import type { RunReport } from '../harness/report/write-reports.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
const CASES = ['alpha', 'beta', 'delta-assert-fails', 'gamma-row-fails'];
const dir = await mkdtemp(path.join(tmpdir(), 'crh-reporters-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

const run = (name: string, ...args: string[]) =>
  execa(process.execPath, [crh, 'run', '--cases', 'test/fixtures/reporter-cases', '--artifacts', path.join(dir, name), ...args], {
    cwd: REPO_ROOT,
    reject: false,
    env: { NO_COLOR: '' },
  });

t.test('people: a line per case, a summary within 100 columns, exit 1', async (t) => {
  const r = await run('people');
  t.equal(r.exitCode, 1, 'a failing row and a failing assertion fail the run');
  const lines = r.stdout.split('\n');
  t.same(
    lines.filter((l) => [...l].length > 100),
    [],
    'no line wider than 100 columns',
  );
  t.notMatch(r.stdout, /\x1b/, 'no escape sequences when stdout is not a terminal');
  for (const c of ['alpha', 'beta'])
    t.ok(
      lines.some((l) => new RegExp(`^✓ ${c} +2 rows, 1 controls`).test(l)),
      `✓ ${c}`,
    );
  t.ok(
    lines.some((l) => /^✗ gamma-row-fails +1 rows, 0 controls, 1 not as expected/.test(l)),
    '✗ the case with a failing row',
  );
  t.ok(
    lines.some((l) => /^✗ delta-assert-fails +assertions failed \(exit 1\)/.test(l)),
    '✗ the case whose assertion failed beside a passing row',
  );
  t.match(r.stdout, /an assertion that fails on purpose/, 'the failing assertion is shown');
  t.match(r.stdout, /eflags: asked 0x10202, kernel has 0x202/, 'the failing row shows its register diff');
  t.match(r.stdout, /^5 passed, 1 failed$/m, 'the count line');
  t.ok(lines.length < 40, `${lines.length} lines for 4 cases, not the raw TAP stream`);
  const tap = await readFile(path.join(dir, 'people', 'tap', 'delta-assert-fails.tap'), 'utf8');
  t.match(tap, /not ok 1 - an assertion that fails on purpose/, "each case's full TAP stays in the artifacts");
  t.match(await readFile(path.join(dir, 'people', 'verdicts.txt'), 'utf8'), /gamma-row-fails/, 'the wide verdict table stays in the artifacts');
});

t.test('machine formats on stdout', async (t) => {
  const ktap = await run(
    'ktap',
    '--reporter',
    'ktap',
    '--junit',
    path.join(dir, 'ktap.xml'),
    '--json',
    path.join(dir, 'ktap.json'),
    '--ktap',
    path.join(dir, 'ktap.ktap'),
  );
  t.equal(ktap.exitCode, 1);
  t.match(ktap.stdout, /^KTAP version 1\n/, 'KTAP first line');
  t.match(ktap.stdout, /^# kernel: /m, 'the kernel identity');
  t.match(ktap.stdout, /^1\.\.4$/m, 'four case files');
  t.match(ktap.stdout, /^not ok \d+ gamma-row-fails$/m, 'the failing row fails its case');
  // The files of every format come from the same run as the KTAP on stdout.
  const junit = new XMLParser({ ignoreAttributes: false }).parse(await readFile(path.join(dir, 'ktap.xml'), 'utf8')) as {
    testsuites: { testsuite: unknown[] };
  };
  t.equal(junit.testsuites.testsuite.length, 4, 'JUnit: a testsuite per case');
  const report = JSON.parse(await readFile(path.join(dir, 'ktap.json'), 'utf8')) as RunReport;
  t.equal(report.verdicts.length, 6, 'JSON: every row');
  t.ok(report.kernel?.sha256, 'JSON: the kernel identity');
  t.equal((await readFile(path.join(dir, 'ktap.ktap'), 'utf8')).trimEnd(), ktap.stdout.trimEnd(), '--ktap FILE holds what --reporter ktap printed');
  const tap = await run('tap', '--reporter', 'tap');
  t.match(tap.stdout, /^TAP version 14\n/, 'TAP stream');
  t.equal((tap.stdout.match(/^(?:not )?ok \d+ - /gm) ?? []).length, 4, 'a top-level test per case file');
  t.match(tap.stdout, /^not ok \d+ - delta-assert-fails$/m);
  const bad = await run('bad', '--reporter', 'xml');
  t.equal(bad.exitCode, 2, '--reporter xml is a usage error');
});

t.test('three shards: disjoint, together complete, merged back by crh report', async (t) => {
  const files: string[] = [];
  const seen: string[][] = [];
  for (let i = 1; i <= 3; i++) {
    const json = path.join(dir, `shard-${i}.json`);
    const r = await run(`shard-${i}`, '--shard', `${i}/3`, '--json', json);
    t.ok([0, 1].includes(r.exitCode ?? -1), `shard ${i}/3 ran (exit ${r.exitCode})`);
    files.push(json);
    seen.push([...new Set((JSON.parse(await readFile(json, 'utf8')) as RunReport).verdicts.map((v) => v.case))].sort());
  }
  t.same(seen.flat().sort(), CASES, 'together the shards ran every case once');
  t.equal(new Set(seen.flat()).size, seen.flat().length, 'no case in two shards');
  const junit = path.join(dir, 'merged.xml');
  const merged = await execa(process.execPath, [crh, 'report', ...files.flatMap((f) => ['--from', f]), '--junit', junit], { cwd: REPO_ROOT, reject: false });
  t.equal(merged.exitCode, 1, 'the merged run fails as the whole run does');
  t.match(merged.stdout, /3 report\(s\), 6 rows: 5 passed, 1 failed/);
  const xml = new XMLParser({ ignoreAttributes: false }).parse(await readFile(junit, 'utf8')) as { testsuites: { testsuite: unknown[] } };
  t.equal(xml.testsuites.testsuite.length, 4, 'merged JUnit: every case');
  const overlap = await execa(process.execPath, [crh, 'report', '--from', files[0]!, '--from', files[0]!], { cwd: REPO_ROOT, reject: false });
  t.equal(overlap.exitCode, 2, 'the same shard twice is refused');
  t.match(overlap.stderr, /the shards overlap/);
});
