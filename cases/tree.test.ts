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
import { DR7_EXECUTE_DR0 } from '../harness/agent/breakpoint-spawn.ts';
import { armDebugRegisters, disarm, readMemory } from '../harness/agent/guest-run.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { spawnArmed, type Workload } from '../harness/testing/scenario.ts';
import type { ProcessTree } from '../harness/restore/tree.ts';
import { hex } from '../harness/x86/registers.ts';
import {
  attachProcess,
  releaseProcess,
  rootAtBreakpoint,
  runToBreakpoint,
  treeScenario,
  type TreeAttempt,
  type TreeStop,
} from '../harness/scenarios/tree-scenario.ts';
import { runTable, type Row } from '../harness/scenarios/table.ts';

const CASE = 'tree';
const SCENARIO = 'parent, child (own group), grandchild (own session) sharing a MAP_SHARED page, a pipe with queued bytes; grandchild at a hardware breakpoint';

/** The three-process stop: the grandchild's pid, and its flags at its breakpoint hit. */
interface ProctreeStop extends TreeStop {
  grandchild: number;
  hitEflags?: bigint;
}

/** A two-process section: a workload stopped with its parent at a breakpoint, one row restoring it, one negative control. */
interface SharedObjectSection {
  name: string;
  label: string;
  workload: Workload;
  /** the uninterrupted run: exactly, or its shape */
  uninterrupted: string | RegExp;
  /**
   * the default row: its title; the shared object as the image holds it, in lines (`image`), what they must be
   * (`holds`, said by `says`); and what the kernel's read-back shows of it when it is as planned (`readBack`)
   */
  restores: { title: string; tag: string; image(tree: ProcessTree): string[] | undefined; holds: string[]; says: string; readBack: string };
  /** the control: its title, policy, and the line that shows its bug (exactly, or its shape) */
  control: { title: string; tag: string; policy: RestorePolicy; shows: string | RegExp };
}

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_CHECKPOINT_RESTORE']), async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent, symbols } = guest;

  /** Prepares a two-process section, asserts its uninterrupted run, and runs its two rows. */
  const sharedObjectTable = async (s: SharedObjectSection): Promise<void> => {
    const scenario = await treeScenario(t, guest, {
      name: s.name,
      label: s.label,
      workload: s.workload,
      stop: (out) => rootAtBreakpoint(guest, s.workload, out),
    });
    const says = `${s.label} uninterrupted: ${scenario.reference}`;
    if (typeof s.uninterrupted === 'string') t.equal(scenario.reference, s.uninterrupted, says);
    else t.match(scenario.reference, s.uninterrupted, says);
    await runTable(t, CASE, scenario, [
      {
        title: s.restores.title,
        tag: s.restores.tag,
        policy: DEFAULT_POLICY,
        expect: 'resumes',
        check: (t, a) => {
          t.same(s.restores.image(a.tree), s.restores.holds, s.restores.says);
          t.same(a.restored.differences, [], s.restores.readBack);
        },
      },
      {
        title: s.control.title,
        tag: s.control.tag,
        policy: s.control.policy,
        expect: 'differs',
        check: (t, a) =>
          void (typeof s.control.shows === 'string'
            ? t.equal(a.line, s.control.shows, `caught: ${a.line}`)
            : t.match(a.line, s.control.shows, `caught: ${a.line}`)),
      },
    ]);
  };

  // Provoke: the parent runs to proctree_ready (the grandchild exists, spinning until `go`); the grandchild is attached
  // and armed at its breakpoint; the parent sets `go` and stops at proctree_parent_waits; the grandchild runs to its
  // breakpoint. The child, untraced, sits in its waitpid.
  {
    const binary = guest.image.guestPaths.proctree!;
    const sym = (name: string): bigint => symbols.resolve(`proctree:${name}`);
    const workload: Workload = { binary, argv: [binary], breakAt: sym('proctree_ready') };
    const stopTree = async (out: string): Promise<ProctreeStop> => {
      const pid = await spawnArmed(guest, workload, out);
      await runToBreakpoint(guest, pid, 'proctree never reached proctree_ready', out);
      const page = (await readMemory(agent, pid, sym('proctree_shared'), 8)).readBigUInt64LE(0);
      const grandchild = (await readMemory(agent, pid, page + 4n, 4)).readInt32LE(0);
      await attachProcess(agent, grandchild);
      await armDebugRegisters(agent, grandchild, { 0: sym('proctree_grandchild_checkpoint'), 7: DR7_EXECUTE_DR0 });
      await armDebugRegisters(agent, pid, { 0: sym('proctree_parent_waits') });
      await runToBreakpoint(guest, pid, 'proctree never reached proctree_parent_waits');
      const hit = await runToBreakpoint(guest, grandchild, 'the grandchild never reached its breakpoint');
      // The breakpoint only chose where to stop. Left armed, the oracle's gdbstub breakpoint on the same address makes
      // QEMU (TCG, 7.2) raise the guest's #DB although RF is set: the released grandchild dies of SIGTRAP and gdb
      // reports no stop (measured: the same restore passes without the oracle, and with the guest's DR7 cleared).
      await disarm(agent, grandchild);
      return { pid, out, grandchild, hitEflags: hit.hits[0]?.eflags, release: () => releaseProcess(agent, grandchild) };
    };
    const scenario = await treeScenario(t, guest, {
      name: SCENARIO,
      label: 'proctree',
      workload,
      stop: stopTree,
      // Oracle: the CPU runs the grandchild's breakpoint address with the grandchild's own stack pointer.
      watch: { firstExecutionAt: sym('proctree_grandchild_checkpoint') },
      oracleMatches: (observation, tree) => observation.first?.get('rsp') === tree.members[2]!.image.regs.rsp,
    });
    const reference = scenario.reference;
    t.match(reference, /^exited 0 proctree ok: counter \d+, child 0x0, grandchild 0x0, child exit 9, pipe 3100 bytes$/, `uninterrupted: ${reference}`);

    // Checkpoint: expect three processes in a line of descent, their groups and sessions, one pipe with 3000 bytes queued.
    const threeProcesses = (t: Test, a: TreeAttempt<ProctreeStop>): void => {
      const [root, child, grandchild] = a.checkpointed.members;
      t.same(
        a.checkpointed.members.map((m) => m.ppid).slice(1),
        [root!.pid, child!.pid],
        `three processes, each the previous one's child: ${a.checkpointed.members.map((m) => m.pid).join(' ')}`,
      );
      t.equal(grandchild!.pid, a.stop.grandchild);
      t.equal(child!.pgid, child!.pid, 'the child leads its process group');
      t.same([grandchild!.sid, grandchild!.pgid], [grandchild!.pid, grandchild!.pid], 'the grandchild leads its session');
      const who = (pid: number): string => (pid === root!.pid ? 'parent' : pid === grandchild!.pid ? 'grandchild' : 'child');
      const pipes = (a.checkpointed.pipes ?? []).map(
        (p) => `${p.ends.map((e) => `${who(e.pid)} fd ${e.fd} ${e.write ? 'w' : 'r'}`).join(', ')}: ${p.queued.length} queued`,
      );
      t.same(pipes, ['parent fd 3 r, grandchild fd 4 w: 3000 queued'], `one pipe, the grandchild's bytes queued in it: ${pipes.join('; ')}`);
      t.equal(
        grandchild!.image.regs.rip,
        sym('proctree_grandchild_checkpoint'),
        `the grandchild checkpointed at its breakpoint (eflags at the hit ${a.stop.hitEflags === undefined ? '?' : hex(a.stop.hitEflags)})`,
      );
    };
    // Restore and oracle: expect the same pids, links, groups and sessions, the page mapped once, the pipe's bytes, the reference's line.
    const controlCaught = (shows: RegExp) => (t: Test, a: TreeAttempt<ProctreeStop>) => {
      threeProcesses(t, a);
      t.match(a.line, shows, `caught: ${a.line}`);
    };
    const rows: Row<TreeAttempt<ProctreeStop>>[] = [
      {
        title: 'kill and restore the tree: same pids, parent links, groups, sessions, one shared page, the pipe and its bytes; it ends as uninterrupted',
        policy: DEFAULT_POLICY,
        tag: 'default',
        expect: 'resumes',
        check: (t, a) => {
          threeProcesses(t, a);
          t.same(a.restored.differences, [], 'read back: every process as its plan set it; pids, parents, groups and sessions as in the image');
          const mmaps = a.restored.skeleton.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9).length;
          t.equal(mmaps, 1, 'the shared page mapped once, in the parent, before its child was cloned');
          const rsp = a.checkpointed.members[2]!.image.regs.rsp;
          t.equal(
            a.observation?.first?.get('rsp'),
            rsp,
            `oracle: the CPU ran the grandchild's breakpoint address with the grandchild's stack pointer ${hex(rsp)}`,
          );
        },
      },
      {
        // expect: the counter diverges.
        title: 'negative control omit=mapping-kinds: each process restored with a private copy of the shared page',
        policy: { ...DEFAULT_POLICY, omit: ['mapping-kinds'] },
        tag: 'control-0',
        expect: 'differs',
        check: controlCaught(/proctree mismatch: counter \d+ \(not the one page all three share\)/),
      },
      {
        // expect: the parent reads 100 bytes, not 3100.
        title: 'negative control omit=pipe-contents: the pipe restored without its queued bytes',
        policy: { ...DEFAULT_POLICY, omit: ['pipe-contents'] },
        tag: 'control-1',
        expect: 'differs',
        check: controlCaught(/proctree mismatch: .*, pipe 100 bytes \(not the bytes written\)$/),
      },
    ];
    await runTable(t, CASE, scenario, rows);
    // expect: the child cannot wait for a grandchild that is no longer its own; whether it has reported when the parent prints is a race.
    const reparented = scenario.doctored((tree) => ({ members: tree.members.map((m, i) => (i === 2 ? { ...m, ppid: tree.members[0]!.pid } : m)) }));
    await runTable(t, CASE, reparented, [
      {
        title: "negative control wrong parent links: the grandchild restored as the parent's child",
        policy: DEFAULT_POLICY,
        policyName: `${describePolicy(DEFAULT_POLICY)} (grandchild re-parented to the root)`,
        tag: 'control-2',
        expect: 'differs',
        check: controlCaught(/proctree mismatch: .*, child 0x2, grandchild 0x[0-9a-f]+, child exit 9, /),
      },
    ]);
  }

  // The two-process sections: the parent stopped at a hardware breakpoint, the child wherever it is.
  const sockpair = guest.image.guestPaths.sockpair!;
  const sharefdAt = symbols.resolve('sockpair:sharefd_checkpoint');
  const fds = (ends: ReadonlyArray<{ fd: number }>): string => ends.map((e) => e.fd).join(' ');
  const omit = (what: NonNullable<RestorePolicy['omit']>[number]): RestorePolicy => ({ ...DEFAULT_POLICY, omit: [what] });

  const offsetFile = '/tmp/tree-shared-offset';
  const fifoPath = '/tmp/tree-fifo';
  const zombies = guest.image.guestPaths['vmflags-zombies']!;
  // A parent and child joined by a unix socketpair, data queued both ways: the pair restored as one, its queues sent again.
  const sections: SharedObjectSection[] = [
    ...(['stream', 'dgram'] as const).map((type): SharedObjectSection => ({
      name: `parent and child joined by a unix ${type === 'stream' ? 'SOCK_STREAM' : 'SOCK_DGRAM'} socketpair, data queued both ways; parent at a hardware breakpoint`,
      label: type,
      workload: { binary: sockpair, argv: [sockpair, type], breakAt: symbols.resolve('sockpair:sockpair_checkpoint') },
      uninterrupted: new RegExp(`^exited 0 sockpair ${type} ok: up \\d+ messages 1044 bytes, down 3 messages, child exit 0$`),
      restores: {
        // expect: one pair in the image, 1044 bytes queued up and 114 down; read back as one pair.
        title: `kill and restore a ${type} socketpair between parent and child: one pair, both queues; it ends as uninterrupted`,
        tag: `${type}-default`,
        image: (tree) => tree.socketpairs?.map((p) => `${p.queued.map((q) => q.reduce((n, b) => n + b.length, 0)).join(' up, ')} down`),
        holds: ['1044 up, 114 down'],
        says: 'one socketpair: 1044 bytes queued for the parent, 114 for the child',
        readBack: 'read back: one socketpair between the two, as planned',
      },
      // expect: the parent finds nothing queued and the child exits 3.
      control: {
        title: `negative control omit=pipe-contents: the ${type} socketpair restored without its queued data`,
        tag: `${type}-empty`,
        policy: omit('pipe-contents'),
        shows: new RegExp(`sockpair ${type} mismatch: up 0 bytes queued, not 1044, child status 0x300`),
      },
    })),

    // A parent and child holding one memfd as a descriptor: restored as one memfd, the child's write is read by the parent.
    {
      name: 'parent and child holding one memfd as fd 3 (written, 6000 bytes, sealed against shrinking, offset 22); parent at a hardware breakpoint',
      label: 'memfd',
      workload: { binary: sockpair, argv: [sockpair, 'memfd-run', 'tree-memfd'], breakAt: sharefdAt },
      uninterrupted: "exited 0 sharefd memfd-run ok: the child's write seen, seals 0x2, offset 22, size 6000",
      restores: {
        // expect: one memfd in the image (name, contents, seals, offset) behind fd 3 of both; read back as one.
        title: 'kill and restore a memfd held by parent and child: one memfd, its contents, seals and offset; it ends as uninterrupted',
        tag: 'memfd-default',
        image: (tree) => tree.memfds?.map((m) => `${m.name} ${m.contents.length} bytes, seals 0x${m.seals.toString(16)}, offset ${m.pos}, fds ${fds(m.ends)}`),
        holds: ['tree-memfd 6000 bytes, seals 0x2, offset 22, fds 3 3'],
        says: 'one memfd, fd 3 of both',
        readBack: 'read back: one memfd behind both descriptors, as planned',
      },
      // expect: the parent does not see the child's write.
      control: {
        title: 'negative control omit=mapping-kinds: parent and child each restored with a memfd of its own',
        tag: 'memfd-private',
        policy: omit('mapping-kinds'),
        shows: /sharefd memfd-run mismatch: the child's write not seen, child status 0x0, /,
      },
    },

    // A parent and child sharing one open file description: restored as one description, a write by one moves the other's offset.
    {
      name: 'parent and child sharing one open file description (a file opened read-write before the fork, offset 2); parent at a hardware breakpoint, then the child reads and writes through it and the parent writes after',
      label: 'shared description',
      workload: { binary: sockpair, argv: [sockpair, 'offset-run', offsetFile], breakAt: sharefdAt },
      uninterrupted: 'exited 0 sharefd offset-run ok: the child read 234, one offset, 16 after both writes: 01234childparent',
      restores: {
        // expect: one description in the image (read-write, offset 2) behind fd 3 of both; read back as one (kcmp).
        title: 'kill and restore an open file description parent and child share: one description, one offset; it ends as uninterrupted',
        tag: 'offset-default',
        image: (tree) => tree.sharedFiles?.map((f) => `${f.path} flags 0o${f.flags.toString(8)}, offset ${f.pos}, ${f.size} bytes, fds ${fds(f.ends)}`),
        holds: [`${offsetFile} flags 0o100002, offset 2, 10 bytes, fds 3 3`],
        says: 'one shared description: read-write, offset 2, fd 3 of both',
        readBack: 'read back: one description (kcmp) behind both descriptors, at offset 2',
      },
      // expect: two offsets: the parent writes over the child's bytes.
      control: {
        title: 'negative control omit=shared-descriptions: parent and child each restored with a description of its own',
        tag: 'offset-private',
        policy: omit('shared-descriptions'),
        shows: /sharefd offset-run mismatch: child status 0x0, offset 8 after both writes: 01parentld$/,
      },
    },

    // A parent and child holding a FIFO with bytes queued: restored as the same FIFO, its queued bytes put back.
    {
      name: 'parent and child holding a FIFO (a read end and a write end opened by path, each one description of both) with 28 bytes queued; parent at a hardware breakpoint, then the child writes 8 more',
      label: 'FIFO',
      workload: { binary: sockpair, argv: [sockpair, 'fifo-run', fifoPath], breakAt: sharefdAt },
      uninterrupted: 'exited 0 sharefd fifo-run ok: read 36 bytes: queued before the checkpoint + child',
      restores: {
        // expect: one FIFO in the image, a read end (fd 3) and a write end (fd 4) of both, 28 bytes queued; read back as such.
        title: 'kill and restore a FIFO parent and child hold: the same FIFO, both descriptions, its queued bytes; it ends as uninterrupted',
        tag: 'fifo-default',
        image: (tree) =>
          tree.fifos?.map(
            (f) => `${f.path}: ${f.queued.length} queued; ${f.descriptions.map((d) => `flags 0o${d.flags.toString(8)} fds ${fds(d.ends)}`).join('; ')}`,
          ),
        holds: [`${fifoPath}: 28 queued; flags 0o0 fds 3 3; flags 0o1 fds 4 4`],
        says: 'one FIFO: a read end (fd 3) and a write end (fd 4) of both, 28 bytes queued',
        readBack: 'read back: the FIFO behind fds 3 and 4 of both, one description each (kcmp)',
      },
      // expect: the parent reads the child's 8 bytes only.
      control: {
        title: 'negative control omit=pipe-contents: the FIFO restored without its queued bytes',
        tag: 'fifo-empty',
        policy: omit('pipe-contents'),
        shows: /sharefd fifo-run mismatch: child status 0x0, read 8 bytes: {2}\+ child$/,
      },
    },

    // A memfd mapped MAP_SHARED by parent and child (held as an fd by the parent only): one memfd, one mapping inherited.
    {
      name: 'a memfd (2 pages) the parent maps MAP_SHARED and holds as fd 3, the child maps only; parent at a hardware breakpoint, then the child writes through its mapping',
      label: 'memfd mapping',
      workload: { binary: sockpair, argv: [sockpair, 'memfd-map-run', 'tree-map'], breakAt: sharefdAt },
      uninterrupted: "exited 0 sharefd memfd-map-run ok: the child's write seen through the mapping and the descriptor",
      restores: {
        // expect: one memfd in the image, fd 3 of the parent, mapped by both at one address; read back as planned.
        title: 'kill and restore a memfd mapped shared by parent and child: one memfd, one mapping at one address; it ends as uninterrupted',
        tag: 'memfd-map-default',
        image: (tree) => {
          const who = (pid: number): string => (pid === tree.members[0]?.pid ? 'parent' : 'child');
          return tree.memfds?.map((m) => {
            const maps = m.maps ?? [];
            return `${m.name}: fds ${m.ends.map((e) => `${who(e.pid)}:${e.fd}`).join(' ')}; maps ${maps.map((x) => `${who(x.pid)}:${x.end - x.start}`).join(' ')}; one address ${new Set(maps.map((x) => x.start)).size === 1}`;
          });
        },
        holds: ['tree-map: fds parent:3; maps parent:8192 child:8192; one address true'],
        says: 'one memfd: fd 3 of the parent, mapped by both at one address',
        readBack: 'read back as planned',
      },
      // expect: the parent does not see the child's write through its mapping.
      control: {
        title: 'negative control omit=mapping-kinds: parent and child each restored with a memfd (and a mapping) of its own',
        tag: 'memfd-map-private',
        policy: omit('mapping-kinds'),
        shows: /sharefd memfd-map-run mismatch: child status 0x0, the child's write not seen through the mapping/,
      },
    },

    // Zombies: two children that ended (exit 42, SIGUSR1) and that the parent has not waited for, and one alive on a pipe.
    {
      name: 'a parent with two zombie children (exit 42, SIGUSR1) and a live child on a pipe; parent at a hardware breakpoint, then it waits for all three',
      label: 'zombies',
      workload: { binary: zombies, argv: [zombies, 'zombies'], breakAt: symbols.resolve('vmflags-zombies:zombies_checkpoint') },
      uninterrupted: 'exited 0 zombies: first exited 42, second killed by signal 10, third exited 0, then ECHILD',
      restores: {
        // expect: two zombies of the parent in the image with their wait statuses; read back as zombies again.
        title: 'kill and restore a tree holding zombies: each a zombie again, same pid, parent and wait status; it ends as uninterrupted',
        tag: 'zombies-default',
        image: (tree) => tree.zombies?.map((z) => `${z.ppid === tree.members[0]?.pid ? 'parent' : z.ppid}: wait status 0x${z.waitStatus.toString(16)}`),
        holds: ['parent: wait status 0x2a00', 'parent: wait status 0xa'],
        says: 'the image holds two zombies of the parent with their wait statuses',
        readBack: 'read back: each a zombie of its parent with its wait status',
      },
      // expect: not made again, the parent's waitpid finds neither (ECHILD).
      control: {
        title: 'negative control omit=zombies: the zombies are not made again',
        tag: 'zombies-omitted',
        policy: omit('zombies'),
        shows: 'exited 1 zombies: first missing, second missing, third exited 0, then ECHILD',
      },
    },
  ];
  for (const section of sections) await sharedObjectTable(section);
});
