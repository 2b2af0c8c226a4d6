// expect: a machine started from saved state (its RAM apart, x-ignore-shared, mapped copy-on-write) reaches its agent over the agent port without SSH — the session the state was saved with waiting, a child of the guest's supervisor, connected before the load, that spawns and runs a program, marks a line in its kernel log and re-seeds the clock — and a dropped port connection fails the pending request as infrastructure while the guest's session ends with its tracee; the machine's second session goes over SSH and says why.
import t from 'tap';
import { statSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildImage } from '../harness/image/build.ts';
import { launchMachine, reseedGuest, savedStatePath } from '../harness/machine/fast-start.ts';
import { openAgentChannel } from '../harness/guest/agent-channel.ts';
import { markGuestLog } from '../harness/agent/guest-run.ts';
import { guestOrSessionFailure } from '../harness/guest/session-loss.ts';
import { isInfraFailure } from '../harness/report/infra-failures.ts';
import { sleep } from '../harness/util/deadline.ts';
import { stateLayout } from '../harness/machine/saved-state.ts';

const image = await buildImage();
const artifactsDir = await mkdtemp(path.join(tmpdir(), 'crh-agent-port-test-'));

t.test('saved-state start, agent over the port, a dropped connection', async (t) => {
  // A state exists (saved by a cold boot if none did) before the machine under test starts from it.
  await (await launchMachine({ image, artifactsDir })).shutdown();
  const machine = await launchMachine({ image, artifactsDir, callerReseeds: true });
  t.teardown(() => machine.shutdown());
  t.ok(machine.fromSavedState, 'started from saved state');
  t.ok(statSync(await savedStatePath({ image, artifactsDir })).isDirectory(), 'a state that holds its RAM apart (stream + ram)');
  t.notOk(
    machine.launchPhases.some((p) => p.phase === 'guest RAM copied'),
    'the start copied no RAM',
  );
  t.equal(machine.guestRam?.kind, 'private-mapping', 'its RAM is the saved RAM file mapped copy-on-write');
  const phaseAt = (name: string): number => machine.launchPhases.findIndex((p) => p.phase === name);
  t.ok(
    phaseAt('agent port connected') >= 0 && phaseAt('agent port connected') < phaseAt('state loaded'),
    `the agent port was connected before the state was loaded (${machine.launchPhases.map((p) => p.phase).join(', ')})`,
  );

  const log: string[] = [];
  const channel = await openAgentChannel(machine, image.guestPaths['crh-agent']!, '/tmp/agent-port-test', (l) => log.push(l));
  t.equal(channel.via, 'port', 'the agent is reached over its port');
  t.equal(
    channel.hello.agentPid,
    stateLayout(await savedStatePath({ image, artifactsDir })).agentSession?.pid,
    'HELLO is answered by the session the state was saved with',
  );
  t.match(log.join('\n'), /agent: over the agent port \(pid \d+\)/, 'and the log says so');
  const agent = channel.client;
  agent.failWhen(guestOrSessionFailure(machine.failure, [machine.ssh.lost, ...channel.losses]));
  await reseedGuest(machine, agent);

  const status = (await agent.call({ op: 'READ_FILE', path: `/proc/${channel.hello.agentPid}/status`, maxSize: 65536 })).toString();
  const ppid = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1]);
  const parent = (await agent.call({ op: 'READ_FILE', path: `/proc/${ppid}/cmdline`, maxSize: 65536 })).toString().split('\0');
  t.same(parent.slice(1, 3), ['--port', 'org.cr-harness.agent'], "the session is a child of the guest's supervisor");
  t.equal(await agent.call({ op: 'READLINK', path: '/proc/self/cwd' }), '/tmp/agent-port-test', 'in the directory CHDIR made');

  const echo = await agent.call({ op: 'SPAWN', path: '/bin/echo', argv: ['echo', 'over the port'], envp: [], stdoutPath: 'echo.out', noAslr: false });
  const ran = await agent.call({ op: 'RUN', pid: echo.pid, stopAfterHits: 0, timeoutMs: 60_000 });
  t.equal(ran.outcome, 'exited', 'a spawned program ran to its end');
  t.equal((await agent.call({ op: 'READ_FILE', path: '/tmp/agent-port-test/echo.out', maxSize: 65536 })).toString(), 'over the port\n');
  const marker = `crh test: marked through the agent ${process.pid}`;
  await markGuestLog(agent, `${marker}\nsecond line`);
  t.match(await machine.ssh.run('dmesg'), new RegExp(`${marker} second line`), 'KMSG: the line is in the guest kernel log, its newline made a space');
  const guestNow = Number((await machine.ssh.run('date +%s')).trim());
  t.ok(Math.abs(guestNow - Date.now() / 1000) < 5, `the guest clock was set through the agent (guest ${guestNow})`);

  const sleeper = await agent.call({ op: 'SPAWN', path: '/bin/sleep', argv: ['sleep', '600'], envp: [], stdoutPath: 'sleep.out', noAslr: false });
  const pending = agent.call({ op: 'RUN', pid: sleeper.pid, stopAfterHits: 0, timeoutMs: 0 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  await sleep(500);
  channel.drop();
  const error = await pending;
  t.match((error as Error)?.message, /RUN: the agent port connection to the guest was lost/, 'the pending RUN fails naming the lost connection');
  t.ok(isInfraFailure(error), 'as infrastructure (exit 69)');
  let gone = false;
  for (let i = 0; i < 100 && !gone; i++) {
    gone = (await machine.ssh.exec(`test -d /proc/${channel.hello.agentPid} || test -d /proc/${sleeper.pid}`)).code !== 0;
    if (!gone) await sleep(200);
  }
  t.ok(gone, "the guest's session ended (end of its input) and killed its tracee");

  const second: string[] = [];
  const again = await openAgentChannel(machine, image.guestPaths['crh-agent']!, undefined, (l) => second.push(l));
  t.teardown(() => again.client.close());
  t.equal(again.via, 'ssh', "the machine's second session goes over SSH");
  t.match(second.join('\n'), /agent: over SSH \(the agent port carries one session per machine and it was taken\)/);
  t.ok((await again.client.call({ op: 'HELLO' })).agentPid > 0, 'and answers');
});
