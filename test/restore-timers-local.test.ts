// expect: on the host's own kernel, ticker (interval timers, POSIX timers with a gap in their ids, a timerfd) checkpointed at a breakpoint while its timers fire is captured with every timer and the signals that arrived pending, restored to its uninterrupted output; restored with omit=timers it stalls (the control).
import t from 'tap';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import type { CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { debugRegOffset } from '../harness/x86/registers.ts';

const TIMEOUT_MS = 60_000;

t.test('timers across a checkpoint, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.ticker!;
  const breakAt = (await ElfFile.open(binary)).symbolAddress('ticker_work');
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-timers-local-${process.pid}-${tag}.out`;
  const read = async (tag: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: out(tag), maxSize: 65536 })).toString();
  // A stall is called after 10 s without a signal, not ticker's 3 s: on this host, busy with the test suite's guests,
  // ITIMER_VIRTUAL (user time, counted in ticks that land in user mode) once went 3 s without firing while the
  // ticker ran — "stalled: virtual at 4" after a restore, in 1 of 2 fresh-clone runs of the test command.
  const argv = [binary, '1000', '10000'];

  const { pid: refPid } = await agent.call({ op: 'SPAWN', path: binary, argv, envp: [], stdoutPath: out('reference'), noAslr: true });
  const ref = await agent.call({ op: 'RUN', pid: refPid, stopAfterHits: 0, timeoutMs: TIMEOUT_MS });
  const reference = await read('reference');
  t.equal(ref.outcome, 'exited');
  t.match(reference, /^ticker ids=0,2 session=1 real=ok .* bad=0\n$/, `uninterrupted: ${reference.trim()}`);

  const takeImage = async (tag: string, hit: number): Promise<CheckpointImage> => {
    const pid = await spawnWithBreakpoint(agent, { binary, argv, breakAt }, out(tag));
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: hit, timeoutMs: TIMEOUT_MS });
    if (run.outcome !== 'hit-limit') throw new Error(`${tag}: ${run.outcome} ${await read(tag)}`);
    // The DR0 breakpoint is the harness's, not the program's: left armed, the restored run would trap to the agent
    // on every ticker_work call, and at load average ~18 those round trips starved ITIMER_VIRTUAL (user CPU time)
    // for 3 s of wall time — "stalled: virtual at N" in 3 runs of 3 — a run the harness itself perturbed.
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
    // Stopped long enough for ITIMER_REAL (1 ms) to have fired while stopped, and during the checkpoint.
    await new Promise((resolve) => setTimeout(resolve, 20));
    const image = await checkpointProcess(agent, { binary, argv, envp: [], noAslr: true, pid }, { host: true });
    await agent.call({ op: 'KILL', pid });
    return image;
  };

  await t.test('every timer is in the image, and the signals that fired are pending', async (t) => {
    const image = await takeImage('image', 200);
    t.same(
      image.timers.itimers.map((i) => i.which),
      ['real', 'virtual', 'prof'],
    );
    t.same(
      image.timers.itimers.map((i) => i.intervalNs),
      [1_000_000n, 3_000_000n, 4_000_000n],
      'intervals',
    );
    t.same(
      image.timers.posix.map((p) => [p.id, p.notify, p.signo, p.sival]),
      [
        [0, 'signal', 34, 0x5eedn],
        [2, 'thread-id', 12, 0xc0den],
      ],
      'POSIX timers 0 and 2 (1 was deleted)',
    );
    t.equal(image.timers.posix[1]?.tid, image.process.pid, 'the thread-id timer names the main thread');
    t.same(
      image.timers.timerfds.map((f) => [f.fd, f.clock, f.flags, f.intervalNs]),
      [[7, 1, 0o2004000, 2_000_000n]],
      'the timerfd at fd 7',
    );
    t.notOk(
      image.task.files.some((f) => f.fd === 7),
      'the timerfd is not among the files',
    );
    const pendingSignals = image.signals.pending.shared.map((b) => b.readInt32LE(0)).concat(image.signals.pending.thread.map((b) => b.readInt32LE(0)));
    t.ok(pendingSignals.includes(14), `SIGALRM, fired while the process was stopped, is pending in the image (pending: ${pendingSignals.join(', ')})`);
    t.equal(image.signals.blocked, 0n, "the mask is the program's own, not the one the checkpoint used");
  });

  for (const hit of [1, 150, 600]) {
    await t.test(`checkpoint at execution ${hit} of ticker_work: restored to the uninterrupted output`, async (t) => {
      const image = await takeImage(`hit${hit}`, hit);
      const restored = await restoreProcess(agent, image, { policy: DEFAULT_POLICY, stdoutPath: out(`hit${hit}-restored`) });
      t.same(restored.differences, [], 'the kernel accepted the plan as made');
      const run = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: TIMEOUT_MS });
      const output = await read(`hit${hit}-restored`);
      t.equal(run.outcome, 'exited');
      t.equal(output, reference, `restored: ${output.trim()}`);
    });
  }

  await t.test('control omit=timers: the restored ticker stalls', async (t) => {
    const image = await takeImage('omit', 150);
    const restored = await restoreProcess(agent, image, { policy: { ...DEFAULT_POLICY, omit: ['timers'] }, stdoutPath: out('omit-restored') });
    const run = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: TIMEOUT_MS });
    const output = await read('omit-restored');
    t.equal(run.code, 3, 'exit 3');
    t.match(output, /^stalled: /, `restored without timers: ${output.trim()}`);
    t.not(output, reference);
  });
});
