// expect: SIGINT/SIGTERM to crh runs its cleanups (temp dirs, reaper records, QEMUs) within a bound and then kills crh with that same signal, so a shell sees 128+signo; shown on a small fixture and end to end on `crh boot` stopped mid-boot.
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT, cacheDir } from '../harness/util/cache-dir.ts';
import { isRecordedQemu, processStartTime, type MachineRecord } from '../harness/machine/reaper.ts';
import { buildImage } from '../harness/image/build.ts';

const fixture = path.join(REPO_ROOT, 'test', 'fixtures', 'signal', 'child.ts');

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }> {
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, atMs: Date.now() })));
}

async function startFixture(t: Test, mode: string, env: Record<string, string> = {}): Promise<{ child: ChildProcess; dir: string; marker: string }> {
  const marker = path.join(await mkdtemp(path.join(tmpdir(), 'crh-signal-test-')), 'marker');
  const child = spawn(process.execPath, ['--import=tsx', fixture, mode, marker], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  t.teardown(() => void child.kill('SIGKILL'));
  const dir = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const m = out.match(/^ready (\S+)$/m);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code, signal) => reject(new Error(`fixture ended early: ${code ?? signal}`)));
  });
  return { child, dir, marker };
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`${signal}: the cleanups run, then the process dies of ${signal}`, async (t) => {
    const { child, dir, marker } = await startFixture(t, 'plain');
    t.ok(existsSync(dir), `its temp dir ${dir} exists`);
    const exit = exitOf(child);
    child.kill(signal);
    const { code, signal: died } = await exit;
    t.equal(died, signal, `killed by ${signal} (status ${code})`);
    t.equal(await readFile(marker, 'utf8').catch(() => 'missing'), 'cleaned\n', 'the registered action ran first (it takes 100 ms)');
    t.notOk(existsSync(dir), 'the temp dir is gone');
  });
}

t.test('with execa children (signal-exit listening too) the process still dies of the signal', async (t) => {
  const { child, dir, marker } = await startFixture(t, 'execa');
  const exit = exitOf(child);
  const sent = Date.now();
  child.kill('SIGTERM');
  const { signal, atMs } = await exit;
  t.equal(signal, 'SIGTERM');
  t.ok(atMs - sent < 5000, `within ${atMs - sent} ms`);
  t.ok(existsSync(marker), 'cleanup ran');
  t.notOk(existsSync(dir), 'temp dir gone');
});

t.test('an action that never ends delays death by the bound only', async (t) => {
  const { child, dir, marker } = await startFixture(t, 'hang', { CLEANUP_BOUND_MS: '1500' });
  const exit = exitOf(child);
  const sent = Date.now();
  child.kill('SIGTERM');
  const { signal, atMs } = await exit;
  t.equal(signal, 'SIGTERM');
  t.ok(atMs - sent >= 1400 && atMs - sent < 6000, `died ${atMs - sent} ms after the signal (bound 1500 ms)`);
  t.ok(existsSync(marker), 'the other actions ran');
  t.notOk(existsSync(dir), 'the temp dir is gone');
});

t.test('SIGTERM to `crh boot` mid-boot: no crh- temp dir, no record, no QEMU left; crh dies of SIGTERM', async (t) => {
  // The image is built (or found) here first, so the boot below is a boot and not a build.
  const image = await buildImage();
  t.equal((await stat(image.clientKey)).mode & 0o777, 0o600, 'the client private key is 0600');
  t.equal((await stat(image.initramfs)).mode & 0o777, 0o600, 'the initramfs (guest host key inside) is 0600');
  t.equal((await stat(image.dir)).mode & 0o777, 0o700, 'the image directory is 0700');

  const tmp = await mkdtemp(path.join(tmpdir(), 'crh-signal-boot-tmp-'));
  const artifacts = await mkdtemp(path.join(tmpdir(), 'crh-signal-boot-artifacts-'));
  const boot = spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'crh.js'), 'boot'], {
    cwd: REPO_ROOT,
    env: { ...process.env, TMPDIR: tmp, CRH_ARTIFACTS_DIR: artifacts },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => void boot.kill('SIGKILL'));
  let stderr = '';
  boot.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exit = exitOf(boot);

  // Mid-boot: QEMU is recorded (so it runs) and the guest is not ready yet.
  const records = cacheDir('run');
  let recordFile: string | undefined;
  for (let waited = 0; !recordFile && waited < 300_000; waited += 50) {
    recordFile = (existsSync(records) ? await readdir(records) : []).find((f) => f.startsWith(`${boot.pid}-`));
    if (!recordFile) await sleep(50);
    if (boot.exitCode !== null) break;
  }
  if (!recordFile) throw new Error(`crh boot never recorded a QEMU: ${stderr}`);
  const record = JSON.parse(await readFile(path.join(records, recordFile), 'utf8')) as MachineRecord;
  t.equal(processStartTime(record.qemuPid), record.qemuStartTime, `QEMU ${record.qemuPid} runs`);
  t.ok(isRecordedQemu(record), `the reaper would recognise it: ${record.name}, start time ${record.qemuStartTime}`);
  const tempDirs = (await readdir(tmp)).filter((f) => f.startsWith('crh-'));
  t.ok(tempDirs.length > 0, `crh boot made its temp dir(s) in TMPDIR: ${tempDirs.join(' ')}`);

  const sent = Date.now();
  boot.kill('SIGTERM');
  const { code, signal, atMs } = await exit;
  t.equal(signal, 'SIGTERM', `crh died of SIGTERM (status ${code}) ${atMs - sent} ms after it`);
  t.same(
    (await readdir(tmp)).filter((f) => f.startsWith('crh-')),
    [],
    'no crh- temp dir left',
  );
  t.notOk(existsSync(path.join(records, recordFile)), 'its reaper record is removed');
  t.not(processStartTime(record.qemuPid), record.qemuStartTime, `QEMU ${record.qemuPid} is gone`);
  t.ok(atMs - sent < 15_000, 'within the cleanup bound');
});
