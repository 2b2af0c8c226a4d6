// expect: the agent port's host end (agent/port-transport.ts) carries the real agent's protocol from a session's start notice to its end notice; a killed agent and a dropped connection are infrastructure, an agent that ends by itself is not; frames of an earlier session, a frame before the start, and a guest that never starts a session are refused by name.
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { constants } from 'node:os';
import path from 'node:path';
import { AgentClient } from '../harness/agent/client.ts';
import { connectAgentPort, resumeAgentPort, NOTICE_ID, SESSION_END_OP, SESSION_START_OP, type PortTransport } from '../harness/agent/port-transport.ts';
import { encodeFrame, PayloadWriter } from '../harness/agent/wire.ts';
import { AgentError, InfraError } from '../harness/errors.ts';
import { agentKilled, guestOrSessionFailure } from '../harness/guest/session-loss.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { isInfraFailure } from '../harness/report/infra-failures.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';

const agentPath = (await buildGuestBinaries()).hostPath['crh-agent']!;

const startNotice = (pid: number): Buffer => encodeFrame({ id: NOTICE_ID, op: SESSION_START_OP, word: 0, payload: new PayloadWriter().u32(pid).finish() });
const endNotice = (code: number, signo: number): Buffer =>
  encodeFrame({ id: NOTICE_ID, op: SESSION_END_OP, word: 0, payload: Buffer.from(new Int32Array([code, signo]).buffer) });

/**
 * The guest's supervisor (guests/agent/port.c) on the host's kernel: for a
 * connection, the start notice, then the real agent with the connection as
 * its stdin and stdout, then the end notice with how the agent ended.
 * `before` is written first (what an earlier session left on the port).
 */
async function supervisor(t: Test, options: { before?: Buffer[]; noStart?: boolean } = {}): Promise<{ socket: string; agent: Promise<ChildProcess> }> {
  const dir = await makeTempDir('crh-port-test-');
  t.teardown(() => removeTempDir(dir));
  const socket = path.join(dir, 'agent.sock');
  let gotAgent!: (child: ChildProcess) => void;
  const agent = new Promise<ChildProcess>((resolve) => (gotAgent = resolve));
  const conns: net.Socket[] = [];
  const server = net.createServer((conn) => {
    conns.push(conn);
    // The host may be gone when the agent writes or ends: as over the port, that is not an error here.
    conn.on('error', () => {});
    for (const b of options.before ?? []) conn.write(b);
    if (options.noStart) return;
    const child = spawn(agentPath, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    child.stdin!.on('error', () => {});
    conn.write(startNotice(child.pid!));
    conn.pipe(child.stdin!);
    child.stdout!.on('data', (d: Buffer) => void (conn.writable && conn.write(d)));
    child.once('exit', (code, signal) => {
      if (conn.writable) conn.write(endNotice(code ?? -1, signal ? constants.signals[signal] : 0));
    });
    gotAgent(child);
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(() => {
    for (const conn of conns) conn.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { socket, agent };
}

/** Opens a client over the port with the session losses open-guest.ts races (no machine here: it never fails). */
async function openOverPort(socket: string): Promise<{ client: AgentClient; port: PortTransport; agentPid: number }> {
  const port = await connectAgentPort(socket, { startTimeoutMs: 10_000 });
  const { client, hello } = await AgentClient.open(port);
  client.failWhen(guestOrSessionFailure(new Promise<never>(() => {}), [port.lost, agentKilled(port.exit)]));
  return { client, port, agentPid: hello.agentPid };
}

const errorOf = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

t.test('the real agent over the port: HELLO from the session the start notice named, CHDIR (mkdir -p), RESEED and KMSG refusing bad fields', async (t) => {
  const { socket, agent } = await supervisor(t);
  const { client, agentPid } = await openOverPort(socket);
  t.equal(agentPid, (await agent).pid, 'HELLO answers from the agent the start notice named');
  const dir = await makeTempDir('crh-port-cwd-');
  t.teardown(() => removeTempDir(dir));
  const deep = path.join(dir, 'a', 'b');
  await client.call({ op: 'CHDIR', path: deep });
  t.equal(await client.call({ op: 'READLINK', path: '/proc/self/cwd' }), deep, 'the agent now runs in the directory it made');
  const bad = await errorOf(client.call({ op: 'RESEED', seconds: 0n, nanoseconds: 1_000_000_000, entropy: Buffer.alloc(8) }));
  t.ok(bad instanceof AgentError && bad.errno === constants.errno.EINVAL, 'RESEED refuses nanoseconds of 10^9 (EINVAL), before touching the clock');
  // KMSG's refusals, all before /dev/kmsg is opened (this agent runs on the host: nothing reaches its kernel log).
  for (const [record, why] of [
    ['', /record: empty/],
    ['<5>one\ntwo', /record: more than one line/],
    [`<5>${'x'.repeat(974)}`, /record: 977 bytes, more than 976/],
  ] as const) {
    const refused = await errorOf(client.call({ op: 'KMSG', record }));
    t.ok(refused instanceof AgentError && refused.errno === constants.errno.EINVAL, `KMSG refuses ${JSON.stringify(record.slice(0, 12))}… (EINVAL)`);
    t.match((refused as Error).message, why);
  }
  const exited = new Promise((resolve) => void agent.then((c) => c.once('exit', resolve)));
  await client.close();
  await exited;
  t.pass('closing the connection ends the agent (end of its input), as closing an SSH channel does');
});

t.test('the agent killed by SIGKILL mid-session: the pending request fails as infrastructure, naming the kill', async (t) => {
  const { socket, agent } = await supervisor(t);
  const { client } = await openOverPort(socket);
  (await agent).kill('SIGKILL');
  const error = await errorOf(client.call({ op: 'READLINK', path: '/proc/self/exe' }));
  t.ok(error instanceof AgentError, 'an AgentError naming the op');
  t.match((error as Error).message, /READLINK: the agent was killed by SIGKILL/);
  t.ok(isInfraFailure(error), 'infrastructure (exit 69)');
  await client.close();
});

t.test("the port's connection dropped mid-session: infrastructure, and the guest's agent ends", async (t) => {
  const { socket, agent } = await supervisor(t);
  const { client, port } = await openOverPort(socket);
  const child = await agent;
  const ended = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  const pending = errorOf(client.call({ op: 'READLINK', path: '/proc/self/exe' }));
  port.drop();
  const error = await pending;
  t.match((error as Error).message, /the agent port connection to the guest was lost/);
  t.ok(isInfraFailure(error), 'infrastructure (exit 69)');
  t.equal(await ended, 0, 'the agent read the end of its input and exited');
  await client.close();
});

t.test('negative control: an agent that ends by itself (exit status 3) is a failure, not infrastructure', async (t) => {
  const { socket, agent } = await supervisor(t);
  const { client, port } = await openOverPort(socket);
  const child = await agent;
  // Its input ends inside a frame: the agent exits on its own, as a broken agent would.
  child.stdin!.end(Buffer.from([20, 0]));
  t.same(await port.exit, { code: 0 }, 'the end notice reports how the agent ended');
  const error = await errorOf(client.call({ op: 'READLINK', path: '/proc/self/exe' }));
  t.match((error as Error).message, /agent closed its output/);
  t.notOk(isInfraFailure(error), 'not infrastructure: a FAIL');
  await client.close();
});

t.test('before the start: an earlier session end is ignored, an answer refused; no start within the bound, or a reason to give up', async (t) => {
  const stale = await supervisor(t, { before: [endNotice(0, 9)] });
  const { client } = await openOverPort(stale.socket);
  t.ok((await client.call({ op: 'HELLO' })).agentPid > 0, "an earlier session's end notice does not end this one");
  await client.close();

  const early = await supervisor(t, { before: [encodeFrame({ id: 5, op: 1, word: 0, payload: Buffer.alloc(0) })], noStart: true });
  await t.rejects(connectAgentPort(early.socket, { startTimeoutMs: 10_000 }), /protocol violation: a frame \(id 5\) before the session's start/);

  const silent = await supervisor(t, { noStart: true });
  const timedOut = await errorOf(connectAgentPort(silent.socket, { startTimeoutMs: 300 }));
  t.ok(timedOut instanceof InfraError, 'InfraError');
  t.match((timedOut as Error).message, /no agent session started within 300 ms/);
  const gaveUp = await errorOf(connectAgentPort(silent.socket, { startTimeoutMs: 10_000, giveUp: Promise.resolve('the guest has no agent port (ENOENT)') }));
  t.match((gaveUp as Error).message, /agent port .*: the guest has no agent port \(ENOENT\)/);
});

/** A port whose session is already running (saved waiting): each connection goes straight to a real agent, no start notice. */
async function waitingSession(t: Test): Promise<{ socket: string; agentPid: Promise<number> }> {
  const dir = await makeTempDir('crh-port-test-');
  t.teardown(() => removeTempDir(dir));
  const socket = path.join(dir, 'agent.sock');
  let gotPid!: (pid: number) => void;
  const agentPid = new Promise<number>((resolve) => (gotPid = resolve));
  const conns: net.Socket[] = [];
  const server = net.createServer((conn) => {
    conns.push(conn);
    conn.on('error', () => {});
    const child = spawn(agentPath, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    child.stdin!.on('error', () => {});
    conn.pipe(child.stdin!);
    child.stdout!.on('data', (d: Buffer) => void (conn.writable && conn.write(d)));
    // A connection destroyed (not ended) by either side ends its agent too.
    conn.once('close', () => child.kill('SIGKILL'));
    gotPid(child.pid!);
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(() => {
    for (const conn of conns) conn.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { socket, agentPid };
}

t.test('a session resumed on a new connection (saved waiting): requests at once, no start notice', async (t) => {
  const { socket, agentPid } = await waitingSession(t);
  const conn = net.connect(socket);
  await new Promise<void>((resolve) => conn.once('connect', () => resolve()));
  const port = resumeAgentPort(conn, socket, await agentPid);
  const { client, hello } = await AgentClient.open(port);
  t.equal(hello.agentPid, await agentPid, 'HELLO is answered by the waiting session');
  t.equal(port.pid, hello.agentPid, 'the transport names the session it was given');
  await client.close();
});

t.test('control: the same waiting session through connectAgentPort waits for a start notice that never comes', async (t) => {
  const { socket } = await waitingSession(t);
  const error = await errorOf(connectAgentPort(socket, { startTimeoutMs: 500 }));
  t.match(String(error), /no agent session started within 500 ms/, 'a new connection expects a start; a resumed one must not');
});
