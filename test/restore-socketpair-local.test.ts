// expect: through the real agent on the host's kernel, a parent and a child joined by a unix socketpair — SOCK_STREAM
// and SOCK_DGRAM — with data queued both ways, the parent at a breakpoint and the child waiting on a pipe, are checkpointed as a tree with the pair and both queues (a datagram
// socket's datagrams one by one), killed, restored with the same pids and one socketpair between them, and end with
// the uninterrupted run's line; under omit=pipe-contents the queues come back empty and the line says so.
import t from 'tap';
import path from 'node:path';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { AgentClient } from '../harness/agent/client.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { readTreeImage, writeTreeImage } from '../harness/restore/tree-image.ts';
import { releaseDescendants, restoreTree } from '../harness/restore/tree-restore.ts';
import { killDaemonTree } from '../harness/repro/daemon-tree.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';

t.test('unix socketpairs in a process tree through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.sockpair!;
  const dir = await makeTempDir('crh-socketpair-local-');
  t.teardown(() => removeTempDir(dir));
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString();

  const elf = await ElfFile.open(binary);
  const breakAt = elf.symbols().find((s) => s.name === 'sockpair_checkpoint')!.value;
  /** sockpair TYPE with the parent stopped at sockpair_checkpoint (both queues full, the child waiting on its pipe). */
  const ready = async (type: string, tag: string) => {
    const out = path.join(dir, `${tag}.out`);
    const argv = [binary, type];
    const pid = await spawnWithBreakpoint(agent, { binary, argv, breakAt }, out);
    t.teardown(() => killDaemonTree(agent, pid).then(() => undefined));
    const hit = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    if (hit.outcome !== 'hit-limit') throw new Error(`sockpair ${type} never reached sockpair_checkpoint: ${hit.outcome} ${hit.code}`);
    return { pid, out, process: { binary, argv, envp: [], noAslr: true, pid } };
  };
  const finish = async (pid: number, out: string): Promise<string> => {
    const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
    return `${end.outcome} ${end.code} ${(await read(out)).trim()}`;
  };

  for (const type of ['stream', 'dgram'] as const) {
    const reference = await (async () => {
      const s = await ready(type, `${type}-reference`);
      return finish(s.pid, s.out);
    })();
    t.match(
      reference,
      new RegExp(`^exited 0 sockpair ${type} ok: up ${type === 'dgram' ? 8 : '\\d+'} messages 1044 bytes, down 3 messages, child exit 0$`),
      `uninterrupted: ${reference}`,
    );

    const checkpointAndRestore = async (policy: RestorePolicy, tag: string) => {
      const s = await ready(type, tag);
      const started = Date.now();
      const tree = await checkpointTree(agent, s.process, { host: true });
      const checkpointMs = Date.now() - started;
      for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
      // Through the image file: what is restored is what the image holds.
      const file = path.join(dir, `${tag}.tar`);
      await writeTreeImage(tree, file);
      const fromImage = await readTreeImage(file);
      const restoreStarted = Date.now();
      const restored = await restoreTree(agent, fromImage, { policy, stdoutPath: path.join(dir, `${tag}-restored.out`) });
      const restoreMs = Date.now() - restoreStarted;
      await releaseDescendants(agent, fromImage);
      const line = await finish(tree.members[0]!.pid, path.join(dir, `${tag}-restored.out`));
      return { tree: fromImage, restored, line, checkpointMs, restoreMs };
    };

    await t.test(`${type}: checkpointed with its socketpair and both queues, restored, the uninterrupted line`, async (t) => {
      const r = await checkpointAndRestore(DEFAULT_POLICY, `${type}-default`);
      const [pair] = r.tree.socketpairs ?? [];
      t.equal(r.tree.socketpairs?.length, 1, 'one socketpair');
      t.equal(pair?.type, type);
      t.same(
        pair?.queued.map((q) => q.map((b) => b.length)),
        type === 'dgram'
          ? [
              [1, 38, 75, 112, 149, 186, 223, 260],
              [1, 38, 75],
            ]
          : [[1044], [114]],
        "the parent's socket holds what the child sent up, the child's what the parent sent down",
      );
      t.same(r.restored.differences, [], 'read back: one socketpair between the two, as planned');
      t.equal(r.line, reference, `restored: ${r.line}`);
      t.comment(`${type}: checkpoint ${r.checkpointMs} ms, restore ${r.restoreMs} ms`);
    });

    await t.test(`${type}: control omit=pipe-contents: the socketpair restored empty`, async (t) => {
      const r = await checkpointAndRestore({ ...DEFAULT_POLICY, omit: ['pipe-contents'] }, `${type}-empty`);
      t.not(r.line, reference, `diverges: ${r.line}`);
      t.match(r.line, new RegExp(`sockpair ${type} mismatch: up 0 bytes queued, not 1044, child status 0x300`));
    });
  }
});
