// expect: the QMP client negotiates, correlates replies by id, queues events for waiters, and reports errors with their class — against recorded transcripts and a real QEMU.
import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { QmpClient, QmpError } from '../harness/qmp/client.ts';
import { buildImage } from '../harness/image/build.ts';
import { QemuMachine } from '../harness/machine/machine.ts';
import { launchMachine, savedStatePath } from '../harness/machine/fast-start.ts';

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
  queueMicrotask(() => toClient.write('{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n'));
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
  const error = await qmp.execute('no-such-command').then(() => undefined, (e: unknown) => e as QmpError);
  t.ok(error instanceof QmpError);
  t.equal(error?.errorClass, 'CommandNotFound');
  t.match(error?.message, /no-such-command: The command no-such-command has not been found/);
  await t.rejects(qmp.waitForEvent('RESUME', 50), /no QMP event RESUME within 50 ms/);
  t.ok(log.some((l) => l.startsWith('> {"execute":"query-status"')), 'every message is logged');
  qmp.close();
  await t.rejects(qmp.execute('query-status'), /closed/);
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
