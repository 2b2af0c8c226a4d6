// expect: verdicts of several kernels line up by case × scenario × policy with one column per kernel and a ≠ on every
// row whose cells differ (a case one kernel skipped or could not boot included); --kernel companions pair by position;
// the matrix exits 69 if any kernel hit the infrastructure, else 1 if any case failed anywhere; skips stay skips in
// the verdict table and in JUnit.
import t from 'tap';
import { XMLParser } from 'fast-xml-parser';
import { kernelLabel, kernelRuns, matrixExitCode } from '../harness/cli/kernel-matrix.ts';
import { junitXml } from '../harness/report/junit.ts';
import { formatKernelMatrix, kernelMatrixRows, type KernelColumn } from '../harness/report/kernel-matrix.ts';
import { formatVerdictTable, outcome, type Verdict } from '../harness/report/verdicts.ts';

const v = (c: string, scenario: string, policy: string, pass: boolean, extra: Partial<Verdict> = {}): Verdict => ({
  case: c,
  scenario,
  policy,
  expected: '5 hits',
  observed: pass ? '5 hits' : '6 hits',
  pass,
  control: false,
  ...extra,
});
const rseqSkip = v('rseq', '(every scenario of the case)', '-', false, {
  observed: 'lacks CONFIG_RSEQ',
  skipped: 'the guest kernel lacks CONFIG_RSEQ (not set); config: IKCONFIG embedded in the bzImage',
});

const cloud: KernelColumn = {
  label: 'cloud-amd64',
  kernel: 'debian:linux-image-cloud-amd64',
  verdicts: [
    v('hwbreak-rf', 'hit 2', 'rf=keep-and-preserve', true),
    v('hwbreak-rf', 'hit 2', 'rf=clear', true, { control: true }),
    v('rseq', 'inside', 'rseq-fixup=on', true),
  ],
  infra: [],
};
const patched: KernelColumn = {
  label: 'patched',
  kernel: '/src/linux/arch/x86/boot/bzImage',
  verdicts: [v('hwbreak-rf', 'hit 2', 'rf=keep-and-preserve', false), v('hwbreak-rf', 'hit 2', 'rf=clear', true, { control: true }), rseqSkip],
  infra: [],
};

t.test('rows line up across kernels; differing rows are marked', async (t) => {
  const rows = kernelMatrixRows([cloud, patched]);
  t.same(
    rows.map((r) => [r.case, r.policy, ...r.cells, r.differs]),
    [
      ['hwbreak-rf', 'rf=keep-and-preserve', 'PASS', 'FAIL', true],
      ['hwbreak-rf', 'rf=clear (control)', 'PASS', 'PASS', false],
      ['rseq', 'rseq-fixup=on', 'PASS', 'SKIP (CONFIG_RSEQ)', true],
    ],
    'a case skipped as a whole fills each row of that case the other kernel ran',
  );
  const text = formatKernelMatrix([cloud, patched]);
  t.equal(
    text,
    [
      'cloud-amd64: debian:linux-image-cloud-amd64',
      'patched: /src/linux/arch/x86/boot/bzImage',
      '',
      '   case        scenario  policy                cloud-amd64  patched',
      '-  ----------  --------  --------------------  -----------  ------------------',
      '≠  hwbreak-rf  hit 2     rf=keep-and-preserve  PASS         FAIL',
      '   hwbreak-rf  hit 2     rf=clear (control)    PASS         PASS',
      '≠  rseq        inside    rseq-fixup=on         PASS         SKIP (CONFIG_RSEQ)',
      '',
      '2 of 3 rows differ between kernels (≠):',
      '≠ hwbreak-rf / hit 2 / rf=keep-and-preserve',
      '    cloud-amd64: PASS — 5 hits',
      '    patched: FAIL — 6 hits',
      '≠ rseq / inside / rseq-fixup=on',
      '    cloud-amd64: PASS — 5 hits',
      '    patched: SKIP (CONFIG_RSEQ) — lacks CONFIG_RSEQ',
    ].join('\n'),
  );
});

t.test('rows of a case stay together however the cases interleaved', async (t) => {
  const interleaved: KernelColumn = { ...cloud, verdicts: [v('a', 's1', 'p', true), v('b', 's1', 'p', true), v('a', 's2', 'p', true)] };
  t.same(
    kernelMatrixRows([interleaved]).map((r) => `${r.case}/${r.scenario}`),
    ['a/s1', 'a/s2', 'b/s1'],
  );
});

t.test('a kernel that could not boot shows INFRA; identical runs say so; a case run nowhere keeps its skip row', async (t) => {
  const broken: KernelColumn = {
    label: 'broken',
    kernel: '/tmp/bzImage',
    verdicts: [],
    infra: [{ case: '(image)', error: 'InfraError: kernel bzImage not found' }],
  };
  t.same(
    kernelMatrixRows([cloud, broken]).map((r) => r.cells),
    [
      ['PASS', 'INFRA'],
      ['PASS', 'INFRA'],
      ['PASS', 'INFRA'],
    ],
  );
  t.match(formatKernelMatrix([cloud, { ...cloud, label: 'again' }]), /every row is the same on all 2 kernels$/);
  const both = kernelMatrixRows([
    { ...patched, verdicts: [rseqSkip] },
    { ...cloud, verdicts: [rseqSkip] },
  ]);
  t.same(
    both.map((r) => [r.scenario, ...r.cells, r.differs]),
    [['(every scenario of the case)', 'SKIP (CONFIG_RSEQ)', 'SKIP (CONFIG_RSEQ)', false]],
  );
  t.match(formatKernelMatrix([broken]), /no verdicts from any kernel/);
});

t.test('exit code of the matrix', async (t) => {
  const ok = { exitCode: 0, verdicts: [v('a', 's', 'p', true)], infra: [] };
  const failed = { exitCode: 1, verdicts: [v('a', 's', 'p', false)], infra: [] };
  const infra = { exitCode: 69, verdicts: [], infra: [{ case: '(image)', error: 'x' }] };
  const skipped = { exitCode: 0, verdicts: [rseqSkip], infra: [] };
  t.equal(matrixExitCode([ok, skipped]), 0, 'a skip is not a failure');
  t.equal(matrixExitCode([ok, failed]), 1);
  t.equal(matrixExitCode([failed, infra]), 69, 'infrastructure wins: the failed kernel may say nothing');
  t.equal(matrixExitCode([ok, { exitCode: 2, verdicts: [], infra: [] }]), 2);
});

t.test('--kernel and its companions', async (t) => {
  t.same(kernelRuns({}), [{ label: 'default', flags: {} }]);
  t.same(
    kernelRuns({ kernel: ['debian:linux-image-cloud-amd64', 'debian:linux-image-amd64'] }).map((r) => r.label),
    ['cloud-amd64', 'amd64'],
  );
  t.same(kernelRuns({ kernel: ['/a/bzImage', '/b/bzImage'], 'system-map': ['/a/System.map', '/b/System.map'] }), [
    { label: 'a-bzImage', flags: { kernel: '/a/bzImage', 'system-map': '/a/System.map' } },
    { label: 'b-bzImage', flags: { kernel: '/b/bzImage', 'system-map': '/b/System.map' } },
  ]);
  t.throws(() => kernelRuns({ kernel: ['/a/bzImage', '/b/bzImage'], 'kernel-config': ['/a/.config'] }), /--kernel-config given 1 time\(s\) for 2 kernel\(s\)/);
  t.same(
    kernelRuns({ kernel: ['/x/vmlinuz-6.1', '/y/vmlinuz-6.1'] }).map((r) => r.label),
    ['vmlinuz-6.1', 'vmlinuz-6.1-2'],
    'labels are unique',
  );
  t.equal(kernelLabel('/home/me/linux-rf-fix/arch/x86/boot/bzImage'), 'linux-rf-fix', 'a build tree is named by its folder');
  t.equal(kernelLabel('debian:linux-image-6.1.0-54-cloud-amd64'), '6.1.0-54-cloud-amd64');
  t.equal(kernelLabel('/k/../weird name'), 'weird_name');
});

t.test('skips in the verdict table and in JUnit', async (t) => {
  const verdicts = [v('hwbreak-rf', 'hit 2', 'rf=clear', true), rseqSkip];
  t.equal(outcome(rseqSkip), 'SKIP');
  t.match(formatVerdictTable(verdicts), /rseq\s+\(every scenario of the case\)\s+crh\s+-\s+.*SKIP: the guest kernel lacks CONFIG_RSEQ \(not set\)/);
  const xml = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(junitXml(verdicts));
  t.match(xml.testsuites, { tests: '2', failures: '0', skipped: '1' });
  const rseq = xml.testsuites.testsuite.find((s: { name: string }) => s.name === 'rseq');
  t.match(rseq, { skipped: '1', failures: '0', testcase: { skipped: { message: /lacks CONFIG_RSEQ/ } } });
});
