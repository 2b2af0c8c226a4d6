// expect: on the host's own kernel, a checkpoint of a process holding state the restore core does not capture is refused with a CheckpointError that names the state, for every kind the check knows; the same workload holding nothing extra is checkpointed and restored to the uninterrupted output (the control).
import t from 'tap';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { CheckpointError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';

/** Each state the workload can take, and the names the refusal must give. */
const STATES: Record<string, string[]> = {
  timerfd: ['timerfd'],
  epoll: ['eventpoll'],
  inotify: ['inotify'],
  pipe: ['pipe'],
  socket: ['socket'],
  memfd: ['memfd'],
  personality: ['personality'],
  seccomp: ['seccomp', 'no_new_privs'],
  timer: ['POSIX timer'],
  tracer: ['ptrace tracee'],
  rlimit: ['resource limits'],
  cwd: ['working directory'],
};

t.test('uncapturable state is refused at checkpoint time, by name, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.holdstate!;
  const breakAt = (await ElfFile.open(binary)).symbolAddress('holdstate_checkpoint');
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-uncapturable-${process.pid}-${tag}.out`;

  const stopped = async (tag: string, argv: string[]): Promise<number> => {
    const pid = await spawnWithBreakpoint(agent, { binary, argv, breakAt }, out(tag));
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    if (run.outcome !== 'hit-limit')
      throw new Error(`${tag}: ${run.outcome} ${(await agent.call({ op: 'READ_FILE', path: out(tag), maxSize: 4096 })).toString()}`);
    return pid;
  };

  for (const [state, names] of Object.entries(STATES)) {
    await t.test(state, async (t) => {
      const pid = await stopped(state, [binary, state]);
      const error = await checkpointProcess(agent, { binary, argv: [binary, state], envp: [], noAslr: true, pid }, { host: true }).then(
        () => undefined,
        (e: unknown) => e,
      );
      await agent.call({ op: 'KILL', pid });
      t.ok(error instanceof CheckpointError, `refused: ${(error as Error | undefined)?.message}`);
      t.same((error as CheckpointError).details.state?.split(', '), names, `named: ${names.join(', ')}`);
      // The tracer's child stays stopped once its tracer is gone.
      const tracee = /pid (\d+): TracerPid/.exec((error as Error).message)?.[1];
      if (tracee) process.kill(Number(tracee), 'SIGKILL');
    });
  }

  await t.test("umask 077 is captured and given back (files.ts); the image without it restores the agent's mask (the control)", async (t) => {
    const { pid: refPid } = await agent.call({
      op: 'SPAWN',
      path: binary,
      argv: [binary, 'umask'],
      envp: [],
      stdoutPath: out('umask-reference'),
      noAslr: true,
    });
    await agent.call({ op: 'RUN', pid: refPid, stopAfterHits: 0, timeoutMs: 30_000 });
    const reference = (await agent.call({ op: 'READ_FILE', path: out('umask-reference'), maxSize: 4096 })).toString();
    t.match(reference, /umask=077/, `uninterrupted: ${reference.trim()}`);
    const pid = await stopped('umask', [binary, 'umask']);
    const image = await checkpointProcess(agent, { binary, argv: [binary, 'umask'], envp: [], noAslr: true, pid }, { host: true });
    await agent.call({ op: 'KILL', pid });
    t.equal(image.task.umask, 0o77, 'the image holds umask 077');
    const finish = async (tag: string, img: typeof image): Promise<string> => {
      const restored = await restoreProcess(agent, img, { policy: DEFAULT_POLICY, stdoutPath: out(tag) });
      await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: 30_000 });
      return (await agent.call({ op: 'READ_FILE', path: out(tag), maxSize: 4096 })).toString();
    };
    t.equal(await finish('umask-restored', image), reference, 'restored: the uninterrupted output, umask 077');
    const { umask: _dropped, ...task } = image.task;
    const control = await finish('umask-control', { ...image, task });
    t.not(control, reference, `control, the mask left out of the image: ${control.trim()}`);
  });

  await t.test('control: holding nothing extra, the checkpoint is taken and restores', async (t) => {
    const { pid: refPid } = await agent.call({ op: 'SPAWN', path: binary, argv: [binary], envp: [], stdoutPath: out('reference'), noAslr: true });
    await agent.call({ op: 'RUN', pid: refPid, stopAfterHits: 0, timeoutMs: 30_000 });
    const reference = (await agent.call({ op: 'READ_FILE', path: out('reference'), maxSize: 4096 })).toString();
    const pid = await stopped('control', [binary]);
    const image = await checkpointProcess(agent, { binary, argv: [binary], envp: [], noAslr: true, pid }, { host: true });
    await agent.call({ op: 'KILL', pid });
    const restored = await restoreProcess(agent, image, { policy: DEFAULT_POLICY, stdoutPath: out('control-restored') });
    const run = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: 30_000 });
    t.equal(run.code, 0);
    t.equal((await agent.call({ op: 'READ_FILE', path: out('control-restored'), maxSize: 4096 })).toString(), reference, `restored: ${reference.trim()}`);
  });
});
