// expect: `crh run --kernel A --kernel B` runs the cases on two Debian 6.1 builds from apt (cloud and generic) in one
// command and prints both verdict columns side by side; a case needing an option the second kernel's config lacks
// (CONFIG_RSEQ: the CRIU rseq report of the catalog) is a skip naming the option — no guest booted, exit still 0 — and its rows are marked as differing;
// a kernel that cannot be had makes the whole run exit 69.
import t from 'tap';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { XMLParser } from 'fast-xml-parser';
import { debianKernel } from '../harness/image/kernel.ts';
import type { Verdict } from '../harness/report/verdicts.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
const asList = <T>(x: T | T[] | undefined): T[] => (x === undefined ? [] : Array.isArray(x) ? x : [x]);

interface MatrixJson {
  kernels: { label: string; kernel: string; identity?: Record<string, unknown>; exitCode: number; verdicts: Verdict[]; infrastructureFailures: unknown[] }[];
}

t.test('cloud and generic 6.1 side by side; RSEQ missing from the second config skips the rseq report', async (t) => {
  const cloud = await debianKernel('linux-image-cloud-amd64');
  const generic = await debianKernel('linux-image-amd64');
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-matrix-'));
  // The generic kernel's own config with RSEQ switched off: the skip decision reads the config, so this stands in
  // for a kernel built without RSEQ (building one takes longer than this whole test).
  const noRseq = path.join(dir, `config-${generic.release}-no-rseq`);
  const config = await readFile(generic.config!, 'utf8');
  t.match(config, /^CONFIG_RSEQ=y$/m);
  await writeFile(noRseq, config.replace(/^CONFIG_RSEQ=y$/m, '# CONFIG_RSEQ is not set'));

  const started = Date.now();
  const r = await execa(
    process.execPath,
    [
      crh,
      'run',
      '--grep',
      '^(register-integrity\\.test|reports/criu-rseq)',
      '--kernel',
      'debian:linux-image-cloud-amd64',
      '--kernel-config',
      cloud.config!,
      '--kernel',
      'debian:linux-image-amd64',
      '--kernel-config',
      noRseq,
      '--artifacts',
      dir,
      '--json',
      path.join(dir, 'all.json'),
      '--junit',
      path.join(dir, 'junit.xml'),
    ],
    { cwd: REPO_ROOT, reject: false },
  );
  t.comment(`two kernels, two cases: ${Date.now() - started} ms`);
  t.equal(r.exitCode, 0, 'a skip is not a failure');
  if (r.exitCode !== 0) t.comment(`${r.stdout.slice(-4000)}\n${r.stderr.slice(-4000)}`);

  const { kernels } = JSON.parse(await readFile(path.join(dir, 'all.json'), 'utf8')) as MatrixJson;
  t.same(
    kernels.map((k) => k.label),
    ['cloud-amd64', 'amd64'],
  );
  t.match(kernels[0]!.kernel, /6\.1\.0-\d+-cloud-amd64/);
  t.match(
    kernels[1]!.kernel,
    /6\.1\.0-\d+-amd64 sha256 [0-9a-f]{12} config [0-9a-f]{12} \(debian:linux-image-6\.1\.0-\d+-amd64=/,
    'release, image and config hashes in the header',
  );
  t.match(
    kernels[1]!.identity,
    { release: generic.release, sha256: generic.sha256, kernelVersion: new RegExp(`^${generic.release.replace(/\./g, '\\.')} `) },
    "the identity in the JSON: release, image hash, the header's version string",
  );
  const rows = (k: number, c: string): Verdict[] => kernels[k]!.verdicts.filter((v) => v.case === c);
  t.equal(rows(0, 'register-integrity').length, 4, 'register-integrity ran on the cloud kernel');
  t.same(
    rows(1, 'register-integrity').map((v) => v.pass),
    [true, true, true, true],
    'and on the generic one: both columns filled',
  );
  const rseq = 'report-criu-rseq';
  t.ok(
    rows(0, rseq).length === 3 && rows(0, rseq).every((v) => v.pass && !v.skipped),
    'the rseq report ran and passed on the cloud kernel (fix and 2 historic bugs)',
  );
  t.match(rows(1, rseq), [{ skipped: /the guest kernel lacks CONFIG_RSEQ \(not set\); config: .*-no-rseq/ }], 'one skip row naming the option');
  t.notOk(existsSync(path.join(dir, 'amd64', rseq)), 'no guest was booted for the skipped case');
  t.ok(existsSync(path.join(dir, 'amd64', 'register-integrity', 'console.log')), 'each kernel keeps its artifacts in its own folder');
  t.ok(existsSync(path.join(dir, 'cloud-amd64', 'register-integrity', 'console.log')));

  t.match(
    r.stdout,
    /^- reports\/criu-rseq +skipped: the guest kernel lacks CONFIG_RSEQ/m,
    'the run shows the case as skipped with its reason (in full in the JSON above)',
  );
  t.match(r.stdout, /case\s+scenario\s+policy\s+cloud-amd64\s+amd64\n/, 'one column per kernel');
  t.match(r.stdout, /\n {3}register-integrity .*restorer=ptrace regs=full\s+PASS\s+PASS\n/, 'same verdict: no marker');
  t.match(r.stdout, /\n≠ {2}report-criu-rseq .*\s+PASS\s+SKIP \(CONFIG_RSEQ\)\n/, 'differing rows are marked');
  t.match(r.stdout, /\n3 of 7 rows differ between kernels/);

  const junit = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(await readFile(path.join(dir, 'junit.xml'), 'utf8'));
  const suite = asList(junit.testsuites.testsuite).find((s: { name: string }) => s.name === `amd64/${rseq}`);
  t.match(suite, { skipped: '1', failures: '0' }, 'JUnit: the skip is <skipped>, in a suite named for the kernel');
});

t.test('a kernel that cannot be had: exit 69 for the whole matrix, INFRA in its column', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-matrix-broken-'));
  const r = await execa(
    process.execPath,
    [
      crh,
      'run',
      '--cases',
      'test/fixtures/cases',
      '--kernel',
      'debian:linux-image-cloud-amd64',
      '--kernel',
      '/nonexistent/bzImage',
      '--kernel',
      'debian:linux-image-no-such-flavour',
      '--artifacts',
      dir,
    ],
    { cwd: REPO_ROOT, reject: false },
  );
  t.equal(r.exitCode, 69, 'infrastructure wins over the failing fixture case');
  t.match(r.stderr, /kernel bzImage not found: \/nonexistent\/bzImage/);
  t.match(r.stderr, /cannot resolve kernel package linux-image-no-such-flavour/);
  t.match(r.stdout, /≠ {2}always-fails\s+fixture\s+none\s+FAIL\s+INFRA\s+INFRA\n/);
});
