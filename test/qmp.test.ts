// expect: the QMP client negotiates, correlates replies by id, queues events for waiters (observers see them without consuming), and reports errors with their class; the stall watch turns internal-error, a KVM error on stderr and a silent console into typed failures — against recorded transcripts and a real QEMU; saved state never crosses accelerators.
import t from 'tap';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { QmpClient, QmpError } from '../harness/qmp/client.ts';
import { buildImage } from '../harness/image/build.ts';
import { QemuMachine } from '../harness/machine/machine.ts';
import { launchMachine, savedStatePath } from '../harness/machine/fast-start.ts';
import { ConsoleLog } from '../harness/machine/console.ts';
import { bootFilesOf } from '../harness/machine/machine.ts';
import { decisionLocation } from '../harness/machine/accel.ts';
import { instructionPointers, StalledLaunchError, watchForStall, type StallWatchOptions } from '../harness/machine/stall-watch.ts';
import { BootError } from '../harness/errors.ts';

/** A fake QEMU that answers each command line by the script, as recorded from QEMU 7.2. */
function scripted(answer: (command: { execute: string; id: string; arguments?: unknown }) => string[]): Duplex {
  const toClient = new PassThrough();
  const fromClient = new PassThrough();
  let buffer = '';
  fromClient.on('data', (c: Buffer) => {
    buffer += c.toString();
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      for (const out of answer(JSON.parse(line))) toClient.write(out);
    }
  });
  const duplex = Duplex.from({ readable: toClient, writable: fromClient });
  queueMicrotask(() =>
    toClient.write(
      '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n',
    ),
  );
  return duplex;
}

t.test('transcript: replies split across chunks, interleaved events, errors with class', async (t) => {
  const stream = scripted(({ execute, id }) => {
    if (execute === 'qmp_capabilities') return [`{"return": {}, "id": "${id}"}\r\n`];
    if (execute === 'query-status') {
      const reply = `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n{"return": {"status": "paused", "singlestep": false, "running": false}, "id": "${id}"}\r\n`;
      return [reply.slice(0, 17), reply.slice(17, 90), reply.slice(90)];
    }
    return [`{"error": {"class": "CommandNotFound", "desc": "The command ${execute} has not been found"}, "id": "${id}"}\r\n`];
  });
  const log: string[] = [];
  const qmp = await QmpClient.over(stream, (l) => log.push(l));
  const status = await qmp.execute<{ status: string }>('query-status');
  t.equal(status.status, 'paused');
  const stop = await qmp.waitForEvent('STOP', 100);
  t.same(stop.timestamp, { seconds: 1, microseconds: 2 }, 'the event that arrived before the reply was queued');
  const error = await qmp.execute('no-such-command').then(
    () => undefined,
    (e: unknown) => e as QmpError,
  );
  t.ok(error instanceof QmpError);
  t.equal(error?.errorClass, 'CommandNotFound');
  t.match(error?.message, /no-such-command: The command no-such-command has not been found/);
  await t.rejects(qmp.waitForEvent('RESUME', 50), /no QMP event RESUME within 50 ms/);
  t.ok(
    log.some((l) => l.startsWith('> {"execute":"query-status"')),
    'every message is logged',
  );
  qmp.close();
  await t.rejects(qmp.execute('query-status'), /closed/);
});

t.test('transcript: an observer sees every event and leaves it queued for waiters', async (t) => {
  let emit: (line: string) => void = () => {};
  const stream = scripted(({ execute, id }) => (execute === 'qmp_capabilities' ? [`{"return": {}, "id": "${id}"}\r\n`] : []));
  const qmp = await QmpClient.over(stream);
  emit = (line) => stream.emit('data', line);
  const seen: string[] = [];
  const unsubscribe = qmp.onEvent((e) => seen.push(e.event));
  emit('{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "STOP"}\r\n');
  unsubscribe();
  emit('{"timestamp": {"seconds": 2, "microseconds": 0}, "event": "RESUME"}\r\n');
  t.same(seen, ['STOP'], 'observed until unsubscribed');
  t.equal((await qmp.waitForEvent('STOP', 100)).timestamp?.seconds, 1, 'the observed event is still there for a waiter');
  qmp.close();
});

/** A QMP peer whose query-status answers `status()`, plus an event pusher. */
async function statusPeer(status: () => string): Promise<{ qmp: QmpClient; event(name: string): void; queries: () => number }> {
  let queries = 0;
  const stream = scripted(({ execute, id }) => {
    if (execute === 'qmp_capabilities') return [`{"return": {}, "id": "${id}"}\r\n`];
    if (execute === 'query-status') {
      queries++;
      return [`{"return": {"status": "${status()}", "singlestep": false, "running": ${status() === 'running'}}, "id": "${id}"}\r\n`];
    }
    return [];
  });
  const qmp = await QmpClient.over(stream);
  return { qmp, event: (name) => stream.emit('data', `{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "${name}"}\r\n`), queries: () => queries };
}

async function watchUntil(
  o: Omit<StallWatchOptions, 'onStall' | 'console' | 'launchedAt'> & { consoleText?: string; launchedAt?: number },
  act: () => void,
  waitMs: number,
): Promise<Error | undefined> {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-stall-'));
  const source = new PassThrough();
  const serial = new ConsoleLog(path.join(dir, 'console.log'), source);
  if (o.consoleText) source.write(o.consoleText);
  let stalled: Error | undefined;
  const watch = watchForStall({ ...o, console: serial, launchedAt: o.launchedAt ?? Date.now(), onStall: (e) => (stalled = e) });
  act();
  for (let waited = 0; waited < waitMs && !stalled; waited += 25) await new Promise((r) => setTimeout(r, 25));
  watch.stop();
  await serial.close();
  await rm(dir, { recursive: true, force: true });
  o.qmp.close();
  return stalled;
}

t.test('stall watch: a VM already in internal-error when QMP connects fails at once, with the evidence', async (t) => {
  const peer = await statusPeer(() => 'internal-error');
  const error = await watchUntil(
    { qmp: peer.qmp, stderr: () => 'KVM internal error. Suberror: 1\nemulation failure\n', silentConsoleMs: undefined },
    () => {},
    2000,
  );
  t.ok(error instanceof StalledLaunchError, `stalled: ${error?.message}`);
  const evidence = (error as StalledLaunchError).evidence;
  t.match(evidence.stderrTail, /Suberror: 1/);
  t.match(evidence.seen, /stderr: KVM internal error\. Suberror: 1|QMP status internal-error/);
});

t.test('stall watch: STOP then internal-error fails; STOP then paused (a saveState) does not', async (t) => {
  let status = 'running';
  const peer = await statusPeer(() => status);
  const error = await watchUntil(
    { qmp: peer.qmp, stderr: () => '', silentConsoleMs: undefined },
    () => {
      setTimeout(() => {
        status = 'internal-error';
        peer.event('STOP');
      }, 100);
    },
    2000,
  );
  t.ok(error instanceof StalledLaunchError, `stalled: ${error?.message}`);
  t.equal((error as StalledLaunchError).evidence.qmpStatus, 'internal-error');
  t.equal((error as StalledLaunchError).evidence.seen, 'QMP status internal-error');

  let pausedStatus = 'running';
  const paused = await statusPeer(() => pausedStatus);
  const none = await watchUntil(
    { qmp: paused.qmp, stderr: () => '', silentConsoleMs: undefined },
    () => {
      pausedStatus = 'paused';
      paused.event('STOP');
    },
    600,
  );
  t.equal(none, undefined, 'a paused VM is not a stalled one');
  t.ok(paused.queries() >= 2, 'the STOP made the watch read the status');
});

t.test("stall watch: guest-panicked is the kernel's failure (BootError), not infrastructure", async (t) => {
  const peer = await statusPeer(() => 'guest-panicked');
  const error = await watchUntil({ qmp: peer.qmp, stderr: () => '', silentConsoleMs: undefined }, () => {}, 2000);
  t.ok(error instanceof BootError && !(error instanceof StalledLaunchError), `BootError: ${error?.message}`);
});

t.test('stall watch: a console silent past the bound fails; one that printed does not', async (t) => {
  const silent = await statusPeer(() => 'running');
  const started = Date.now();
  const error = await watchUntil({ qmp: silent.qmp, stderr: () => '', silentConsoleMs: 400 }, () => {}, 3000);
  t.ok(error instanceof StalledLaunchError, `stalled: ${error?.message}`);
  t.match(error?.message, /no console output within 400 ms of launch/);
  t.ok(Date.now() - started < 2000, 'at the bound, not later');
  t.equal((error as StalledLaunchError).evidence.qmpStatus, 'running');

  const talking = await statusPeer(() => 'running');
  const none = await watchUntil({ qmp: talking.qmp, stderr: () => '', silentConsoleMs: 400, consoleText: '[    0.9] acpi: hello\n' }, () => {}, 1000);
  t.equal(none, undefined);
});

t.test('transcript: the connection dropping fails pending commands', async (t) => {
  const stream = scripted(({ execute, id }) => (execute === 'qmp_capabilities' ? [`{"return": {}, "id": "${id}"}\r\n`] : []));
  const qmp = await QmpClient.over(stream);
  const pending = qmp.execute('query-status');
  stream.destroy();
  await t.rejects(pending, QmpError);
});

t.test('a real QEMU: status, stop/cont with events, human monitor, saved state', async (t) => {
  const image = await buildImage();
  const artifactsDir = await mkdtemp(path.join(tmpdir(), 'crh-qmp-'));
  const machine = await new QemuMachine({ image, artifactsDir }).launch();
  t.teardown(() => machine.shutdown());
  const qmp = machine.qmp;
  t.equal((await qmp.execute<{ status: string }>('query-status')).status, 'running');
  await qmp.execute('stop');
  await qmp.waitForEvent('STOP', 5000);
  t.equal((await qmp.execute<{ status: string }>('query-status')).status, 'paused');
  await qmp.execute('cont');
  await qmp.waitForEvent('RESUME', 5000);
  const registers = await qmp.execute<string>('human-monitor-command', { 'command-line': 'info registers' });
  t.match(registers, /RIP=[0-9a-f]{16}/, 'human-monitor-command reaches the monitor');
  t.match(
    instructionPointers(await qmp.execute<string>('human-monitor-command', { 'command-line': 'info registers -a' })),
    /^[0-9a-f]{16}$/,
    'info registers -a: the RIP of the one vCPU',
  );
  await t.rejects(qmp.execute('no-such-command'), QmpError);

  const state = path.join(artifactsDir, 'test.vmstate');
  const uptimeAtSave = Number((await machine.ssh.run('cut -d" " -f1 /proc/uptime')).trim());
  await machine.saveState(state);
  t.ok(existsSync(state), 'state written');
  t.equal((await qmp.execute<{ status: string }>('query-status')).status, 'running', 'the source runs on after saving');
  await machine.shutdown();

  const restored = await new QemuMachine({ image, artifactsDir, incomingState: state }).launch();
  t.teardown(() => restored.shutdown());
  t.ok(restored.fromSavedState);
  const uptime = Number((await restored.ssh.run('cut -d" " -f1 /proc/uptime')).trim());
  t.ok(uptime >= uptimeAtSave && uptime < uptimeAtSave + 30, `the guest continues from the saved moment (uptime ${uptimeAtSave} → ${uptime})`);
  await restored.shutdown();
  await rm(artifactsDir, { recursive: true, force: true });
});

t.test('launchMachine: the cached state starts machines, re-seeded to the host clock', async (t) => {
  const image = await buildImage();
  const artifactsDir = await mkdtemp(path.join(tmpdir(), 'crh-fast-'));
  const first = await launchMachine({ image, artifactsDir });
  await first.shutdown();
  t.ok(existsSync(await savedStatePath({ image, artifactsDir })), 'a state is cached after the first machine');
  const second = await launchMachine({ image, artifactsDir });
  t.teardown(() => second.shutdown());
  t.ok(second.fromSavedState, 'the next machine loads it');
  const guestNow = Number((await second.ssh.run('date +%s')).trim());
  t.ok(Math.abs(guestNow - Date.now() / 1000) < 5, 'guest clock set to the host clock');
});

t.test('launchMachine: a KVM state whose launch stalls is neither loaded into TCG nor overwritten; TCG keeps its own state', async (t) => {
  const image = await buildImage();
  const artifactsDir = await mkdtemp(path.join(tmpdir(), 'crh-fast-accel-'));
  const saved = { qemu: process.env.CRH_QEMU, accel: process.env.CRH_ACCEL };
  t.teardown(() => {
    if (saved.qemu === undefined) delete process.env.CRH_QEMU;
    else process.env.CRH_QEMU = saved.qemu;
    if (saved.accel !== undefined) process.env.CRH_ACCEL = saved.accel;
  });
  process.env.CRH_QEMU = path.join(import.meta.dirname, 'support', 'fake-qemu', 'kvm-internal-error.sh');
  delete process.env.CRH_ACCEL;
  const { file, keyedBy } = await decisionLocation(bootFilesOf(image));
  const kvm = { accel: 'kvm' as const, reason: 'seeded by the test' };
  await writeFile(file, JSON.stringify({ version: 1, keyedBy, choice: kvm }));
  t.teardown(() => rm(file, { force: true }));
  const kvmState = await savedStatePath({ image, artifactsDir }, kvm);
  const tcgState = await savedStatePath({ image, artifactsDir }, { accel: 'tcg', reason: 'test' });
  t.not(kvmState, tcgState, 'one state per accelerator');
  await writeFile(kvmState, 'a state saved under KVM');
  // Keyed by the fake's path: states of this test are its own, and go with it.
  t.teardown(() => rm(kvmState, { force: true }));
  t.teardown(() => rm(tcgState, { recursive: true, force: true }));

  const machine = await launchMachine({ image, artifactsDir });
  t.teardown(() => machine.shutdown());
  t.equal(machine.accel?.accel, 'tcg', 'the run fell back to TCG');
  t.match(machine.accel?.reason, /^kvm failed: /);
  t.equal(await readFile(kvmState, 'utf8'), 'a state saved under KVM', 'the KVM state was not overwritten by a TCG machine');
  t.ok(existsSync(tcgState), 'the TCG state is the one that exists for TCG machines');
  t.match(await machine.ssh.run('echo up'), /up/);
});

t.test('stall watch: silence past the bound while the vCPUs move is not a stall; vCPUs that stay put are', async (t) => {
  let rip = 0x1000;
  const moving = await statusPeer(() => 'running');
  const none = await watchUntil(
    { qmp: moving.qmp, stderr: () => '', silentConsoleMs: 300, vcpuPosition: async () => `${(rip += 3).toString(16)}` },
    () => {},
    3000,
  );
  t.equal(none, undefined, 'a busy, silent vCPU (a kernel decompressing under a loaded TCG) earns more time');

  const still = await statusPeer(() => 'running');
  const error = await watchUntil({ qmp: still.qmp, stderr: () => '', silentConsoleMs: 300, vcpuPosition: async () => 'ffffffff81000000' }, () => {}, 4000);
  t.ok(error instanceof StalledLaunchError, `stalled: ${error?.message}`);
  t.match(error?.message, /no console output within 300 ms of launch, and the vCPUs did not move in 1000 ms \(ffffffff81000000\)/);

  const mute = await statusPeer(() => 'running');
  const unread = await watchUntil(
    { qmp: mute.qmp, stderr: () => '', silentConsoleMs: 300, vcpuPosition: () => Promise.reject(new Error('CommandNotFound')) },
    () => {},
    3000,
  );
  t.match(unread?.message, /positions could not be read \(CommandNotFound\)/, 'an unreadable position decides as silence alone did');
});

t.test('instructionPointers: every vCPU of an HMP info registers -a answer', async (t) => {
  const answer = 'CPU#0\nRAX=0000000000000000 RBX=0000000000000001\nRIP=ffffffff81001234 RFL=00000246\nCPU#1\nRIP=0000000001000000 RFL=00000002\n';
  t.equal(instructionPointers(answer), 'ffffffff81001234 0000000001000000');
  t.equal(instructionPointers('no registers'), '');
});
