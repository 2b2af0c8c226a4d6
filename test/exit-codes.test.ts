// expect: every exit code docs/ci.md lists is produced by crh itself, run as a child process: 0 (help, a run with a pass),
// 1 (a failed verdict row, a run that tested nothing), 2 (every kind of refused command line on every subcommand, no stack
// trace), 69 (a kernel that cannot be had). 69 from a guest lost mid-run is test/guest-loss.test.ts.
import t from 'tap';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { COMMANDS } from '../harness/cli/command-line.ts';
import { EXIT } from '../harness/cli/exit-codes.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');

async function crhRun(args: string[], env: Record<string, string> = {}): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const r = await execa(process.execPath, [crh, ...args], { reject: false, cwd: REPO_ROOT, env: { ...process.env, ...env } });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

/** Runs each command line, four crh processes at a time (each starts Node and tsx: seconds apiece), results in order. */
async function crhRunAll(lines: readonly string[][], env: Record<string, string> = {}): Promise<Awaited<ReturnType<typeof crhRun>>[]> {
  const results: Awaited<ReturnType<typeof crhRun>>[] = new Array(lines.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < lines.length; i = next++) results[i] = await crhRun(lines[i]!, env);
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return results;
}

/** A stack trace line (`    at fn (file:line:col)`) or node:util's TypeError: what a usage error must never show. */
const STACK = /^\s+at .+[:(]|TypeError|ERR_PARSE_ARGS/m;

t.test('exit 0: --help and -h on every command print its usage, naming every option its table declares', async (t) => {
  const lines = Object.keys(COMMANDS).flatMap((name) => ['--help', '-h'].map((flag) => [name, flag]));
  const results = await crhRunAll(lines);
  for (const [name, spec] of Object.entries(COMMANDS)) {
    for (const flag of ['--help', '-h']) {
      const r = results[lines.findIndex(([n, f]) => n === name && f === flag)]!;
      t.equal(r.exitCode, EXIT.ok, `crh ${name} ${flag} exits 0`);
      t.equal(r.stdout.trim(), spec.usage.trim(), `crh ${name} ${flag} prints the usage its usage errors carry`);
    }
    for (const key of Object.keys(spec.options)) t.ok(spec.usage.includes(`--${key}`), `crh ${name}: the usage names --${key}`);
  }
  const top = await crhRun(['--help']);
  t.equal(top.exitCode, EXIT.ok, 'crh --help');
  for (const name of Object.keys(COMMANDS)) t.match(top.stdout, name, `crh --help names ${name}`);
});

t.test('exit 2: every refused command line, on every subcommand, with the reason and no stack', async (t) => {
  const artifacts = await mkdtemp(path.join(tmpdir(), 'crh-exit-2-'));
  const refused: Array<[string[], RegExp]> = [
    [[], /no command/],
    [['nope'], /unknown command "nope"/],
    [['bootstrap', '--bogus'], /Unknown option '--bogus'[\s\S]*usage: crh bootstrap/],
    [['image', '--bogus'], /Unknown option '--bogus'[\s\S]*usage: crh image/],
    [['image', '--kernel', 'debian:--help'], /"--help" is not a Debian package name/],
    [['image', '--kernel', ''], /--kernel takes a file or debian:PACKAGE/],
    [['image', 'extra'], /Unexpected argument 'extra'/],
    [['boot', '--kernel'], /--kernel <value>' argument missing/],
    [['boot', '--system-map', 'debian:linux-image-amd64'], /--system-map takes a file, not a Debian package/],
    [['ssh'], /crh boot/],
    [['verdicts', '--bogus'], /Unknown option '--bogus'[\s\S]*usage: crh verdicts/],
    [['verdicts', '--reset', '--check'], /exclude each other/],
    [['doctor', '--json=yes'], /--json' does not take an argument/],
    [['doctor', '--kernel', 'debian:-o=APT::x'], /not a Debian package name/],
    [['doctor', '--engine', 'gdb'], /--engine takes crh or criu, not "gdb"[\s\S]*usage: crh doctor/],
    [['restore', 'image.tar'], /needs --dry-run[\s\S]*usage: crh restore/],
    [['restore', '--dry-run'], /takes one IMAGE \(got 0\)/],
    [['restore', '--dry-run', 'a.tar', 'b.tar'], /takes one IMAGE \(got 2\)/],
    [['restore', '--dry-run', 'a.tar', '--rf', 'bogus'], /unknown rf policy "bogus"/],
    [['restore', '--dry-run', 'a.tar', '--omit', 'everything'], /unknown omit "everything"/],
    [['restore', '--dry-run', 'a.tar', '--restorer'], /--restorer <value>' argument missing/],
    [['run', '--bogus'], /Unknown option '--bogus'[\s\S]*usage: crh run/],
    [['run', '--jobs', '0'], /--jobs takes a number/],
    [['run', '--engine', 'gdb'], /--engine: "gdb" is not an engine[\s\S]*usage: crh run/],
    [['run', '--engine', 'crh,crh'], /crh is named twice/],
    [['run', '--engine', 'crh,'], /an empty engine name/],
    [['run', '--grep', '('], /--grep: Invalid regular expression/],
    [['run', '--kernel', 'debian:--help'], /not a Debian package name/],
    [['run', '--kernel', 'a', '--kernel', 'b', '--modules', 'm'], /--modules given 1 time\(s\) for 2 kernel\(s\)/],
    [['run', '--kernel', 'a', '--kernel', 'b', '--html', 'r.html'], /--html names one file/],
    [['run', '--cases', '/nonexistent/cases'], /--cases \/nonexistent\/cases: no such directory/],
    [['repro'], /crh repro takes one C source file \(got 0\)/],
    [['repro', 'x.c', '--bogus'], /Unknown option '--bogus'[\s\S]*usage: crh repro/],
    [['repro', 'x.c', '--when-ready', '--rf', 'bogus'], /unknown rf policy "bogus"/],
    [['repro', 'x.c', '--when-ready', '--kernel', 'debian:--help'], /not a Debian package name/],
    [['cr', '--when-ready'], /crh cr needs --binary PATH/],
    [['repro', 'x.c', '--when-ready', '--engine', 'criu', '--regs', 'partial'], /--regs is a policy of crh's restore core and cannot apply to --engine criu/],
    [['cr', '--binary', '/bin/true', '--when-ready', '--engine', 'crh,criu', '--cycles', '2'], /--cycles chains crh's own checkpoints; with --engine crh,criu/],
  ];
  const results = await crhRunAll(
    refused.map(([args]) => args),
    { CRH_ARTIFACTS_DIR: artifacts },
  );
  for (const [i, [args, reason]] of refused.entries()) {
    const r = results[i]!;
    const line = `crh ${args.map((a) => JSON.stringify(a)).join(' ')}`;
    t.equal(r.exitCode, EXIT.usage, `${line}: exit 2`);
    t.match(r.stderr, reason, `${line}: says why`);
    t.notMatch(r.stderr, STACK, `${line}: no stack trace`);
  }
});

t.test('exit 1 and 0 from crh verdicts --check: a failed row fails, rows that are all skips tested nothing', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-exit-verdicts-'));
  const row = (over: Record<string, unknown>): string =>
    JSON.stringify({ case: 'c', scenario: 's', policy: 'p', control: false, expected: 'pass', observed: 'pass', pass: true, ...over });
  const check = async (name: string, rows: string[]): Promise<{ exitCode: number | undefined; stderr: string }> => {
    const artifacts = path.join(dir, name);
    await mkdir(artifacts, { recursive: true });
    await writeFile(path.join(artifacts, 'verdicts.jsonl'), rows.map((r) => `${r}\n`).join(''));
    return crhRun(['verdicts', '--check'], { CRH_ARTIFACTS_DIR: artifacts });
  };
  t.equal((await check('pass', [row({}), row({ skipped: 'lacks CONFIG_X', pass: false })])).exitCode, EXIT.ok, 'a pass beside a skip: 0');
  t.equal((await check('fail', [row({}), row({ observed: 'fail', pass: false })])).exitCode, EXIT.failed, 'a failed row: 1');
  const skips = await check('skips', [row({ skipped: 'lacks CONFIG_X', pass: false })]);
  t.equal(skips.exitCode, EXIT.failed, 'every row a skip: 1');
  t.match(skips.stderr, /every verdict is a skip: nothing was tested/);
  t.equal((await check('none', [])).exitCode, EXIT.failed, 'no row: 1');
});

t.test('exit 0 and 1 from crh run: a pass beside a skip is green, a run in which every case skipped is not', async (t) => {
  const artifacts = await mkdtemp(path.join(tmpdir(), 'crh-exit-run-'));
  const passing = await crhRun(['run', '--cases', 'test/fixtures/passing-cases', '--artifacts', path.join(artifacts, 'pass')]);
  t.equal(passing.exitCode, EXIT.ok, passing.stderr.slice(-1500));
  t.match(passing.stdout, /1 passed, 0 failed, 1 skipped/);
  const skipped = await crhRun(['run', '--cases', 'test/fixtures/skipped-cases', '--artifacts', path.join(artifacts, 'skip')]);
  t.equal(skipped.exitCode, EXIT.failed, skipped.stderr.slice(-1500));
  t.match(skipped.stdout, /0 passed, 0 failed, 1 skipped/);
  t.match(skipped.stderr, /every verdict is a skip: nothing was tested/);
});

t.test('exit 69: a kernel that cannot be had is infrastructure, shown with its context, no QEMU started', async (t) => {
  const r = await crhRun(['image', '--kernel', '/nonexistent/bzImage']);
  t.equal(r.exitCode, EXIT.infra);
  t.match(r.stderr, /InfraError: kernel bzImage not found: \/nonexistent\/bzImage/);
});
