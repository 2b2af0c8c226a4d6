// expect: a three-process tree — a parent, its child (leading a process group of its own) and its grandchild (leading a
// session of its own), joined by one MAP_SHARED anonymous page and a pipe from the grandchild to the parent holding 3000
// queued bytes — stopped with the parent before its waitpid, the child in
// its waitpid and the grandchild at a hardware breakpoint, checkpointed as a tree (format 10), killed and restored with the
// same pids, parent links, groups and sessions, one shared page and the pipe with its bytes, ends with the uninterrupted run's line (which is the
// native run's), and the CPU runs the grandchild's code at its breakpoint address with the grandchild's own stack pointer.
// Negative controls: omit=mapping-kinds (each process a private copy of the page: the counter diverges), omit=pipe-contents
// (the pipe restored empty: the parent reads 100 bytes, not 3100), the grandchild restored as the parent's child (wrong
// parent links: the child cannot wait for it). And a parent and child joined by a unix socketpair (SOCK_STREAM, then
// SOCK_DGRAM) with data queued both ways, the parent at a breakpoint: restored as one pair with both queues, it ends as
// the native run; omit=pipe-contents (the pair restored empty) is caught by the program. And a parent and child that
// hold one memfd (written, sealed against shrinking, at an offset) as a descriptor, the parent at a breakpoint before it
// lets the child write through its own: restored as one memfd (name, contents, size, seals, offset) the parent reads the
// child's write and ends as the native run; omit=mapping-kinds (a memfd of its own for each) is caught by the program.
// And a parent and child that share one open file description (a file the parent opened read-write before the fork),
// the parent at a breakpoint before the child reads and writes through it: restored as ONE description (opened once in
// the parent before the child is cloned, at its offset) the parent's write lands after the child's and it ends as the
// native run; omit=shared-descriptions (one description, one offset per process) is caught by the program (the
// parent writes over the child's bytes). And a parent and child holding a FIFO (a read end and a write end, each one
// description of both) with 28 bytes queued, the parent at a breakpoint before the child writes more: restored as the
// same FIFO (reopened by path in the parent before the child is cloned, each description with its mode, the queued
// bytes put back) the parent reads both and ends as the native run; omit=pipe-contents (the FIFO restored empty) is
// caught by the program. And a memfd the parent maps MAP_SHARED and holds as fd 3 and the child only maps, the parent at
// a breakpoint before the child writes through its mapping: restored as one memfd mapped in the parent before the child
// is cloned, the parent sees the child's write through its mapping and its fd and ends as the native run;
// omit=mapping-kinds (a memfd of its own for each) is caught by the program. And a parent with two zombie children (one
// exited 42, one killed by SIGUSR1, neither waited for) and a live child on a pipe, the parent at a breakpoint: restored
// with each zombie made again (cloned in the parent's stub with its pid, ended as it ended) the parent's waitpid collects
// the same pids with the same statuses and it ends as the native run; omit=zombies (not made again: ECHILD) is caught.
import t, { type Test } from 'tap';
import { appendFileSync, writeFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { DR7_EXECUTE_DR0 } from '../harness/agent/breakpoint-spawn.ts';
import { observeCpu } from '../harness/oracle/cpu-oracle.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { checkpointTree } from '../harness/restore/tree-checkpoint.ts';
import { readTreeImage, writeTreeImage } from '../harness/restore/tree-image.ts';
import { releaseDescendants } from '../harness/restore/tree-restore.ts';
import type { ProcessTree } from '../harness/restore/tree.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { restoreTreeWitnessed } from '../harness/testing/restore-witness.ts';
import { readOutput, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../harness/testing/scenario.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { debugRegOffset, hex } from '../harness/x86/registers.ts';

const CASE = 'tree';
const SCENARIO = 'parent, child (own group), grandchild (own session) sharing a MAP_SHARED page, a pipe with queued bytes; grandchild at a hardware breakpoint';

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_CHECKPOINT_RESTORE']), async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent, symbols } = guest;
  const binary = guest.image.guestPaths.proctree!;
  const sym = (name: string): bigint => symbols.resolve(`proctree:${name}`);
  const workload: Workload = { binary, argv: [binary], breakAt: sym('proctree_ready') };

  /**
   * The parent runs to proctree_ready (the grandchild exists, spinning until
   * `go`); the grandchild is attached and armed at its breakpoint; the parent
   * sets `go` and stops at proctree_parent_waits; the grandchild runs to its
   * breakpoint. The child, untraced, sits in its waitpid.
   */
  const stopTree = async (tag: string) => {
    const out = `/tmp/tree-${tag}.original.out`;
    const pid = await spawnArmed(guest, workload, out);
    const ready = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
    if (ready.outcome !== 'hit-limit')
      throw new Error(`proctree never reached proctree_ready (${ready.outcome} ${ready.code}): ${await readOutput(guest, out)}`);
    const page = (await agent.call({ op: 'READ_MEM', pid, address: sym('proctree_shared'), length: 8 })).readBigUInt64LE(0);
    const grandchild = (await agent.call({ op: 'READ_MEM', pid, address: page + 4n, length: 4 })).readInt32LE(0);
    await agent.call({ op: 'ATTACH', pid: grandchild });
    await agent.call({ op: 'POKEUSER', pid: grandchild, offset: debugRegOffset(0), value: sym('proctree_grandchild_checkpoint') });
    await agent.call({ op: 'POKEUSER', pid: grandchild, offset: debugRegOffset(7), value: DR7_EXECUTE_DR0 });
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(0), value: sym('proctree_parent_waits') });
    const waits = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
    if (waits.outcome !== 'hit-limit') throw new Error(`proctree never reached proctree_parent_waits (${waits.outcome} ${waits.code})`);
    const hit = await agent.call({ op: 'RUN', pid: grandchild, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
    if (hit.outcome !== 'hit-limit') throw new Error(`the grandchild never reached its breakpoint (${hit.outcome} ${hit.code})`);
    // The breakpoint only chose where to stop. Left armed, the oracle's gdbstub breakpoint on the same address makes
    // QEMU (TCG, 7.2) raise the guest's #DB although RF is set: the released grandchild dies of SIGTRAP and gdb
    // reports no stop (measured: the same restore passes without the oracle, and with the guest's DR7 cleared).
    await agent.call({ op: 'POKEUSER', pid: grandchild, offset: debugRegOffset(7), value: 0n });
    return { pid, grandchild, out, hitEflags: hit.hits[0]?.eflags };
  };

  const reference = await (async () => {
    const s = await stopTree('reference');
    await agent.call({ op: 'RELEASE', pid: s.grandchild });
    const end = await agent.call({ op: 'RUN', pid: s.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    const line = `${endedAs(end)} ${(await readOutput(guest, s.out)).trim()}`;
    const native = await nativeReference(guest, workload);
    t.equal(line, `${endedAs(native)} ${native.output.trim()}`, 'the traced reference is the native run (no tracer)');
    return line;
  })();
  t.match(reference, /^exited 0 proctree ok: counter \d+, child 0x0, grandchild 0x0, child exit 9, pipe 3100 bytes$/, `uninterrupted: ${reference}`);

  const checkpoint = async (t: Test, tag: string) => {
    const s = await stopTree(tag);
    const started = Date.now();
    const tree = await checkpointTree(agent, { binary, argv: workload.argv, envp: [], noAslr: true, pid: s.pid }, guest.platform);
    const checkpointMs = Date.now() - started;
    const file = path.join(guest.artifactsDir, `checkpoint-${tag}.tar`);
    await writeTreeImage(tree, file);
    // The root first: its children go to the agent (a subreaper), which reaps them as it kills them.
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    const [root, child, grandchild] = tree.members;
    t.same(
      tree.members.map((m) => m.ppid).slice(1),
      [root!.pid, child!.pid],
      `three processes, each the previous one's child: ${tree.members.map((m) => m.pid).join(' ')}`,
    );
    t.equal(grandchild!.pid, s.grandchild);
    t.equal(child!.pgid, child!.pid, 'the child leads its process group');
    t.same([grandchild!.sid, grandchild!.pgid], [grandchild!.pid, grandchild!.pid], 'the grandchild leads its session');
    const pipes = (tree.pipes ?? []).map(
      (p) =>
        `${p.ends.map((e) => `${e.pid === root!.pid ? 'parent' : e.pid === grandchild!.pid ? 'grandchild' : 'child'} fd ${e.fd} ${e.write ? 'w' : 'r'}`).join(', ')}: ${p.queued.length} queued`,
    );
    t.same(pipes, ['parent fd 3 r, grandchild fd 4 w: 3000 queued'], `one pipe, the grandchild's bytes queued in it: ${pipes.join('; ')}`);
    t.equal(
      grandchild!.image.regs.rip,
      sym('proctree_grandchild_checkpoint'),
      `the grandchild checkpointed at its breakpoint (eflags at the hit ${s.hitEflags === undefined ? '?' : hex(s.hitEflags)})`,
    );
    t.comment(`checkpoint of 3 processes: ${checkpointMs} ms, image ${(await stat(file)).size} bytes`);
    return { file, tree };
  };

  /** Restores the tree (or `doctor` of it), lets the descendants go, runs the parent to its end while the oracle watches the grandchild's breakpoint address. */
  const restoreAndRun = async (file: string, policy: RestorePolicy, tag: string, doctor: (tree: ProcessTree) => ProcessTree = (x) => x) => {
    const tree = doctor(await readTreeImage(file));
    const out = `/tmp/tree-${tag}.restored.out`;
    const started = Date.now();
    const restored = await restoreTreeWitnessed(agent, tree, { policy, stdoutPath: out }, tag);
    const restoreMs = Date.now() - started;
    const oracleLog = path.join(guest.artifactsDir, `oracle-${tag}.log`);
    writeFileSync(oracleLog, '');
    const log = (line: string): void => appendFileSync(oracleLog, `${new Date().toISOString()} ${line}\n`);
    const { result: end, observation } = await observeCpu(
      guest.machine.gdbSocket,
      symbols,
      { firstExecutionAt: sym('proctree_grandchild_checkpoint'), log },
      async () => {
        await releaseDescendants(agent, tree);
        return agent.call({ op: 'RUN', pid: tree.members[0]!.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
      },
    );
    const line = `${endedAs(end)} ${(await readOutput(guest, out)).trim()}`;
    return { tree, restored, restoreMs, line, observation };
  };

  await t.test(
    'kill and restore the tree: same pids, parent links, groups, sessions, one shared page, the pipe and its bytes; it ends as uninterrupted',
    async (t) => {
      const c = await checkpoint(t, 'default');
      const r = await restoreAndRun(c.file, DEFAULT_POLICY, 'default');
      const clones = r.restored.skeleton.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 435).length;
      t.comment(
        `restore of 3 processes (${clones} clone3 in the skeleton, ${r.restored.members.reduce((n, m) => n + m.plan.length, 0)} plan steps): ${r.restoreMs} ms`,
      );
      t.same(r.restored.differences, [], 'read back: every process as its plan set it; pids, parents, groups and sessions as in the image');
      t.equal(
        r.restored.skeleton.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9).length,
        1,
        'the shared page mapped once, in the parent, before its child was cloned',
      );
      t.equal(r.line, reference, `restored: ${r.line}`);
      const grandchild = c.tree.members[2]!.image;
      const first = r.observation.first;
      t.equal(
        first?.get('rsp'),
        grandchild.regs.rsp,
        `oracle: the CPU ran the grandchild's breakpoint address with the grandchild's stack pointer ${hex(grandchild.regs.rsp)}`,
      );
      recordRowOutcome(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: reference,
        observed: r.line,
        matchedUninterrupted: r.line === reference && r.restored.differences.length === 0 && first?.get('rsp') === grandchild.regs.rsp,
      });
    },
  );

  const controls: Array<{ name: string; policy: RestorePolicy; doctor?: (tree: ProcessTree) => ProcessTree; shows: RegExp }> = [
    {
      name: 'omit=mapping-kinds: each process restored with a private copy of the shared page',
      policy: { ...DEFAULT_POLICY, omit: ['mapping-kinds'] },
      shows: /proctree mismatch: counter \d+ \(not the one page all three share\)/,
    },
    {
      name: 'omit=pipe-contents: the pipe restored without its queued bytes',
      policy: { ...DEFAULT_POLICY, omit: ['pipe-contents'] },
      shows: /proctree mismatch: .*, pipe 100 bytes \(not the bytes written\)$/,
    },
    {
      name: "wrong parent links: the grandchild restored as the parent's child",
      policy: DEFAULT_POLICY,
      doctor: (tree) => ({ members: tree.members.map((m, i) => (i === 2 ? { ...m, ppid: tree.members[0]!.pid } : m)) }),
      // The grandchild is no longer the child's to wait for; whether it has reported when the parent prints is a race.
      shows: /proctree mismatch: .*, child 0x2, grandchild 0x[0-9a-f]+, child exit 9, /,
    },
  ];
  for (const [i, c] of controls.entries()) {
    await t.test(`negative control ${c.name}`, async (t) => {
      const tag = `control-${i}`;
      const k = await checkpoint(t, tag);
      const r = await restoreAndRun(k.file, c.policy, tag, c.doctor);
      t.match(r.line, c.shows, `caught: ${r.line}`);
      t.not(r.line, reference, 'and it differs from the uninterrupted run');
      recordRowOutcome(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: `${describePolicy(c.policy)}${c.doctor ? ' (grandchild re-parented to the root)' : ''}`,
        control: true,
        expected: reference,
        observed: r.line,
        matchedUninterrupted: r.line === reference,
      });
    });
  }

  /**
   * One run of a two-process workload that stops its parent at a hardware breakpoint (`w.breakAt`): with no policy,
   * on to its end (the reference); with one, the tree checkpointed, written as an image, killed, read back, restored
   * under `policy` and run to its end.
   */
  const treeCycle = async (w: Workload, tag: string, policy?: RestorePolicy) => {
    const out = `/tmp/tree-${tag}.original.out`;
    const pid = await spawnArmed(guest, w, out);
    const hit = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
    if (hit.outcome !== 'hit-limit')
      throw new Error(`${w.argv.join(' ')} never reached its checkpoint point (${hit.outcome} ${hit.code}): ${await readOutput(guest, out)}`);
    if (!policy) {
      const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
      return { line: `${endedAs(end)} ${(await readOutput(guest, out)).trim()}` };
    }
    const started = Date.now();
    const tree = await checkpointTree(agent, { binary: w.binary, argv: w.argv, envp: [], noAslr: true, pid }, guest.platform);
    const checkpointMs = Date.now() - started;
    const file = path.join(guest.artifactsDir, `checkpoint-${tag}.tar`);
    await writeTreeImage(tree, file);
    for (const m of tree.members) await agent.call({ op: 'KILL', pid: m.pid });
    const fromImage = await readTreeImage(file);
    const restoredOut = `/tmp/tree-${tag}.restored.out`;
    const restoreStarted = Date.now();
    const restored = await restoreTreeWitnessed(agent, fromImage, { policy, stdoutPath: restoredOut }, tag);
    const restoreMs = Date.now() - restoreStarted;
    await releaseDescendants(agent, fromImage);
    const end = await agent.call({ op: 'RUN', pid: fromImage.members[0]!.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    return {
      line: `${endedAs(end)} ${(await readOutput(guest, restoredOut)).trim()}`,
      tree: fromImage,
      restored,
      timing: `checkpoint ${checkpointMs} ms, image ${(await stat(file)).size} bytes, restore ${restoreMs} ms`,
    };
  };

  // A parent and child joined by a unix socketpair, data queued both ways: the pair restored as one, its queues sent again.
  for (const type of ['stream', 'dgram'] as const) {
    const pairBinary = guest.image.guestPaths.sockpair!;
    const pairWorkload: Workload = { binary: pairBinary, argv: [pairBinary, type], breakAt: symbols.resolve('sockpair:sockpair_checkpoint') };
    const pairScenario = `parent and child joined by a unix ${type === 'stream' ? 'SOCK_STREAM' : 'SOCK_DGRAM'} socketpair, data queued both ways; parent at a hardware breakpoint`;
    const runPair = (tag: string, policy?: RestorePolicy) => treeCycle(pairWorkload, tag, policy);
    const pairReference = (await runPair(`${type}-reference`)).line;
    const native = await nativeReference(guest, pairWorkload);
    t.equal(pairReference, `${endedAs(native)} ${native.output.trim()}`, `${type}: the traced reference is the native run (no tracer)`);
    t.match(
      pairReference,
      new RegExp(`^exited 0 sockpair ${type} ok: up \\d+ messages 1044 bytes, down 3 messages, child exit 0$`),
      `${type} uninterrupted: ${pairReference}`,
    );

    await t.test(`kill and restore a ${type} socketpair between parent and child: one pair, both queues; it ends as uninterrupted`, async (t) => {
      const r = await runPair(`${type}-default`, DEFAULT_POLICY);
      t.same(
        r.tree?.socketpairs?.map((p) => p.queued.map((q) => q.reduce((n, b) => n + b.length, 0))),
        [[1044, 114]],
        'one socketpair: 1044 bytes queued for the parent, 114 for the child',
      );
      t.same(r.restored?.differences, [], 'read back: one socketpair between the two, as planned');
      t.equal(r.line, pairReference, `restored: ${r.line}`);
      t.comment(`${type} socketpair, 2 processes: ${r.timing}`);
      recordRowOutcome(t, {
        case: CASE,
        scenario: pairScenario,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: pairReference,
        observed: r.line,
        matchedUninterrupted: r.line === pairReference && r.restored?.differences.length === 0,
      });
    });

    await t.test(`negative control omit=pipe-contents: the ${type} socketpair restored without its queued data`, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['pipe-contents'] };
      const r = await runPair(`${type}-empty`, policy);
      t.match(r.line, new RegExp(`sockpair ${type} mismatch: up 0 bytes queued, not 1044, child status 0x300`), `caught: ${r.line}`);
      t.not(r.line, pairReference, 'and it differs from the uninterrupted run');
      recordRowOutcome(t, {
        case: CASE,
        scenario: pairScenario,
        policy: describePolicy(policy),
        control: true,
        expected: pairReference,
        observed: r.line,
        matchedUninterrupted: r.line === pairReference,
      });
    });
  }

  // A parent and child holding one memfd as a descriptor: restored as one memfd, the child's write is read by the parent.
  {
    const memfdBinary = guest.image.guestPaths.sockpair!;
    const memfdWorkload: Workload = {
      binary: memfdBinary,
      argv: [memfdBinary, 'memfd-run', 'tree-memfd'],
      breakAt: symbols.resolve('sockpair:sharefd_checkpoint'),
    };
    const memfdScenario =
      'parent and child holding one memfd as fd 3 (written, 6000 bytes, sealed against shrinking, offset 22); parent at a hardware breakpoint';
    const runMemfd = (tag: string, policy?: RestorePolicy) => treeCycle(memfdWorkload, tag, policy);
    const memfdReference = (await runMemfd('memfd-reference')).line;
    const native = await nativeReference(guest, memfdWorkload);
    t.equal(memfdReference, `${endedAs(native)} ${native.output.trim()}`, 'memfd: the traced reference is the native run (no tracer)');
    t.equal(memfdReference, "exited 0 sharefd memfd-run ok: the child's write seen, seals 0x2, offset 22, size 6000", `memfd uninterrupted: ${memfdReference}`);

    await t.test('kill and restore a memfd held by parent and child: one memfd, its contents, seals and offset; it ends as uninterrupted', async (t) => {
      const r = await runMemfd('memfd-default', DEFAULT_POLICY);
      t.same(
        r.tree?.memfds?.map(
          (m) => `${m.name} ${m.contents.length} bytes, seals 0x${m.seals.toString(16)}, offset ${m.pos}, fds ${m.ends.map((e) => e.fd).join(' ')}`,
        ),
        ['tree-memfd 6000 bytes, seals 0x2, offset 22, fds 3 3'],
        'one memfd, fd 3 of both',
      );
      t.same(r.restored?.differences, [], 'read back: one memfd behind both descriptors, as planned');
      t.equal(r.line, memfdReference, `restored: ${r.line}`);
      t.comment(`memfd, 2 processes: ${r.timing}`);
      recordRowOutcome(t, {
        case: CASE,
        scenario: memfdScenario,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: memfdReference,
        observed: r.line,
        matchedUninterrupted: r.line === memfdReference && r.restored?.differences.length === 0,
      });
    });

    await t.test('negative control omit=mapping-kinds: parent and child each restored with a memfd of its own', async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['mapping-kinds'] };
      const r = await runMemfd('memfd-private', policy);
      t.match(r.line, /sharefd memfd-run mismatch: the child's write not seen, child status 0x0, /, `caught: ${r.line}`);
      t.not(r.line, memfdReference, 'and it differs from the uninterrupted run');
      recordRowOutcome(t, {
        case: CASE,
        scenario: memfdScenario,
        policy: describePolicy(policy),
        control: true,
        expected: memfdReference,
        observed: r.line,
        matchedUninterrupted: r.line === memfdReference,
      });
    });
  }

  // A parent and child sharing one open file description: restored as one description, a write by one moves the other's offset.
  {
    const offsetBinary = guest.image.guestPaths.sockpair!;
    const offsetFile = '/tmp/tree-shared-offset';
    const offsetWorkload: Workload = {
      binary: offsetBinary,
      argv: [offsetBinary, 'offset-run', offsetFile],
      breakAt: symbols.resolve('sockpair:sharefd_checkpoint'),
    };
    const offsetScenario =
      'parent and child sharing one open file description (a file opened read-write before the fork, offset 2); parent at a hardware breakpoint, then the child reads and writes through it and the parent writes after';
    const runOffset = (tag: string, policy?: RestorePolicy) => treeCycle(offsetWorkload, tag, policy);
    const offsetReference = (await runOffset('offset-reference')).line;
    const native = await nativeReference(guest, offsetWorkload);
    t.equal(offsetReference, `${endedAs(native)} ${native.output.trim()}`, 'shared description: the traced reference is the native run (no tracer)');
    t.equal(
      offsetReference,
      'exited 0 sharefd offset-run ok: the child read 234, one offset, 16 after both writes: 01234childparent',
      `shared description uninterrupted: ${offsetReference}`,
    );

    await t.test('kill and restore an open file description parent and child share: one description, one offset; it ends as uninterrupted', async (t) => {
      const r = await runOffset('offset-default', DEFAULT_POLICY);
      t.same(
        r.tree?.sharedFiles?.map((f) => `${f.path} flags 0o${f.flags.toString(8)}, offset ${f.pos}, ${f.size} bytes, fds ${f.ends.map((e) => e.fd).join(' ')}`),
        [`${offsetFile} flags 0o100002, offset 2, 10 bytes, fds 3 3`],
        'one shared description: read-write, offset 2, fd 3 of both',
      );
      t.same(r.restored?.differences, [], 'read back: one description (kcmp) behind both descriptors, at offset 2');
      t.equal(r.line, offsetReference, `restored: ${r.line}`);
      t.comment(`shared description, 2 processes: ${r.timing}`);
      recordRowOutcome(t, {
        case: CASE,
        scenario: offsetScenario,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: offsetReference,
        observed: r.line,
        matchedUninterrupted: r.line === offsetReference && r.restored?.differences.length === 0,
      });
    });

    await t.test('negative control omit=shared-descriptions: parent and child each restored with a description of its own', async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['shared-descriptions'] };
      const r = await runOffset('offset-private', policy);
      t.match(r.line, /sharefd offset-run mismatch: child status 0x0, offset 8 after both writes: 01parentld$/, `caught: ${r.line}`);
      t.not(r.line, offsetReference, 'and it differs from the uninterrupted run');
      recordRowOutcome(t, {
        case: CASE,
        scenario: offsetScenario,
        policy: describePolicy(policy),
        control: true,
        expected: offsetReference,
        observed: r.line,
        matchedUninterrupted: r.line === offsetReference,
      });
    });
  }

  // A parent and child holding a FIFO with bytes queued: restored as the same FIFO, its queued bytes put back.
  {
    const fifoBinary = guest.image.guestPaths.sockpair!;
    const fifoPath = '/tmp/tree-fifo';
    const fifoWorkload: Workload = {
      binary: fifoBinary,
      argv: [fifoBinary, 'fifo-run', fifoPath],
      breakAt: symbols.resolve('sockpair:sharefd_checkpoint'),
    };
    const fifoScenario =
      'parent and child holding a FIFO (a read end and a write end opened by path, each one description of both) with 28 bytes queued; parent at a hardware breakpoint, then the child writes 8 more';
    const runFifo = (tag: string, policy?: RestorePolicy) => treeCycle(fifoWorkload, tag, policy);
    const fifoReference = (await runFifo('fifo-reference')).line;
    const native = await nativeReference(guest, fifoWorkload);
    t.equal(fifoReference, `${endedAs(native)} ${native.output.trim()}`, 'FIFO: the traced reference is the native run (no tracer)');
    t.equal(fifoReference, 'exited 0 sharefd fifo-run ok: read 36 bytes: queued before the checkpoint + child', `FIFO uninterrupted: ${fifoReference}`);

    await t.test('kill and restore a FIFO parent and child hold: the same FIFO, both descriptions, its queued bytes; it ends as uninterrupted', async (t) => {
      const r = await runFifo('fifo-default', DEFAULT_POLICY);
      t.same(
        r.tree?.fifos?.map(
          (f) =>
            `${f.path}: ${f.queued.length} queued; ${f.descriptions.map((d) => `flags 0o${d.flags.toString(8)} fds ${d.ends.map((e) => e.fd).join(' ')}`).join('; ')}`,
        ),
        [`${fifoPath}: 28 queued; flags 0o0 fds 3 3; flags 0o1 fds 4 4`],
        'one FIFO: a read end (fd 3) and a write end (fd 4) of both, 28 bytes queued',
      );
      t.same(r.restored?.differences, [], 'read back: the FIFO behind fds 3 and 4 of both, one description each (kcmp)');
      t.equal(r.line, fifoReference, `restored: ${r.line}`);
      t.comment(`FIFO, 2 processes: ${r.timing}`);
      recordRowOutcome(t, {
        case: CASE,
        scenario: fifoScenario,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: fifoReference,
        observed: r.line,
        matchedUninterrupted: r.line === fifoReference && r.restored?.differences.length === 0,
      });
    });

    await t.test('negative control omit=pipe-contents: the FIFO restored without its queued bytes', async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['pipe-contents'] };
      const r = await runFifo('fifo-empty', policy);
      t.match(r.line, /sharefd fifo-run mismatch: child status 0x0, read 8 bytes: {2}\+ child$/, `caught: ${r.line}`);
      t.not(r.line, fifoReference, 'and it differs from the uninterrupted run');
      recordRowOutcome(t, {
        case: CASE,
        scenario: fifoScenario,
        policy: describePolicy(policy),
        control: true,
        expected: fifoReference,
        observed: r.line,
        matchedUninterrupted: r.line === fifoReference,
      });
    });
  }

  // A memfd mapped MAP_SHARED by parent and child (held as an fd by the parent only): one memfd, one mapping inherited.
  {
    const mapBinary = guest.image.guestPaths.sockpair!;
    const mapWorkload: Workload = {
      binary: mapBinary,
      argv: [mapBinary, 'memfd-map-run', 'tree-map'],
      breakAt: symbols.resolve('sockpair:sharefd_checkpoint'),
    };
    const mapScenario =
      'a memfd (2 pages) the parent maps MAP_SHARED and holds as fd 3, the child maps only; parent at a hardware breakpoint, then the child writes through its mapping';
    const runMap = (tag: string, policy?: RestorePolicy) => treeCycle(mapWorkload, tag, policy);
    const mapReference = (await runMap('memfd-map-reference')).line;
    const native = await nativeReference(guest, mapWorkload);
    t.equal(mapReference, `${endedAs(native)} ${native.output.trim()}`, 'memfd mapping: the traced reference is the native run (no tracer)');
    t.equal(
      mapReference,
      "exited 0 sharefd memfd-map-run ok: the child's write seen through the mapping and the descriptor",
      `memfd mapping uninterrupted: ${mapReference}`,
    );

    await t.test('kill and restore a memfd mapped shared by parent and child: one memfd, one mapping at one address; it ends as uninterrupted', async (t) => {
      const r = await runMap('memfd-map-default', DEFAULT_POLICY);
      const [parent] = r.tree?.members.map((m) => m.pid) ?? [];
      t.same(
        r.tree?.memfds?.map(
          (m) =>
            `${m.name}: fds ${m.ends.map((e) => `${e.pid === parent ? 'parent' : 'child'}:${e.fd}`).join(' ')}; maps ${(m.maps ?? []).map((x) => `${x.pid === parent ? 'parent' : 'child'}:${x.end - x.start}`).join(' ')}; one address ${new Set((m.maps ?? []).map((x) => x.start)).size === 1}`,
        ),
        ['tree-map: fds parent:3; maps parent:8192 child:8192; one address true'],
        'one memfd: fd 3 of the parent, mapped by both at one address',
      );
      t.same(r.restored?.differences, [], 'read back as planned');
      t.equal(r.line, mapReference, `restored: ${r.line}`);
      t.comment(`memfd mapped shared, 2 processes: ${r.timing}`);
      recordRowOutcome(t, {
        case: CASE,
        scenario: mapScenario,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: mapReference,
        observed: r.line,
        matchedUninterrupted: r.line === mapReference && r.restored?.differences.length === 0,
      });
    });

    await t.test('negative control omit=mapping-kinds: parent and child each restored with a memfd (and a mapping) of its own', async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['mapping-kinds'] };
      const r = await runMap('memfd-map-private', policy);
      t.match(r.line, /sharefd memfd-map-run mismatch: child status 0x0, the child's write not seen through the mapping/, `caught: ${r.line}`);
      t.not(r.line, mapReference, 'and it differs from the uninterrupted run');
      recordRowOutcome(t, {
        case: CASE,
        scenario: mapScenario,
        policy: describePolicy(policy),
        control: true,
        expected: mapReference,
        observed: r.line,
        matchedUninterrupted: r.line === mapReference,
      });
    });
  }

  // Zombies: two children that ended (exit 42, SIGUSR1) and that the parent has not waited for, and one alive on a pipe.
  {
    const zBinary = guest.image.guestPaths['vmflags-zombies']!;
    const zWorkload: Workload = { binary: zBinary, argv: [zBinary, 'zombies'], breakAt: symbols.resolve('vmflags-zombies:zombies_checkpoint') };
    const zScenario =
      'a parent with two zombie children (exit 42, SIGUSR1) and a live child on a pipe; parent at a hardware breakpoint, then it waits for all three';
    const runZombies = (tag: string, policy?: RestorePolicy) => treeCycle(zWorkload, tag, policy);
    const zReference = (await runZombies('zombies-reference')).line;
    const native = await nativeReference(guest, zWorkload);
    t.equal(zReference, `${endedAs(native)} ${native.output.trim()}`, 'zombies: the traced reference is the native run (no tracer)');
    t.equal(zReference, 'exited 0 zombies: first exited 42, second killed by signal 10, third exited 0, then ECHILD', `zombies uninterrupted: ${zReference}`);

    await t.test('kill and restore a tree holding zombies: each a zombie again, same pid, parent and wait status; it ends as uninterrupted', async (t) => {
      const r = await runZombies('zombies-default', DEFAULT_POLICY);
      const parent = r.tree?.members[0]?.pid;
      t.same(
        r.tree?.zombies?.map((z) => `${z.ppid === parent ? 'parent' : z.ppid}: wait status 0x${z.waitStatus.toString(16)}`),
        ['parent: wait status 0x2a00', 'parent: wait status 0xa'],
        'the image holds two zombies of the parent with their wait statuses',
      );
      t.same(r.restored?.differences, [], 'read back: each a zombie of its parent with its wait status');
      t.equal(r.line, zReference, `restored: ${r.line}`);
      t.comment(`zombies, 2 live processes: ${r.timing}`);
      recordRowOutcome(t, {
        case: CASE,
        scenario: zScenario,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: zReference,
        observed: r.line,
        matchedUninterrupted: r.line === zReference && r.restored?.differences.length === 0,
      });
    });

    await t.test('negative control omit=zombies: the zombies are not made again', async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['zombies'] };
      const r = await runZombies('zombies-omitted', policy);
      t.equal(r.line, 'exited 1 zombies: first missing, second missing, third exited 0, then ECHILD', `caught: ${r.line}`);
      t.not(r.line, zReference, 'and it differs from the uninterrupted run');
      recordRowOutcome(t, {
        case: CASE,
        scenario: zScenario,
        policy: describePolicy(policy),
        control: true,
        expected: zReference,
        observed: r.line,
        matchedUninterrupted: r.line === zReference,
      });
    });
  }
});
