// expect: through the real agent on the host's kernel, a regular file a parent opened read-write before its fork (one
// open file description, one offset) is checkpointed as one object of the tree — path, flags, offset, the file's
// device, inode and size, both descriptors, out of each process's own files — and restored as ONE description opened
// in the parent before the child is cloned: kcmp says one description, a write by the parent moves the child's offset
// and a seek by the child moves the parent's; sharefd offset-run, stopped at a breakpoint between its fork and the
// child's read and write, ends after the restore with the uninterrupted run's line; omit=shared-descriptions (one
// description per process, the control) gives two offsets and the run's line says the parent wrote over the child's
// bytes; a file deleted, replaced or grown since the checkpoint is refused by name before anything is opened.
import t from 'tap';
import { appendFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { parseFdinfo } from '../harness/restore/files.ts';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { readTreeImage, writeTreeImage } from '../harness/restore/tree-image.ts';
import { releaseDescendants, restoreTree } from '../harness/restore/tree-restore.ts';
import { killDaemonTree } from '../harness/repro/daemon-tree.ts';
import { interruptibleRun } from '../harness/repro/runs.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';

const SHARED_DESCRIPTIONS: RestorePolicy = { ...DEFAULT_POLICY, omit: ['shared-descriptions'] };

t.test('one open file description shared across fork, through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.sockpair!;
  const dir = await makeTempDir('crh-shared-file-local-');
  t.teardown(() => removeTempDir(dir));
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString();
  const posOf = async (pid: number, fd = 3): Promise<bigint> => parseFdinfo(await read(`/proc/${pid}/fdinfo/${fd}`)).pos;
  const kcmp = (a: number, b: number): Promise<bigint> => agent.call({ op: 'INJECT_SYSCALL', pid: a, nr: 312, args: [BigInt(a), BigInt(b), 0n, 3n, 3n] });
  /** write(3, data) in the stopped `pid`, from a scratch place in its stack put back after. */
  const writeThrough = async (pid: number, data: string): Promise<bigint> => {
    const { rsp } = await agent.call({ op: 'GETREGS', pid });
    const scratch = (rsp - 8192n) & ~0xfn;
    const saved = await agent.call({ op: 'READ_MEM', pid, address: scratch, length: data.length });
    await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: Buffer.from(data) });
    const wrote = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: 1, args: [3n, scratch, BigInt(data.length)] });
    await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: saved });
    return wrote;
  };

  /** sockpair offset PATH (sharefd.c): fd 3 read-write on PATH, 10 bytes written, offset 10; both processes in pause(), stopped. */
  const offsetPair = async (tag: string) => {
    const file = path.join(dir, tag);
    const argv = [binary, 'offset', file];
    const out = path.join(dir, `${tag}.out`);
    const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv, envp: [], stdoutPath: out, noAslr: true });
    t.teardown(() => killDaemonTree(agent, pid).then(() => undefined));
    for (let i = 0; i < 100 && (await read(out)).split('\n').length < 3; i++) {
      const ended = await interruptibleRun(agent, pid, 20);
      if (ended) throw new Error(`sharefd offset ended: ${ended.outcome} ${ended.code}`);
    }
    const checkpointStarted = Date.now();
    const tree = await checkpointTree(agent, { binary, argv, envp: [], noAslr: true, pid }, { host: true });
    const checkpointMs = Date.now() - checkpointStarted;
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    return { pid, file, tree, checkpointMs };
  };

  await t.test('checkpointed as one object of the tree, restored as one description: a write or a seek in one moves the other', async (t) => {
    const s = await offsetPair('offset');
    const { ino, dev, size } = await stat(s.file);
    const [parent, child] = s.tree.members.map((m) => m.pid) as [number, number];
    t.same(
      s.tree.sharedFiles?.map((f) => ({ ...f, ends: f.ends.map((e) => `${e.pid === parent ? 'parent' : 'child'} fd ${e.fd}`) })),
      [{ path: s.file, flags: 0o100002, pos: 10, dev, ino, size, ends: ['parent fd 3', 'child fd 3'] }],
      'one shared file: its path, read-write (O_LARGEFILE), offset 10, the file identity, fd 3 of both',
    );
    t.same(
      s.tree.members.map((m) => m.image.task.files.map((f) => f.fd)),
      [[], []],
      "fd 3 is out of each process's own files",
    );
    const imageFile = path.join(dir, 'offset.img');
    await writeTreeImage(s.tree, imageFile);
    const tree = await readTreeImage(imageFile);
    t.same(tree.sharedFiles, s.tree.sharedFiles, 'through an image file and back');
    const restoreStarted = Date.now();
    const restored = await restoreTree(agent, tree, { policy: DEFAULT_POLICY, stdoutPath: path.join(dir, 'offset-restored.out') });
    t.comment(`checkpoint ${s.checkpointMs} ms, restore ${Date.now() - restoreStarted} ms`);
    t.same(restored.differences, [], 'read back as planned: fd 3 of both one description at offset 10');
    t.equal(await kcmp(parent, child), 0n, 'kcmp(KCMP_FILE): one open file description');
    t.same([await posOf(parent), await posOf(child)], [10n, 10n], 'offset 10 in both');
    t.equal(await writeThrough(parent, 'ab'), 2n, 'the parent writes 2 bytes');
    t.equal(await posOf(child), 12n, "the child's offset moved with the parent's write");
    t.equal(await agent.call({ op: 'INJECT_SYSCALL', pid: child, nr: 8, args: [3n, 4n, 0n] }), 4n, 'the child seeks to 4');
    t.equal(await posOf(parent), 4n, "the parent's offset moved with the child's seek");
    await releaseDescendants(agent, tree);
  });

  await t.test('omit=shared-descriptions (the control): one description per process, two offsets', async (t) => {
    const s = await offsetPair('offset-control');
    const [parent, child] = s.tree.members.map((m) => m.pid) as [number, number];
    await restoreTree(agent, s.tree, { policy: SHARED_DESCRIPTIONS, stdoutPath: path.join(dir, 'offset-control.out') });
    t.not(await kcmp(parent, child), 0n, 'kcmp(KCMP_FILE): two descriptions');
    await writeThrough(parent, 'ab');
    t.same([await posOf(parent), await posOf(child)], [12n, 10n], "the parent's write leaves the child's offset where it was");
    await releaseDescendants(agent, s.tree);
  });

  await t.test('a file deleted, replaced or grown since the checkpoint: refused by name before anything is opened', async (t) => {
    const s = await offsetPair('offset-gone');
    const restore = () => restoreTree(agent, s.tree, { policy: DEFAULT_POLICY, stdoutPath: path.join(dir, 'offset-gone.out') });
    await appendFile(s.file, 'x');
    await t.rejects(
      restore(),
      { name: 'PlanError', message: /sharedFiles\[0\] \(.*offset-gone\): 11 bytes long, 10 at checkpoint: the file changed since/ },
      'grown',
    );
    await writeFile(`${s.file}.new`, '0123456789');
    await rename(`${s.file}.new`, s.file);
    await t.rejects(
      restore(),
      { name: 'PlanError', message: /sharedFiles\[0\] \(.*\): another file is at the path \(device \d+ inode \d+, not \d+ \d+\)/ },
      'replaced',
    );
    await unlink(s.file);
    await t.rejects(restore(), { name: 'PlanError', message: /sharedFiles\[0\] \(.*\): no longer exists/ }, 'deleted');
    const left = (await agent.call({ op: 'LISTDIR', path: '/proc' })).filter((p) => s.tree.members.some((m) => String(m.pid) === p));
    t.same(left, [], 'no process of the tree left behind');
  });

  // sharefd offset-run: stopped between the fork and the child's read and write, run to its end after the restore.
  const elf = await ElfFile.open(binary);
  const breakAt = elf.symbols().find((s) => s.name === 'sharefd_checkpoint')!.value;
  const run = async (tag: string, policy?: RestorePolicy): Promise<string> => {
    const out = path.join(dir, `${tag}.out`);
    const argv = [binary, 'offset-run', path.join(dir, 'offset-run')];
    const pid = await spawnWithBreakpoint(agent, { binary, argv, breakAt }, out);
    t.teardown(() => killDaemonTree(agent, pid).then(() => undefined));
    const hit = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    if (hit.outcome !== 'hit-limit') throw new Error(`sharefd offset-run never reached sharefd_checkpoint: ${hit.outcome} ${hit.code}`);
    let root = pid;
    let restoredOut = out;
    if (policy) {
      const tree = await checkpointTree(agent, { binary, argv, envp: [], noAslr: true, pid }, { host: true });
      for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
      restoredOut = path.join(dir, `${tag}.restored.out`);
      await restoreTree(agent, tree, { policy, stdoutPath: restoredOut });
      await releaseDescendants(agent, tree);
      root = tree.members[0]!.pid;
    }
    const end = await agent.call({ op: 'RUN', pid: root, stopAfterHits: 0, timeoutMs: 30_000 });
    return `${end.outcome} ${end.code} ${(await read(restoredOut)).trim()}`;
  };
  const reference = await run('offset-run-reference');
  t.equal(reference, 'exited 0 sharefd offset-run ok: the child read 234, one offset, 16 after both writes: 01234childparent', `uninterrupted: ${reference}`);
  t.equal(await run('offset-run-restored', DEFAULT_POLICY), reference, 'restored: it ends as uninterrupted');
  const control = await run('offset-run-control', SHARED_DESCRIPTIONS);
  t.equal(control, 'exited 0 sharefd offset-run mismatch: child status 0x0, offset 8 after both writes: 01parentld', `control caught: ${control}`);
});
