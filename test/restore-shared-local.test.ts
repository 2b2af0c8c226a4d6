// expect: through the real agent on the host's kernel, what a parent and its child share across fork is restored as
// one object or refused by name, never silently made two (a file opened read-write before the fork, one description
// and one offset, is restored as one description: restore-shared-file-local.test.ts); a file opened write-only with
// O_APPEND before the fork (writes at the end whoever makes them) is checkpointed, restored with the same pids, each
// process's fd 3 write-only O_APPEND on the file again (a FIFO is restored as the same FIFO: restore-fifo-local.test.ts);
// a memfd both map shared and hold as fd 3 is restored as one memfd mapped in both (a write through one mapping read
// through the other's and through the fd); a memfd
// both hold as fd 3 only (one description, offset 7, sealed against shrinking, 6000 bytes) is restored as one memfd:
// the same name, contents, size, seals and offset, and a write through the parent's fd is read through the child's;
// a memfd the child opened again through /proc (a second description, a second offset) is refused by name.
import t from 'tap';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { parseFdinfo } from '../harness/restore/files.ts';
import { readTreeImage, writeTreeImage } from '../harness/restore/tree-image.ts';
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

  /** Writes 16 bytes at offset 100 through the parent's fd 3 (pwrite from a scratch place in its stack, put back after); what the child's fd 3 reads there. */
  const writeSeen = async (parent: number, child: number): Promise<string> => {
    const { rsp } = await agent.call({ op: 'GETREGS', pid: parent });
    const scratch = (rsp - 8192n) & ~0xfn;
    const saved = await agent.call({ op: 'READ_MEM', pid: parent, address: scratch, length: 16 });
    await agent.call({ op: 'WRITE_MEM', pid: parent, address: scratch, data: Buffer.from('written by paren') });
    const wrote = await agent.call({ op: 'INJECT_SYSCALL', pid: parent, nr: 18, args: [3n, scratch, 16n, 100n] });
    await agent.call({ op: 'WRITE_MEM', pid: parent, address: scratch, data: saved });
    if (wrote !== 16n) throw new Error(`pwrite in pid ${parent}: ${wrote}`);
    return (await agent.call({ op: 'READ_FILE', path: `/proc/${child}/fd/3`, maxSize: 65536 })).subarray(100, 116).toString();
  };

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

  await t.test('a memfd mapped shared and held as fd 3 by parent and child: restored as one memfd, mapped in both', async (t) => {
    const s = await started('memfd');
    const tree = await checkpointTree(agent, s.process, { host: true });
    const memfd = tree.memfds?.[0];
    t.same(
      memfd?.maps?.map((x) => x.end - x.start),
      [4096n, 4096n],
      'one memfd, one page mapped by both',
    );
    t.equal(memfd?.maps?.[0]?.start, memfd?.maps?.[1]?.start, 'at the same address');
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    const restored = await restoreTree(agent, tree, { policy: DEFAULT_POLICY, stdoutPath: path.join(dir, 'memfd-restored.out') });
    t.same(restored.differences, [], 'read back as planned');
    const [parent, child] = tree.members.map((m) => m.pid) as [number, number];
    const at = memfd!.maps![0]!.start;
    await agent.call({ op: 'WRITE_MEM', pid: parent, address: at + 64n, data: Buffer.from('through the parent') });
    t.equal(
      (await agent.call({ op: 'READ_MEM', pid: child, address: at + 64n, length: 18 })).toString(),
      'through the parent',
      "the parent's write, read through the child's mapping",
    );
    t.equal(
      (await agent.call({ op: 'READ_FILE', path: `/proc/${child}/fd/3`, maxSize: 4096 })).subarray(64, 82).toString(),
      'through the parent',
      "and through the child's fd",
    );
    await releaseDescendants(agent, tree);
  });

  await t.test('a memfd held as fd 3 by parent and child: restored as one memfd', async (t) => {
    const s = await started('memfd-fd');
    const checkpointStarted = Date.now();
    const tree = await checkpointTree(agent, s.process, { host: true });
    const checkpointMs = Date.now() - checkpointStarted;
    t.equal(tree.memfds?.length, 1, 'one memfd');
    const memfd = tree.memfds![0]!;
    t.equal(memfd.name, 'memfd-fd', 'its name');
    t.equal(memfd.contents.length, 6000, 'its size');
    t.equal(memfd.contents.subarray(0, 22).toString(), 'shared memfd contents\n', 'its contents');
    t.equal(memfd.seals, 0x2, 'F_SEAL_SHRINK');
    t.equal(memfd.pos, 7, 'its offset');
    t.same(
      memfd.ends.map((e) => e.fd),
      [3, 3],
      'fd 3 of both',
    );
    const imageFile = path.join(dir, 'memfd-fd.img');
    await writeTreeImage(tree, imageFile);
    const bytes = (await stat(imageFile)).size;
    const again = await readTreeImage(imageFile);
    t.same(again.memfds, tree.memfds, 'through an image file and back');
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    const restoreStarted = Date.now();
    const restored = await restoreTree(agent, tree, { policy: DEFAULT_POLICY, stdoutPath: path.join(dir, 'memfd-fd-restored.out') });
    t.comment(`checkpoint ${checkpointMs} ms, restore ${Date.now() - restoreStarted} ms, image ${bytes} bytes`);
    t.same(restored.differences, [], 'read back as planned: one memfd behind both fds, offset 7');
    const [parent, child] = tree.members.map((m) => m.pid) as [number, number];
    for (const pid of [parent, child]) {
      t.equal(await agent.call({ op: 'READLINK', path: `/proc/${pid}/fd/3` }), '/memfd:memfd-fd (deleted)', `pid ${pid} fd 3 is memfd:memfd-fd`);
      t.same(await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fd/3`, maxSize: 65536 }), memfd.contents, `pid ${pid}: its contents`);
    }
    const seals = await agent.call({ op: 'INJECT_SYSCALL', pid: child, nr: 72, args: [3n, 1034n] });
    t.equal(seals, 2n, 'F_GET_SEALS in the child: F_SEAL_SHRINK');
    const kcmp = await agent.call({ op: 'INJECT_SYSCALL', pid: parent, nr: 312, args: [BigInt(parent), BigInt(child), 0n, 3n, 3n] });
    t.equal(kcmp, 0n, 'kcmp(KCMP_FILE): one open file description in both');
    t.equal(await writeSeen(parent, child), 'written by paren', "the parent's write, read through the child's fd");
    await releaseDescendants(agent, tree);
  });

  await t.test('a memfd the child opened again through /proc (two descriptions, two offsets): refused by name', async (t) => {
    const s = await started('memfd-reopen');
    await t.rejects(checkpointTree(agent, s.process, { host: true }), {
      name: 'CheckpointError',
      message: new RegExp(
        `memfd:memfd-reopen \\(inode \\d+; pid ${s.pid} fd 3, pid \\d+ fd 3, pid \\d+ fd 4\\): pid \\d+ fd 4 is another open file description of it \\(opened again through /proc\\)`,
      ),
    });
  });

  await t.test('a memfd held as fd 3, restored under omit=mapping-kinds (the control): a copy each, a write not seen', async (t) => {
    const s = await started('memfd-fd');
    const tree = await checkpointTree(agent, s.process, { host: true });
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    await restoreTree(agent, tree, { policy: { ...DEFAULT_POLICY, omit: ['mapping-kinds'] }, stdoutPath: path.join(dir, 'memfd-fd-control.out') });
    const [parent, child] = tree.members.map((m) => m.pid) as [number, number];
    const kcmp = await agent.call({ op: 'INJECT_SYSCALL', pid: parent, nr: 312, args: [BigInt(parent), BigInt(child), 0n, 3n, 3n] });
    t.not(kcmp, 0n, 'kcmp(KCMP_FILE): two descriptions');
    t.not(await writeSeen(parent, child), 'written by paren', "the parent's write is not in the child's copy");
    await releaseDescendants(agent, tree);
  });
});
