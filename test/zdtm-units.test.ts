// expect: crh zdtm's pure parts — its command line (every refusal a UsageError naming the flag), the verdict reader
// (PASS among the last lines, T.out before T.out.inprogress), the exit code (1 for a C/R failure before 2 for a native
// one), the native run's shell command and report, and the pid-file and children parsers — do what they say.
import t from 'tap';
import { UsageError } from '../harness/repro/usage-error.ts';
import { parsePidFile } from '../harness/repro/pid-file.ts';
import { parseReproArgs, requestFlags, type ReproRequest } from '../harness/repro/options.ts';
import { parseRerunRecord, rerunRecord } from '../harness/repro/rerun-record.ts';
import { BundleRejectedError } from '../harness/repro/usage-error.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { launcherArgv, nativeProblem, nativeZdtmCommand, parseNativeZdtm, underNativeRunner } from '../harness/zdtm/native.ts';
import { parseZdtmArgs } from '../harness/zdtm/options.ts';
import { describeOutfile, outfileVerdict, TAIL_LINES, zdtmExitCode, zdtmRows, type ZdtmResult } from '../harness/zdtm/verdict.ts';

t.test('command line', async (t) => {
  const r = parseZdtmArgs(['/z/a', 'b', '--iters', '3', '--omit', 'timers', '--settle', '50', '--', '--flag', 'x']);
  t.same(r.binaries, ['/z/a', `${process.cwd()}/b`], 'binaries made absolute');
  t.same(r.args, ['--flag', 'x'], "what follows -- is the tests' arguments, dashes and all");
  t.equal(r.iters, 3);
  t.equal(r.settleMs, 50);
  t.same(r.policy.omit, ['timers']);
  const d = parseZdtmArgs(['/z/a']);
  t.equal(d.iters, 1, 'one cycle by default');
  t.equal(d.elsewhere, undefined, 'restored in the checkpoint guest by default');
  t.same(
    parseZdtmArgs(['/z/a', '--restore-cpu', 'Skylake-Client', '--restore-anyway']).elsewhere,
    { cpu: 'Skylake-Client', anyway: true },
    '--restore-cpu and --restore-anyway',
  );
  t.same(
    parseZdtmArgs(['/z/a', '--restore-kernel', 'debian:linux-image-cloud-amd64@trixie']).elsewhere,
    { kernel: 'debian:linux-image-cloud-amd64@trixie', anyway: false },
    '--restore-kernel takes a Debian package',
  );
  t.same({ ...d.policy, omit: undefined }, { ...DEFAULT_POLICY, omit: undefined }, 'the default policy');
  t.same(d.engines, ['crh'], 'crh alone by default');
  t.same(parseZdtmArgs(['/z/a', '--engine', 'criu,crh']).engines, ['crh', 'criu'], '--engine criu,crh: both, crh first');
  t.same(parseZdtmArgs(['/z/a', '--engine', 'crh,criu', '--omit', 'timers']).policy.omit, ['timers'], 'with crh,criu a policy switch applies to crh');
  const refused: [string[], RegExp][] = [
    [[], /at least one test BINARY/],
    [['/z/a', '--iters', '0'], /--iters: "0" is not a positive whole number/],
    [['/z/a', '--iters', '1001'], /--iters: 1001 is more than 1000/],
    [['/z/a', '--timeout', 'soon'], /--timeout/],
    [['/z/a', '--rf', 'sometimes'], /sometimes/],
    [['/z/a', '--bogus'], /Unknown option '--bogus'[\s\S]*usage: crh zdtm/],
    [['/x/a', '/y/a'], /two tests are named a/],
    [['/z/a', '--file', '/q/T.out'], /names a file of the protocol/],
    [['/z/a', '--restore-cpu', 'max,-avx', '--iters', '2'], /moves the test once: --iters goes without --restore-cpu/],
    [['/z/a', '--restore-anyway'], /--restore-anyway goes with --restore-cpu or --restore-kernel/],
    [['/z/a', '--restore-cpu', 'max;reboot'], /--restore-cpu: "max;reboot" is not a QEMU CPU model/],
    [['/z/a', '--engine', 'dmtcp'], /"dmtcp" is not an engine[\s\S]*usage: crh zdtm/],
    [['/z/a', '--engine', 'criu', '--rf', 'clear'], /--rf: policies of crh's restore core, which --engine criu does not run/],
    [['/z/a', '--engine', 'crh,criu', '--restore-cpu', 'max,-avx'], /not with --engine criu/],
  ];
  for (const [argv, message] of refused) {
    t.throws(() => parseZdtmArgs(argv), UsageError, `crh zdtm ${argv.join(' ')}: a UsageError`);
    t.throws(() => parseZdtmArgs(argv), { message }, `crh zdtm ${argv.join(' ')}: says ${message}`);
  }
});

t.test('verdict: the word PASS among the last lines', async (t) => {
  t.ok(outfileVerdict('waiting\nPASS\n', undefined).pass, 'PASS last');
  t.ok(outfileVerdict('PASS\nbye\n\n\n', undefined).pass, 'PASS a few lines before the end (blank lines skipped)');
  const far = `PASS\n${Array.from({ length: TAIL_LINES }, (_, i) => `line ${i}`).join('\n')}\n`;
  t.notOk(outfileVerdict(far, undefined).pass, `PASS more than ${TAIL_LINES} lines from the end does not count`);
  t.notOk(outfileVerdict('PASSED\nPASSWORD\n', undefined).pass, 'a word containing PASS is not PASS');
  t.ok(outfileVerdict('test: PASS (3 checks)\n', undefined).pass, 'PASS as a word inside a line');
  t.notOk(outfileVerdict('FAIL: lost the page\n', undefined).pass, 'FAIL');
  t.notOk(outfileVerdict('', undefined).pass, 'empty');
  t.equal(outfileVerdict('PASS\n', 'FAIL\n').file, 'T.out', 'T.out wins when both exist');
  const fallback = outfileVerdict(undefined, 'PASS\n');
  t.same([fallback.pass, fallback.file], [true, 'T.out.inprogress'], 'T.out.inprogress when T.out is absent (another pid, or still running)');
  const none = outfileVerdict(undefined, undefined);
  t.same([none.pass, none.file], [false, undefined], 'no outfile: no verdict');
  t.match(describeOutfile(none), /no outfile/);
  t.equal(describeOutfile(outfileVerdict(undefined, 'x\nFAIL: y\n')), 'no PASS in T.out.inprogress: FAIL: y');
});

t.test('exit code and rows', async (t) => {
  const pass: ZdtmResult = { test: 'a', native: { pass: true, summary: 'PASS' }, checkpointed: { pass: true, summary: 'PASS' }, durationMs: 1 };
  const crFail: ZdtmResult = { test: 'b', native: { pass: true, summary: 'PASS' }, checkpointed: { pass: false, summary: 'FAIL: x' }, durationMs: 1 };
  const nativeFail: ZdtmResult = { test: 'c', native: { pass: false, summary: 'FAIL: n' }, durationMs: 1 };
  t.equal(zdtmExitCode([pass]), 0);
  t.equal(zdtmExitCode([pass, nativeFail]), 2, 'a test failing natively: 2');
  t.equal(zdtmExitCode([nativeFail, crFail, pass]), 1, 'a C/R failure outranks a native one');
  t.equal(zdtmExitCode([]), 0);
  const rows = zdtmRows([pass, crFail, nativeFail], 'default', 2);
  t.same(
    rows.map((r) => [r.case, r.pass, r.skipped !== undefined]),
    [
      ['zdtm', true, false],
      ['zdtm', false, false],
      ['zdtm', false, true],
    ],
  );
  t.match(rows[0]!.scenario, /^a \(2 checkpoint\/restore cycles\)$/);
  t.match(rows[2]!.skipped, /fails natively: FAIL: n/);
  const both = zdtmRows(
    [
      { ...pass, engine: 'crh' },
      { ...crFail, test: 'a', engine: 'criu' },
    ],
    'rf=clear',
    1,
    'criu defaults (criu 4.1.1)',
  );
  t.same(
    both.map((r) => [r.scenario, r.engine, r.policy, r.pass]),
    [
      ['a', 'crh', 'rf=clear', true],
      ['a', 'criu', 'criu defaults (criu 4.1.1)', false],
    ],
    'one row per engine, each with its own policy',
  );
});

t.test('native run: the command and its report', async (t) => {
  const launch = { binary: '/b/t x', args: ['--opt', "it's"], cwd: '/w', launcherOut: '/o/l.out' };
  t.same(launcherArgv(launch), ['/b/t x', '--pidfile=T.pid', '--outfile=T.out', '--opt', "it's"]);
  const command = nativeZdtmCommand(launch, 200, 1000);
  t.match(command, /^cd \/w \|\| exit 1\n/);
  t.ok(
    command.includes(`env -i '/b/t x' --pidfile=T.pid --outfile=T.out --opt 'it'\\''s' </dev/null >/o/l.out 2>&1 3<&- 4<&-`),
    'clean environment, quoted, fds 0-2 only',
  );
  t.match(command, /sleep 0\.200\nkill -TERM/);
  t.equal(
    underNativeRunner('echo "a b"', '/o/r.txt', 5000, '/bin/runner'),
    `exec /bin/runner 5000 /o/r.txt 0 /nonexistent /bin/sh sh -c 'echo "a b"'`,
    'the script under the subreaper runner, its report to a file',
  );
  t.same(parseNativeZdtm('launcher 0\npid 42\nended\n'), { launcherStatus: 0, pid: 42, ended: true });
  t.same(parseNativeZdtm('launcher 0\npid 42\ntimed-out'), { launcherStatus: 0, pid: 42, ended: false });
  t.same(parseNativeZdtm('launcher 1\n'), { launcherStatus: 1, ended: false });
  t.throws(() => parseNativeZdtm('launcher 0\nsomething\n'), /expected "launcher N"/);
  t.match(nativeProblem({ launcherStatus: 1, ended: false }), /exited with status 1/);
  t.match(nativeProblem({ launcherStatus: 0, ended: false }), /names no pid/);
  t.match(nativeProblem({ launcherStatus: 0, pid: 9, ended: false }), /did not end after SIGTERM/);
  t.equal(nativeProblem({ launcherStatus: 0, pid: 9, ended: true }), undefined);
});

t.test('pid file', async (t) => {
  t.equal(parsePidFile('1234\n'), 1234);
  t.equal(parsePidFile(' 77 \nmore'), 77, 'the first line');
  t.equal(parsePidFile(undefined), undefined);
  t.equal(parsePidFile(''), undefined);
  t.equal(parsePidFile('0\n'), undefined);
  t.equal(parsePidFile('-1\n'), undefined);
  t.equal(parsePidFile('12abc'), undefined);
  t.equal(parsePidFile('99999999999'), undefined, 'beyond any pid');
});

t.test('--pid-file on crh cr and crh repro', async (t) => {
  const r = parseReproArgs('cr', ['--binary', '/b/d', '--when-ready', '--pid-file', 'run/d.pid', '--finish-signal', 'TERM']) as ReproRequest;
  t.equal(r.pidFile, 'run/d.pid', 'kept as given: a guest path relative to the working directory');
  t.ok(requestFlags(r).join(' ').includes('--pid-file run/d.pid'), 'a rerun command line repeats it');
  const record = rerunRecord(r, { binary: 'binary/d', files: [] });
  t.equal(parseRerunRecord(JSON.parse(JSON.stringify(record)), 'b.tar').pidFile, 'run/d.pid', 'a bundle carries it');
  t.throws(() => parseRerunRecord({ ...record, pidFile: '../../etc/x' }, 'b.tar'), BundleRejectedError, "a bundle's pid file may not climb out");
  t.throws(() => parseRerunRecord({ ...record, pidFile: 7 }, 'b.tar'), BundleRejectedError);
  const refused: [string[], RegExp][] = [
    [['--binary', '/b/d', '--pid-file', 'd.pid', '--checkpoint-after', '5'], /--pid-file goes with --when-ready/],
    [['--binary', '/b/d', '--when-ready', '--pid-file', '../d.pid'], /has a \.\. component/],
    [['--binary', '/b/d', '--when-ready', '--pid-file', 'a b'], /not a plain path/],
    [['--binary', '/b/d', '--when-ready', '--pid-file', 'd.pid', '--engine', 'criu'], /--engine criu/],
  ];
  for (const [argv, message] of refused) t.throws(() => parseReproArgs('cr', argv), { name: 'UsageError', message }, `crh cr ${argv.join(' ')}`);
});
