// expect: a verdict row recorded from a tap scope whose assertion failed is FAIL and names the
// assertion; the kernel's read-back rides in the row and shows in JUnit and the HTML cell.
import t from 'tap';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { htmlReport } from '../harness/report/html.ts';
import { junitXml } from '../harness/report/junit.ts';
import { formatVerdictTable, readVerdicts, type Verdict } from '../harness/report/verdicts.ts';
import { withFailedAssertions } from '../harness/testing/verdict-rows.ts';
import { handDown } from './support/run-configuration.ts';

const FIXTURE = path.join(import.meta.dirname, 'fixtures', 'verdict-rows', 'scoped-rows.test.ts');

t.test("rows from a real tap run carry their scope's failures and restores", async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'crh-rows-'));
  const file = path.join(dir, 'artifacts', 'verdicts.jsonl');
  // Run as crh run runs a case: its configuration handed down in one file.
  const run = await execa(process.execPath, ['--import=tsx', FIXTURE], { env: await handDown(dir), reject: false });
  t.not(run.exitCode, 0, "the fixture's tap run fails (it has failing assertions)");
  const rows = readVerdicts(file);
  t.same(
    rows.map((r) => [r.policy, r.pass]),
    [
      ['restorer=ptrace regs=full', false],
      ['restorer=sigreturn regs=full', true],
      ['first', true],
      ['second', false],
    ],
    'each row FAIL exactly when its own scope failed',
  );
  t.same(rows[0]!.failedAssertions, ['the kernel accepted every register as requested'], 'the failed assertion is named in the row');
  t.same(
    rows[0]!.restores,
    [
      {
        tag: 'ptrace-regs-full',
        differences: [{ what: 'eflags', requested: '0x10202', accepted: '0x202' }],
        oracle: 'first execution of regcheck:regcheck_resumed reached; 12 VM stops',
      },
    ],
    "the read-back and the oracle's counts ride in the row",
  );
  t.same(rows[1]!.restores, [{ tag: 'sigreturn-regs-full', differences: [] }], 'an accepted restore is a witness too');
  t.equal(rows[1]!.failedAssertions, undefined, 'a clean row names nothing');
  t.equal(rows[2]!.failedAssertions, undefined, "a failure after a row is not that row's");
  t.same(rows[3]!.failedAssertions, ['second run lost a hit'], 'the second row of the scope gets the failure since the first');
  t.ok(
    rows.every((r) => typeof r.durationMs === 'number'),
    'every row timed',
  );

  const xml = junitXml(rows);
  t.match(
    xml,
    /<failure message="failed: the kernel accepted every register as requested — expected regcheck ok, observed regcheck ok \(kernel read-back: eflags asked 0x10202, kernel has 0x202\)"/,
    'JUnit failure message: the assertion and the read-back',
  );
  t.match(
    xml,
    /restore ptrace-regs-full: eflags asked 0x10202, the kernel has 0x202\noracle ptrace-regs-full: first execution of regcheck:regcheck_resumed reached; 12 VM stops/,
    "JUnit failure text: the read-back and the oracle's counts",
  );
  const html = htmlReport({ verdicts: rows, generatedAt: 'now' });
  t.match(
    html,
    /<span class="cause">failed assertion: the kernel accepted every register as requested; restore ptrace-regs-full: eflags asked 0x10202, the kernel has 0x202; oracle ptrace-regs-full: first execution of regcheck:regcheck_resumed reached; 12 VM stops<\/span>/,
    'the failing HTML cell says why without being opened',
  );
  t.match(
    html,
    /<dt>kernel read-back<\/dt><dd><pre>restore sigreturn-regs-full: the kernel accepted everything as requested<\/pre>/,
    'a passing cell shows the kernel accepted the restore',
  );
  t.match(formatVerdictTable(rows), /FAIL: the kernel accepted every register as requested/, 'the text table names the failed assertion');
});

t.test('withFailedAssertions', async (t) => {
  const v: Verdict = { case: 'c', scenario: 's', policy: 'p', control: true, expected: 'e', observed: 'o', pass: true };
  t.same(withFailedAssertions(v, []), v, 'no failures: the row as it was');
  t.same(withFailedAssertions(v, ['x']), { ...v, pass: false, failedAssertions: ['x'] }, 'a control row fails too when its own checks failed');
  const skip = { ...v, pass: false, skipped: 'lacks CONFIG_RSEQ' };
  t.same(withFailedAssertions(skip, ['x']), skip, 'a skip stays a skip');
});
