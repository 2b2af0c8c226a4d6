// expect: a process tree plans to stubs created parent-first (the root spawned, each child by clone3 in its parent with
// set_tid = its pid and its exit signal, the injected text put back in the child), setsid in a session leader before its
// children exist, group leaders before members, a shared anonymous object mapped once in the ancestor that holds it before
// its children are cloned (and unmapped in a descendant that did not hold it); trees the kernel's rules cannot rebuild
// (a group or session whose leader is gone, a reparented orphan, shared memory at different ranges or held by no common
// ancestor) are refused by name; a tree image (format 10) round-trips through its tar with nested per-process images,
// a version 9 image reads as a one-process tree, and the root alone of a tree image is refused. A pipe is created once in
// the holder that is an ancestor of the others, parked above every descriptor, with its queued bytes written back, and
// each process dup3s its own ends into place and closes the parked ones; hostile pipe fields are refused naming them.
// A unix socketpair likewise, its queued data sent again from each socket's peer (a datagram at a time, MSG_DONTWAIT);
// its tree.json field is written only when there are socketpairs, hostile fields refused naming them; the sock_diag
// request names the inode and the answer's peer, name and shutdown are read.
import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PlanError } from '../harness/restore/plan-step.ts';
import { imageEntries, parseImageEntries, readCheckpointImage, writeCheckpointImage, type CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { compileRestorePlan } from '../harness/restore/plan.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { CLONE_ARGS_BYTES, cloneArgs, skeletonSteps } from '../harness/restore/tree-restore.ts';
import { nestedEntryName, parseTreeEntries, readTreeImage, treeEntries, writeTreeImage } from '../harness/restore/tree-image.ts';
import { descendantsOf, parseProcStat, type ProcStat } from '../harness/restore/tree-checkpoint.ts';
import { pipeCreator, withPipes, type TreePipe } from '../harness/restore/tree-pipes.ts';
import { parkingBase } from '../harness/restore/tree-shared-objects.ts';
import { dryRunTreePlan } from '../harness/restore/tree-dry-run.ts';
import { parseUnixDiag, socketpairCreator, unixDiagRequest, withSocketpairs } from '../harness/restore/tree-sockets.ts';
import {
  creationOrder,
  planTreeSkeleton,
  sharedAnonymousObjects,
  SIGCHLD,
  type ProcessTree,
  type TreeMember,
  type TreeSocketPair,
} from '../harness/restore/tree.ts';
import { reseal, SYNTHETIC_MAPS, syntheticImage, syntheticRegs } from './support/synthetic-image.ts';
import { rejects } from './support/rejects.ts';

const member = (pid: number, ppid: number, pgid: number, sid: number, exitSignal = SIGCHLD): TreeMember => ({ pid, ppid, pgid, sid, exitSignal });
const kinds = (actions: ReturnType<typeof planTreeSkeleton>): string[] =>
  actions.map((a) =>
    a.kind === 'clone'
      ? `clone ${a.pid} in ${a.parent}`
      : a.kind === 'setpgid'
        ? `setpgid ${a.pid} ${a.pgid}`
        : a.kind === 'spawn-root'
          ? `spawn ${a.pid}`
          : `${a.kind} ${a.pid}`,
  );

t.test("a root in the agent's session, a child and a grandchild in it: stubs parent-first, nothing else", async (t) => {
  t.same(kinds(planTreeSkeleton([member(100, 1, 7, 7), member(101, 100, 7, 7), member(102, 101, 7, 7)])), [
    'spawn 100',
    'clone 101 in 100',
    'clone 102 in 101',
  ]);
});

t.test('sessions before children, group leaders before members', async (t) => {
  // 100 leads its session; 101 leads a group of its own, 102 (its child) and 103 (100's child) join it.
  const tree = [member(100, 1, 100, 100), member(101, 100, 101, 100), member(102, 101, 101, 100), member(103, 100, 101, 100)];
  t.same(kinds(planTreeSkeleton(tree)), [
    'spawn 100',
    'setsid 100',
    'clone 101 in 100',
    'clone 102 in 101',
    'clone 103 in 100',
    'setpgid 101 101',
    'setpgid 102 101',
    'setpgid 103 101',
  ]);
  // A daemon child: setsid in it, before its own child is created (which inherits the new session).
  const daemon = [member(100, 1, 7, 7), member(101, 100, 101, 101), member(102, 101, 101, 101)];
  t.same(kinds(planTreeSkeleton(daemon)), ['spawn 100', 'clone 101 in 100', 'setsid 101', 'clone 102 in 101']);
  // The root leading only a group: its child, created before the group exists, joins it afterwards.
  t.same(kinds(planTreeSkeleton([member(100, 1, 100, 7), member(101, 100, 100, 7)])), ['spawn 100', 'clone 101 in 100', 'setpgid 100 100', 'setpgid 101 100']);
  // Checkpointed in a container: /proc shows the runner's session and group, led outside the pid namespace, as 0.
  t.same(kinds(planTreeSkeleton([member(100, 1, 0, 0), member(101, 100, 0, 0), member(102, 101, 102, 102)])), [
    'spawn 100',
    'clone 101 in 100',
    'clone 102 in 101',
    'setsid 102',
  ]);
  t.same(kinds(planTreeSkeleton([member(100, 1, 100, 0), member(101, 100, 100, 0)])), ['spawn 100', 'clone 101 in 100', 'setpgid 100 100', 'setpgid 101 100']);
});

t.test("a tree the kernel's rules cannot rebuild is refused by name", async (t) => {
  const refused = (members: TreeMember[], pattern: RegExp, what: string): void => {
    t.throws(() => planTreeSkeleton(members), { name: 'PlanError', message: pattern }, what);
  };
  refused([member(100, 1, 7, 7), member(101, 100, 555, 7)], /pid 101 is in process group 555, led by no process of the tree/, 'a group whose leader is gone');
  refused([member(100, 1, 7, 7), member(101, 100, 101, 555)], /pid 101 is in session 555, led by no process/, 'a session whose leader is gone');
  refused([member(100, 1, 7, 7), member(101, 1, 7, 7)], /parent 1 is not in the tree \(a process reparented to the agent/, 'a reparented orphan');
  refused([member(100, 1, 7, 7), member(101, 100, 7, 7), member(101, 100, 7, 7)], /pid 101 appears twice/, 'a pid twice');
  refused([member(100, 1, 7, 7), member(102, 101, 7, 7), member(101, 100, 7, 7)], /parent 101 is listed after it/, 'a child before its parent');
  refused([member(100, 1, 100, 100), member(101, 100, 100, 101)], /pid 101 leads session 101 but is in group 100/, 'a session leader in another group');
  // A child in the root's session when the root leads its own later? 101 was created in 100's session: it cannot be in 7.
  refused([member(100, 1, 100, 100), member(101, 100, 7, 7)], /pid 101 is in session 7, led by no process/, 'a child left in the session its parent left');
  refused(
    [member(100, 1, 100, 100), member(101, 100, 0, 0)],
    /pid 101 is in session 0, led by no process/,
    'outside the pid namespace (0) only where the root is',
  );
  refused([member(100, 1, -1, 7)], /members\[0\]\.pgid: -1 is not a pid/, 'a negative group');
});

t.test('creation order: each process after its parent, children by pid, depth first', async (t) => {
  const order = creationOrder(member(100, 1, 7, 7), [member(104, 100, 7, 7), member(102, 101, 7, 7), member(101, 100, 7, 7)]);
  t.same(
    order.map((m) => m.pid),
    [100, 101, 102, 104],
  );
  const stats: ProcStat[] = [
    { pid: 100, state: 't', ppid: 1, pgid: 7, sid: 7, exitSignal: 17 },
    { pid: 101, state: 'S', ppid: 100, pgid: 7, sid: 7, exitSignal: 17 },
    { pid: 102, state: 'S', ppid: 101, pgid: 7, sid: 7, exitSignal: 17 },
    { pid: 300, state: 'S', ppid: 1, pgid: 300, sid: 300, exitSignal: 17 },
  ];
  t.same(
    descendantsOf(100, new Map(stats.map((s) => [s.pid, s]))).map((s) => s.pid),
    [101, 102],
    'descendants from /proc, not the unrelated 300',
  );
  const stat = '102 (tree (x) y) S 101 7 7 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 3000 1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0';
  t.same(parseProcStat(102, stat), { pid: 102, state: 'S', ppid: 101, pgid: 7, sid: 7, exitSignal: 17 }, 'a name with parentheses and spaces');
});

/** A tree whose three processes map one shared anonymous page at 0x7ffff7ff0000 (shmem inode 4242). */
function sharedTree(holders: number[], at: (pid: number) => bigint = () => 0x7ffff7ff0000n): ProcessTree {
  const image = (pid: number, ppid: number): CheckpointImage => {
    const base = syntheticImage();
    const shared = holders.includes(pid);
    const start = at(pid);
    const line = `${start.toString(16)}-${(start + 0x1000n).toString(16)} rw-s 00000000 00:01 4242 /dev/zero (deleted)`;
    const lines = SYNTHETIC_MAPS.split('\n');
    const maps = shared ? [...lines.slice(0, 4), line, ...lines.slice(4)].join('\n') : SYNTHETIC_MAPS;
    const region = {
      start,
      end: start + 0x1000n,
      perms: 'rw-s',
      name: '/dev/zero (deleted)',
      file: null,
      offset: 0n,
      entry: 'memory/0009.bin',
      stored: [[start, start + 0x1000n]] as Array<[bigint, bigint]>,
    };
    const regions = shared ? [...base.regions.slice(0, 3), region, ...base.regions.slice(3)] : base.regions;
    const memory = new Map(base.memory);
    if (shared) memory.set('memory/0009.bin', Buffer.alloc(0x1000, 0x5a));
    return {
      ...base,
      process: { ...base.process, pid },
      task: { ...base.task, pgid: 100, sid: 100 },
      maps,
      regions,
      memory,
      debugRegs: { ...base.debugRegs, dr7: 0n },
      ...(ppid ? {} : {}),
    };
  };
  return { members: [member(100, 1, 100, 100), member(101, 100, 100, 100), member(102, 101, 100, 100)].map((m) => ({ ...m, image: image(m.pid, m.ppid) })) };
}

t.test('shared anonymous memory: one object, created in the ancestor that holds it, before its children are cloned', async (t) => {
  const tree = sharedTree([100, 101, 102]);
  const shared = sharedAnonymousObjects(tree);
  t.same(
    shared.map((o) => [o.inode, o.creator, o.holders]),
    [[4242, 100, [100, 101, 102]]],
  );
  t.same(kinds(planTreeSkeleton(tree.members, shared)), ['spawn 100', 'setsid 100', 'map-shared 100', 'clone 101 in 100', 'clone 102 in 101']);
  // Held by the child and grandchild only: the child creates it; the root never sees it.
  const lower = sharedTree([101, 102]);
  t.same(kinds(planTreeSkeleton(lower.members, sharedAnonymousObjects(lower))), [
    'spawn 100',
    'setsid 100',
    'clone 101 in 100',
    'map-shared 101',
    'clone 102 in 101',
  ]);
  // Held by root and grandchild, not the child in between: the child unmaps what it inherited.
  const skip = sharedTree([100, 102]);
  t.same(kinds(planTreeSkeleton(skip.members, sharedAnonymousObjects(skip))), [
    'spawn 100',
    'setsid 100',
    'map-shared 100',
    'clone 101 in 100',
    'clone 102 in 101',
    'unmap-inherited 101',
  ]);
  t.throws(() => sharedAnonymousObjects(sharedTree([100, 101], (pid) => (pid === 100 ? 0x7ffff7ff0000n : 0x7ffff7fe0000n))), {
    name: 'PlanError',
    message: /shmem inode 4242\) is mapped at different ranges/,
  });

  // The plan of a process holding an inherited object maps nothing there again; without the tree facts it is refused as an occupant.
  const child = tree.members[1]!.image;
  const maps = [
    ...parseMaps(
      SYNTHETIC_MAPS.split('\n')
        .filter((l) => !l.includes('[heap]'))
        .join('\n'),
    ),
    ...parseMaps('7ffff7ff0000-7ffff7ff1000 rw-s 00000000 00:01 9 /dev/zero (deleted)'),
  ];
  const probe = { pid: 101, regs: syntheticRegs({ eflags: 0x202n }), maps };
  const plan = compileRestorePlan(child, { ...probe, tree: { inheritedShared: [maps.at(-1)!] } }, { rf: 'keep-and-preserve' });
  t.notOk(
    plan.some((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9 && s.op.args[0] === 0x7ffff7ff0000n),
    'no second mmap of the shared object',
  );
  t.ok(
    plan.some((s) => s.op.op === 'WRITE_MEM' && s.op.address === 0x7ffff7ff0000n),
    'its contents written',
  );
  t.notOk(
    plan.some((s) => s.op.op === 'INJECT_SYSCALL' && (s.op.nr === 112 || s.op.nr === 109)),
    'no setsid/setpgid: the tree formed them',
  );
  t.throws(() => compileRestorePlan(child, probe, { rf: 'keep-and-preserve' }), PlanError, 'without the tree facts the inherited mapping is an occupant');
});

t.test("skeleton steps: clone3 with set_tid in the parent, fork tracing on around it, the child's patched text put back", async (t) => {
  const stub = { scratch: 0x7fffffffd000n, rip: 0x401000n, word: Buffer.from('0123456789abcdef', 'hex') };
  const steps = skeletonSteps(planTreeSkeleton([member(100, 1, 7, 7), member(101, 100, 101, 101, 0)]), stub);
  t.same(
    steps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? `${s.op.op} ${s.op.pid} ${s.op.nr}` : `${s.op.op} ${'pid' in s.op ? s.op.pid : ''}`)),
    ['TRACE_FORKS 100', 'WRITE_MEM 100', 'INJECT_SYSCALL 100 435', 'WRITE_MEM 101', 'TRACE_FORKS 100', 'TRACE_FORKS 101', 'INJECT_SYSCALL 101 112'],
  );
  const args = cloneArgs(101, 0, stub.scratch);
  t.equal(args.readBigUInt64LE(0), 0n, 'no clone flags: a fork, its own memory');
  t.equal(args.readBigUInt64LE(32), 0n, 'the exit signal the child had (0 here)');
  t.equal(args.readBigUInt64LE(64), stub.scratch + BigInt(CLONE_ARGS_BYTES), 'set_tid right after the struct');
  t.equal(args.readInt32LE(CLONE_ARGS_BYTES), 101);
  t.equal(steps[2]!.expect, 101n, 'clone3 must return the pid');
  t.same((steps[3]!.op as unknown as { data: Buffer }).data, stub.word);
  t.equal(steps[6]!.expect, 101n, 'setsid returns the new session: the pid');
});

t.test('format 10: a tree round-trips with nested images; version 9 is a one-process tree; the root alone is refused', async (t) => {
  const tree = sharedTree([100, 101, 102]);
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-tree-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'tree.tar');
  await writeTreeImage(tree, file);
  const back = await readTreeImage(file);
  t.same(
    back.members.map(({ pid, ppid, pgid, sid, exitSignal }) => ({ pid, ppid, pgid, sid, exitSignal })),
    tree.members.map(({ pid, ppid, pgid, sid, exitSignal }) => ({ pid, ppid, pgid, sid, exitSignal })),
  );
  t.same(
    back.members.map((m) => m.image.process.pid),
    [100, 101, 102],
    'each process its own image',
  );
  t.ok(back.members[2]!.image.memory.get('memory/0009.bin')!.equals(Buffer.alloc(0x1000, 0x5a)), "a nested image's memory");
  await t.rejects(
    readCheckpointImage(file),
    { name: 'ImageRejectedError', message: /holds a process tree \(3 processes\): restore it as a tree/ },
    'the root alone is refused',
  );

  const single = path.join(dir, 'single.tar');
  await writeCheckpointImage(syntheticImage(), single);
  t.same(
    (await readTreeImage(single)).members.map((m) => m.pid),
    [42],
    'an image without tree.json is a one-process tree',
  );
  const v9 = reseal(imageEntries(syntheticImage()), {}, (m) => (m.version = 9));
  t.equal(parseImageEntries(v9).process.pid, 42, 'version 9 is still read');

  const entries = imageEntries(tree.members[0]!.image, await treeEntries(tree));
  const treeJson = JSON.parse(entries.get('tree.json')!.toString()) as { members: Array<Record<string, unknown>> };
  const withTree = (edit: (m: Array<Record<string, unknown>>) => void): Map<string, Buffer> => {
    const copy = structuredClone(treeJson);
    edit(copy.members);
    return reseal(entries, { 'tree.json': Buffer.from(JSON.stringify(copy)) });
  };
  const treeRejects = async (e: Map<string, Buffer>, field: RegExp | string, what: string): Promise<void> => {
    await t.rejects(parseTreeEntries(e), { name: 'ImageRejectedError', field: field instanceof RegExp ? undefined : field }, what);
  };
  await treeRejects(
    withTree((m) => (m[1]!.ppid = 555)),
    'members[1].ppid',
    'a parent outside the tree',
  );
  await treeRejects(
    withTree((m) => (m[2]!.pgid = -1)),
    'members[2].pgid',
    'a pgid that is no pid',
  );
  await treeRejects(
    withTree((m) => (m[1]!.entry = '../x.bin')),
    'members[1].entry',
    'an entry name other than tree/PID.bin',
  );
  await treeRejects(
    withTree((m) => (m[1]!.extra = 1)),
    'members[1].extra',
    'an unknown field',
  );
  await treeRejects(
    withTree((m) => void m.splice(2, 1)),
    '(entry)',
    'a nested image tree.json does not list',
  );
  await treeRejects(
    withTree((m) => (m[1]!.sid = 101)),
    'members[1]',
    'tree.json and the nested task.json disagree',
  );
  const corrupt = new Map(entries);
  corrupt.set(nestedEntryName(101), Buffer.from('not a tar'));
  rejects(t, () => parseImageEntries(corrupt, { tree: true }), nestedEntryName(101), 'size');
  await t.rejects(
    parseTreeEntries(reseal(entries, { [nestedEntryName(101)]: Buffer.from('not a tar') })),
    { name: 'ImageRejectedError' },
    'a nested entry that is no tar, digests recomputed',
  );
  t.throws(
    () =>
      parseImageEntries(
        reseal(entries, {}, (m) => (m.version = 9)),
        { tree: true },
      ),
    { name: 'ImageRejectedError', message: /a version 9 image holds no process tree/ },
  );
});

const pipe = (ends: TreePipe['ends'], queued = Buffer.from('queued bytes')): TreePipe => ({
  inode: 77,
  ends,
  nonblockRead: false,
  nonblockWrite: true,
  size: 65536,
  queued,
});

t.test("pipes: created in the holding ancestor before its children, parked, then each process's ends in place", async (t) => {
  const members = [member(100, 1, 7, 7), member(101, 100, 7, 7), member(102, 101, 7, 7)];
  const p = pipe([
    { pid: 100, fd: 3, write: false, cloexec: false },
    { pid: 102, fd: 4, write: true, cloexec: true },
  ]);
  t.equal(pipeCreator(members, p), 100, "the root holds an end and is the grandchild's ancestor");
  t.equal(parkingBase([...p.ends.map((e) => e.fd), 5, 7]), 100, 'parked at 100 and up: above every descriptor of the tree');
  const actions = withPipes(planTreeSkeleton(members), members, [p], 100);
  const described = actions.map((a) =>
    a.kind === 'fd-dup'
      ? `dup ${a.pid} ${a.from}->${a.to}${a.cloexec ? ' cloexec' : ''}`
      : a.kind === 'fd-close'
        ? `close ${a.pid} ${a.fd}`
        : a.kind === 'pipe-create'
          ? `pipe ${a.pid} ${a.read}/${a.write} ${a.queued.length}`
          : a.kind === 'clone'
            ? `clone ${a.pid}`
            : `${a.kind} ${a.pid}`,
  );
  t.same(described, [
    'spawn-root 100',
    'pipe 100 100/101 12',
    'clone 101',
    'clone 102',
    'dup 100 100->3',
    'close 100 100',
    'close 100 101',
    'close 101 100',
    'close 101 101',
    'dup 102 101->4 cloexec',
    'close 102 100',
    'close 102 101',
  ]);
  const stub = { scratch: 0x7fffffffd000n, rip: 0x401000n, word: Buffer.alloc(8) };
  const steps = skeletonSteps(actions, stub).filter((s) => s.op.op === 'INJECT_SYSCALL' || s.op.op === 'WRITE_MEM');
  const calls = steps.map((s) =>
    s.op.op === 'INJECT_SYSCALL' ? `${s.op.pid}:${s.op.nr}(${s.op.args.slice(0, 3).join(',')})=${s.expect}` : `${(s.op as { pid: number }).pid}:mem`,
  );
  t.same(
    calls.slice(0, 8),
    [
      `100:293(${stub.scratch + 128n},0)=0`,
      '100:292(3,100,0)=100',
      '100:292(4,101,0)=101',
      '100:3(3)=0',
      '100:3(4)=0',
      '100:72(101,4,2048)=0',
      '100:mem',
      `100:1(101,${stub.scratch - 0x9000n},12)=12`,
    ],
    'pipe2 at fds 3 and 4, parked, O_NONBLOCK on the write end, the queued bytes written back',
  );
  t.ok(calls.includes('102:292(101,4,524288)=4'), "the grandchild's write end at fd 4, close-on-exec");
  // Held by two siblings only: no holder is the other's ancestor.
  t.throws(
    () =>
      pipeCreator(
        [...members, member(103, 100, 7, 7)],
        pipe([
          { pid: 102, fd: 3, write: false, cloexec: false },
          { pid: 103, fd: 4, write: true, cloexec: false },
        ]),
      ),
    { name: 'PlanError', message: /pipe:\[77\] is held by pid 102, pid 103, none an ancestor/ },
  );
});

t.test('format 10 with pipes: round trip, hostile fields refused by name', async (t) => {
  const tree: ProcessTree = {
    ...sharedTree([100, 101, 102]),
    pipes: [
      pipe(
        [
          { pid: 100, fd: 3, write: false, cloexec: false },
          { pid: 102, fd: 4, write: true, cloexec: true },
        ],
        Buffer.from([0, 1, 2, 255]),
      ),
    ],
  };
  const entries = imageEntries(tree.members[0]!.image, await treeEntries(tree));
  const back = await parseTreeEntries(entries);
  t.same(back.pipes, tree.pipes, 'pipes as written, queued bytes included');
  const treeJson = JSON.parse(entries.get('tree.json')!.toString()) as { pipes: Array<Record<string, unknown> & { ends: Array<Record<string, unknown>> }> };
  const withPipe = (edit: (p: (typeof treeJson.pipes)[number]) => void): Map<string, Buffer> => {
    const copy = structuredClone(treeJson);
    edit(copy.pipes[0]!);
    return reseal(entries, { 'tree.json': Buffer.from(JSON.stringify(copy)) });
  };
  const refused = async (e: Map<string, Buffer>, field: string, what: string): Promise<void> => {
    await t.rejects(parseTreeEntries(e), { name: 'ImageRejectedError', field }, what);
  };
  await refused(
    withPipe((p) => (p.ends[0]!.pid = 999)),
    'pipes[0].ends[0].pid',
    'an end in no process of the tree',
  );
  await refused(
    withPipe((p) => (p.ends[1]!.fd = 70000)),
    'pipes[0].ends[1].fd',
    'a descriptor out of range',
  );
  await refused(
    withPipe((p) => (p.ends[1] = { ...p.ends[0]! })),
    'pipes[0].ends[1].fd',
    'one descriptor twice',
  );
  await refused(
    withPipe((p) => (p.size = 5000)),
    'pipes[0].size',
    'a size that is no power of two',
  );
  await refused(
    withPipe((p) => (p.queued = Buffer.alloc(40000).toString('base64'))),
    'pipes[0].queued',
    'more queued than an image holds',
  );
  await refused(
    withPipe((p) => (p.queued = 'not base64!')),
    'pipes[0].queued',
    'queued bytes that are not base64',
  );
  await refused(
    withPipe((p) => (p.extra = 1)),
    'pipes[0].extra',
    'an unknown field',
  );
});

t.test("dry run of a tree: the skeleton, then each process's plan against a fresh stub with the objects it inherits", async (t) => {
  const tree: ProcessTree = {
    ...sharedTree([100, 101, 102]),
    pipes: [
      pipe([
        { pid: 100, fd: 3, write: false, cloexec: false },
        { pid: 102, fd: 4, write: true, cloexec: false },
      ]),
    ],
  };
  const plan = dryRunTreePlan(tree, { rf: 'keep-and-preserve' });
  const mmaps = plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9 && s.op.args[0] === 0x7ffff7ff0000n);
  t.equal(mmaps.length, 1, "the shared page mapped once (the skeleton), never by a process's own plan");
  t.same(
    plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 435).map((s) => s.expect),
    [101n, 102n],
    'two clone3',
  );
  t.same([...new Set(plan.filter((s) => s.op.op === 'SETREGS').map((s) => (s.op as { pid: number }).pid))], [100, 101, 102], "each process's registers set");
  t.throws(
    () => dryRunTreePlan(tree, { rf: 'reject' }),
    { name: 'ImageRejectedError', field: 'eflags.RF' },
    'the policy gate applies (RF in the image, rf=reject)',
  );
});

const socketpair = (type: 'stream' | 'dgram', queued: [Buffer[], Buffer[]]): TreeSocketPair => ({
  type,
  inodes: [500, 501],
  ends: [[{ pid: 100, fd: 5, cloexec: false, nonblock: true }], [{ pid: 102, fd: 6, cloexec: true, nonblock: false }]],
  queued,
});

t.test("socketpairs: created in the holding ancestor, queued data sent from each socket's peer, then each process's ends in place", async (t) => {
  const members = [member(100, 1, 7, 7), member(101, 100, 7, 7), member(102, 101, 7, 7)];
  const p = socketpair('dgram', [[Buffer.from('up-1'), Buffer.from('up-22')], [Buffer.from('down')]]);
  t.equal(socketpairCreator(members, p), 100, "the root holds a socket and is the grandchild's ancestor");
  const actions = withSocketpairs(planTreeSkeleton(members), members, [p], 102);
  const described = actions.map((a) =>
    a.kind === 'fd-dup'
      ? `dup ${a.pid} ${a.from}->${a.to}${a.cloexec ? ' cloexec' : ''}`
      : a.kind === 'fd-close'
        ? `close ${a.pid} ${a.fd}`
        : a.kind === 'socketpair-create'
          ? `socketpair ${a.pid} ${a.type} ${a.fds.join('/')}`
          : a.kind === 'clone'
            ? `clone ${a.pid}`
            : `${a.kind} ${a.pid}`,
  );
  t.same(described, [
    'spawn-root 100',
    'socketpair 100 dgram 102/103',
    'clone 101',
    'clone 102',
    'dup 100 102->5',
    'close 100 102',
    'close 100 103',
    'close 101 102',
    'close 101 103',
    'dup 102 103->6 cloexec',
    'close 102 102',
    'close 102 103',
  ]);
  const stub = { scratch: 0x7fffffffd000n, rip: 0x401000n, word: Buffer.alloc(8) };
  const steps = skeletonSteps(actions, stub).filter((s) => s.op.op === 'INJECT_SYSCALL');
  const calls = steps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? `${s.op.pid}:${s.op.nr}(${s.op.args.slice(0, 4).join(',')})=${s.expect}` : ''));
  const at = stub.scratch - 0x9000n;
  t.same(
    calls.slice(0, 9),
    [
      `100:53(1,2,0,${stub.scratch + 128n})=0`,
      '100:292(3,102,0)=102',
      '100:292(4,103,0)=103',
      '100:3(3)=0',
      '100:3(4)=0',
      '100:72(102,4,2048)=0',
      `100:44(103,${at},4,64)=4`,
      `100:44(103,${at},5,64)=5`,
      `100:44(102,${at},4,64)=4`,
    ],
    "socketpair at fds 3 and 4, parked, O_NONBLOCK on the first socket; each datagram sent from its socket's peer, MSG_DONTWAIT",
  );
  t.throws(
    () =>
      socketpairCreator([...members, member(103, 100, 7, 7)], {
        ...p,
        ends: [[{ pid: 102, fd: 5, cloexec: false, nonblock: false }], [{ pid: 103, fd: 6, cloexec: false, nonblock: false }]],
      }),
    { name: 'PlanError', message: /socketpair socket:\[500\]\/socket:\[501\] is held by pid 102, pid 103, none an ancestor/ },
  );
});

t.test('format 10 with socketpairs: round trip, hostile fields refused by name; a tree without them writes no field', async (t) => {
  const tree: ProcessTree = { ...sharedTree([100, 101, 102]), socketpairs: [socketpair('stream', [[Buffer.from([0, 1, 255])], []])] };
  const entries = imageEntries(tree.members[0]!.image, await treeEntries(tree));
  t.same((await parseTreeEntries(entries)).socketpairs, tree.socketpairs, 'socketpairs as written, queued data included');
  t.notOk('socketpairs' in JSON.parse((await treeEntries(sharedTree([100, 101, 102]))).get('tree.json')!.toString()), 'no socketpairs: no field');
  const treeJson = JSON.parse(entries.get('tree.json')!.toString()) as {
    socketpairs: Array<Record<string, unknown> & { ends: Array<Array<Record<string, unknown>>>; queued: string[][] }>;
  };
  const edited = (edit: (p: (typeof treeJson.socketpairs)[number]) => void): Map<string, Buffer> => {
    const copy = structuredClone(treeJson);
    edit(copy.socketpairs[0]!);
    return reseal(entries, { 'tree.json': Buffer.from(JSON.stringify(copy)) });
  };
  const refused = async (e: Map<string, Buffer>, field: string, what: string): Promise<void> => {
    await t.rejects(parseTreeEntries(e), { name: 'ImageRejectedError', field }, what);
  };
  await refused(
    edited((p) => (p.type = 'seqpacket')),
    'socketpairs[0].type',
    'a type other than stream or dgram',
  );
  await refused(
    edited((p) => (p.ends[0]![0]!.pid = 999)),
    'socketpairs[0].ends[0][0].pid',
    'an end in no process of the tree',
  );
  await refused(
    edited((p) => (p.ends[1]![0] = { ...p.ends[0]![0]! })),
    'socketpairs[0].ends[1][0].fd',
    'one descriptor twice',
  );
  await refused(
    edited((p) => (p.queued = [[Buffer.alloc(70000).toString('base64')], []])),
    'socketpairs[0].queued',
    'more queued than an image holds',
  );
  await refused(
    edited((p) => (p.queued = [['not base64!'], []])),
    'socketpairs[0].queued[0][0]',
    'queued data that is not base64',
  );
  await refused(
    edited((p) => (p.queued = [[]] as unknown as string[][])),
    'socketpairs[0].queued',
    'not two queues',
  );
  await refused(
    edited((p) => ((p.type = 'dgram'), (p.queued = [[''], []]))),
    'socketpairs[0].queued',
    'a zero-length datagram',
  );
  await refused(
    edited((p) => (p.extra = 1)),
    'socketpairs[0].extra',
    'an unknown field',
  );
  const withPipe: ProcessTree = { ...tree, pipes: [pipe([{ pid: 100, fd: 5, write: false, cloexec: false }])] };
  await refused(
    imageEntries(withPipe.members[0]!.image, await treeEntries(withPipe)),
    'socketpairs[0].ends[0][0].fd',
    'a descriptor that is a pipe end and a socket',
  );
});

t.test('sock_diag: the request for one unix socket, and its answer parsed', async (t) => {
  const req = unixDiagRequest(0x1234);
  t.same(
    [req.readUInt32LE(0), req.readUInt16LE(4), req.readUInt16LE(6), req.readUInt8(16), req.readUInt32LE(24), req.readUInt32LE(28)],
    [40, 20, 1, 1, 0x1234, 0x5],
    'SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, AF_UNIX, the inode, SHOW_NAME|SHOW_PEER',
  );
  const answer = (attrs: Array<[number, Buffer]>): Buffer => {
    const body = Buffer.concat(
      attrs.map(([type, data]) => {
        const a = Buffer.alloc((4 + data.length + 3) & ~3);
        a.writeUInt16LE(4 + data.length, 0);
        a.writeUInt16LE(type, 2);
        data.copy(a, 4);
        return a;
      }),
    );
    const head = Buffer.alloc(32);
    head.writeUInt32LE(32 + body.length, 0);
    head.writeUInt16LE(20, 4);
    head.writeUInt8(1, 16);
    head.writeUInt8(2, 17);
    head.writeUInt32LE(0x1234, 20);
    return Buffer.concat([head, body]);
  };
  const u32 = (n: number): Buffer => Buffer.from(Uint32Array.of(n).buffer);
  t.same(
    parseUnixDiag(
      answer([
        [2, u32(0x1235)],
        [6, Buffer.from([0])],
      ]),
    ),
    { inode: 0x1234, type: 2, peer: 0x1235, named: false, shutdown: 0 },
    'a datagram socket, its peer',
  );
  t.same(
    parseUnixDiag(
      answer([
        [0, Buffer.from('/run/x\0')],
        [6, Buffer.from([3])],
      ]),
    ),
    { inode: 0x1234, type: 2, peer: 0, named: true, shutdown: 3 },
    'named, shut down both ways, no peer',
  );
  const error = Buffer.alloc(36);
  error.writeUInt32LE(36, 0);
  error.writeUInt16LE(2, 4);
  error.writeInt32LE(-2, 16);
  t.same(parseUnixDiag(error), { errno: 2 }, 'NLMSG_ERROR: no such unix socket');
  t.throws(() => parseUnixDiag(Buffer.alloc(8)), { name: 'CheckpointError' }, 'a short answer');
});
