// expect: launch either reaches SSH or fails with one typed error carrying the command line and console tail, leaving no QEMU — a stalled VM in seconds, not at the boot deadline, and a stalled KVM falls back to TCG once; shutdown is idempotent; QEMU dies with its owner.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AgentError, BootError, InfraError, LaunchError, TimeoutError } from '../harness/errors.ts';
import { decisionLocation, forcedAccelerator } from '../harness/machine/accel.ts';
import { StalledLaunchError } from '../harness/machine/stall-watch.ts';
import type { MachineEvent } from '../harness/machine/machine.ts';
import { AgentClient } from '../harness/agent/client.ts';
import { buildImage, type GuestImage } from '../harness/image/build.ts';
import { bootFilesOf, QemuMachine } from '../harness/machine/machine.ts';
import { sleep } from '../harness/util/deadline.ts';

const alive = (pid: number | undefined): boolean => {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

let image: GuestImage;
t.before(async () => {
  image = await buildImage();
});

const artifacts = (): Promise<string> => mkdtemp(path.join(tmpdir(), 'crh-machine-test-'));

t.test('boots to SSH, runs a command, shuts down twice without complaint', async (t) => {
  const machine = new QemuMachine({ image, artifactsDir: await artifacts() });
  t.teardown(() => machine.shutdown());
  await machine.shutdown(); // never launched: nothing to do
  await machine.launch();
  t.match(await machine.ssh.run('uname -r'), image.kernel.release);
  t.equal((await machine.ssh.run('ip route | grep -c default || true')).trim(), '0', 'the guest has no route beyond the user-mode subnet');
  const status = await machine.qmp.execute<{ status: string }>('query-status');
  t.equal(status.status, 'running');
  const pid = machine.pid;
  await machine.shutdown();
  await machine.shutdown();
  t.notOk(alive(pid), 'QEMU is gone');
  t.match(machine.console.tail(), /crh: ready/, 'console log captured the guest init');
});

t.test('a guest that panics mid-case fails pending agent requests at once, with the console tail', async (t) => {
  const machine = new QemuMachine({ image, artifactsDir: await artifacts() });
  t.teardown(() => machine.shutdown());
  await machine.launch();
  const { client } = await AgentClient.open(await machine.ssh.transport(image.guestPaths['crh-agent']!));
  client.failWhen(machine.failure);
  const { pid } = await client.call({ op: 'SPAWN', path: '/bin/sleep', argv: ['sleep', '600'], envp: [], stdoutPath: '/tmp/sleep.out', noAslr: false });
  const run = client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 0 });
  const started = Date.now();
  void machine.ssh.exec('echo c > /proc/sysrq-trigger');
  const error = (await run.then(
    () => undefined,
    (e: unknown) => e,
  )) as AgentError;
  t.ok(error instanceof AgentError, `RUN failed: ${error?.message}`);
  t.match(error.message, /guest lost: (GUEST_PANICKED|kernel died)/);
  t.match(error.details['console tail'], /sysrq/i, 'the console tail shows the crash');
  t.ok(Date.now() - started < 30_000, `within ${Date.now() - started} ms, not at a timeout`);
  // The panic line reaches the console before the kernel's panic notifiers run, pvpanic's among them.
  let status = '';
  for (let i = 0; i < 100 && status !== 'guest-panicked'; i++) {
    status = (await machine.qmp.execute<{ status: string }>('query-status')).status;
    await sleep(50);
  }
  t.equal(status, 'guest-panicked', 'pvpanic paused the VM for diagnosis');
});

t.test('an agent request that outlives its deadline fails with where each vCPU is', async (t) => {
  const machine = new QemuMachine({ image, artifactsDir: await artifacts() });
  t.teardown(() => machine.shutdown());
  await machine.launch();
  const { client } = await AgentClient.open(await machine.ssh.transport(image.guestPaths['crh-agent']!));
  client.diagnose = () => machine.diagnose();
  client.requestTimeoutMs = 1500;
  const { pid } = await client.call({ op: 'SPAWN', path: '/bin/sleep', argv: ['sleep', '600'], envp: [], stdoutPath: '/tmp/sleep.out', noAslr: false });
  const error = (await client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 0 }).then(
    () => undefined,
    (e: unknown) => e,
  )) as TimeoutError;
  t.ok(error instanceof TimeoutError, `TimeoutError: ${error?.message}`);
  t.match(error.details.diagnosis, /vCPU \S+: (kernel|user) mode, rip 0x[0-9a-f]+/);
  t.equal((await machine.qmp.execute<{ status: string }>('query-status')).status, 'running', 'the diagnosis resumed the VM');
});

t.test('a missing kernel fails launch with the command line, and nothing runs', async (t) => {
  const broken = { ...image, kernel: { ...image.kernel, bzImage: '/nonexistent/bzImage' } };
  const machine = new QemuMachine({ image: broken, artifactsDir: await artifacts() });
  const error = (await machine.launch().then(
    () => undefined,
    (e: unknown) => e,
  )) as LaunchError;
  t.ok(error instanceof LaunchError, `LaunchError: ${error?.message}`);
  t.match(error.details['command line'], /-kernel \/nonexistent\/bzImage/);
  t.match(error.details['QEMU stderr'], /nonexistent/);
  t.notOk(alive(machine.pid));
  await machine.shutdown();
});

t.test('a kernel panic ends the wait at once with the console tail', async (t) => {
  const panicking = { ...image, cmdline: [...image.cmdline, 'rdinit=/nonexistent', 'root=/dev/nonexistent'] };
  const machine = new QemuMachine({ image: panicking, artifactsDir: await artifacts(), bootTimeoutMs: 120_000 });
  const started = Date.now();
  const error: unknown = await machine.launch().then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(error instanceof BootError, `BootError: ${(error as Error | undefined)?.message}`);
  t.match((error as BootError).details['console tail'], /Kernel panic/);
  t.ok(Date.now() - started < 60_000, 'well before the boot timeout');
  t.notOk(alive(machine.pid));
});

t.test('a boot that does not finish in time is cut off and killed', async (t) => {
  const machine = new QemuMachine({ image, artifactsDir: await artifacts(), bootTimeoutMs: 300 });
  const error = (await machine.launch().then(
    () => undefined,
    (e: unknown) => e,
  )) as BootError;
  t.ok(error instanceof BootError, `BootError: ${error?.message}`);
  t.match(error.details['command line'], /qemu-system-x86_64/);
  t.match(error.details['vCPUs at the timeout'], /^vCPU \S+: (kernel|user) mode, rip 0x[0-9a-f]+/, 'the error says where the vCPU was');
  t.notOk(alive(machine.pid), 'QEMU killed');
});

t.test('SIGKILL of the owning process mid-boot leaves no QEMU 10 s later', async (t) => {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, 'support', 'launch-forever.ts'), await artifacts()], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const qemuPid = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /qemu-pid (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', () => reject(new Error(`child exited before QEMU started: ${out}`)));
  });
  t.ok(alive(qemuPid), `QEMU ${qemuPid} is booting`);
  child.kill('SIGKILL');
  let gone = false;
  for (let i = 0; i < 100 && !gone; i++) {
    await sleep(100);
    gone = !alive(qemuPid) || (await import('node:fs')).readFileSync(`/proc/${qemuPid}/stat`, 'utf8').split(' ')[2] === 'Z';
  }
  t.ok(gone, 'QEMU died with its owner');
});

/**
 * The real bzImage with its protected-mode kernel replaced by `hlt`: QEMU
 * loads it, the real-mode setup code runs and jumps to 0x100000 with
 * interrupts off, and the vCPU halts for good — a guest that never prints.
 */
async function haltingBzImage(bzImage: string, dir: string): Promise<string> {
  const kernel = await readFile(bzImage);
  const setupSectors = kernel[0x1f1] || 4;
  const setupBytes = (setupSectors + 1) * 512;
  kernel.fill(0xf4, setupBytes);
  const file = path.join(dir, 'bzImage-halts');
  await writeFile(file, kernel);
  return file;
}

/** Live processes whose command line contains `needle`. */
function processesWith(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(needle)) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

t.test('a kernel whose vCPU halts before printing fails in seconds as infrastructure, with the evidence, and nothing runs', async (t) => {
  const dir = await artifacts();
  const halting = { ...image, kernel: { ...image.kernel, bzImage: await haltingBzImage(image.kernel.bzImage, dir) } };
  const machine = new QemuMachine({ image: halting, artifactsDir: dir, accel: { accel: 'tcg', reason: 'test' } });
  const started = Date.now();
  const error = (await machine.launch().then(
    () => undefined,
    (e: unknown) => e,
  )) as StalledLaunchError;
  const elapsed = Date.now() - started;
  t.ok(error instanceof StalledLaunchError && error instanceof InfraError, `StalledLaunchError (infrastructure): ${error?.message}`);
  t.match(error.message, /no console output within 15000 ms of launch/);
  t.ok(elapsed < 30_000, `failed after ${elapsed} ms, far below the 180 s boot deadline`);
  t.match(error.details['seen'], /console silent for \d+ ms/);
  t.equal(error.details['QMP status'], 'running', 'QMP said the VM runs: only the silence gives it away');
  t.match(error.details['command line'], /-kernel \S+bzImage-halts/);
  t.match(error.details['vCPUs at the timeout'], /vCPU \S+: kernel mode, rip 0x/, 'where the vCPU halted');
  t.equal(error.evidence.consoleTail, '');
  t.notOk(alive(machine.pid), 'QEMU is gone');
  t.same(processesWith(dir), [], 'no process of this launch is left');
});

t.test('a KVM launch that stalls with "KVM internal error" falls back to TCG once, re-deciding the accelerator', async (t) => {
  const fake = path.join(import.meta.dirname, 'support', 'fake-qemu', 'kvm-internal-error.sh');
  const saved = { qemu: process.env.CRH_QEMU, accel: process.env.CRH_ACCEL };
  t.teardown(() => {
    if (saved.qemu === undefined) delete process.env.CRH_QEMU;
    else process.env.CRH_QEMU = saved.qemu;
    if (saved.accel !== undefined) process.env.CRH_ACCEL = saved.accel;
  });
  process.env.CRH_QEMU = fake;
  delete process.env.CRH_ACCEL;
  // A decision made earlier said KVM (its evidence boot passed then); this launch finds otherwise.
  const { file, keyedBy } = await decisionLocation(bootFilesOf(image));
  await writeFile(file, JSON.stringify({ version: 1, keyedBy, choice: { accel: 'kvm', reason: 'seeded by the test', decidedAt: new Date().toISOString() } }));
  t.teardown(() => rm(file, { force: true }));

  const events: Array<MachineEvent & { at: number }> = [];
  const machine = new QemuMachine({ image, artifactsDir: await artifacts(), onEvent: (e) => events.push({ ...e, at: Date.now() }) });
  t.teardown(() => machine.shutdown());
  const started = Date.now();
  await machine.launch();
  const launches = events.filter((e) => e.type === 'launch');
  t.same(
    launches.map((e) => (e.type === 'launch' ? e.accel.accel : '')),
    ['kvm', 'tcg'],
    'one KVM launch, then one TCG launch',
  );
  const fallback = events.find((e) => e.type === 'accel-fallback');
  t.ok(fallback, 'the fallback is an event');
  t.ok(fallback!.at - started < 10_000, `the KVM launch was given up after ${fallback!.at - started} ms`);
  t.match(fallback?.type === 'accel-fallback' ? fallback.failure : '', /KVM internal error\. Suberror: 1|internal-error/);
  t.equal(machine.accel?.accel, 'tcg');
  t.match(machine.accel?.reason, /^kvm failed: /);
  t.match(machine.accel?.evidence?.stderrTail, /emulation failure/);
  t.match(await machine.ssh.run('echo up'), /up/, 'the TCG guest works');
  const record = JSON.parse(await readFile(file, 'utf8')) as { choice: { accel: string; reason: string } };
  t.equal(record.choice.accel, 'tcg', 'the cached decision now says TCG');
  t.match(record.choice.reason, /^kvm failed: /);
  t.same(
    processesWith('kvm-internal-error.mjs').filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(machine.name)),
    [],
    'the stalled fake QEMU is gone',
  );
});

t.test(
  'a forced kvm (CRH_ACCEL=kvm, handed down as the choice) is obeyed: a stalled KVM launch is not replaced, it fails in seconds as infrastructure with the evidence',
  async (t) => {
    const { accessSync, constants } = await import('node:fs');
    try {
      accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    } catch {
      t.comment('skipped: CRH_ACCEL=kvm needs a read/writable /dev/kvm (the fake QEMU does not use it, the override checks it)');
      t.pass('nothing to check without /dev/kvm');
      return;
    }
    const saved = process.env.CRH_QEMU;
    t.teardown(() => {
      if (saved === undefined) delete process.env.CRH_QEMU;
      else process.env.CRH_QEMU = saved;
    });
    process.env.CRH_QEMU = path.join(import.meta.dirname, 'support', 'fake-qemu', 'kvm-internal-error.sh');
    const machine = new QemuMachine({ image, artifactsDir: await artifacts(), accel: await forcedAccelerator('kvm') });
    const started = Date.now();
    const error = (await machine.launch().then(
      () => undefined,
      (e: unknown) => e,
    )) as StalledLaunchError;
    const elapsed = Date.now() - started;
    t.ok(error instanceof StalledLaunchError && error instanceof InfraError, `StalledLaunchError: ${error?.message}`);
    t.ok(elapsed < 15_000, `failed after ${elapsed} ms`);
    t.equal(machine.accel?.accel, 'kvm', "no fallback against the user's choice");
    t.match(error.details['QEMU stderr'], /KVM internal error\. Suberror: 1[\s\S]*emulation failure/);
    t.match(error.details['seen'], /stderr: KVM internal error|QMP status internal-error/);
    t.match(error.details['command line'], /-accel kvm -cpu host/);
    t.notOk(alive(machine.pid), 'the fake QEMU is gone');
    t.comment(error.describe().split('\n').slice(0, 8).join('\n'));
  },
);
