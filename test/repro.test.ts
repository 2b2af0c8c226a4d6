// expect: `crh repro` takes the 30-line example reproducer to a verdict and a self-contained bundle in one command against a real guest (exit 0, the pid kept), the bundle's rerun.sh reproduces that verdict from wherever the bundle is extracted, `--regs partial` (callee-saved registers lost) exits 1 naming the output line that differs, `crh repro --bundle` prints what it will run and reruns that verdict (a cr bundle with its file too), `--when-ready` checkpoints when the program says so, `crh cr` runs a prebuilt binary with its arguments and a file copied into its working directory, and `--cycles 3` chains three checkpoint → restore cycles to the uninterrupted result while its negative control (`--regs partial`) fails naming cycle 1.
import t from 'tap';
import { mkdtemp, readFile, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { readBundle } from '../harness/repro/bundle.ts';
import { parseVerdict, type ReproVerdict } from '../harness/repro/verdict.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { PROFILE_VERSION } from '../harness/platform/profile.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
const example = (name: string): string => path.join(REPO_ROOT, 'examples', 'repro', name);
const BUNDLE_ENTRIES = [
  'verdict.json',
  'rerun.sh',
  'README.txt',
  'binary/checksum',
  'source/checksum.c',
  'checkpoint.tar',
  'console.log',
  'register-diff.txt',
  'platform-profile.json',
  'output/native.out',
  'output/reference.out',
  'output/restored.out',
];

interface Run {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

async function crhRun(args: string[]): Promise<Run> {
  const r = await execa(process.execPath, [crh, ...args], { reject: false, cwd: REPO_ROOT });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

async function verdictOf(bundle: string): Promise<{ verdict: ReproVerdict; entries: Map<string, { data: Buffer; mode?: number }> }> {
  const entries = await readBundle(bundle);
  return { verdict: parseVerdict(entries.get('verdict.json')!.data.toString('utf8')), entries };
}

t.test('crh repro, end to end', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-repro-test-'));
  const artifacts = path.join(dir, 'artifacts');

  let passBundle = '';
  await t.test('exit 0: the example restores exactly, and the bundle holds everything', async (t) => {
    passBundle = path.join(dir, 'checksum.tar');
    const r = await crhRun(['repro', example('checksum.c'), '--checkpoint-at', 'checkpoint_here', '--out', passBundle, '--artifacts', artifacts]);
    if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(r.stderr.slice(-3000));
    t.match(r.stdout, /^verdict: PASS — the restored run matches the uninterrupted run: exit 0, 2 lines of output$/m);
    t.match(r.stderr, /crh repro \[\s*\d+\.\ds\] checkpoint: breakpoint hit 1 at checkpoint_here/, 'progress lines with the elapsed time');
    const { verdict, entries } = await verdictOf(passBundle);
    t.same([...entries.keys()].sort(), [...BUNDLE_ENTRIES].sort(), 'every entry is in the bundle');
    t.equal(entries.get('rerun.sh')?.mode, 0o755);
    t.same(entries.get('source/checksum.c')?.data, await readFile(example('checksum.c')), 'the source as given');
    t.equal(verdict.pass, true);
    t.equal(verdict.checkpoint.restoredPid, verdict.checkpoint.pid, 'the restored process got the checkpointed pid');
    t.equal(verdict.reference.pid, verdict.checkpoint.pid, "and so did the checkpointed run: the uninterrupted run's");
    t.match(
      verdict.restored?.output,
      new RegExp(`^pid ${verdict.checkpoint.pid}\\nchecksum [0-9a-f]{16}\\n$`),
      'the program saw the same pid after the restore',
    );
    t.equal(verdict.restored?.hits, verdict.reference.hits, 'checkpoint_here ran as often as without the checkpoint');
    t.match(entries.get('register-diff.txt')?.data.toString(), /^rbx\s+0x[0-9a-f]+\s+0x[0-9a-f]+$/m, 'register diff: rbx restored as in the image');
    t.match(
      entries.get('console.log')?.data.toString(),
      /crh repro: checkpoint: breakpoint hit 1 at checkpoint_here/,
      'the phases are marked in the guest console',
    );
    t.equal(JSON.parse(entries.get('platform-profile.json')!.data.toString()).version, PROFILE_VERSION, 'the profile of this crh');
  });

  await t.test("the bundle's rerun.sh reproduces the verdict from wherever it is extracted", async (t) => {
    const extracted = path.join(dir, 'extracted');
    await execa('mkdir', ['-p', extracted]);
    await execa('tar', ['xf', passBundle, '-C', extracted]);
    const again = path.join(dir, 'again.tar');
    const r = await execa('sh', [path.join(extracted, 'rerun.sh'), '--out', again, '--artifacts', path.join(dir, 'artifacts-rerun')], {
      reject: false,
      cwd: REPO_ROOT,
    });
    if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(r.stderr.slice(-3000));
    const first = (await verdictOf(passBundle)).verdict;
    const second = (await verdictOf(again)).verdict;
    t.equal(second.summary, first.summary, 'same verdict');
    t.equal(second.program.sha256, first.program.sha256, "the same program, rebuilt from the bundle's source");
    t.same(second.rerun, first.rerun, 'and the same rerun command');
  });

  let failBundle = '';
  await t.test('negative control --regs partial: exit 1, the checksum line named', async (t) => {
    failBundle = path.join(dir, 'partial.tar');
    const r = await crhRun([
      'repro',
      example('checksum.c'),
      '--checkpoint-at',
      'checkpoint_here',
      '--regs',
      'partial',
      '--out',
      failBundle,
      '--artifacts',
      artifacts,
    ]);
    if (!t.equal(r.exitCode, 1, 'exit 1')) t.comment(r.stderr.slice(-3000));
    t.match(r.stdout, /^verdict: FAIL — output differs at line 2: uninterrupted "checksum [0-9a-f]{16}", restored "checksum [0-9a-f]{16}"/m);
    const { verdict, entries } = await verdictOf(failBundle);
    t.equal(verdict.pass, false);
    t.same(
      verdict.mismatches.map((m) => [m.what, m.line]),
      [['output', 2]],
      'only the checksum line differs: the pid line and the exit status agree',
    );
    t.match(verdict.policy, /regs=partial/);
    t.match(
      entries.get('register-diff.txt')?.data.toString(),
      /^rbx\s+0x[0-9a-f]+\s+0x0\s+differs \(regs=partial: callee-saved/m,
      'the register diff shows rbx lost',
    );
    t.match(entries.get('rerun.sh')?.data.toString(), /--regs partial/);
  });

  await t.test('crh repro --bundle reruns the failing bundle: the same verdict, exit 1', async (t) => {
    const r = await crhRun(['repro', '--bundle', failBundle, '--out', path.join(dir, 'partial-again.tar'), '--artifacts', artifacts]);
    if (!t.equal(r.exitCode, 1, 'exit 1')) t.comment(r.stderr.slice(-3000));
    t.match(r.stdout, /^reproduced: the same verdict as /m);
    t.match(
      r.stdout,
      /^rerun of partial\.tar:\n {2}program: {4}source\/checksum\.c \(the bundle's C source, compiled again without compiler flags\)\n {2}files: {6}\(none\)\n {2}checkpoint: execution 1 of checkpoint_here\n {2}policy: {5}rf=keep-and-preserve regs=partial /m,
      'what will run is printed first',
    );
  });

  await t.test('--when-ready: checkpointed once the program wrote its pid to $CRH_READY_FILE', async (t) => {
    const bundle = path.join(dir, 'ready.tar');
    const r = await crhRun(['repro', example('ready.c'), '--when-ready', '--out', bundle, '--artifacts', artifacts]);
    if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(r.stderr.slice(-3000));
    const { verdict } = await verdictOf(bundle);
    t.match(verdict.checkpoint.stoppedBy, /^interrupted once ready \(wrote its pid to \/tmp\/crh-repro\/out\/ready\)$/);
    t.match(verdict.restored?.output, new RegExp(`^pid ${verdict.checkpoint.pid}\\nhash [0-9a-f]{16}\\n$`));
  });

  await t.test('--checkpoint-after: interrupted 100 ms in, wherever it is (mid-sleep: the call is issued again)', async (t) => {
    const bundle = path.join(dir, 'after.tar');
    const r = await crhRun(['repro', example('ready.c'), '--checkpoint-after', '100', '--out', bundle, '--artifacts', artifacts]);
    if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(r.stderr.slice(-3000));
    const { verdict } = await verdictOf(bundle);
    t.equal(verdict.checkpoint.stoppedBy, 'interrupted 100 ms after it started');
    t.equal(verdict.restored?.output, verdict.reference.output, `same output: ${JSON.stringify(verdict.reference.output)}`);
    t.comment(`stopped at rip ${verdict.checkpoint.rip}${verdict.checkpoint.rewound ? `; ${verdict.checkpoint.rewound}` : ''}`);
  });

  await t.test('--finish-signal: a CRH-READY line, SIGUSR1 to finish, the wait rewound; without signal state the handler is lost', async (t) => {
    const bundle = path.join(dir, 'finish.tar');
    const r = await crhRun(['repro', example('finish.c'), '--when-ready', '--finish-signal', 'USR1', '--out', bundle, '--artifacts', artifacts]);
    if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(r.stderr.slice(-3000));
    const { verdict } = await verdictOf(bundle);
    t.equal(verdict.checkpoint.stoppedBy, 'interrupted once ready (CRH-READY on its output)');
    t.match(
      verdict.checkpoint.rewound,
      /^system call 130 was interrupted \(ERESTARTNOHAND\); it is issued again/,
      'checkpointed inside rt_sigsuspend, rewound',
    );
    t.equal(verdict.restored?.output, `pid ${verdict.checkpoint.pid}\nCRH-READY\nfinished\n`);

    const control = await crhRun([
      'repro',
      example('finish.c'),
      '--when-ready',
      '--finish-signal',
      'USR1',
      '--omit',
      'signals',
      '--out',
      path.join(dir, 'finish-omit.tar'),
      '--artifacts',
      artifacts,
    ]);
    if (!t.equal(control.exitCode, 1, 'negative control --omit signals: exit 1')) t.comment(control.stderr.slice(-3000));
    t.match(
      control.stdout,
      /^verdict: FAIL — exit status differs: uninterrupted exit 0, restored killed by SIGUSR1 \(10\)/m,
      'the handler was not restored: SIGUSR1 kills',
    );
  });

  await t.test('crh cr: a prebuilt binary, its arguments, a file in its working directory', async (t) => {
    const source = path.join(dir, 'reader.c');
    await writeFile(
      source,
      [
        '#include <stdio.h>',
        '__attribute__((noipa)) void checkpoint_here(void) {}',
        'int main(int argc, char **argv)',
        '{',
        '\tchar line[128] = "";',
        '\tFILE *f = fopen("input.txt", "r");',
        '\tif (!f || !fgets(line, sizeof line, f)) { perror("input.txt"); return 3; }',
        '\tfclose(f);',
        '\tcheckpoint_here();',
        '\tprintf("%d [%s] %s", argc, argv[1], line);',
        '\treturn 0;',
        '}',
        '',
      ].join('\n'),
    );
    const binary = path.join(dir, 'reader');
    await execa('gcc', ['-static', '-O2', '-o', binary, source]);
    await writeFile(path.join(dir, 'input.txt'), 'from the host\n');
    await copyFile(path.join(dir, 'input.txt'), path.join(dir, 'input-copy.txt'));
    const bundle = path.join(dir, 'reader.tar');
    const r = await crhRun([
      'cr',
      '--binary',
      binary,
      '--file',
      path.join(dir, 'input.txt'),
      '--checkpoint-at',
      'checkpoint_here',
      '--out',
      bundle,
      '--artifacts',
      artifacts,
      '--',
      'two words',
    ]);
    if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(r.stderr.slice(-3000));
    const { verdict, entries } = await verdictOf(bundle);
    t.equal(verdict.restored?.output, '2 [two words] from the host\n', 'arguments and the copied file reached the program, before and after the restore');
    t.same(entries.get('files/input.txt')?.data, Buffer.from('from the host\n'));
    t.match(
      entries.get('rerun.sh')?.data.toString(),
      /node bin\/crh\.js cr --binary "\$bundle\/binary\/reader" --file "\$bundle\/files\/input\.txt" .* "\$@" -- 'two words'/,
    );

    const again = await crhRun(['repro', '--bundle', bundle, '--out', path.join(dir, 'reader-again.tar'), '--artifacts', artifacts]);
    if (!t.equal(again.exitCode, 0, 'crh repro --bundle on it: exit 0')) t.comment(again.stderr.slice(-3000));
    t.match(again.stdout, /^ {2}files: {6}files\/input\.txt$/m, 'its file, an entry of the bundle');
    t.match(again.stdout, /^ {2}arguments: {2}'two words'$/m);
    t.match(again.stdout, /^reproduced: the same verdict as /m);
    t.equal(
      (await verdictOf(path.join(dir, 'reader-again.tar'))).verdict.restored?.output,
      '2 [two words] from the host\n',
      'the extracted file reached the program',
    );
  });
});

t.test('exit 3: a program that looks at its tracer is perturbed by the harness, and no verdict on the restore is given', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-repro-perturbed-'));
  const r = await crhRun([
    'repro',
    example('tracerpid.c'),
    '--checkpoint-at',
    'checkpoint_here',
    '--out',
    path.join(dir, 'tracerpid.tar'),
    '--artifacts',
    path.join(dir, 'artifacts'),
  ]);
  if (!t.equal(r.exitCode, 3, 'exit 3 (docs/ci.md)')) t.comment(r.stderr.slice(-3000));
  t.match(r.stdout, /^verdict: PERTURBED — /m, 'the verdict says the harness perturbs the program, never PASS');
  const { verdict } = await verdictOf(path.join(dir, 'tracerpid.tar'));
  t.equal(verdict.pass, false, 'the recorded verdict is no pass');
  t.equal(verdict.perturbed, true);
  t.match(verdict.native?.output, /traced: no/, 'natively the program has no tracer');
  t.match(verdict.reference.output, /traced: yes/, 'under the agent it has');
});

t.test('--cycles: one program checkpointed and restored in a chain', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-repro-cycles-test-'));
  const artifacts = path.join(dir, 'artifacts');

  await t.test('--cycles 3 at consecutive executions of checkpoint_here: exit 0, every cycle timed', async (t) => {
    const bundle = path.join(dir, 'soak.tar');
    const r = await crhRun([
      'repro',
      example('soak.c'),
      '--checkpoint-at',
      'checkpoint_here',
      '--cycles',
      '3',
      '--out',
      bundle,
      '--artifacts',
      artifacts,
      '--',
      '20',
    ]);
    if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(r.stderr.slice(-3000));
    t.match(r.stdout, /^verdict: PASS — the restored run matches the uninterrupted run: exit 0, 3 lines of output \(3 of 3 checkpoint → restore cycles\)$/m);
    t.match(r.stderr, /restore: cycle 3\/3: /, 'each cycle shown as it happens');
    const { verdict, entries } = await verdictOf(bundle);
    t.equal(verdict.restored?.output, verdict.reference.output, 'the chain ends as the uninterrupted run');
    t.equal(verdict.restored?.hits, 20, 'and checkpoint_here ran as often: once per round');
    t.equal(verdict.cycles?.done, 3);
    t.notOk(verdict.cycles?.firstWrong, 'no cycle went wrong');
    t.same(
      verdict.cycles?.each.map((c) => c.cycle),
      [1, 2, 3],
    );
    for (const c of verdict.cycles?.each ?? [])
      t.ok(
        c.checkpointMs > 0 && (c.restoreMs ?? 0) > 0 && c.imageBytes > 0,
        `cycle ${c.cycle}: checkpoint ${c.checkpointMs} ms, restore ${c.restoreMs} ms, image ${c.imageBytes} bytes`,
      );
    t.equal(verdict.rerun.cycles, 3, 'the rerun record carries the cycles');
    t.match(entries.get('rerun.sh')?.data.toString(), /--cycles 3/);
  });

  await t.test('negative control --cycles 3 --regs partial: exit 1, the first cycle named', async (t) => {
    const bundle = path.join(dir, 'soak-partial.tar');
    const r = await crhRun([
      'repro',
      example('soak.c'),
      '--checkpoint-at',
      'checkpoint_here',
      '--cycles',
      '3',
      '--regs',
      'partial',
      '--out',
      bundle,
      '--artifacts',
      artifacts,
      '--',
      '20',
    ]);
    if (!t.equal(r.exitCode, 1, 'exit 1')) t.comment(r.stderr.slice(-3000));
    t.match(r.stdout, /^verdict: FAIL — .*first went wrong at cycle 1: the restored process did not hold the image's [^)]*rbx/m);
    const { verdict } = await verdictOf(bundle);
    t.equal(verdict.cycles?.firstWrong?.cycle, 1);
    t.ok(verdict.cycles?.each[0]?.registersDiffer?.includes('rbx'), `cycle 1 lost ${verdict.cycles?.each[0]?.registersDiffer?.join(', ')}`);
  });
});
