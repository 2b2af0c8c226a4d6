// expect: the agent client speaks docs/agent-protocol.md with the real agent (run on the host's kernel) and survives framing edge cases from recorded transcripts.
import t from 'tap';
import { PassThrough } from 'node:stream';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { FrameDecoder, PayloadReader, PayloadWriter, encodeFrame } from '../harness/agent/wire.ts';
import { AgentError } from '../harness/errors.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { EFLAGS, NT_X86_XSTATE, debugRegOffset } from '../harness/x86/registers.ts';

t.test('frame decoder: frames split anywhere and joined in one chunk', async (t) => {
  const frames = [1, 2, 3].map((id) => encodeFrame({ id, op: 0x04, word: 0, payload: Buffer.alloc(id * 7, id) }));
  const stream = Buffer.concat(frames);
  for (let split = 1; split < stream.length; split += 5) {
    const d = new FrameDecoder();
    const got = [...d.push(stream.subarray(0, split)), ...d.push(stream.subarray(split))];
    t.same(
      got.map((f) => [f.id, f.payload.length]),
      [
        [1, 7],
        [2, 14],
        [3, 21],
      ],
      `split at ${split}`,
    );
  }
  const byteByByte = new FrameDecoder();
  const got = [...stream].flatMap((b) => byteByByte.push(Buffer.from([b])));
  t.equal(got.length, 3, 'one byte at a time');
  t.throws(() => new FrameDecoder().push(Buffer.from([4, 0, 0, 0, 0, 0, 0, 0])), /invalid frame length 4/);
  t.throws(() => new FrameDecoder().push(Buffer.from([0xff, 0xff, 0xff, 0x7f])), /invalid frame length/);
});

t.test('payload reader: every overrun names its field', async (t) => {
  const r = new PayloadReader(new PayloadWriter().u32(10).finish());
  t.throws(() => r.bytes('user_regs_struct'), /truncated payload reading user_regs_struct/);
  t.throws(() => new PayloadReader(Buffer.alloc(2)).u32('pid'), /pid/);
  const extra = new PayloadReader(Buffer.alloc(9));
  extra.u64('value');
  t.throws(() => extra.end('PEEKUSER response'), /1 unexpected trailing bytes after PEEKUSER response/);
});

/** A scripted agent: answers each request with the next recorded response bytes. */
function transcriptTransport(script: (request: { id: number; op: number; payload: Buffer }) => Buffer[]): {
  transport: Parameters<typeof AgentClient.open>[0];
  input: PassThrough;
} {
  const input = new PassThrough();
  const output = new PassThrough();
  const decoder = new FrameDecoder();
  input.on('data', (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) for (const piece of script({ id: f.id, op: f.op, payload: f.payload })) output.write(piece);
  });
  return { transport: { input, output, close: async () => void output.end() }, input };
}

const helloPayload = new PayloadWriter().u32(1).string('6.1.0-test').string('x86_64').u32(4096).u32(77).finish();

t.test('transcript: responses split across reads and an error frame', async (t) => {
  const { transport } = transcriptTransport(({ id, op }) => {
    if (op === 0x01) {
      const frame = encodeFrame({ id, op, word: 0, payload: helloPayload });
      return [frame.subarray(0, 3), frame.subarray(3, 11), frame.subarray(11)];
    }
    return [encodeFrame({ id, op, word: 1, payload: new PayloadWriter().u32(3).string('no such process').finish() })];
  });
  const { client, hello } = await AgentClient.open(transport);
  t.same(hello, { protocolVersion: 1, release: '6.1.0-test', machine: 'x86_64', pageSize: 4096, agentPid: 77 });
  const error = await client.call({ op: 'GETREGS', pid: 9 }).then(
    () => undefined,
    (e: unknown) => e as AgentError,
  );
  t.ok(error instanceof AgentError);
  t.equal(error?.errno, 3);
  t.match(error?.message, /GETREGS pid 9: no such process \(ESRCH \(3\)\)/);
  await client.close();
});

t.test('transcript: wrong protocol version, unknown id, and a dying agent', async (t) => {
  const old = transcriptTransport(({ id, op }) => [
    encodeFrame({ id, op, word: 0, payload: new PayloadWriter().u32(2).string('r').string('m').u32(4096).u32(1).finish() }),
  ]);
  await t.rejects(AgentClient.open(old.transport), /agent speaks protocol 2, host speaks 1/);

  let calls = 0;
  const stray = transcriptTransport(({ id, op }) =>
    calls++ === 0 ? [encodeFrame({ id, op, word: 0, payload: helloPayload })] : [encodeFrame({ id: id + 100, op, word: 0, payload: Buffer.alloc(0) })],
  );
  const { client } = await AgentClient.open(stray.transport);
  await t.rejects(client.call({ op: 'KILL', pid: 1 }), /response for unknown request id/);

  let n = 0;
  const dying = transcriptTransport(({ id, op }) => (n++ === 0 ? [encodeFrame({ id, op, word: 0, payload: helloPayload })] : []));
  const opened = await AgentClient.open(dying.transport);
  const pending = opened.client.call({ op: 'GETREGS', pid: 1 });
  (dying.transport.output as PassThrough).end();
  await t.rejects(pending, /agent closed its output/);
});

t.test('the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const { client, hello } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => client.close());
  t.equal(hello.protocolVersion, 1);
  t.equal(hello.machine, 'x86_64');
  const hwbreak = bins.hostPath.hwbreak!;
  const target = (await ElfFile.open(hwbreak)).symbolAddress('target');
  const out = `/tmp/crh-agent-test-${process.pid}.out`;

  const { pid } = await client.call({ op: 'SPAWN', path: hwbreak, argv: [hwbreak, '5'], envp: [], stdoutPath: out, noAslr: true });
  const entry = await client.call({ op: 'GETREGS', pid });
  t.equal(entry.rax, 0n, 'stopped at the execve syscall-exit: rax = 0');
  t.equal(entry.orig_rax, 59n, 'orig_rax = execve');
  t.equal(entry.rip, (await ElfFile.open(hwbreak)).symbolAddress('_start'), 'rip at _start: no instruction has run');

  t.equal(await client.call({ op: 'INJECT_SYSCALL', pid, nr: 39, args: [] }), BigInt(pid), 'injected getpid returns the pid');
  t.same(await client.call({ op: 'GETREGS', pid }), entry, 'registers unchanged by the injection');

  // Before the C library's start-up code runs: no rseq registration, nothing blocked, nothing queued.
  t.same(await client.call({ op: 'RSEQ_CONFIG', pid }), { area: 0n, size: 0, signature: 0, flags: 0 }, 'no rseq registration before _start');
  t.equal(await client.call({ op: 'GETSIGMASK', pid }), 0n);
  await client.call({ op: 'SETSIGMASK', pid, mask: 1n << 9n });
  t.equal(await client.call({ op: 'GETSIGMASK', pid }), 1n << 9n, 'SETSIGMASK round-trips (SIGUSR1 blocked)');
  await client.call({ op: 'SIGNAL', pid, signo: 10 });
  const queued = await client.call({ op: 'PEEKSIGINFO', pid, shared: true });
  t.same(
    queued.map((i) => [i.length, i.readInt32LE(0)]),
    [[128, 10]],
    'the blocked SIGUSR1 is on the shared queue',
  );
  t.same(await client.call({ op: 'PEEKSIGINFO', pid, shared: false }), [], 'and not on the thread queue');
  t.equal(await client.call({ op: 'INJECT_SYSCALL', pid, nr: 127, args: [0n, 8n] }), -14n, 'rt_sigpending with a null set fails EFAULT: injections still work');
  await t.rejects(client.call({ op: 'RSEQ_CONFIG', pid: 1 }), AgentError, 'not a tracee');

  await client.call({ op: 'POKEUSER', pid, offset: debugRegOffset(0), value: target });
  await client.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 1n });
  const first = await client.call({ op: 'RUN', pid, stopAfterHits: 2, timeoutMs: 30_000 });
  t.equal(first.outcome, 'hit-limit');
  t.equal(first.hits.length, 2);
  t.ok(
    first.hits.every((h) => h.rip === target && (h.eflags & EFLAGS.RF) !== 0n && (h.dr6 & 1n) === 1n),
    'each hit at target, RF set, DR6.B0',
  );
  const xstate = await client.call({ op: 'GETREGSET', pid, noteType: NT_X86_XSTATE, maxSize: 16384 });
  t.ok(xstate.length >= 576, `xstate is ${xstate.length} bytes`);

  const steps = await client.batch([
    { op: 'GETREGS', pid },
    { op: 'PEEKUSER', pid, offset: 5 },
    { op: 'GETREGS', pid },
  ]);
  t.equal(steps.length, 2, 'the batch stops at the first failure');
  t.ok(steps[0]!.ok);
  t.notOk(steps[1]!.ok, 'misaligned PEEKUSER fails');

  const rest = await client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
  t.same([rest.outcome, rest.code, rest.hits.length], ['exited', 0, 3], 'exits 0 after the remaining 3 hits');
  t.match((await client.call({ op: 'READ_FILE', path: out, maxSize: 4096 })).toString(), /^checksum=[0-9a-f]{16} calls=5\n$/);
  await t.rejects(client.call({ op: 'GETREGS', pid }), AgentError, 'a reaped process is gone');
});
