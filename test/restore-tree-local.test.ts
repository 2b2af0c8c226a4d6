// expect: through the real agent on the host's kernel, the proctree workload (parent, child in a group of its own,
// grandchild in a session of its own, one MAP_SHARED page) is stopped with the grandchild at its breakpoint, checkpointed
// as a tree of three (pids, parents, groups, sessions), killed, restored with the same pids, parent links, groups and
// sessions and one shared page, and ends with the uninterrupted run's line; under omit=mapping-kinds (each process a
// private copy of the page) the line shows the counter diverging; with the grandchild's parent doctored to the root it
// shows the wrong parent links (the child cannot wait for its grandchild); under omit=pipe-contents the pipe comes back
// empty. The pipe from the grandchild to the parent is restored with the 3000 bytes queued in it. A tree holding a zombie
// a restore cannot make again (the grandchild, leader of a session of its own, exited while the child, stopped, had not
// waited for it) is refused by name, naming the zombie and why (zombies that can be made again: restore-tree-zombies-local).
import t from 'tap';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { DR7_EXECUTE_DR0, spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { releaseDescendants, restoreTree } from '../harness/restore/tree-restore.ts';
import type { ProcessTree } from '../harness/restore/tree.ts';
import { debugRegOffset } from '../harness/x86/registers.ts';

t.test('a process tree through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.proctree!;
  const elf = await ElfFile.open(binary);
  const sym = (name: string): bigint => elf.symbols().find((s) => s.name === name)!.value;
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-restore-tree-${process.pid}-${tag}.out`;
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString();

  /** Root stopped before its waitpid, the child in its waitpid, the grandchild at its breakpoint (attached, DR0 on it). */
  const stopTree = async (tag: string) => {
    const pid = await spawnWithBreakpoint(agent, { binary, argv: [binary], breakAt: sym('proctree_ready') }, out(tag));
    const ready = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    if (ready.outcome !== 'hit-limit') throw new Error(`proctree never reached proctree_ready: ${ready.outcome} ${ready.code}`);
    const page = (await agent.call({ op: 'READ_MEM', pid, address: sym('proctree_shared'), length: 8 })).readBigUInt64LE(0);
    const grandchild = (await agent.call({ op: 'READ_MEM', pid, address: page + 4n, length: 4 })).readInt32LE(0);
    await agent.call({ op: 'ATTACH', pid: grandchild });
    await agent.call({ op: 'POKEUSER', pid: grandchild, offset: debugRegOffset(0), value: sym('proctree_grandchild_checkpoint') });
    await agent.call({ op: 'POKEUSER', pid: grandchild, offset: debugRegOffset(7), value: DR7_EXECUTE_DR0 });
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(0), value: sym('proctree_parent_waits') });
    const waits = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    if (waits.outcome !== 'hit-limit') throw new Error(`proctree never reached proctree_parent_waits: ${waits.outcome}`);
    const hit = await agent.call({ op: 'RUN', pid: grandchild, stopAfterHits: 1, timeoutMs: 30_000 });
    if (hit.outcome !== 'hit-limit') throw new Error(`the grandchild never reached its breakpoint: ${hit.outcome}`);
    return { pid, grandchild };
  };

  const reference = await (async () => {
    const s = await stopTree('reference');
    await agent.call({ op: 'RELEASE', pid: s.grandchild });
    const end = await agent.call({ op: 'RUN', pid: s.pid, stopAfterHits: 0, timeoutMs: 30_000 });
    return `${end.outcome} ${end.code} ${(await read(out('reference'))).trim()}`;
  })();
  t.match(
    reference,
    /^exited 0 proctree ok: counter 986152, child 0x0, grandchild 0x0, child exit 9, pipe 3100 bytes$/,
    `uninterrupted (traced to the same points): ${reference}`,
  );

  const checkpoint = async (tag: string): Promise<ProcessTree> => {
    const s = await stopTree(tag);
    const tree = await checkpointTree(agent, { binary, argv: [binary], envp: [], noAslr: true, pid: s.pid }, { host: true });
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    return tree;
  };
  const restoreAndRun = async (tree: ProcessTree, policy: RestorePolicy, tag: string) => {
    const restored = await restoreTree(agent, tree, { policy, stdoutPath: out(`${tag}-restored`) });
    await releaseDescendants(agent, tree);
    const end = await agent.call({ op: 'RUN', pid: tree.members[0]!.pid, stopAfterHits: 0, timeoutMs: 30_000 });
    return { restored, line: `${end.outcome} ${end.code} ${(await read(out(`${tag}-restored`))).trim()}` };
  };

  await t.test('checkpoint the tree, kill it, restore it: same pids, links, groups, sessions, one shared page', async (t) => {
    const tree = await checkpoint('default');
    const [root, child, grandchild] = tree.members;
    t.equal(tree.members.length, 3, `three processes: ${tree.members.map((m) => m.pid).join(' ')}`);
    t.equal(child!.ppid, root!.pid, "the child's parent is the root");
    t.equal(grandchild!.ppid, child!.pid, "the grandchild's parent is the child");
    t.equal(child!.pgid, child!.pid, 'the child leads its group');
    t.same([grandchild!.sid, grandchild!.pgid], [grandchild!.pid, grandchild!.pid], 'the grandchild leads its session');
    t.equal(grandchild!.image.regs.rip, sym('proctree_grandchild_checkpoint'), 'the grandchild checkpointed at its breakpoint');
    const ends = (tree.pipes ?? []).map(
      (p) =>
        `${p.ends.map((e) => `${e.pid === root!.pid ? 'root' : e.pid === grandchild!.pid ? 'grandchild' : 'child'} fd ${e.fd} ${e.write ? 'w' : 'r'}`).join(', ')}: ${p.queued.length} queued`,
    );
    t.same(ends, ['root fd 3 r, grandchild fd 4 w: 3000 queued'], `one pipe, the grandchild's bytes queued in it: ${ends.join('; ')}`);
    const { restored, line } = await restoreAndRun(tree, DEFAULT_POLICY, 'default');
    t.same(restored.differences, [], 'read back: every process as planned, the tree as in the image');
    t.equal(restored.skeleton.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9).length, 1, 'the shared page mapped once, in the root');
    t.equal(line, reference, `restored: ${line}`);
  });

  await t.test('control omit=mapping-kinds: each process a private copy of the shared page', async (t) => {
    const tree = await checkpoint('private');
    const { line } = await restoreAndRun(tree, { ...DEFAULT_POLICY, omit: ['mapping-kinds'] }, 'private');
    t.not(line, reference, `diverges: ${line}`);
    t.match(line, /proctree mismatch: counter \d+ \(not the one page all three share\)/);
  });

  await t.test('control omit=pipe-contents: the pipe restored empty', async (t) => {
    const tree = await checkpoint('pipe');
    const { line } = await restoreAndRun(tree, { ...DEFAULT_POLICY, omit: ['pipe-contents'] }, 'pipe');
    t.not(line, reference, `diverges: ${line}`);
    t.match(line, /proctree mismatch: .*, pipe 100 bytes \(not the bytes written\)$/, 'the parent reads only what the grandchild wrote after the restore');
  });

  await t.test("control: the grandchild restored as the root's child (wrong parent links)", async (t) => {
    const tree = await checkpoint('links');
    const [root, child, grandchild] = tree.members;
    const doctored: ProcessTree = { members: [root!, child!, { ...grandchild!, ppid: root!.pid }] };
    const { restored, line } = await restoreAndRun(doctored, DEFAULT_POLICY, 'links');
    t.same(restored.differences, [], 'the restore did what it was told (the doctored tree)');
    t.not(line, reference, `diverges: ${line}`);
    // The grandchild, no longer the child's, may not have reported yet when the root prints: only the child's word is certain.
    t.match(line, /proctree mismatch: .*, child 0x2, grandchild 0x[0-9a-f]+, child exit 9, /, 'the child cannot wait for its grandchild (ECHILD)');
  });

  await t.test('a zombie leading its own session is refused by name', async (t) => {
    const s = await stopTree('zombie');
    const child = Number((await read(`/proc/${s.grandchild}/stat`)).split(') ')[1]!.split(' ')[1]);
    await agent.call({ op: 'ATTACH', pid: child });
    const end = await agent.call({ op: 'RUN', pid: s.grandchild, stopAfterHits: 0, timeoutMs: 30_000 });
    t.equal(end.outcome, 'exited', 'the grandchild exited; its parent, stopped, has not waited for it');
    await t.rejects(checkpointTree(agent, { binary, argv: [binary], envp: [], noAslr: true, pid: s.pid }, { host: true }), {
      name: 'CheckpointError',
      message: new RegExp(`zombie \\(pid ${s.grandchild}: exited, not yet waited for by its parent ${child}: it leads its own session\\)`),
    });
    await agent.call({ op: 'KILL', pid: s.pid });
    await agent.call({ op: 'KILL', pid: child });
  });
});
