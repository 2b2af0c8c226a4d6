// expect: the pure parts of scripts/zdtm-suite.ts — the .desc reader, the static Makefile's kinds and T.pid
// arguments, the selection with a reason for every skip, the Sources record and the tarball check (a tampered or
// resized tarball refused), the results table and its exit code — and the checkpoint refusal the suite found
// (mapping attributes from smaps) does what it says, and membarrier registrations are found and registered again. No network, no guest.
import t from 'tap';
import { InfraError } from '../harness/errors.ts';
import { privateSourcesLine } from '../harness/image/private-apt.ts';
import type { Verdict } from '../harness/report/verdicts.ts';
import { membarrierRegistrations, membarrierSteps, MEMBARRIER_PROBES } from '../harness/restore/membarrier.ts';
import { captureVmFlags, parseSmapsVmFlags, vmaFlagsProblems, vmFlagsProblem, vmFlagSteps } from '../harness/restore/vma-flags.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { sha256 } from '../harness/util/hash.ts';
import {
  descWords,
  groupByArgs,
  parseDesc,
  parseStaticMakefile,
  selectZdtmTests,
  zdtmArgs,
  type SelectedTest,
  type ZdtmDesc,
} from '../harness/zdtm/suite-selection.ts';
import { origTarball, parseShowsrc, verifySourceTarball } from '../harness/zdtm/suite-source.ts';
import { formatSuiteTable, suiteExitCode, suiteLines, suiteTotals, type GroupRun } from '../harness/zdtm/suite-table.ts';

// A Makefile of the same shape as ZDTM's static one, written here for the test (names invented or generic).
const MAKEFILE = [
  'LIBDIR\t:= ../lib',
  'TST_NOFILE\t:=\t\\',
  '\t\twaiter\t\t\\',
  '\t\tspinner\t\t\\',
  '#\t\tcommented\t\\',
  '',
  'ifneq ($(ARCH),arm)',
  '        TST_NOFILE += extra',
  'endif',
  'TST_FILE\t=\t\\',
  '\t\tfiler\t\t\\',
  '',
  'TST_DIR\t=\t\\',
  '\t\tdirer\t\t\\',
  '',
  'TST\t\t=\t\\',
  '\t\t$(TST_NOFILE)\t\\',
  '\t\tenvy\t\t\\',
  '\t\torphan\t\t\\',
  '\t\twaiter\t\t\\',
  '',
  'TST_STATE\t=\t\\',
  '\t\tstately\t\t\\',
  '',
  '$(TST_NOFILE:%=%.pid):\t%.pid:\t%',
  '\t$(<D)/$(<F) --pidfile=$@ --outfile=$<.out',
  '$(TST_FILE:%=%.pid):\t%.pid:\t%',
  '\t$(<D)/$(<F) --pidfile=$@ --outfile=$<.out --filename=$<.test',
  '$(TST_DIR:%=%.pid):\t%.pid:\t%',
  '\t$(<D)/$(<F) --pidfile=$@ --outfile=$<.out --dirname=$<.test',
  'envy.pid:\tenvy',
  '\t$(<D)/$(<F) --pidfile=$@ --outfile=$<.out --envname=SOME_NAME',
  '',
].join('\n');

t.test('.desc literals', async (t) => {
  t.same(parseDesc("{'flavor': 'h ns', 'flags': 'suid noauto'}\n"), { flavor: 'h ns', flags: 'suid noauto' });
  t.same(parseDesc("{\"timeout\": 60, 'deps': ['/bin/sh', \"/bin/true\",], 'x': (1, True)}"), {
    timeout: 60,
    deps: ['/bin/sh', '/bin/true'],
    x: [1, true],
  });
  t.same(parseDesc('  \n'), {}, 'an empty .desc is the default, as zdtm.py reads it');
  t.same(parseDesc("# a comment\n{'arch': 'x86_64'}  # trailing\n"), { arch: 'x86_64' });
  t.throws(() => parseDesc("{'flags': 'suid' if os.getenv('X') else ''}", 'x.desc'), InfraError, 'code is refused, never evaluated');
  t.throws(() => parseDesc("os.getenv('X')", 'y.desc'), /y\.desc: expected \{/);
  t.throws(() => parseDesc("{'a': 'b'} extra"), /text after the dict/);
  t.same(descWords({ flags: ' suid  excl ' }, 'flags'), ['suid', 'excl']);
  t.same(descWords({ deps: ['a', 'b'] }, 'deps'), ['a', 'b']);
});

t.test('the static Makefile: kinds and the arguments of each T.pid rule', async (t) => {
  const mk = parseStaticMakefile(MAKEFILE);
  t.equal(mk.kinds.get('waiter'), 'TST_NOFILE');
  t.equal(mk.kinds.get('extra'), 'TST_NOFILE', '+= inside a conditional counts');
  t.equal(mk.kinds.get('commented'), undefined, 'a # comment is cut as make cuts it');
  t.equal(mk.kinds.get('filer'), 'TST_FILE');
  t.equal(mk.kinds.get('envy'), 'TST', 'named in TST only');
  t.equal(mk.kinds.get('stately'), 'TST_STATE');
  t.same(zdtmArgs(mk, 'waiter'), []);
  t.same(zdtmArgs(mk, 'filer'), ['--filename=filer.test'], '$< is the test name');
  t.same(zdtmArgs(mk, 'direr'), ['--dirname=direr.test']);
  t.same(zdtmArgs(mk, 'envy'), ['--envname=SOME_NAME'], 'a rule of its own wins');
});

t.test('selection: every skip has its reason', async (t) => {
  const mk = parseStaticMakefile(MAKEFILE);
  const sources = new Set(['waiter', 'spinner', 'extra', 'filer', 'direr', 'envy', 'orphan', 'stately']);
  const descs = new Map<string, ZdtmDesc | Error>([
    ['spinner', { flags: 'noauto' }],
    ['extra', { flavor: 'ns uns' }],
    ['filer', { arch: 'x86_64', feature: 'timerfd' }],
    ['direr', { flags: 'crfail' }],
    ['envy', { opts: '--tcp-established' }],
    ['waiter', { flags: 'excl' }],
  ]);
  const candidates = [
    { category: 'a', tests: ['waiter', 'spinner', 'extra', 'filer'] },
    { category: 'b', tests: ['direr', 'envy', 'orphan', 'stately', 'absent'] },
  ];
  const { selected, skipped } = selectZdtmTests(candidates, mk, sources, descs);
  t.same(
    selected.map((s) => [s.name, s.category, s.args, s.features]),
    [
      ['waiter', 'a', [], []],
      ['filer', 'a', ['--filename=filer.test'], ['timerfd']],
    ],
  );
  const why = Object.fromEntries(skipped.map((s) => [s.name, s.reason]));
  t.match(why.spinner, /^noauto/);
  t.match(why.extra, /^flavor ns uns/);
  t.match(why.direr, /^crfail/);
  t.match(why.envy, /CRIU options --tcp-established/);
  t.match(why.orphan, /no T\.pid rule/);
  t.match(why.stately, /^TST_STATE/);
  t.match(why.absent, /not in this tree/);
  t.equal(skipped.length + selected.length, 9, 'every candidate accounted for');
  const suid = selectZdtmTests([{ category: 'c', tests: ['waiter'] }], mk, sources, new Map([['waiter', { flags: 'suid' }]]));
  t.match(suid.skipped[0]!.reason, /^suid/);
  const bad = selectZdtmTests([{ category: 'c', tests: ['waiter'] }], mk, sources, new Map([['waiter', new Error('x.desc: expected {')]]));
  t.match(bad.skipped[0]!.reason, /not a plain literal: x\.desc/);
  const arm = selectZdtmTests([{ category: 'c', tests: ['waiter'] }], mk, sources, new Map([['waiter', { arch: 'aarch64' }]]));
  t.match(arm.skipped[0]!.reason, /^arch aarch64/);
});

t.test('one invocation per argument list', async (t) => {
  const test = (name: string, args: string[]): SelectedTest => ({ name, category: 'x', kind: 'TST_NOFILE', args, features: [] });
  const groups = groupByArgs([test('a', []), test('b', ['--filename=b.test']), test('c', []), test('d', ['--filename=d.test'])]);
  t.same(
    groups.map((g) => g.map((x) => x.name)),
    [['a', 'c'], ['b'], ['d']],
  );
});

const ORIG = Buffer.from('pretend this is an upstream tarball\n');
const SHOWSRC = [
  'Package: criu',
  'Version: 4.1.1-1',
  'Files:',
  ' 6de15517e9b86997b34f67d99dced2a5 1021136 criu_4.1.1.orig.tar.xz',
  'Checksums-Sha256:',
  ` 12206f74ab852907156db8fdf1fb2a40ebbc897d28c133a2cbe804fab13f8b62 2806 criu_4.1.1-1.dsc`,
  ` ${sha256(ORIG)} ${ORIG.length} criu_4.1.1.orig.tar.xz`,
  ' 103855d69544c3417abdb5b309c1773db98af2293c4dc48bba39e244b85c778e 12368 criu_4.1.1-1.debian.tar.xz',
  'Directory: pool/main/c/criu',
  '',
  'Package: other',
  'Version: 1',
  '',
].join('\n');

t.test('the Sources record and the tarball check', async (t) => {
  const records = parseShowsrc(SHOWSRC);
  t.same(
    records.map((r) => [r.package, r.version, r.files.length]),
    [
      ['criu', '4.1.1-1', 3],
      ['other', '1', 0],
    ],
  );
  t.equal(records[0]!.directory, 'pool/main/c/criu');
  const orig = origTarball(records[0]!);
  t.same(orig, { name: 'criu_4.1.1.orig.tar.xz', sha256: sha256(ORIG), size: ORIG.length });
  t.doesNotThrow(() => verifySourceTarball(ORIG, orig), 'the tarball the index names passes');
  const tampered = Buffer.from(ORIG);
  tampered.writeUInt8(tampered.readUInt8(3) ^ 1, 3);
  t.throws(
    () => verifySourceTarball(tampered, orig),
    { name: 'InfraError', message: /SHA-256 [0-9a-f]{64}, the Sources index says .*refusing it/ },
    'one flipped bit is refused',
  );
  t.throws(
    () => verifySourceTarball(Buffer.concat([ORIG, Buffer.from('x')]), orig),
    /bytes, the Sources index says \d+; refusing it/,
    'a longer one is refused',
  );
  t.throws(() => origTarball(records[1]!), InfraError, 'a record with no upstream tarball');
  t.equal(
    privateSourcesLine('trixie', 'deb-src'),
    'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n',
    "the private source index is signed by Debian's keyring",
  );
  t.match(privateSourcesLine('trixie'), /^deb \[/, 'binary packages by default, as before');
});

t.test('the table and the exit code', async (t) => {
  const sel = (name: string, args: string[] = []): SelectedTest => ({ name, category: 'c', kind: 'TST_NOFILE', args, features: [] });
  const row = (scenario: string, engine: 'crh' | 'criu', pass: boolean, extra: Partial<Verdict> = {}): Verdict => ({
    case: 'zdtm',
    scenario,
    engine,
    policy: 'p',
    expected: 'PASS, as natively',
    observed: pass ? 'PASS in T.out' : 'CheckpointError: eventfd',
    pass,
    control: false,
    durationMs: 2000,
    ...extra,
  });
  const groups: GroupRun[] = [
    {
      tests: [sel('good'), sel('bad'), sel('broken')],
      rows: [
        row('good', 'crh', true),
        row('good', 'criu', true),
        row('bad', 'crh', false),
        row('bad', 'criu', true),
        row('broken', 'crh', false, { skipped: 'fails natively: exited 1' }),
        row('broken', 'criu', false, { skipped: 'fails natively: exited 1' }),
      ],
      exitCode: 1,
      wallMs: 30_000,
    },
    {
      tests: [sel('filer', ['--filename=filer.test'])],
      rows: [
        row('filer --filename=filer.test (2 checkpoint/restore cycles)', 'crh', true),
        row('filer --filename=filer.test (2 checkpoint/restore cycles)', 'criu', false),
      ],
      exitCode: 0,
      wallMs: 20_000,
    },
  ];
  const lines = suiteLines(groups, ['crh', 'criu']);
  t.same(
    lines.map((l) => [l.test, l.native, l.crh, l.criu]),
    [
      ['good', 'PASS', 'PASS', 'PASS'],
      ['bad', 'PASS', 'FAIL', 'PASS'],
      ['broken', 'FAIL', 'not run', 'not run'],
      ['filer', 'PASS', 'PASS', 'FAIL'],
    ],
  );
  t.equal(suiteExitCode(lines, groups), 1, 'a test that passes natively and fails through crh: exit 1');
  const onlyCriu = lines.filter((l) => l.test !== 'bad');
  t.equal(suiteExitCode(onlyCriu, groups), 0, 'failing natively, or under CRIU only, fails nothing');
  const infra: GroupRun[] = [{ tests: [sel('lost')], rows: [], exitCode: 69, wallMs: 1, trouble: 'BootError: no console' }];
  const infraLines = suiteLines(infra, ['crh']);
  t.same(infraLines[0]!.notes, ['not run: BootError: no console']);
  t.equal(suiteExitCode(infraLines, infra), 69, 'a test left without a verdict is infrastructure');
  const table = formatSuiteTable(lines);
  t.match(table, /\| test \| what \| native \| crh \| criu \| crh s \| criu s \|/);
  t.match(table, /\| `bad` \| c \| PASS \| FAIL \| PASS \| 2\.0 \| 2\.0 \|/);
  t.match(table, /\| `filer --filename=filer\.test` \|/, 'a test with arguments shows them');
  t.match(table, /- bad: crh: CheckpointError: eventfd/);
  t.match(suiteTotals(lines), /^4 tests, 3 pass natively, 2 pass through crh, 1 fail through crh, 2 pass through CRIU, 1 fail through CRIU$/);
});

const smapsEntry = (range: string, perms: string, name: string, flags: string): string =>
  `${range} ${perms} 00000000 00:00 0 ${name}\nSize:                  8 kB\nRss:                   4 kB\nVmFlags: ${flags}\n`;

t.test('mapping attributes: given back when a restore can, refused by name when not', async (t) => {
  const plain = [
    smapsEntry('400000-401000', 'r-xp', '/tmp/t', 'rd ex mr mw me sd'),
    smapsEntry('7ffff0000000-7ffff0021000', 'rw-p', '', 'rd wr mr mw me nr sd'),
    smapsEntry('7ffff7ff9000-7ffff7ffd000', 'r--p', '[vvar]', 'rd mr pf io de dd sd'),
    smapsEntry('7ffffffde000-7ffffffff000', 'rw-p', '[stack]', 'rd wr mr mw me gd ac nh'),
  ].join('');
  t.equal(parseSmapsVmFlags(plain).length, 4);
  t.same(vmaFlagsProblems(7, plain), [], "a plain process (malloc arenas' nr, a stack's nh, the kernel's [vvar]) holds nothing refused");
  const advised = smapsEntry('7ffff7fee000-7ffff7ff0000', 'rw-p', '', 'rd wr mr mw me ac sd dc hg lo sr dd mg zz ht');
  const [p] = vmaFlagsProblems(7, advised);
  t.equal(p!.state, 'mapping attributes');
  t.match(p!.where, /^\/proc\/7\/smaps 0x7ffff7fee000-0x7ffff7ff0000 rw-p anonymous$/);
  t.match(p!.seen, /^VmFlags zz \(unknown to crh\), ht \(hugetlb\):/, 'only the flags no restore gives back, an unknown one too');
  t.same([...captureVmFlags(advised).entries()], [[0x7ffff7fee000n, ['dc', 'hg', 'lo', 'sr', 'dd', 'mg']]], 'the advice and the lock are captured');
  const locked = smapsEntry('7ffff7fee000-7ffff7ff0000', 'rw-p', '', 'rd wr mr mw me lo sd um');
  t.match(vmaFlagsProblems(7, locked)[0]!.seen, /lo on a region registered with a userfaultfd/, 'locking a userfaultfd region again is refused');
  const sharedReadOnly = smapsEntry('7ffff7ff6000-7ffff7ff7000', 'r--s', '/tmp/f.test', 'rd sh mr mw me ms sd');
  t.same(vmaFlagsProblems(7, sharedReadOnly), [], 'mw without w on a shared file mapping: given back');
  t.same([...captureVmFlags(sharedReadOnly).values()], [['mw']], 'recorded as mw');
  t.same(captureVmFlags(plain).get(0x7ffff0000000n), ['nr'], "a malloc arena's MAP_NORESERVE is recorded");
  t.same(captureVmFlags(smapsEntry('7ffff7ff6000-7ffff7ff7000', 'rw-s', '/tmp/f.test', 'rd wr sh mr mw me ms sd')).size, 0, 'mw only where w is not');
  t.equal(captureVmFlags(plain).has(0x7ffff7ff9000n), false, "the kernel's special mappings are skipped");
  t.same(
    vmaFlagsProblems(7, smapsEntry('7ffff7fe8000-7ffff7fea000', 'r--s', '/dev/zero (deleted)', 'rd sh mr mw me ms sd')),
    [],
    'shared anonymous memory is mapped read-write again whatever its perms',
  );
  t.same(
    vmaFlagsProblems(7, smapsEntry('7ffff7ff6000-7ffff7ff7000', 'rw-s', '/tmp/f.test', 'rd wr sh mr mw me ms sd')),
    [],
    'writable now: opened read-write again',
  );
  t.same(
    vmaFlagsProblems(7, smapsEntry('7ffff7ff6000-7ffff7ff7000', 'r--p', '/tmp/f.test', 'rd mr mw me sd')),
    [],
    'a private file mapping may always be written',
  );
});

t.test('given-back VmFlags: hostile values named, steps in order, omit=vma-flags none', async (t) => {
  const anon = { perms: 'rw-p', file: null };
  t.equal(vmFlagsProblem(['dc', 'lo'], anon), undefined);
  t.match(vmFlagsProblem(['ht'], anon)!, /"ht" is not a flag a restore gives back/);
  t.match(vmFlagsProblem([], anon)!, /non-empty list/);
  t.match(vmFlagsProblem('dc', anon)!, /non-empty list/);
  t.match(vmFlagsProblem(['dc', 'dc'], anon)!, /twice/);
  t.match(vmFlagsProblem(['mw'], anon)!, /only for a shared file mapping/);
  t.equal(vmFlagsProblem(['mw'], { perms: 'r--s', file: '/tmp/f' }), undefined);
  t.match(vmFlagsProblem(['lf'], anon)!, /without lo/);
  t.match(vmFlagsProblem(['wf'], { perms: 'rw-s', file: null })!, /private anonymous/);
  const region = {
    start: 0x10000n,
    end: 0x12000n,
    perms: 'rw-p',
    name: '',
    file: null,
    offset: 0n,
    entry: 'memory/0000.bin',
    vmFlags: ['nr', 'lo', 'lf', 'dc'],
  };
  const steps = vmFlagSteps(7, [region], DEFAULT_POLICY);
  t.same(
    steps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? [s.op.nr, ...s.op.args] : [])),
    [
      [28, 0x10000n, 0x2000n, 10n],
      [325, 0x10000n, 0x2000n, 1n],
    ],
    "MADV_DONTFORK, then mlock2(MLOCK_ONFAULT); nr is the mmap's",
  );
  t.same(vmFlagSteps(7, [region], { ...DEFAULT_POLICY, omit: ['vma-flags'] }), [], 'omit=vma-flags: none');
});

t.test('membarrier registrations are found by their probes and registered again', async (t) => {
  const EPERM = BigInt.asUintN(64, -1n);
  t.same(membarrierRegistrations(MEMBARRIER_PROBES.map((p) => ({ cmd: p.cmd, result: EPERM }))), [], 'not registered: -EPERM for each');
  const found = membarrierRegistrations([
    { cmd: 8, result: 0n },
    { cmd: 32, result: EPERM },
    { cmd: 128, result: 0n },
  ]);
  t.same(found, ['private-expedited', 'private-expedited-rseq']);
  t.same(
    membarrierSteps(7, found).map((s) => (s.op.op === 'INJECT_SYSCALL' ? [s.op.nr, s.op.args[0], s.expect] : [])),
    [
      [324, 16n, 0n],
      [324, 256n, 0n],
    ],
    'MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED (1 << 4) and _RSEQ (1 << 8), each expected to return 0',
  );
});
