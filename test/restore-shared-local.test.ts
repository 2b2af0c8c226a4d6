// expect: through the real agent on the host's kernel, what a parent and its child share across fork is restored as
// one object or refused by name, never silently made two: a file opened read-write before the fork (one description,
// one offset) is refused as a shared open file description naming both descriptors; a file opened write-only with
// O_APPEND before the fork (writes at the end whoever makes them) is checkpointed, restored with the same pids, each
// process's fd 3 write-only O_APPEND on the file again; a FIFO (opened again by path it would block, or come back empty) is
// refused by name with its mode; a memfd both map shared is refused by name.
import t from 'tap';
import path from 'node:path';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { parseFdinfo } from '../harness/restore/files.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { releaseDescendants, restoreTree } from '../harness/restore/tree-restore.ts';
import { killDaemonTree } from '../harness/repro/daemon-tree.ts';
import { interruptibleRun } from '../harness/repro/runs.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';

t.test('shared state across fork through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.sockpair!;
  const dir = await makeTempDir('crh-shared-local-');
  t.teardown(() => removeTempDir(dir));
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString();

  /** sockpair MODE PATH (sharefd.c), run until both processes wait in pause(), left stopped (the parent under the agent). */
  const started = async (mode: string) => {
    const file = path.join(dir, mode);
    const argv = [binary, mode, file];
    const out = path.join(dir, `${mode}.out`);
    const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv, envp: [], stdoutPath: out, noAslr: true });
    t.teardown(() => killDaemonTree(agent, pid).then(() => undefined));
    for (let i = 0; i < 100 && (await read(out)).split('\n').length < 3; i++) {
      const ended = await interruptibleRun(agent, pid, 20);
      if (ended) throw new Error(`sharefd ${mode} ended: ${ended.outcome} ${ended.code}`);
    }
    return { pid, file, argv, out, process: { binary, argv, envp: [], noAslr: true, pid } };
  };

  await t.test('a description opened read-write before the fork: one offset, refused by name', async (t) => {
    const s = await started('offset');
    const started_ = Date.now();
    await t.rejects(checkpointTree(agent, s.process, { host: true }), {
      name: 'CheckpointError',
      message: new RegExp(`shared open file description \\(pid ${s.pid} fd 3 and pid \\d+ fd 3: ${s.file}, flags 0o\\d*2: one offset the processes share`),
    });
    t.comment(`refused in ${Date.now() - started_} ms`);
  });

  await t.test('a description opened write-only O_APPEND before the fork: restored per process, each write-only O_APPEND on the file again', async (t) => {
    const s = await started('append');
    const checkpointStarted = Date.now();
    const tree = await checkpointTree(agent, s.process, { host: true });
    const checkpointMs = Date.now() - checkpointStarted;
    t.equal(tree.members.length, 2, 'parent and child');
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    const restoreStarted = Date.now();
    const restored = await restoreTree(agent, tree, { policy: DEFAULT_POLICY, stdoutPath: path.join(dir, 'append-restored.out') });
    t.comment(`checkpoint ${checkpointMs} ms, restore ${Date.now() - restoreStarted} ms`);
    t.same(restored.differences, [], 'read back as planned');
    for (const m of tree.members) {
      t.equal(await agent.call({ op: 'READLINK', path: `/proc/${m.pid}/fd/3` }), s.file, `pid ${m.pid} fd 3 is the file again`);
      const { flags } = parseFdinfo(await read(`/proc/${m.pid}/fdinfo/3`));
      t.equal(flags & 0o2003, 0o2001, `pid ${m.pid} fd 3 write-only, O_APPEND`);
    }
    await releaseDescendants(agent, tree);
  });

  await t.test('a FIFO: refused by name with its mode', async (t) => {
    const s = await started('fifo');
    await t.rejects(checkpointTree(agent, s.process, { host: true }), {
      name: 'CheckpointError',
      message: new RegExp(`fifo \\(fd 3: ${s.file} \\(mode 0o10600\\): opened again by path, it would not be the same object\\)`),
    });
  });

  await t.test('a memfd mapped shared by parent and child: refused by name', async (t) => {
    const s = await started('memfd');
    await t.rejects(checkpointTree(agent, s.process, { host: true }), {
      name: 'CheckpointError',
      message: /memfd \(fd 3: \/memfd:memfd \(deleted\)\)/,
    });
  });
});
