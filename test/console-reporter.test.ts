// expect: the people-facing output — a line per case, a status line only on a TTY, a summary no wider than 100
// columns that spells out every row not as expected with its artifacts — and no colour without a TTY or with NO_COLOR.
import t from 'tap';
import { caseLine, ConsoleReporter, summary, SUMMARY_COLUMNS } from '../harness/report/console-reporter.ts';
import type { Verdict } from '../harness/report/verdicts.ts';

const row = (over: Partial<Verdict>): Verdict => ({
  case: 'hwbreak-rf',
  scenario: 'a breakpoint hit once per call across a kill-and-restore at the hit '.repeat(3),
  policy: 'rf=keep',
  expected: '5 hits '.repeat(30),
  observed: '5 hits',
  pass: true,
  control: false,
  ...over,
});

t.test('a line per case', async (t) => {
  t.match(caseLine('hwbreak-rf', [row({}), row({ control: true })], 0, 12_345, false), /^✓ hwbreak-rf +2 rows, 1 controls +12\.3 s$/);
  t.match(caseLine('rseq', [row({ pass: false })], 1, 1000, false), /^✗ rseq +1 rows, 0 controls, 1 not as expected/);
  t.match(caseLine('uffd', [row({})], 1, 1000, false), /^✗ uffd +assertions failed \(exit 1\)/, 'a failing process fails the case even when its rows passed');
  t.match(caseLine('uffd', [], 0, 1000, false), /^✗ uffd +no verdict row/, 'a case that recorded nothing is not a pass');
  t.match(caseLine('rseq', [row({ skipped: 'CONFIG_RSEQ is not set' })], 0, 1000, false), /^- rseq +skipped: CONFIG_RSEQ is not set/);
  t.match(caseLine('daemon', [], 1, 1000, true), /^! daemon +infrastructure failure/);
});

t.test('the summary fits 100 columns and names what failed', async (t) => {
  const text = summary({
    verdicts: [
      row({}),
      row({ pass: false, registerDiff: 'eflags: asked 0x10202, kernel has 0x202' }),
      row({
        case: 'register-integrity',
        pass: false,
        failedAssertions: ['the kernel accepted every register as requested'],
        restores: [{ tag: 'ptrace-regs-full', differences: [{ what: 'eflags', requested: '0x10602', accepted: '0x602' }], oracle: 'regcheck_resumed reached' }],
      }),
      row({ control: true }),
    ],
    infraCases: ['daemon'],
    failedCases: ['hwbreak-rf', 'threads'],
    elapsedMs: 95_500,
    artifactsRoot: '/work/main/artifacts',
    htmlReport: '/work/main/artifacts/report.html',
    context: ['accelerator tcg (KVM unusable: failed to set MSR 0x10a)', 'kernel 6.1.0-50-cloud-amd64'],
  });
  const wide = text.split('\n').filter((l) => [...l].length > SUMMARY_COLUMNS);
  t.same(wide, [], 'no line wider than 100 columns');
  t.match(text, /eflags: asked 0x10202, kernel has 0x202/, 'the register diff beside the failure');
  t.match(text, /failed assertion: the kernel accepted every register as requested/, 'the failed assertion beside its row');
  t.match(text, /restore ptrace-regs-full: eflags asked 0x10602, the kernel has 0x602/, "the kernel's read-back beside the row");
  t.match(text, /artifacts \/work\/main\/artifacts\/hwbreak-rf/, 'the failing row names its artifacts');
  t.match(text, /✗ threads: assertions failed outside any verdict row/, 'a case that failed without a failing row is named');
  t.match(text, /! daemon: infrastructure failure/);
  t.match(text, /^2 passed, 2 failed$/m, 'the closing count line');
});

t.test('status line and colour only where a person watches', async (t) => {
  const run = (isTTY: boolean, env: NodeJS.ProcessEnv) => {
    let text = '';
    const r = new ConsoleReporter(
      { write: (s) => void (text += s), isTTY, columns: 80 },
      () => [row({})],
      () => false,
      env,
    );
    r.onEvent({ type: 'start', file: 'cases/uffd.test.ts', name: 'uffd' });
    r.onEvent({ type: 'line', file: 'cases/uffd.test.ts', name: 'uffd', line: '    # Subtest: load: checkpointed in the fault' });
    r.onEvent({ type: 'end', file: 'cases/uffd.test.ts', name: 'uffd', exitCode: 0, signal: null, durationMs: 2000, tapFile: '/x', timedOut: false });
    return text;
  };
  const piped = run(false, {});
  t.notMatch(piped, /\x1b/, 'no escape sequences when not a TTY');
  t.equal(piped.split('\n').filter(Boolean).length, 1, 'one line per case when piped');
  const tty = run(true, {});
  t.match(tty, /uffd: load: checkpointed in the fault/, 'the phase shows on a TTY');
  t.match(tty, /\x1b\[32m✓/, 'green tick on a TTY');
  t.notMatch(run(true, { NO_COLOR: '1' }), /\x1b\[3\dm/, 'NO_COLOR: no colour');
});
