// expect: a restored process keeps the pid it was checkpointed with (SPAWN with an exact pid, clone3 set_tid) — getpid() in it answers the original's pid — a pid still in use is refused with an error that says so and leaves nothing behind, and SIGNAL reaches only the agent's own processes; all through the real agent on the host's kernel.
import t from 'tap';
import { constants } from 'node:os';
import { AgentClient } from '../harness/agent/client.ts';
import { encodeOp, SPAWN_EXACT_PID, SPAWN_NO_ASLR } from '../harness/agent/ops.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { AgentError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { PidInUseError, restoreProcess } from '../harness/restore/restore.ts';

const GETPID = 39;

t.test('wire: the pid follows stdout_path only when flag bit 1 says so; SIGNAL is pid and signal number', async (t) => {
  const base = { op: 'SPAWN' as const, path: '/p', argv: ['/p'], envp: [], stdoutPath: '/o', noAslr: true };
  const plain = encodeOp(base).payload;
  const exact = encodeOp({ ...base, pid: 4242 }).payload;
  t.equal(plain.readUInt32LE(0), SPAWN_NO_ASLR, 'flags without bit 1');
  t.equal(exact.readUInt32LE(0), SPAWN_NO_ASLR | SPAWN_EXACT_PID, 'flags with bit 1');
  t.equal(exact.length, plain.length + 4, 'four more bytes');
  t.equal(exact.readUInt32LE(exact.length - 4), 4242, 'the pid last');
  t.same(exact.subarray(4, plain.length), plain.subarray(4), 'everything else as before');
  const signal = encodeOp({ op: 'SIGNAL', pid: 7, signo: 10 });
  t.equal(signal.opcode, 0x11);
  t.same([...signal.payload], [7, 0, 0, 0, 10, 0, 0, 0]);
});

t.test('pids across spawn and restore, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const hwbreak = bins.hostPath.hwbreak!;
  const target = (await ElfFile.open(hwbreak)).symbolAddress('target');
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-restore-pid-${process.pid}-${tag}.out`;
  const argv = [hwbreak, '7'];
  const failure = (p: Promise<unknown>): Promise<Error | undefined> =>
    p.then(
      () => undefined,
      (e: unknown) => e as Error,
    );

  await t.test('SPAWN with an exact pid: the pid of a process that is gone', async (t) => {
    const { pid: first } = await agent.call({ op: 'SPAWN', path: hwbreak, argv, envp: [], stdoutPath: out('first'), noAslr: true });
    await agent.call({ op: 'KILL', pid: first });
    const { pid } = await agent.call({ op: 'SPAWN', path: hwbreak, argv, envp: [], stdoutPath: out('again'), noAslr: true, pid: first });
    t.equal(pid, first, 'the agent reports the requested pid');
    t.equal(await agent.call({ op: 'INJECT_SYSCALL', pid, nr: GETPID, args: [] }), BigInt(first), 'and getpid() in the process answers it');
    const taken = await failure(agent.call({ op: 'SPAWN', path: hwbreak, argv, envp: [], stdoutPath: out('taken'), noAslr: true, pid }));
    t.ok(taken instanceof AgentError && taken.errno === constants.errno.EEXIST, `a pid in use: EEXIST (${taken?.message})`);
    t.match(taken?.message, new RegExp(`pid: ${pid} is in use by another process`));
    await agent.call({ op: 'KILL', pid });
  });

  await t.test('restore keeps the checkpointed pid; a pid still in use is refused', async (t) => {
    const pid = await spawnWithBreakpoint(agent, { binary: hwbreak, argv, breakAt: target }, out('original'));
    await agent.call({ op: 'RUN', pid, stopAfterHits: 3, timeoutMs: 30_000 });
    const image = await checkpointProcess(agent, { binary: hwbreak, argv, envp: [], noAslr: true, pid }, { host: true });
    const policy = { rf: 'keep-and-preserve' as const };

    const requestsBefore = agent.requestsSent;
    const refused = await failure(restoreProcess(agent, image, { policy, stdoutPath: out('refused') }));
    t.ok(refused instanceof PidInUseError, `the original still has pid ${pid}: ${refused?.message}`);
    t.match(refused?.message, new RegExp(`cannot restore as pid ${pid}, the pid the checkpoint was taken with`));
    t.equal(agent.requestsSent - requestsBefore, 1, 'only the refused SPAWN reached the agent: nothing half-restored to clean up');
    t.equal(await agent.call({ op: 'INJECT_SYSCALL', pid, nr: GETPID, args: [] }), BigInt(pid), 'the original is untouched');

    await agent.call({ op: 'KILL', pid });
    const restored = await restoreProcess(agent, image, { policy, stdoutPath: out('restored') });
    t.equal(restored.pid, pid, 'restored with the original pid');
    t.equal(
      await agent.call({ op: 'INJECT_SYSCALL', pid: restored.pid, nr: GETPID, args: [] }),
      BigInt(pid),
      'getpid() in the restored process answers the original pid',
    );
    const run = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: 30_000 });
    t.same([run.outcome, run.code, run.hits.length], ['exited', 0, 4], 'and it finishes: the remaining 4 of 7 hits');

    // The old behaviour stays available: any pid, with the original alive.
    const again = await spawnWithBreakpoint(agent, { binary: hwbreak, argv, breakAt: target }, out('original2'));
    await agent.call({ op: 'RUN', pid: again, stopAfterHits: 1, timeoutMs: 30_000 });
    const second = await checkpointProcess(agent, { binary: hwbreak, argv, envp: [], noAslr: true, pid: again }, { host: true });
    const beside = await restoreProcess(agent, second, { policy, stdoutPath: out('beside'), samePid: false });
    t.not(beside.pid, again, 'samePid: false restores beside the original under a new pid');
    await agent.call({ op: 'KILL', pid: beside.pid });
    await agent.call({ op: 'KILL', pid: again });
  });

  await t.test('SIGNAL: delivered by the next RUN, only to our own processes', async (t) => {
    const { pid } = await agent.call({ op: 'SPAWN', path: hwbreak, argv, envp: [], stdoutPath: out('signal'), noAslr: true });
    await agent.call({ op: 'SIGNAL', pid, signo: constants.signals.SIGTERM });
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
    t.same([run.outcome, run.code], ['killed', constants.signals.SIGTERM], 'SIGTERM pending at the stop, delivered on continue: default action');
    t.same(
      run.signals.map((s) => s.signo),
      [constants.signals.SIGTERM],
      'RUN saw its signal-delivery stop',
    );
    const notOurs = await failure(agent.call({ op: 'SIGNAL', pid: 1, signo: constants.signals.SIGUSR1 }));
    t.ok(notOurs instanceof AgentError && notOurs.errno === constants.errno.ESRCH, "pid 1 is not the agent's: ESRCH");
    const { pid: other } = await agent.call({ op: 'SPAWN', path: hwbreak, argv, envp: [], stdoutPath: out('signal2'), noAslr: true });
    const zero = await failure(agent.call({ op: 'SIGNAL', pid: other, signo: 0 }));
    t.ok(zero instanceof AgentError && zero.errno === constants.errno.EINVAL, 'signal 0 is refused: EINVAL');
    await agent.call({ op: 'KILL', pid: other });
  });
});
