// expect: a guest lost in the middle of an agent request (QEMU dies, the SSH channel closes, the machine reports "guest lost")
// fails the request with an error isInfraFailure counts as infrastructure (crh exits 69), also through a restore step's wrapping;
// an agent that closes its channel while the guest stays up is not infrastructure (a FAIL).
import t from 'tap';
import { PassThrough } from 'node:stream';
import { AgentClient, GUEST_LOSS_GRACE_MS } from '../harness/agent/client.ts';
import { FrameDecoder, PayloadWriter, encodeFrame } from '../harness/agent/wire.ts';
import { AgentError, BootError, RestoreStepError } from '../harness/errors.ts';
import { isInfraFailure } from '../harness/report/infra-failures.ts';

const helloPayload = new PayloadWriter().u32(1).string('6.1.0-test').string('x86_64').u32(4096).u32(77).finish();

/** An agent that answers HELLO and then nothing: the next request is in flight when the channel goes. */
function silentAfterHello(): { transport: Parameters<typeof AgentClient.open>[0]; closeChannel(): void; received: Promise<void> } {
  const input = new PassThrough();
  const output = new PassThrough();
  const decoder = new FrameDecoder();
  let requestArrived!: () => void;
  const received = new Promise<void>((resolve) => (requestArrived = resolve));
  input.on('data', (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) {
      if (f.op === 0x01) output.write(encodeFrame({ id: f.id, op: f.op, word: 0, payload: helloPayload }));
      else requestArrived();
    }
  });
  return { transport: { input, output, close: async () => void output.end() }, closeChannel: () => output.end(), received };
}

/** The machine's failure promise, as QemuMachine.failure: rejects with BootError "guest lost" when told to. */
function machineFailure(): { failure: Promise<never>; lose(why: string): void } {
  let reject!: (e: Error) => void;
  const failure = new Promise<never>((_, r) => (reject = r));
  failure.catch(() => {});
  return { failure, lose: (why) => reject(new BootError(`guest lost: ${why}`, { 'console tail': '[  1.0] ...' })) };
}

t.test('the channel closes first, the machine reports the loss 50 ms later: the request fails as infrastructure', async (t) => {
  const agent = silentAfterHello();
  const machine = machineFailure();
  const { client } = await AgentClient.open(agent.transport);
  client.failWhen(machine.failure);
  const call = client.call({ op: 'GETREGS', pid: 9 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  await agent.received;
  agent.closeChannel();
  await new Promise((r) => setTimeout(r, 50));
  machine.lose('QEMU killed by signal 9');
  const error = await call;
  t.ok(error instanceof AgentError, 'still an AgentError naming the op');
  t.match((error as AgentError).message, /GETREGS: guest lost: QEMU killed by signal 9/);
  t.ok((error as AgentError).cause instanceof BootError, "whose cause is the machine's error");
  t.ok(isInfraFailure(error), 'infrastructure');
  // A restore wraps the agent's failure; the class survives the wrapping.
  t.ok(isInfraFailure(new RestoreStepError('batch failed', 3, 'SETREGS', { cause: error })), 'infrastructure through a restore step');
  const later = await client.call({ op: 'GETREGS', pid: 9 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(isInfraFailure(later), 'and every later request too');
  await client.close();
});

t.test('the machine reports the loss while a request waits: infrastructure at once', async (t) => {
  const agent = silentAfterHello();
  const machine = machineFailure();
  const { client } = await AgentClient.open(agent.transport);
  client.failWhen(machine.failure);
  const started = Date.now();
  const call = client.call({ op: 'GETREGS', pid: 9 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  await agent.received;
  machine.lose('GUEST_PANICKED');
  const error = await call;
  t.ok(isInfraFailure(error), 'infrastructure');
  t.ok(Date.now() - started < GUEST_LOSS_GRACE_MS, 'without waiting out the grace');
  await client.close();
});

t.test('negative control: the agent closes its channel and the guest stays up — a failure of ours, not infrastructure', async (t) => {
  const agent = silentAfterHello();
  const machine = machineFailure();
  const { client } = await AgentClient.open(agent.transport);
  client.failWhen(machine.failure);
  const started = Date.now();
  const call = client.call({ op: 'GETREGS', pid: 9 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  await agent.received;
  agent.closeChannel();
  const error = await call;
  t.ok(error instanceof AgentError);
  t.match((error as AgentError).message, /agent closed its output/);
  t.notOk(isInfraFailure(error), 'not infrastructure');
  t.ok(Date.now() - started >= GUEST_LOSS_GRACE_MS - 10, `after the ${GUEST_LOSS_GRACE_MS} ms the machine had to report a loss`);
  await client.close();
});

t.test('without a machine to ask, a closed channel fails the request at once', async (t) => {
  const agent = silentAfterHello();
  const { client } = await AgentClient.open(agent.transport);
  const started = Date.now();
  const call = client.call({ op: 'GETREGS', pid: 9 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  await agent.received;
  agent.closeChannel();
  const error = await call;
  t.notOk(isInfraFailure(error));
  t.ok(Date.now() - started < GUEST_LOSS_GRACE_MS);
  await client.close();
});

t.test('isInfraFailure: the one place that decides', async (t) => {
  t.ok(isInfraFailure(new BootError('guest lost: QEMU exited with status 1')));
  t.notOk(isInfraFailure(new AgentError('GETREGS: no such process', 'GETREGS', 3)));
  t.notOk(isInfraFailure(new Error('plain')));
  t.notOk(isInfraFailure(undefined));
  const looped = new Error('a') as Error & { cause?: unknown };
  looped.cause = looped;
  t.notOk(isInfraFailure(looped), 'a cause cycle ends');
});
