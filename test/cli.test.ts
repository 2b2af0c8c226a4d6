// expect: `crh run` exits 0 when every verdict is as expected, 1 when a case failed, 69 when the infrastructure failed (a missing or broken kernel), with JUnit XML a CI system can parse.
import t from 'tap';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { XMLParser } from 'fast-xml-parser';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
const parse = (xml: string): Record<string, any> => new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(xml);
const asList = <T>(x: T | T[] | undefined): T[] => (x === undefined ? [] : Array.isArray(x) ? x : [x]);

interface Run {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  junit: Record<string, any> | undefined;
  json: { verdicts: Array<Record<string, unknown>>; infrastructureFailures: unknown[] } | undefined;
  artifacts: string;
}

async function run(args: string[]): Promise<Run> {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-cli-'));
  const junitFile = path.join(dir, 'junit.xml');
  const jsonFile = path.join(dir, 'verdicts.json');
  const r = await execa(process.execPath, [crh, 'run', '--artifacts', dir, '--junit', junitFile, '--json', jsonFile, ...args], {
    reject: false,
    cwd: REPO_ROOT,
  });
  const xml = await readFile(junitFile, 'utf8').catch(() => undefined);
  const json = await readFile(jsonFile, 'utf8').catch(() => undefined);
  return {
    artifacts: dir,
    exitCode: r.exitCode,
    stdout: r.stdout,
    stderr: r.stderr,
    junit: xml ? parse(xml) : undefined,
    json: json ? JSON.parse(json) : undefined,
  };
}

t.test('exit 69: the kernel file does not exist', async (t) => {
  const r = await run(['--kernel', '/nonexistent/bzImage']);
  t.equal(r.exitCode, 69, 'infrastructure, not a test failure');
  t.match(r.stderr, /kernel bzImage not found: \/nonexistent\/bzImage/);
  const errors = asList(r.junit?.testsuites?.testsuite)
    .flatMap((s: any) => asList(s.testcase))
    .filter((c: any) => c.error);
  t.equal(errors.length, 1, 'JUnit carries the infrastructure error');
});

t.test('exit 69: a file that is no kernel cannot boot', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-cli-kernel-'));
  const notAKernel = path.join(dir, 'bzImage');
  await writeFile(notAKernel, Buffer.alloc(64 * 1024, 0x90));
  const r = await run(['--kernel', notAKernel, '--grep', 'hwbreak']);
  t.equal(r.exitCode, 69, 'infrastructure, not a test failure');
  t.match(r.stderr, /infrastructure failure in hwbreak-rf/);
  const suites = asList(r.junit?.testsuites?.testsuite);
  t.ok(
    suites.some((s: any) => asList(s.testcase).some((c: any) => c.error)),
    'the case shows an <error>',
  );
});

t.test('exit 1: a case failed', async (t) => {
  const r = await run(['--cases', 'test/fixtures/cases']);
  t.equal(r.exitCode, 1);
  t.match(r.stdout, /✗ always-fails: fixture under none\n\s+expected pass\n\s+observed fail/, 'the summary spells out the failure');
  t.match(
    await readFile(path.join(r.artifacts, 'verdicts.txt'), 'utf8'),
    /always-fails\s+fixture\s+crh\s+none\s+pass\s+fail\s+(?:\S.*?\s+)?FAIL/,
    'the verdict table in the artifacts shows it',
  );
  const testcase = asList(r.junit?.testsuites?.testsuite)[0]?.testcase;
  t.ok(asList(testcase)[0]?.failure, 'JUnit has the <failure>');
  t.equal(r.junit?.testsuites?.failures, '1');
});

t.test('exit 0: register-integrity, every verdict as expected, JUnit parsed', async (t) => {
  const r = await run(['--grep', 'register']);
  t.equal(r.exitCode, 0, r.stderr.slice(-2000));
  const suite = asList(r.junit?.testsuites?.testsuite).find((s: any) => s.name === 'register-integrity');
  const cases = asList(suite?.testcase);
  t.equal(cases.length, 4, 'one testcase per verdict: three restorers and one negative control');
  t.equal(cases.filter((c: any) => c.failure || c.error).length, 0);
  t.ok(
    cases.some((c: any) => /negative control/.test(c.name)),
    'negative controls are named as such',
  );
  t.match(r.stdout, /4 passed, 0 failed/);
  t.match(r.stdout, /^accelerator: (tcg|kvm)/m, 'the summary names the accelerator the expectations were measured on');
  t.match(await readFile(path.join(r.artifacts, 'profile.txt'), 'utf8'), /^accelerator\s+(tcg|kvm)/m, 'the whole platform profile is in the artifacts');
  t.equal(r.json?.verdicts.length, 4, 'the --json file has the same verdicts');
  t.same(r.json?.infrastructureFailures, []);
});

t.test('crh doctor --json: the profile, with the platform probes measured', async (t) => {
  const r = await execa(process.execPath, [crh, 'doctor', '--json'], { reject: false, cwd: REPO_ROOT });
  t.equal(r.exitCode, 0, r.stderr.slice(-2000));
  const profile = JSON.parse(r.stdout) as {
    accel: string;
    probes: Record<string, { value: boolean | null; how: string }>;
    kernelConfig: Record<string, string>;
    xcr0: string;
  };
  t.ok(['tcg', 'kvm'].includes(profile.accel));
  for (const [name, probe] of Object.entries(profile.probes)) {
    t.type(probe.value, 'boolean', `${name} measured: ${probe.value} (${probe.how})`);
  }
  t.match(profile.probes.rfOnUserPageFault?.how, /gdbstub Z1 at kernel:exc_page_fault/, 'RF on a page fault is read at the CPU');
  t.equal(profile.kernelConfig.CONFIG_RSEQ, 'y');
  t.match(profile.xcr0, /^0x[0-9a-f]+$/);
});

t.test('crh boot keeps a guest up, crh ssh reaches it with the host key pinned, Ctrl-C leaves nothing running', async (t) => {
  const artifacts = await mkdtemp(path.join(tmpdir(), 'crh-cli-boot-'));
  const env = { ...process.env, CRH_ARTIFACTS_DIR: artifacts };
  t.equal((await execa(process.execPath, [crh, 'ssh', '--', 'true'], { reject: false, env })).exitCode, 2, 'crh ssh without a guest: usage error');
  const boot = execa(process.execPath, [crh, 'boot'], { reject: false, env, cwd: REPO_ROOT });
  t.teardown(() => void boot.kill('SIGKILL'));
  const printed = await new Promise<string>((resolve, reject) => {
    let out = '';
    boot.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('Ctrl-C')) resolve(out);
    });
    void boot.then((r) => reject(new Error(`crh boot ended early: ${r.exitCode} ${r.stderr}`)));
  });
  t.match(
    printed,
    /^ssh -i \S+ -p \d+ -o UserKnownHostsFile=\S+ -o StrictHostKeyChecking=yes/m,
    `a ready ssh command line, host key pinned: ${printed.split('\n')[0]}`,
  );
  const session = JSON.parse(await readFile(path.join(artifacts, 'boot', 'session.json'), 'utf8')) as { qemuPid: number };
  const uname = await execa(process.execPath, [crh, 'ssh', '--', 'uname', '-r'], { reject: false, env });
  t.equal(uname.exitCode, 0, `crh ssh -- uname -r: ${uname.stdout.trim()} ${uname.stderr.trim()}`);
  t.match(uname.stdout, /^6\.\d+\./, 'the guest kernel answers');
  t.equal((await execa(process.execPath, [crh, 'ssh', '--', 'exit', '7'], { reject: false, env })).exitCode, 7, "crh ssh exits with the remote command's code");
  boot.kill('SIGINT');
  const ended = await boot;
  t.equal(ended.signal, 'SIGINT', 'crh boot shuts down on Ctrl-C and dies of it (a shell sees 130)');
  let qemuAlive = true;
  try {
    process.kill(session.qemuPid, 0);
  } catch {
    qemuAlive = false;
  }
  t.notOk(qemuAlive, `QEMU ${session.qemuPid} is gone`);
  t.equal((await execa(process.execPath, [crh, 'ssh', '--', 'true'], { reject: false, env })).exitCode, 2, 'and crh ssh says no guest is running');
});
