// expect: crh repro/cr command lines parse into one request (every mistake a usage error naming the flag), a request turns back into the switches that rerun it, a request and its runs make the bundle (verdict, rerun.sh, register diff, inputs) and bundles round-trip and refuse unsafe entries, the comparison names the first differing line, interrupted system calls are rewound, and a reproducer that does not compile exits 2 before any guest starts.
import { caught } from './support/caught.ts';
import t from 'tap';
import { execa } from 'execa';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { parseReproArgs, parseSignal, type ReproRequest } from '../harness/repro/options.ts';
import { rerunArgs, rerunScript, resolveRerunArgs } from '../harness/repro/rerun.ts';
import { readBundle, writeBundle } from '../harness/repro/bundle.ts';
import { comparePerturbation, compareRuns, firstDifferentLine, summarize } from '../harness/repro/compare.ts';
import { nativeCommand, parseNativeReport } from '../harness/guest/native-run.ts';
import { formatRegisterDiff } from '../harness/repro/register-diff.ts';
import { UsageError } from '../harness/repro/usage-error.ts';
import { rewindInterruptedSyscall } from '../harness/restore/syscall-restart.ts';
import { USER_REGS_FIELDS, type UserRegs } from '../harness/x86/registers.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { prepareProgram } from '../harness/repro/prepare.ts';
import { Progress } from '../harness/repro/progress.ts';
import { makeVerdict, parseVerdict, verdictExitCode, verdictLabel } from '../harness/repro/verdict.ts';
import { bundleContents } from '../harness/repro/contents.ts';
import type { GuestRuns } from '../harness/repro/guest-runs.ts';
import { syntheticImage } from './support/synthetic-image.ts';

const request = (command: 'repro' | 'cr', argv: string[]): ReproRequest => {
  const parsed = parseReproArgs(command, argv);
  if ('bundle' in parsed) throw new Error('expected a request');
  return parsed;
};

t.test('repro arguments: one checkpoint point, policy switches, program arguments after --', async (t) => {
  const r = request('repro', ['x.c', '--checkpoint-at', 'checkpoint_here', '--hit', '3', '--regs', 'partial', '--', '-v', 'a b']);
  t.equal(r.source, path.resolve('x.c'));
  t.same(r.checkpoint, { kind: 'symbol', symbol: 'checkpoint_here', hit: 3 });
  t.equal(r.policy.regs, 'partial');
  t.equal(r.policy.rf, 'keep-and-preserve', 'defaults for switches not given');
  t.same(request('repro', ['x.c', '--when-ready', '--finish-signal', 'usr1']).finishSignal, { name: 'SIGUSR1', number: 10 });
  t.same(r.args, ['-v', 'a b'], 'everything after -- belongs to the program');
  t.equal(r.timeoutMs, 60_000);
  t.same(request('repro', ['x.c', '--checkpoint-after', '250']).checkpoint, { kind: 'after', ms: 250 });
  t.same(request('repro', ['x.c', '--when-ready']).checkpoint, { kind: 'ready' });
  t.same(request('repro', ['x.c', '--checkpoint-at', '0x30001000']).checkpoint, { kind: 'symbol', symbol: '0x30001000', hit: 1 });
  t.same(parseReproArgs('repro', ['--bundle', 'b.tar', '--out', 'o.tar']), { bundle: path.resolve('b.tar'), out: path.resolve('o.tar') });
});

t.test('cr arguments: --binary, repeatable --file', async (t) => {
  const r = request('cr', ['--binary', 'prog', '--file', 'a/in.txt', '--file', 'b/data.bin', '--when-ready', '--', 'x']);
  t.equal(r.binary, path.resolve('prog'));
  t.same(r.files, [path.resolve('a/in.txt'), path.resolve('b/data.bin')]);
  t.same(r.args, ['x']);
});

t.test('every mistake is a UsageError naming what is wrong', async (t) => {
  const bad: Array<[string, 'repro' | 'cr', string[], RegExp]> = [
    ['no checkpoint point', 'repro', ['x.c'], /exactly one of --checkpoint-at/],
    ['two checkpoint points', 'repro', ['x.c', '--when-ready', '--checkpoint-after', '5'], /got --checkpoint-after and --when-ready/],
    ['--hit without a symbol', 'repro', ['x.c', '--when-ready', '--hit', '2'], /--hit N counts executions/],
    ['a zero --hit', 'repro', ['x.c', '--checkpoint-at', 'f', '--hit', '0'], /--hit: "0" is not a positive whole number/],
    ['a bad policy', 'repro', ['x.c', '--when-ready', '--rf', 'sometimes'], /unknown rf policy "sometimes"/],
    ['an unknown flag', 'repro', ['x.c', '--when-ready', '--frobnicate'], /Unknown option '--frobnicate'/],
    ['two sources', 'repro', ['x.c', 'y.c', '--when-ready'], /one C source file \(got 2\)/],
    ['cr without --binary', 'cr', ['--when-ready'], /crh cr needs --binary/],
    ['cr with a positional', 'cr', ['--binary', 'p', 'arg', '--when-ready'], /after --, not arg/],
    ['two files of one name', 'cr', ['--binary', 'p', '--file', 'a/x', '--file', 'b/x', '--when-ready'], /two files are named x/],
    ['--bundle with more', 'repro', ['--bundle', 'b.tar', '--rf', 'clear'], /only --out and --artifacts/],
    ['an unknown signal', 'repro', ['x.c', '--when-ready', '--finish-signal', 'SIGNOPE'], /unknown signal "SIGNOPE"/],
    ['a finish signal without readiness', 'repro', ['x.c', '--checkpoint-at', 'f', '--finish-signal', 'USR1'], /--finish-signal goes with --when-ready/],
    ['a symbol that is not one', 'repro', ['x.c', '--checkpoint-at', 'a b'], /neither a symbol name nor a 0x address/],
  ];
  for (const [why, command, argv, message] of bad) {
    const error = caught(() => parseReproArgs(command, argv));
    t.ok(error instanceof UsageError, `${why}: a UsageError`);
    t.match(error?.message, message, why);
  }
  t.same(parseSignal('15'), { name: 'SIGTERM', number: 15 });
});

t.test('a request turns into rerun arguments that parse back into the same request', async (t) => {
  const original = request('repro', [
    '/src/x.c',
    '--checkpoint-at',
    'here',
    '--hit',
    '2',
    '--rf',
    'clear',
    '--restorer',
    'sigreturn',
    '--cflags',
    '-DN=3 -lm',
    '--timeout',
    '5000',
    '--',
    'one',
    'two words',
  ]);
  const ready = request('repro', ['/src/y.c', '--when-ready', '--finish-signal', 'TERM', '--omit', 'xstate']);
  const readyBack = resolveRerunArgs(rerunArgs(ready, { source: 'source/y.c', binary: 'binary/y', files: [] }), '/e');
  t.same({ ...request('repro', readyBack.slice(1)), source: undefined }, { ...ready, source: undefined }, 'finish signal and omissions survive too');
  const args = rerunArgs(original, { source: 'source/x.c', binary: 'binary/x', files: [] });
  t.equal(args[1], '{bundle}/source/x.c', 'the source comes from the bundle');
  const back = resolveRerunArgs(args, '/extracted');
  const again = request(back[0] as 'repro', back.slice(1));
  t.same({ ...again, source: undefined }, { ...original, source: undefined }, 'same switches, program arguments and policy');
  t.equal(again.source, '/extracted/source/x.c');

  const cr = request('cr', ['--binary', '/b/prog', '--file', '/f/in.txt', '--checkpoint-after', '40']);
  const crArgs = resolveRerunArgs(rerunArgs(cr, { binary: 'binary/prog', files: ['files/in.txt'] }), '/d');
  t.same(crArgs.slice(0, 5), ['cr', '--binary', '/d/binary/prog', '--file', '/d/files/in.txt']);

  const script = rerunScript(args, 'PASS — fine');
  t.match(script, /^#!\/bin\/sh\n/);
  t.match(
    script,
    /exec node bin\/crh\.js repro "\$bundle\/source\/x\.c" --checkpoint-at here --hit 2 .*'--cflags=-DN=3 -lm'.* "\$@" -- one 'two words'\n/,
    'paths from the bundle, switches added at run time before the program arguments',
  );
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-rerun-'));
  await writeFile(path.join(dir, 'rerun.sh'), script.replace('exec node bin/crh.js', 'printf "%s\\n"'));
  const printed = await execa('sh', [path.join(dir, 'rerun.sh'), '--out', 'o.tar'], { cwd: dir });
  t.same(
    printed.stdout.split('\n'),
    ['repro', `${dir}/source/x.c`, ...back.slice(2, back.indexOf('--')), '--out', 'o.tar', '--', 'one', 'two words'],
    'the shell sees exactly those words',
  );
});

t.test('bundles: written atomically, read back, unsafe entries refused', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-bundle-test-'));
  const file = path.join(dir, 'b.tar');
  await writeBundle(file, [
    { name: 'verdict.json', data: Buffer.from('{}') },
    { name: 'binary/prog', data: Buffer.from([0x7f, 0x45]), mode: 0o755 },
  ]);
  const back = await readBundle(file);
  t.same([...back.keys()], ['verdict.json', 'binary/prog']);
  t.equal(back.get('binary/prog')?.mode, 0o755);
  t.same(back.get('binary/prog')?.data, Buffer.from([0x7f, 0x45]));
  await t.rejects(writeBundle(file, [{ name: '../escape', data: Buffer.alloc(1) }]), /not a plain relative name/);
  t.same([...(await readBundle(file)).keys()], ['verdict.json', 'binary/prog'], 'a failed write leaves the old bundle in place');

  const hostile = path.join(dir, 'hostile.tar');
  const pack = tar.pack();
  const done = pipeline(pack, createWriteStream(hostile));
  pack.entry({ name: 'ok.txt' }, 'fine');
  pack.entry({ name: '../../etc/passwd' }, 'x');
  pack.finalize();
  await done;
  const refused = await readBundle(hostile).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  t.ok(refused instanceof UsageError, 'a hostile bundle is a usage error');
  t.match(refused?.message, /"\.\.\/\.\.\/etc\/passwd": not a plain relative name/);
  const link = path.join(dir, 'link.tar');
  const pack2 = tar.pack();
  const done2 = pipeline(pack2, createWriteStream(link));
  pack2.entry({ name: 'rerun.sh', type: 'symlink', linkname: '/bin/sh' });
  pack2.finalize();
  await done2;
  await t.rejects(readBundle(link), /type symlink/);
});

t.test('comparison: status, first differing line, breakpoint hits', async (t) => {
  const ref = { outcome: 'exited' as const, code: 0, output: 'pid 7\nsum 1\n', hits: 3 };
  t.same(compareRuns(ref, { ...ref }, 'f'), [], 'identical runs');
  const m = compareRuns(ref, { outcome: 'killed', code: 11, output: 'pid 7\nsum 2\n', hits: 4 }, 'f');
  t.same(
    m.map((x) => x.what),
    ['exit status', 'output', 'breakpoint hits at f'],
  );
  t.equal(m[0]!.restored, 'killed by SIGSEGV (11)');
  t.same(m[1], { what: 'output', line: 2, reference: '"sum 1"', restored: '"sum 2"' });
  t.same(firstDifferentLine('a\n', 'a\nb\n'), { line: 2, reference: '""', restored: '"b"' });
  t.same(firstDifferentLine('a\nb', 'a'), { line: 2, reference: '"b"', restored: '(no line 2)' });
  t.match(
    summarize(m, undefined, ref),
    /^exit status differs: uninterrupted exit 0, restored killed by SIGSEGV \(11\); output differs at line 2: uninterrupted "sum 1", restored "sum 2"/,
  );
  t.equal(summarize([], undefined, ref), 'the restored run matches the uninterrupted run: exit 0, 2 lines of output');
  t.match(summarize([], 'ImageRejectedError: eflags.RF\nmore', ref), /^the restore failed: ImageRejectedError: eflags.RF$/);
});

const regs = (over: Partial<UserRegs>): UserRegs => ({ ...(Object.fromEntries(USER_REGS_FIELDS.map((n) => [n, 0n])) as UserRegs), ...over });

t.test('interrupted system calls are rewound to be issued again', async (t) => {
  const inPause = regs({ rax: BigInt.asUintN(64, -514n), orig_rax: 34n, rip: 0x401002n });
  const rewound = rewindInterruptedSyscall(inPause);
  t.equal(rewound?.regs.rip, 0x401000n, 'back to the syscall instruction');
  t.equal(rewound?.regs.rax, 34n, 'with the call number in rax');
  t.equal(rewound?.error, 'ERESTARTNOHAND');
  t.match(rewindInterruptedSyscall(regs({ rax: BigInt.asUintN(64, -516n), orig_rax: 230n, rip: 0x10n }))?.note, /clock|original arguments/);
  t.equal(rewindInterruptedSyscall(regs({ rax: BigInt.asUintN(64, -4n), orig_rax: 34n })), undefined, 'EINTR is a result, not a restart');
  t.equal(rewindInterruptedSyscall(regs({ rax: BigInt.asUintN(64, -514n), orig_rax: BigInt.asUintN(64, -1n) })), undefined, 'not in a system call');
});

t.test('register diff: differences explained by the policy', async (t) => {
  const image = regs({ rbx: 0x1111n, rip: 0x30001000n, eflags: 0x10246n });
  const text = formatRegisterDiff({
    image,
    restored: { ...image, rbx: 0n, eflags: 0x246n },
    policy: { rf: 'clear', regs: 'partial' },
    kernel: [{ what: 'fs_base', requested: '0x1', accepted: '0x0' }],
  });
  t.match(text, /^rbx\s+0x1111\s+0x0\s+differs \(regs=partial: callee-saved/m);
  t.match(text, /^eflags\s+0x10246\s+0x246\s+differs \(only RF differs: rf=clear\)/m);
  t.match(text, /^rip\s+0x30001000\s+0x30001000$/m, 'equal registers carry no note');
  t.match(text, /^fs_base: requested 0x1, accepted 0x0$/m);
});

t.test('bundle content: verdict, rerun script, register diff and inputs from one request and its runs', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-contents-'));
  const source = path.join(REPO_ROOT, 'examples', 'repro', 'checksum.c');
  const req = request('repro', [source, '--checkpoint-at', 'checkpoint_here', '--regs', 'partial']);
  const prepared = await prepareProgram(req, path.join(dir, 'build'), new Progress('test', () => {}));
  t.equal(prepared.name, 'checksum');
  t.match(prepared.compiler?.join(' '), /^gcc -static -O2 -Wall -Wl,-Ttext-segment=0x30000000 -o /);
  t.ok(
    prepared.breakAt !== undefined && prepared.breakAt >= 0x30000000n && prepared.breakAt < 0x31000000n,
    "checkpoint_here resolved in the program's own text",
  );
  const image = syntheticImage();
  const imageFile = path.join(dir, 'image.tar');
  await writeFile(imageFile, 'image bytes');
  const program = { binary: '/tmp/crh-repro/bin/checksum', argv: ['/tmp/crh-repro/bin/checksum'], envp: ['CRH_READY_FILE=/tmp/crh-repro/out/ready'] };
  const runs: GuestRuns = {
    program,
    native: { outcome: 'exited', code: 0, output: 'pid 5\nchecksum 1\n', pid: 5 },
    reference: { outcome: 'exited', code: 0, output: 'pid 5\nchecksum 1\n', hits: 1, pid: 5, elapsedMs: 9 },
    checkpointed: {
      engine: 'crh',
      pid: 5,
      restoredPid: 5,
      stoppedBy: 'breakpoint hit 1 at checkpoint_here',
      regsAtCheckpoint: image.regs,
      image,
      notes: [],
      restoredRegs: { ...image.regs, rbx: 0n },
      restoreDifferences: [],
      run: { outcome: 'exited', code: 0, output: 'pid 5\nchecksum 2\n', hits: 1 },
      cycles: [
        {
          cycle: 1,
          stoppedBy: 'breakpoint hit 1 at checkpoint_here',
          rip: '0x401000',
          checkpointMs: 5,
          imageBytes: 11,
          restoreMs: 3,
          registersDiffer: ['rbx'],
        },
      ],
      cyclesAsked: 1,
    },
    profile: { version: 1 } as GuestRuns['profile'],
    platform: { accel: 'tcg' },
  };
  const inputs = { source: 'source/checksum.c', binary: 'binary/checksum', files: [] };
  const verdict = makeVerdict(req, prepared, runs, inputs);
  t.equal(verdict.pass, false);
  t.equal(verdict.summary, 'output differs at line 2: uninterrupted "checksum 1", restored "checksum 2"');
  t.same(verdict.program.compiler?.slice(-3), ['-o', 'binary/checksum', 'source/checksum.c'], "the compiler line names the bundle's files, not this host's");
  const entries = await bundleContents({ request: req, prepared, runs, inputs, verdict, imageFile, consoleLog: path.join(dir, 'absent.log') });
  t.same(
    entries.map((e) => e.name),
    [
      'verdict.json',
      'rerun.sh',
      'README.txt',
      'source/checksum.c',
      'binary/checksum',
      'checkpoint.tar',
      'console.log',
      'register-diff.txt',
      'platform-profile.json',
      'output/native.out',
      'output/reference.out',
      'output/restored.out',
    ],
  );
  const entry = (name: string): Buffer => entries.find((e) => e.name === name)!.data;
  t.same(parseVerdict(entry('verdict.json').toString()).rerun, verdict.rerun, 'verdict.json parses back');
  t.equal(entries.find((e) => e.name === 'rerun.sh')?.mode, 0o755);
  t.match(
    entry('rerun.sh').toString(),
    /exec node bin\/crh\.js repro "\$bundle\/source\/checksum\.c" --checkpoint-at checkpoint_here --hit 1 .*--regs partial/,
  );
  t.match(entry('register-diff.txt').toString(), /^rbx\s+0x[0-9a-f]+\s+0x0\s+differs \(regs=partial/m);
  t.same(entry('source/checksum.c'), await readFile(source));
  t.same(entry('binary/checksum'), prepared.program.data);
  t.equal(entry('checkpoint.tar').toString(), 'image bytes');
  t.equal(entry('console.log').toString(), '(no console log)\n', 'a missing console log is said, not an error');
  t.match(entry('README.txt').toString(), /verdict: FAIL — output differs at line 2/);

  const failed = makeVerdict(
    req,
    prepared,
    { ...runs, checkpointed: { ...runs.checkpointed, restoreError: 'PidInUseError: cannot restore as pid 5\nmore' } },
    inputs,
  );
  t.equal(failed.summary, 'the restore failed: PidInUseError: cannot restore as pid 5');
  t.equal(failed.restored, undefined, 'no restored run to show');
  t.same(failed.mismatches, []);
  t.equal(verdict.perturbed, false);
  t.equal(verdict.native?.agreed, true, 'the native and traced references agreed');
  t.equal(verdictExitCode(verdict), 1);

  // The report's shape: natively 6 lines and exit 0; traced, killed by SIGTRAP with no output; restored the same way.
  const killed = { outcome: 'killed' as const, code: 5, output: '' };
  const perturbedRuns: GuestRuns = {
    ...runs,
    native: { outcome: 'exited', code: 0, output: 'a\nb\nc\nd\ne\nf\n', pid: 77 },
    reference: { ...killed, hits: 1, pid: 5, elapsedMs: 9 },
    checkpointed: { ...runs.checkpointed, run: { ...killed, hits: 1 } },
  };
  const perturbed = makeVerdict(req, prepared, perturbedRuns, inputs);
  t.same(perturbed.mismatches, [], 'the restored run matches the traced reference...');
  t.equal(perturbed.pass, false, '...and still no PASS');
  t.equal(perturbed.perturbed, true);
  t.equal(verdictExitCode(perturbed), 3, 'exit code 3: the harness perturbs the program');
  t.equal(verdictLabel(perturbed), 'PERTURBED');
  t.match(
    perturbed.summary,
    /^the harness perturbs this program: .*exit status differs: native exit 0, traced killed by SIGTRAP \(5\); output differs at line 1: native "a", traced ""/,
  );
  t.same(
    perturbed.native?.differences.map((d) => d.what),
    ['exit status', 'output'],
  );
  t.equal(perturbed.native?.agreed, false);
  t.match(perturbed.notes[0], /native run had pid 77, which was taken/, 'a pid the traced runs could not be given is said');
  const perturbedEntries = await bundleContents({
    request: req,
    prepared,
    runs: perturbedRuns,
    inputs,
    verdict: perturbed,
    imageFile,
    consoleLog: path.join(dir, 'absent.log'),
  });
  t.equal(perturbedEntries.find((e) => e.name === 'output/native.out')?.data.toString(), 'a\nb\nc\nd\ne\nf\n');
  t.match(perturbedEntries.find((e) => e.name === 'README.txt')?.data.toString(), /verdict: PERTURBED — the harness perturbs/);
});

t.test('native run: the command crh-native is given, and its report parsed', async (t) => {
  const command = nativeCommand({ binary: '/b/p', argv: ['/b/p', "it's"], envp: ['A=1'], cwd: '/w', stdoutPath: '/o/native.out', timeoutMs: 5000 });
  t.equal(command, `cd /w && exec env -i A=1 /usr/local/bin/crh-native 5000 /o/native.out 0 /nonexistent /b/p /b/p 'it'\\''s'`);
  t.match(
    nativeCommand({ binary: '/b/p', argv: ['/b/p'], envp: [], cwd: '/w', stdoutPath: '/o', timeoutMs: 1, finish: { signal: 15, readyFile: '/r' } }),
    / 1 \/o 15 \/r \/b\/p \/b\/p$/,
  );
  t.same(parseNativeReport('pid 42\nkilled 5\n'), { pid: 42, outcome: 'killed', code: 5 });
  t.same(parseNativeReport('pid 42\nexited 0\n'), { pid: 42, outcome: 'exited', code: 0 });
  t.throws(() => parseNativeReport('exited 0\n'), /expected "pid N"/);
  t.same(comparePerturbation({ outcome: 'exited', code: 0, output: 'x\n' }, { outcome: 'exited', code: 0, output: 'x\n' }), [], 'equal runs: no perturbation');
});

t.test("a reproducer that does not compile: exit 2 with gcc's message, before any guest", async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-compile-'));
  const source = path.join(dir, 'broken.c');
  await writeFile(source, 'int main(void) { return undeclared_thing; }\n');
  const started = Date.now();
  const r = await execa(process.execPath, [path.join(REPO_ROOT, 'bin', 'crh.js'), 'repro', source, '--when-ready', '--artifacts', dir], {
    reject: false,
    cwd: REPO_ROOT,
  });
  t.equal(r.exitCode, 2, r.stderr);
  t.match(r.stderr, new RegExp(`UsageError: ${source.replace(/[.]/g, '\\.')} does not compile`));
  t.match(r.stderr, /undeclared_thing/, "gcc's stderr is shown");
  t.notMatch(r.stderr, /boot/, 'no guest was started');
  t.ok(Date.now() - started < 20_000);
  const missing = await execa(process.execPath, [path.join(REPO_ROOT, 'bin', 'crh.js'), 'repro', source], { reject: false, cwd: REPO_ROOT });
  t.equal(missing.exitCode, 2, 'a missing checkpoint switch is usage too');
  t.match(missing.stderr, /usage: crh repro FILE\.c/);
});
