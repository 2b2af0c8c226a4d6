// expect: through the real agent on the host's kernel, a parent with two zombie children (one exited 42, one killed by
// SIGUSR1) and a live child blocked on a pipe, stopped at its breakpoint, is checkpointed as a tree holding the two
// zombies with their wait statuses (tree.json `zombies`, written and read back through the image), killed, and
// restored: each zombie again a zombie with its pid, its parent and its wait status (/proc/PID/stat state Z, exit_code),
// and the parent's waitpid collects them as the uninterrupted run does — the same line. Negative control omit=zombies:
// the parent's wait finds only the live child, then ECHILD. The wait-status rules and tree.json's hostile values are
// named (zombieEnd, zombiesProblem).
import t from 'tap';
import { rmSync } from 'node:fs';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { readTreeImage, writeTreeImage } from '../harness/restore/tree-image.ts';
import { releaseDescendants, restoreTree } from '../harness/restore/tree-restore.ts';
import { parseExitCode, zombieEnd, zombiesProblem } from '../harness/restore/tree-zombies.ts';
import type { ProcessTree } from '../harness/restore/tree.ts';

const NATIVE_LINE = 'zombies: first exited 42, second killed by signal 10, third exited 0, then ECHILD';

t.test('wait statuses a restore can end a process with, and hostile tree.json zombies', async (t) => {
  t.same(zombieEnd(42 << 8), { exit: 42 });
  t.same(zombieEnd(10), { signal: 10 });
  t.same(zombieEnd(9), { signal: 9 });
  t.same(zombieEnd(40), { signal: 40 }, 'a real-time signal');
  t.match((zombieEnd(11) as { problem: string }).problem, /signal 11, whose default action dumps core/);
  t.match((zombieEnd(0x86) as { problem: string }).problem, /core dump/);
  t.match((zombieEnd(0x137f) as { problem: string }).problem, /a stop/);
  t.match((zombieEnd(0x10000) as { problem: string }).problem, /16-bit/);
  const stat = `77 (x y) Z ${Array.from({ length: 49 }, (_, i) => (i === 48 ? '10752' : '0')).join(' ')}`;
  t.equal(parseExitCode(stat), 42 << 8, 'field 52 of /proc/PID/stat (a name with a space)');
  const members = [{ pid: 10, ppid: 1, pgid: 10, sid: 10, exitSignal: 17 }];
  const good = { pid: 11, ppid: 10, pgid: 10, sid: 10, exitSignal: 17, waitStatus: 42 << 8 };
  t.equal(zombiesProblem([good], members), undefined);
  t.same(zombiesProblem([{ ...good, ppid: 12 }], members), { field: 'zombies[0].ppid', why: '12 is no live process of the tree' });
  t.same(zombiesProblem([{ ...good, pid: 10 }], members), { field: 'zombies[0].pid', why: 'pid 10 appears twice in the tree' });
  t.same(zombiesProblem([{ ...good, waitStatus: 0x8b }], members)?.field, 'zombies[0].waitStatus');
  t.same(zombiesProblem([{ ...good, exitSignal: 10 }], members)?.field, 'zombies[0].exitSignal');
  t.same(zombiesProblem([{ ...good, pgid: 11 }], members)?.field, 'zombies[0].pgid');
  t.same(zombiesProblem([], members)?.field, 'zombies', 'present means at least one');
  t.same(zombiesProblem('x', members)?.field, 'zombies');
});

t.test('zombies in a tree through the real agent, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath['vmflags-zombies']!;
  const breakAt = (await ElfFile.open(binary)).symbolAddress('zombies_checkpoint');
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-restore-zombies-${process.pid}-${tag}.out`;
  const tags = ['reference', 'default', 'omit'];
  t.teardown(() => tags.forEach((tag) => rmSync(out(tag), { force: true })));
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString().trim();

  const reference = await (async () => {
    const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv: [binary, 'zombies'], envp: [], stdoutPath: out('reference'), noAslr: true });
    const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
    return `${end.outcome} ${end.code} ${await read(out('reference'))}`;
  })();
  t.equal(reference, `exited 0 ${NATIVE_LINE}`, 'uninterrupted');

  const checkpointAndRestore = async (tag: string, policy: RestorePolicy) => {
    const pid = await spawnWithBreakpoint(agent, { binary, argv: [binary, 'zombies'], breakAt }, out(tag));
    const hit = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    if (hit.outcome !== 'hit-limit') throw new Error(`never reached zombies_checkpoint: ${hit.outcome} ${hit.code}`);
    const taken = await checkpointTree(agent, { binary, argv: [binary, 'zombies'], envp: [], noAslr: true, pid }, { host: true });
    const file = `${out(tag)}.img`;
    t.teardown(() => rmSync(file, { force: true }));
    await writeTreeImage(taken, file);
    const tree: ProcessTree = await readTreeImage(file);
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    const restored = await restoreTree(agent, tree, { policy, stdoutPath: out(tag) });
    await releaseDescendants(agent, tree);
    const zombiesNow = await Promise.all(
      (tree.zombies ?? []).map(async (z) => {
        const stat = await read(`/proc/${z.pid}/stat`).catch(() => '(absent) -');
        return { pid: z.pid, state: stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0], exitCode: parseExitCode(stat) };
      }),
    );
    const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
    return { tree, restored, zombiesNow, line: `${end.outcome} ${end.code} ${await read(out(tag))}` };
  };

  await t.test('restored as zombies: same pids, parent, wait statuses; the parent collects them as uninterrupted', async (t) => {
    const { tree, restored, zombiesNow, line } = await checkpointAndRestore('default', DEFAULT_POLICY);
    t.equal(tree.members.length, 2, 'two live processes: the parent and the child on the pipe');
    t.same(
      (tree.zombies ?? []).map((z) => [z.ppid, z.exitSignal, z.waitStatus]),
      [
        [tree.members[0]!.pid, 17, 42 << 8],
        [tree.members[0]!.pid, 17, 10],
      ],
      'two zombies of the parent in the image (read back from the file): exit 42, SIGUSR1',
    );
    t.same(restored.differences, [], 'read back: each zombie a zombie of its parent with its wait status');
    t.same(
      zombiesNow.map((z) => [z.state, z.exitCode]),
      [
        ['Z', 42 << 8],
        ['Z', 10],
      ],
      'before the parent runs: state Z, exit_code as before',
    );
    t.equal(line, reference, `ends as uninterrupted: ${line}`);
  });

  await t.test('negative control omit=zombies: the parent finds no zombie to wait for', async (t) => {
    const { restored, zombiesNow, line } = await checkpointAndRestore('omit', { ...DEFAULT_POLICY, omit: ['zombies'] });
    t.same(restored.differences, [], 'the restore did what the policy said');
    t.same(
      zombiesNow.map((z) => z.state),
      ['-', '-'],
      'no process with either pid',
    );
    t.equal(line, 'exited 1 zombies: first missing, second missing, third exited 0, then ECHILD', `caught: ${line}`);
  });
});
