// expect: through the real agent on the host's kernel, fdstate (an EFD_SEMAPHORE eventfd at 3, an eventfd at 2^33+5, a
// signalfd for SIGUSR1|SIGUSR2 with SIGUSR1 pending, a private expedited membarrier registration) checkpointed at its
// breakpoint has all four in its image (through the image codec and validation), and restored ends with the
// uninterrupted line; omit=eventfd, omit=signalfd and omit=membarrier each end with the program naming the loss (exit 2
// EBADF, 3 EBADF, 4 EPERM). The semaphore probe the guest's 6.1 kernel needs (its fdinfo does not show the flag) answers
// as fdinfo does for counters 0, 1 and more, leaving each counter where it was. As a tree (a child with an eventfd and a
// signalfd of its own) it is restored and ends as uninterrupted; one eventfd the parent and child share is refused by name.
import t from 'tap';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { imageEntries, parseImageEntries, type CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { parseEventfdFdinfo, probeSemaphore } from '../harness/restore/event-fds.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { DEFAULT_POLICY, type Omittable } from '../harness/restore/policy.ts';
import { withScratchPage } from '../harness/restore/scratch.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { releaseDescendants, restoreTree } from '../harness/restore/tree-restore.ts';
import { debugRegOffset } from '../harness/x86/registers.ts';

const TIMEOUT_MS = 60_000;
const BIG = (1n << 33n) + 5n;

t.test('eventfds, a signalfd and a membarrier registration across a checkpoint, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.fdstate!;
  const breakAt = (await ElfFile.open(binary)).symbolAddress('fdstate_checkpoint');
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-eventfd-local-${process.pid}-${tag}.out`;
  const read = async (tag: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: out(tag), maxSize: 65536 })).toString();

  /** Stopped at fdstate_checkpoint, the breakpoint disarmed (a restored run must not trap to the agent). */
  const stopped = async (tag: string, mode: string[] = []): Promise<number> => {
    const pid = await spawnWithBreakpoint(agent, { binary, argv: [binary, ...mode], breakAt }, out(tag));
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: TIMEOUT_MS });
    if (run.outcome !== 'hit-limit') throw new Error(`${tag}: ${run.outcome} ${await read(tag)}`);
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
    return pid;
  };
  const finish = async (pid: number, tag: string): Promise<string> => {
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: TIMEOUT_MS });
    return `${run.outcome} ${run.code} ${(await read(tag)).trim()}`;
  };
  const reference = await finish(await stopped('reference'), 'reference');
  t.equal(reference, 'exited 0 fdstate ok: sem 1 1 1 again, big 8589934597, signal 10, membarrier 0', `uninterrupted: ${reference}`);

  /** Checkpointed, through the image codec and validation, the process killed. */
  const takeImage = async (tag: string): Promise<CheckpointImage> => {
    const pid = await stopped(tag);
    const image = await checkpointProcess(agent, { binary, argv: [binary], envp: [], noAslr: true, pid }, { host: true });
    await agent.call({ op: 'KILL', pid });
    return parseImageEntries(imageEntries(image));
  };

  await t.test('the image holds both eventfds, the signalfd and the registration', async (t) => {
    const image = await takeImage('image');
    t.same(
      image.task.eventfds,
      [
        { fd: 3, count: 3n, flags: 0o4000, semaphore: true },
        { fd: 4, count: BIG, flags: 0o2000000, semaphore: false },
      ],
      'eventfds: the semaphore (EFD_NONBLOCK) and the 2^33+5 counter (EFD_CLOEXEC)',
    );
    t.same(image.task.signalfds, [{ fd: 5, mask: (1n << 9n) | (1n << 11n), flags: 0o4000 }], 'signalfd: SIGUSR1|SIGUSR2, SFD_NONBLOCK');
    t.same(image.task.membarrier, ['private-expedited']);
    t.same(
      image.task.files.map((f) => f.fd),
      [],
      'none of them among the files',
    );
  });

  await t.test('restored: the uninterrupted line', async (t) => {
    const image = await takeImage('restore');
    const restored = await restoreProcess(agent, image, { policy: DEFAULT_POLICY, stdoutPath: out('restore-restored') });
    t.same(restored.differences, [], 'the kernel accepted the plan as made');
    t.equal(await finish(restored.pid, 'restore-restored'), reference);
  });

  const controls: Array<[Omittable, RegExp]> = [
    ['eventfd', /^exited 2 fdstate semaphore eventfd read: Bad file descriptor$/],
    ['signalfd', /^exited 3 fdstate signalfd read: Bad file descriptor$/],
    ['membarrier', /^exited 4 fdstate membarrier: Operation not permitted$/],
  ];
  for (const [omit, expected] of controls) {
    await t.test(`control omit=${omit}: the program notices the loss`, async (t) => {
      const image = await takeImage(`omit-${omit}`);
      const restored = await restoreProcess(agent, image, { policy: { ...DEFAULT_POLICY, omit: [omit] }, stdoutPath: out(`omit-${omit}-restored`) });
      const line = await finish(restored.pid, `omit-${omit}-restored`);
      t.match(line, expected, `restored without ${omit}: ${line}`);
      t.not(line, reference);
    });
  }

  await t.test("the semaphore probe (a 6.1 kernel's fdinfo has no eventfd-semaphore line) agrees with fdinfo and leaves the counter", async (t) => {
    const pid = await stopped('probe');
    t.teardown(() => agent.call({ op: 'KILL', pid }));
    const fdinfo = async (fd: number) =>
      parseEventfdFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 4096 })).toString());
    /** read (n < 0: -n times) or write n on fd, injected. */
    const move = async (fd: number, n: number): Promise<void> =>
      withScratchPage(agent, pid, async (scratch) => {
        for (let i = 0; i < Math.max(1, -n); i++) {
          const value = Buffer.alloc(8);
          value.writeBigUInt64LE(BigInt(Math.max(n, 0)));
          await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: value });
          t.equal(await agent.call({ op: 'INJECT_SYSCALL', pid, nr: n < 0 ? 0 : 1, args: [BigInt(fd), scratch, 8n] }), 8n);
        }
      });
    const cases: Array<[number, number, bigint, boolean]> = [
      // fd, move first, counter then, semaphore
      [3, 0, 3n, true],
      [3, -2, 1n, true],
      [3, -1, 0n, true],
      [4, 0, BIG, false],
      [4, -1, 0n, false],
      [4, 1, 1n, false],
    ];
    for (const [fd, first, count, semaphore] of cases) {
      if (first !== 0) await move(fd, first);
      t.equal((await fdinfo(fd)).count, count, `fd ${fd}: counter ${count}`);
      t.equal(await probeSemaphore(agent, pid, fd, count), semaphore, `fd ${fd} at ${count}: semaphore ${semaphore}`);
      const after = await fdinfo(fd);
      t.equal(after.count, count, `fd ${fd}: counter ${count} again after the probe`);
      t.equal(after.semaphore, semaphore, 'as fdinfo says (a kernel from 6.6 shows it)');
    }
  });

  await t.test('a tree: a child with an eventfd and a signalfd of its own, restored as uninterrupted', async (t) => {
    const treeReference = await finish(await stopped('tree-reference', ['tree']), 'tree-reference');
    t.equal(treeReference, `${reference}, child 0`, `uninterrupted: ${treeReference}`);
    const pid = await stopped('tree', ['tree']);
    const tree = await checkpointTree(agent, { binary, argv: [binary, 'tree'], envp: [], noAslr: true, pid }, { host: true });
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    t.equal(tree.members.length, 2);
    t.same(
      tree.members[1]!.image.task.eventfds?.map((e) => [e.count, e.semaphore]),
      [[7n, false]],
      "the child's own eventfd",
    );
    t.same(
      tree.members[1]!.image.task.signalfds?.map((s) => s.mask),
      [1n << 11n],
      "the child's own signalfd (SIGUSR2)",
    );
    await restoreTree(agent, tree, { policy: DEFAULT_POLICY, stdoutPath: out('tree-restored') });
    await releaseDescendants(agent, tree);
    t.equal(await finish(pid, 'tree-restored'), treeReference);
  });

  await t.test('one eventfd a parent and its child share is refused by name', async (t) => {
    const pid = await stopped('shared', ['shared']);
    const children = (await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/task/${pid}/children`, maxSize: 4096 })).toString().trim().split(' ').map(Number);
    t.teardown(async () => {
      for (const p of [pid, ...children]) await agent.call({ op: 'KILL', pid: p }).catch(() => undefined);
    });
    await t.rejects(checkpointTree(agent, { binary, argv: [binary, 'shared'], envp: [], noAslr: true, pid }, { host: true }), {
      name: 'CheckpointError',
      message: new RegExp(`shared eventfd \\(pid ${pid} fd 3 and pid ${children[0]} fd 3: one eventfd counter held by two descriptors`),
    });
  });
});
