// expect: through the real agent on the host's kernel, a memfd a parent maps MAP_SHARED and holds as a descriptor,
// and its child only maps (it closed its descriptor), is checkpointed as one memfd of the tree with its mappings — the
// same range in both — and restored as one memfd created in the parent and mapped there before the child is cloned:
// sharefd memfd-map-run, stopped at a breakpoint before the child writes through its mapping, ends after the restore
// with the uninterrupted run's line (the parent sees the child's write through its mapping and its descriptor);
// omit=mapping-kinds (a memfd of its own for each, the control) is caught by the program.
import t from 'tap';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';
import { sharefdTreeCycle } from './support/sharefd-tree-cycle.ts';

t.test('a memfd mapped shared in a process tree through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.sockpair!;
  const dir = await makeTempDir('crh-memfd-map-local-');
  t.teardown(() => removeTempDir(dir));
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const elf = await ElfFile.open(binary);
  const breakAt = elf.symbols().find((s) => s.name === 'sharefd_checkpoint')!.value;

  const run = sharefdTreeCycle({ agent, binary, breakAt, dir, teardown: (fn) => t.teardown(fn) }, ['memfd-map-run', 'tree-map']);

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
