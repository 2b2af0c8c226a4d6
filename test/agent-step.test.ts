// expect: STEP (0x1d) encodes as pid, count, signo, timeout_ms and decodes a recorded answer (every step's rip, eflags
// and DR6, the outcome, where the thread stopped); through the real agent on the host's kernel it single-steps the
// stepper workload one instruction at a time (DR6.BS on every step, the tracer's TF hidden from eflags, the handler
// never sees the suppressed traps; a stepped popf that clears TF hands the TF to the program), stops at another signal and delivers it when asked (the next stop at the handler's
// first instruction), refuses a thread that is not stopped under it (ESRCH) and bad counts and signals (EINVAL), and
// leaves a thread stepped into a blocking call interrupted and stopped when its time runs out (ETIMEDOUT).
import t, { type Test } from 'tap';
import { rm } from 'node:fs/promises';
import { constants } from 'node:os';
import { PassThrough } from 'node:stream';
import { AgentClient } from '../harness/agent/client.ts';
import { decodeResult, encodeOp, OPCODES } from '../harness/agent/ops.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { FrameDecoder, PayloadWriter, encodeFrame } from '../harness/agent/wire.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { AgentError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { EFLAGS, debugRegOffset } from '../harness/x86/registers.ts';

const { EINVAL, ESRCH, ETIMEDOUT } = constants.errno;
const SIGTRAP = 5;
const SIGUSR1 = 10;
const DR6_BS = 0x4000n;

/** The AgentError a call fails with, checked for its errno (and message). */
async function refused(t: Test, call: Promise<unknown>, errno: number, message: RegExp, what: string): Promise<void> {
  const error = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(error instanceof AgentError && error.errno === errno && message.test(error.message), `${what}: ${(error as Error | undefined)?.message ?? 'no error'}`);
}

t.test('wire: STEP is pid, count, signo, timeout_ms; the answer is outcome, code, steps and the rip it stopped at', async (t) => {
  const step = encodeOp({ op: 'STEP', pid: 7, count: 3, signo: SIGTRAP, timeoutMs: 500 });
  t.equal(step.opcode, 0x1d, 'op 0x1d');
  t.equal(OPCODES.STEP, 0x1d);
  t.same([...step.payload], [7, 0, 0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 0xf4, 0x01, 0, 0], 'four u32: pid 7, count 3, SIGTRAP, 500 ms');
  t.same([...encodeOp({ op: 'STEP', pid: 7, count: 1, timeoutMs: 0 }).payload.subarray(8, 12)], [0, 0, 0, 0], 'no signo: 0');

  // What the agent answered for two steps from step_seq of a stepper (recorded).
  const answer = new PayloadWriter()
    .u32(1)
    .u32(0)
    .u32(2)
    .u64(0x140015ben)
    .u64(0x246n)
    .u64(0x4000n)
    .u64(0x140015c2n)
    .u64(0x246n)
    .u64(0x4000n)
    .u64(0x140015c2n)
    .finish();
  t.same(decodeResult({ op: 'STEP', pid: 7, count: 2, timeoutMs: 0 }, answer), {
    outcome: 'stepped',
    code: 0,
    steps: [
      { rip: 0x140015ben, eflags: 0x246n, dr6: 0x4000n },
      { rip: 0x140015c2n, eflags: 0x246n, dr6: 0x4000n },
    ],
    rip: 0x140015c2n,
  });
  const signal = new PayloadWriter().u32(2).u32(SIGUSR1).u32(0).u64(0x10001000n).finish();
  t.same(decodeResult({ op: 'STEP', pid: 7, count: 2, timeoutMs: 0 }, signal), { outcome: 'signal', code: SIGUSR1, steps: [], rip: 0x10001000n });
  t.throws(
    () => decodeResult({ op: 'STEP', pid: 7, count: 1, timeoutMs: 0 }, new PayloadWriter().u32(9).u32(0).u32(0).u64(0).finish()),
    /STEP: unknown outcome 9/,
  );
  t.throws(() => decodeResult({ op: 'STEP', pid: 7, count: 1, timeoutMs: 0 }, answer.subarray(0, answer.length - 1)), /rip/, 'a short answer names the field');
});

t.test('transcript: a STEP answered with an error frame names the op and the errno', async (t) => {
  const input = new PassThrough();
  const output = new PassThrough();
  const decoder = new FrameDecoder();
  const hello = new PayloadWriter().u32(1).string('6.1.0-test').string('x86_64').u32(4096).u32(77).finish();
  input.on('data', (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) {
      const payload =
        f.op === OPCODES.HELLO ? hello : new PayloadWriter().u32(ESRCH).string('pid: 9 is not a stopped thread of a process this agent spawned').finish();
      output.write(encodeFrame({ id: f.id, op: f.op, word: f.op === OPCODES.HELLO ? 0 : 1, payload }));
    }
  });
  const { client } = await AgentClient.open({ input, output, close: async () => void output.end() });
  const error = await client.call({ op: 'STEP', pid: 9, count: 4, timeoutMs: 0 }).then(
    () => undefined,
    (e: unknown) => e as AgentError,
  );
  t.ok(error instanceof AgentError);
  t.equal(error?.errno, ESRCH);
  t.match(error?.message, /STEP pid 9 4 steps: pid: 9 is not a stopped thread .* \(ESRCH/);
  await client.close();
});

t.test('STEP through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const { client } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => client.close());
  const stepper = bins.hostPath.stepper!;
  const elf = await ElfFile.open(stepper);
  const label = (name: string): bigint => {
    const sym = elf.symbols().find((s) => s.name === name);
    if (!sym) throw new Error(`no ${name} in ${stepper}`);
    return sym.value;
  };
  const seq = label('step_seq');
  const tail = label('step_tail');
  const end = label('step_end');
  const onTrap = label('on_trap');
  const out = `/tmp/crh-agent-step-${process.pid}.out`;
  const at = (rip: bigint): string => `+${rip - seq}`;
  const log = `/tmp/crh-agent-step-${process.pid}.log`;
  t.teardown(() => Promise.all([rm(out, { force: true }), rm(log, { force: true })]));

  await t.test('a stepped sequence: one instruction per step, DR6.BS, TF hidden, the traps suppressed', async (t) => {
    const pid = await spawnWithBreakpoint(client, { binary: stepper, argv: [stepper, 'traced'], breakAt: seq }, out);
    const hit = await client.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    t.equal(hit.hits[0]?.rip, seq, 'stopped at the breakpoint on step_seq');
    await client.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });

    const first = await client.call({ op: 'STEP', pid, count: 3, timeoutMs: 30_000 });
    t.equal(first.outcome, 'stepped', 'outcome stepped');
    t.same(
      first.steps.map((s) => at(s.rip)),
      ['+4', '+8', '+12'],
      'three addq of 4 bytes each',
    );
    t.equal(first.rip, seq + 12n, 'left at the last step');
    t.ok(
      first.steps.every((s) => (s.dr6 & DR6_BS) !== 0n && (s.dr6 & 0xfn) === 0n),
      `DR6.BS on every step (${first.steps.map((s) => s.dr6.toString(16))})`,
    );
    t.ok(
      first.steps.every((s) => (s.eflags & EFLAGS.TF) === 0n),
      'the TF the kernel set for the step is not in eflags',
    );
    t.equal(await client.call({ op: 'PEEKUSER', pid, offset: debugRegOffset(6) }), 0n, 'DR6 cleared after each step');

    const rest = await client.call({ op: 'STEP', pid, count: 4, timeoutMs: 30_000 });
    t.same(
      rest.steps.map((s) => at(s.rip)),
      ['+16', '+20', '+24', '+28'],
      'four more addq',
    );
    t.equal(rest.rip, tail, 'at step_tail');
    t.ok(
      rest.steps.every((s) => (s.eflags & EFLAGS.TF) === 0n),
      'TF still hidden',
    );

    // A signal delivered with a step: the kernel builds the frame and reports the step at the handler's first instruction.
    const delivered = await client.call({ op: 'STEP', pid, count: 1, signo: SIGTRAP, timeoutMs: 30_000 });
    t.equal(delivered.outcome, 'stepped', 'outcome stepped');
    t.equal(delivered.rip, onTrap, 'stopped at on_trap, the SIGTRAP handler');
    const done = await client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
    t.same([done.outcome, done.code], ['exited', 0], 'exits 0');
    t.equal(
      (await client.call({ op: 'READ_FILE', path: out, maxSize: 4096 })).toString(),
      'stepper traps=1 sum=28 ips=+28\n',
      'the handler saw only the delivered SIGTRAP, at step_tail',
    );
    await refused(t, client.call({ op: 'STEP', pid, count: 1, timeoutMs: 0 }), ESRCH, /not a stopped thread/, 'a reaped process: ESRCH');
  });

  await t.test("stepping over a popf that clears TF hands the tracer's TF to the program", async (t) => {
    const pid = await spawnWithBreakpoint(client, { binary: stepper, argv: [stepper, 'traced'], breakAt: seq }, out);
    await client.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    await client.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
    const steps = (await client.call({ op: 'STEP', pid, count: 11, timeoutMs: 30_000 })).steps;
    t.same(
      steps.map((s) => at(s.rip)),
      ['+4', '+8', '+12', '+16', '+20', '+24', '+28', '+29', '+37', '+38', at(end + 1n)],
      'through pushfq, andq, popfq and the nop at step_end',
    );
    // The kernel takes a stepped popf for one that sets TF itself (is_setting_trap_flag) and drops TIF_FORCED_TF;
    // the next step finds TF clear and TIF_SINGLESTEP set, and restores TF as the program's own.
    t.same(
      steps.map((s) => (s.eflags & EFLAGS.TF) !== 0n),
      [...Array(10).fill(false), true],
      'TF hidden until the step after the popfq',
    );
    const done = await client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
    t.same([done.outcome, done.code], ['exited', 0], 'exits 0');
    const traps = Number(/traps=(\d+)/.exec((await client.call({ op: 'READ_FILE', path: out, maxSize: 65536 })).toString())?.[1]);
    t.ok(traps > 0, `continued, the program steps itself: its handler recorded ${traps} traps`);
  });

  await t.test('another signal ends the steps; delivered with the next STEP', async (t) => {
    const { pid } = await client.call({ op: 'SPAWN', path: stepper, argv: [stepper, 'traced'], envp: [], stdoutPath: out, noAslr: true });
    const entry = await client.call({ op: 'GETREGS', pid });
    await client.call({ op: 'SIGNAL', pid, signo: SIGUSR1 });
    const stopped = await client.call({ op: 'STEP', pid, count: 5, timeoutMs: 30_000 });
    t.same(stopped, { outcome: 'signal', code: SIGUSR1, steps: [], rip: entry.rip }, 'SIGUSR1 stops it before the first instruction');
    const killed = await client.call({ op: 'STEP', pid, count: 5, signo: SIGUSR1, timeoutMs: 30_000 });
    t.same(killed, { outcome: 'killed', code: SIGUSR1, steps: [], rip: 0n }, 'delivered: its default action ends the process');
  });

  await t.test('refused before anything runs: not our stopped thread, count, signo', async (t) => {
    await refused(t, client.call({ op: 'STEP', pid: 1, count: 1, timeoutMs: 0 }), ESRCH, /pid: 1 is not a stopped thread/, 'init is not our tracee: ESRCH');
    await refused(t, client.call({ op: 'STEP', pid: process.pid, count: 1, timeoutMs: 0 }), ESRCH, /not a stopped thread/, 'nor is the test runner: ESRCH');
    const { pid } = await client.call({ op: 'SPAWN', path: stepper, argv: [stepper], envp: [], stdoutPath: out, noAslr: true });
    await refused(t, client.call({ op: 'STEP', pid, count: 0, timeoutMs: 0 }), EINVAL, /count: 0/, 'no steps: EINVAL');
    await refused(t, client.call({ op: 'STEP', pid, count: 65537, timeoutMs: 0 }), EINVAL, /count: 65537/, 'too many steps: EINVAL');
    await refused(t, client.call({ op: 'STEP', pid, count: 1, signo: 65, timeoutMs: 0 }), EINVAL, /signo: 65/, 'no such signal: EINVAL');
    const run = await client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
    t.same([run.outcome, run.code], ['exited', 0], 'the process was not touched');
  });

  await t.test('a step into a blocking call: interrupted at the deadline, left stopped (ETIMEDOUT)', async (t) => {
    const daemon = bins.hostPath.daemon!;
    const { pid } = await client.call({ op: 'SPAWN', path: daemon, argv: [daemon, log], envp: [], stdoutPath: out, noAslr: true });
    // RUN until it blocks in its futex wait: the timeout leaves it interrupted there.
    await refused(t, client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 1000 }), ETIMEDOUT, /timed out/, 'RUN timed out in the wait');
    const started = Date.now();
    await refused(
      t,
      client.call({ op: 'STEP', pid, count: 1, timeoutMs: 300 }),
      ETIMEDOUT,
      /in step 1 of 1 .* interrupted and left stopped/,
      'the step timed out',
    );
    t.ok(Date.now() - started < 10_000, `answered after ${Date.now() - started} ms`);
    const regs = await client.call({ op: 'GETREGS', pid });
    t.ok(regs.rip > 0n, 'stopped: its registers can be read');
    await client.call({ op: 'KILL', pid });
  });
});
