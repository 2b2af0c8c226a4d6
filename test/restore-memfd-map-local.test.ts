// expect: through the real agent on the host's kernel, a memfd a parent maps MAP_SHARED and holds as a descriptor,
// and its child only maps (it closed its descriptor), is checkpointed as one memfd of the tree with its mappings — the
// same range in both — and restored as one memfd created in the parent and mapped there before the child is cloned:
// sharefd memfd-map-run, stopped at a breakpoint before the child writes through its mapping, ends after the restore
// with the uninterrupted run's line (the parent sees the child's write through its mapping and its descriptor);
// omit=mapping-kinds (a memfd of its own for each, the control) is caught by the program.
import t from 'tap';
import path from 'node:path';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { readTreeImage, writeTreeImage } from '../harness/restore/tree-image.ts';
import { releaseDescendants, restoreTree } from '../harness/restore/tree-restore.ts';
import { killDaemonTree } from '../harness/repro/daemon-tree.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';

t.test('a memfd mapped shared in a process tree through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.sockpair!;
  const dir = await makeTempDir('crh-memfd-map-local-');
  t.teardown(() => removeTempDir(dir));
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString();
  const elf = await ElfFile.open(binary);
  const breakAt = elf.symbols().find((s) => s.name === 'sharefd_checkpoint')!.value;

  const run = async (tag: string, policy?: RestorePolicy) => {
    const out = path.join(dir, `${tag}.out`);
    const argv = [binary, 'memfd-map-run', 'tree-map'];
    const pid = await spawnWithBreakpoint(agent, { binary, argv, breakAt }, out);
    t.teardown(() => killDaemonTree(agent, pid).then(() => undefined));
    const hit = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    if (hit.outcome !== 'hit-limit') throw new Error(`sharefd memfd-map-run never reached sharefd_checkpoint: ${hit.outcome} ${hit.code}`);
    if (!policy) {
      const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
      return { line: `${end.outcome} ${end.code} ${(await read(out)).trim()}` };
    }
    const started = Date.now();
    const checkpointed = await checkpointTree(agent, { binary, argv, envp: [], noAslr: true, pid }, { host: true });
    const checkpointMs = Date.now() - started;
    const imageFile = path.join(dir, `${tag}.img`);
    await writeTreeImage(checkpointed, imageFile);
    for (const m of checkpointed.members) await agent.call({ op: 'KILL', pid: m.pid });
    const tree = await readTreeImage(imageFile);
    const restoredOut = path.join(dir, `${tag}.restored.out`);
    const restoreStarted = Date.now();
    const restored = await restoreTree(agent, tree, { policy, stdoutPath: restoredOut });
    const restoreMs = Date.now() - restoreStarted;
    await releaseDescendants(agent, tree);
    const end = await agent.call({ op: 'RUN', pid: tree.members[0]!.pid, stopAfterHits: 0, timeoutMs: 30_000 });
    return {
      line: `${end.outcome} ${end.code} ${(await read(restoredOut)).trim()}`,
      tree,
      restored,
      timing: `checkpoint ${checkpointMs} ms, restore ${restoreMs} ms`,
    };
  };

  const reference = (await run('reference')).line;
  t.equal(reference, "exited 0 sharefd memfd-map-run ok: the child's write seen through the mapping and the descriptor", `uninterrupted: ${reference}`);

  await t.test('one memfd, mapped at one range in both, held as fd 3 by the parent: it ends as uninterrupted', async (t) => {
    const r = await run('restored', DEFAULT_POLICY);
    const [parent, child] = r.tree!.members.map((m) => m.pid) as [number, number];
    const memfd = r.tree!.memfds?.[0];
    t.equal(r.tree!.memfds?.length, 1, 'one memfd');
    t.same(
      memfd?.ends.map((e) => `${e.pid === parent ? 'parent' : 'child'} fd ${e.fd}`),
      ['parent fd 3'],
      'a descriptor in the parent only',
    );
    t.same(
      memfd?.maps?.map((x) => `${x.pid === parent ? 'parent' : x.pid === child ? 'child' : x.pid} ${(x.end - x.start).toString()} bytes at offset ${x.offset}`),
      ['parent 8192 bytes at offset 0', 'child 8192 bytes at offset 0'],
      'mapped by both, at one range',
    );
    t.equal(new Set(memfd?.maps?.map((x) => x.start)).size, 1, 'the same address in both');
    t.same(r.restored!.differences, [], 'read back as planned');
    t.equal(r.line, reference, `restored: ${r.line}`);
    t.comment(`memfd mapped shared, 2 processes: ${r.timing}`);
  });

  await t.test('omit=mapping-kinds (the control): a memfd of its own for each, the child write not seen', async (t) => {
    const r = await run('control', { ...DEFAULT_POLICY, omit: ['mapping-kinds'] });
    t.equal(
      r.line,
      "exited 0 sharefd memfd-map-run mismatch: child status 0x0, the child's write not seen through the mapping, not seen through the descriptor",
      `caught: ${r.line}`,
    );
  });
});
