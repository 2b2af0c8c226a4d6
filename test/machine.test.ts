// expect: launch either reaches SSH or fails with one typed error carrying the command line and console tail, leaving no QEMU; shutdown is idempotent; QEMU dies with its owner.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AgentError, BootError, LaunchError, TimeoutError } from '../harness/errors.ts';
import { AgentClient } from '../harness/agent/client.ts';
import { buildImage, type GuestImage } from '../harness/image/build.ts';
import { QemuMachine } from '../harness/machine/machine.ts';
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
  const error = (await run.then(() => undefined, (e: unknown) => e)) as AgentError;
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
  const error = (await client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 0 }).then(() => undefined, (e: unknown) => e)) as TimeoutError;
  t.ok(error instanceof TimeoutError, `TimeoutError: ${error?.message}`);
  t.match(error.details.diagnosis, /vCPU \S+: (kernel|user) mode, rip 0x[0-9a-f]+/);
  t.equal((await machine.qmp.execute<{ status: string }>('query-status')).status, 'running', 'the diagnosis resumed the VM');
});

t.test('a missing kernel fails launch with the command line, and nothing runs', async (t) => {
  const broken = { ...image, kernel: { ...image.kernel, bzImage: '/nonexistent/bzImage' } };
  const machine = new QemuMachine({ image: broken, artifactsDir: await artifacts() });
  const error = (await machine.launch().then(() => undefined, (e: unknown) => e)) as LaunchError;
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
  const error: unknown = await machine.launch().then(() => undefined, (e: unknown) => e);
  t.ok(error instanceof BootError, `BootError: ${(error as Error | undefined)?.message}`);
  t.match((error as BootError).details['console tail'], /Kernel panic/);
  t.ok(Date.now() - started < 60_000, 'well before the boot timeout');
  t.notOk(alive(machine.pid));
});

t.test('a boot that does not finish in time is cut off and killed', async (t) => {
  const machine = new QemuMachine({ image, artifactsDir: await artifacts(), bootTimeoutMs: 300 });
  const error = (await machine.launch().then(() => undefined, (e: unknown) => e)) as BootError;
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
