// expect: through the real agent on the host's kernel, RUN follows every thread of the threads workload and leaves all four
// stopped at the main thread's hit (tids and the hit reported), a timeout interrupts them all, KILL reaps them all; a 4-thread
// checkpoint restores with the same tids and verifies itself; and a restore whose third clone3 fails (its tid in use) names
// that step and leaves no thread of the half-restored process behind.
import t from 'tap';
import { existsSync } from 'node:fs';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { AgentError, RestoreStepError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { restoreProcess } from '../harness/restore/restore.ts';

const THREADS = 4;
const ETIMEDOUT = 110;

t.test('threads through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.threads!;
  const elf = await ElfFile.open(binary);
  // The asm labels are untyped symbols.
  const sym = (name: string): bigint => elf.symbols().find((s) => s.name === name)!.value;
  const { client: agent, hello } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-restore-threads-${process.pid}-${tag}.out`;
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString();
  const tasks = (pid: number): string[] => (existsSync(`/proc/${pid}/task`) ? ['listed'] : []);

  /** Spawned with DR0 on threads_checkpoint and run to it: every thread stopped. */
  const stopped = async (tag: string) => {
    const pid = await spawnWithBreakpoint(agent, { binary, argv: [binary], breakAt: sym('threads_checkpoint') }, out(tag));
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    return { pid, run };
  };

  await t.test('RUN stops every thread at a hit; KILL reaps them all', async (t) => {
    const { pid, run } = await stopped('run');
    t.equal(run.outcome, 'hit-limit');
    t.equal(run.stoppedTid, pid, 'the main thread hit');
    t.same(
      run.hits.map((h) => [h.tid, h.rip]),
      [[pid, sym('threads_checkpoint')]],
      'one hit, with its tid',
    );
    t.equal(run.threads.length, THREADS, `every thread reported: ${run.threads.join(' ')}`);
    for (const tid of run.threads) t.ok((await agent.call({ op: 'GETREGS', pid: tid })).rip > 0n, `thread ${tid} is in a ptrace stop (GETREGS works)`);
    const killed = await agent.call({ op: 'KILL', pid });
    t.equal(killed.waitStatus & 0x7f, 9, 'killed by SIGKILL');
    t.same(tasks(pid), [], 'nothing of the process is left');
    for (const tid of run.threads) await t.rejects(agent.call({ op: 'GETREGS', pid: tid }), AgentError, `thread ${tid} is gone`);
  });

  await t.test('a timeout interrupts every thread and leaves them all stopped', async (t) => {
    const { pid, run } = await stopped('timeout');
    // The main thread joins t3 in its spin loop, waiting for a release that now never comes.
    const t3 = run.threads.at(-1)!;
    const spin = await agent.call({ op: 'GETREGS', pid: t3 });
    // rip and the flags its loop left (at the `je` of the loop ZF decides); r8 already points at `release`.
    await agent.call({ op: 'SETREGS', pid, regs: { ...(await agent.call({ op: 'GETREGS', pid })), rip: spin.rip, eflags: spin.eflags } });
    await agent.call({ op: 'POKEUSER', pid, offset: 904, value: 0n });
    const error = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 300 }).then(
      () => undefined,
      (e: unknown) => e as AgentError,
    );
    t.equal(error?.errno, ETIMEDOUT, `timed out: ${error?.message}`);
    t.match(error?.message, /every thread of process \d+ interrupted and left stopped/);
    for (const tid of run.threads) {
      const regs = await agent.call({ op: 'GETREGS', pid: tid });
      t.ok(regs.rip >= sym('hold') && regs.rip < sym('hold_abort') + 0x40n, `thread ${tid} stopped in its loop (rip 0x${regs.rip.toString(16)})`);
    }
    await agent.call({ op: 'KILL', pid });
    t.same(tasks(pid), [], 'KILL reaps them');
  });

  await t.test('checkpoint all four threads, kill, restore with the same tids: it verifies itself', async (t) => {
    const { pid, run } = await stopped('cycle');
    const image = await checkpointProcess(agent, { binary, argv: [binary], envp: [], noAslr: true, pid }, { host: true });
    await agent.call({ op: 'KILL', pid });
    t.same(
      image.threads.map((x) => x.tid),
      run.threads.filter((tid) => tid !== pid),
      'the image holds the other three threads',
    );
    t.ok(
      image.threads.every((x) => x.clearChildTid !== 0n && x.robustList !== 0n),
      'each with the clear_child_tid and robust list glibc gave it',
    );
    const restored = await restoreProcess(agent, image, { policy: DEFAULT_POLICY, stdoutPath: out('cycle-restored') });
    t.same(restored.differences, [], 'read back: as planned, thread by thread');
    t.same(
      (await agent.call({ op: 'LISTDIR', path: `/proc/${pid}/task` })).map(Number).sort((a, b) => a - b),
      run.threads,
      'the same tids',
    );
    const end = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: 30_000 });
    t.same([end.outcome, end.code], ['exited', 0]);
    t.match(await read(out('cycle-restored')), /^threads ok: 4 threads/);
  });

  await t.test('a clone3 that fails: the step is named and no thread is left behind', async (t) => {
    const { pid } = await stopped('failing');
    const image = await checkpointProcess(agent, { binary, argv: [binary], envp: [], noAslr: true, pid }, { host: true });
    await agent.call({ op: 'KILL', pid });
    // The third thread asks for the agent's own pid: clone3 answers EEXIST after two threads exist.
    const broken = { ...image, threads: image.threads.map((x, i) => (i === 2 ? { ...x, tid: hello.agentPid } : x)) };
    const error = await restoreProcess(agent, broken, { policy: DEFAULT_POLICY, stdoutPath: out('failing-restored') }).then(
      () => undefined,
      (e: unknown) => e as RestoreStepError,
    );
    t.ok(error instanceof RestoreStepError, `refused: ${error?.message}`);
    t.match(error?.message, new RegExp(`create thread ${hello.agentPid}: clone3`), 'the failing step is the third clone3');
    t.match(error?.message, /EEXIST/);
    t.match(error?.details.target, new RegExp(`pid ${pid} killed`));
    t.same(tasks(pid), [], 'the main thread and the two threads already made are gone');
    for (const x of image.threads.slice(0, 2)) t.notOk(existsSync(`/proc/${x.tid}`), `thread ${x.tid} is gone`);
  });
});
