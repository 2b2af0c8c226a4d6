// expect: through the real agent on the host's kernel, a FIFO (a named pipe opened by path) held by a parent and its
// child is checkpointed as one object of the tree — its path, its open file descriptions (a read end and a write end,
// or one read-write) each with its descriptors, its size and queued bytes (copied, not consumed), out of each
// process's own files — and restored as the same FIFO: reopened by path once in the parent before the child is cloned,
// each description opened again with its access mode and flags, the queued bytes put back; sharefd fifo-run, stopped
// at a breakpoint with 28 bytes queued, ends after the restore with the uninterrupted run's line; omit=pipe-contents
// (the FIFO restored empty, the control) reads only the child's bytes; a path that no longer names a FIFO, or no
// longer exists, is refused by name before anything is opened.
import t from 'tap';
import { unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { releaseDescendants, restoreTree } from '../harness/restore/tree-restore.ts';
import { killDaemonTree } from '../harness/repro/daemon-tree.ts';
import { interruptibleRun } from '../harness/repro/runs.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';
import { sharefdTreeCycle } from './support/sharefd-tree-cycle.ts';

t.test('FIFOs in a process tree through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.sockpair!;
  const dir = await makeTempDir('crh-fifo-local-');
  t.teardown(() => removeTempDir(dir));
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString();

  const elf = await ElfFile.open(binary);
  const breakAt = elf.symbols().find((s) => s.name === 'sharefd_checkpoint')!.value;
  const fifo = path.join(dir, 'fifo-run');
  /** sharefd fifo-run, stopped at its breakpoint (28 bytes queued, the child waiting); run to its end, through a checkpoint and restore under `policy` if given. */
  const run = sharefdTreeCycle({ agent, binary, breakAt, dir, teardown: (fn) => t.teardown(fn) }, ['fifo-run', fifo]);

  const reference = (await run('reference')).line;
  t.equal(reference, 'exited 0 sharefd fifo-run ok: read 36 bytes: queued before the checkpoint + child', `uninterrupted: ${reference}`);

  await t.test('checkpointed with both descriptions and its queued bytes, restored as the same FIFO: it ends as uninterrupted', async (t) => {
    const r = await run('restored', DEFAULT_POLICY);
    const [parent, child] = r.tree!.members.map((m) => m.pid) as [number, number];
    const who = (pid: number): string => (pid === parent ? 'parent' : pid === child ? 'child' : String(pid));
    t.same(
      r.tree!.fifos?.map((f) => ({
        path: f.path,
        queued: f.queued.toString(),
        descriptions: f.descriptions.map((d) => `flags 0o${d.flags.toString(8)}: ${d.ends.map((e) => `${who(e.pid)} fd ${e.fd}`).join(', ')}`),
      })),
      [{ path: fifo, queued: 'queued before the checkpoint', descriptions: ['flags 0o0: parent fd 3, child fd 3', 'flags 0o1: parent fd 4, child fd 4'] }],
      'one FIFO: a read end and a write end, each one description held by both, 28 bytes queued',
    );
    t.same(
      r.checkpointed!.members.map((m) => m.image.task.files.map((f) => f.fd)),
      [[], []],
      "the FIFO's descriptors are out of each process's own files",
    );
    t.same(r.restored!.differences, [], 'read back: the FIFO at fds 3 and 4 of both, one description each, flags as they were');
    t.equal(r.line, reference, `restored: ${r.line}`);
    t.comment(`fifo, 2 processes: ${r.timing}`);
  });

  await t.test('omit=pipe-contents (the control): the FIFO restored empty, the parent reads only the child bytes', async (t) => {
    const r = await run('control', { ...DEFAULT_POLICY, omit: ['pipe-contents'] });
    t.equal(r.line, 'exited 0 sharefd fifo-run mismatch: child status 0x0, read 8 bytes:  + child', `caught: ${r.line}`);
  });

  await t.test('a FIFO opened read-write before the fork (sharefd fifo): one description, its 5 bytes queued again', async (t) => {
    const file = path.join(dir, 'fifo');
    const argv = [binary, 'fifo', file];
    const out = path.join(dir, 'fifo.out');
    const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv, envp: [], stdoutPath: out, noAslr: true });
    t.teardown(() => killDaemonTree(agent, pid).then(() => undefined));
    for (let i = 0; i < 100 && (await read(out)).split('\n').length < 3; i++) {
      const ended = await interruptibleRun(agent, pid, 20);
      if (ended) throw new Error(`sharefd fifo ended: ${ended.outcome} ${ended.code}`);
    }
    const tree = await checkpointTree(agent, { binary, argv, envp: [], noAslr: true, pid }, { host: true });
    t.same(
      tree.fifos?.map((f) => `${f.queued.toString()}: ${f.descriptions.map((d) => `flags 0o${d.flags.toString(8)} ${d.ends.length} fds`).join('; ')}`),
      ['queue: flags 0o2 2 fds'],
      'one read-write description held by both, 5 bytes queued',
    );
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    const restore = () => restoreTree(agent, tree, { policy: DEFAULT_POLICY, stdoutPath: path.join(dir, 'fifo-restored.out') });
    // The path must still name a FIFO.
    await unlink(file);
    await t.rejects(restore(), { name: 'PlanError', message: /fifos\[0\] \(.*fifo\): no longer exists/ }, 'deleted: refused by name');
    await writeFile(file, 'queue');
    await t.rejects(
      restore(),
      { name: 'PlanError', message: /fifos\[0\] \(.*fifo\): no longer names a FIFO \(mode 0o100\d+\)/ },
      'a regular file there: refused by name',
    );
    await unlink(file);
    const { execFileSync } = await import('node:child_process');
    execFileSync('mkfifo', ['-m', '600', file]);
    const restored = await restoreTree(agent, tree, { policy: DEFAULT_POLICY, stdoutPath: path.join(dir, 'fifo-restored.out') });
    t.same(restored.differences, [], 'a FIFO at the path again: restored, read back as planned');
    const [parent, child] = tree.members.map((m) => m.pid) as [number, number];
    t.equal(await agent.call({ op: 'INJECT_SYSCALL', pid: parent, nr: 312, args: [BigInt(parent), BigInt(child), 0n, 3n, 3n] }), 0n, 'kcmp: one description');
    const { rsp } = await agent.call({ op: 'GETREGS', pid: child });
    const scratch = (rsp - 8192n) & ~0xfn;
    t.equal(await agent.call({ op: 'INJECT_SYSCALL', pid: child, nr: 16, args: [3n, 0x541bn, scratch] }), 0n, 'FIONREAD in the child');
    t.equal((await agent.call({ op: 'READ_MEM', pid: child, address: scratch, length: 4 })).readInt32LE(0), 5, 'its 5 bytes queued');
    await releaseDescendants(agent, tree);
  });
});
