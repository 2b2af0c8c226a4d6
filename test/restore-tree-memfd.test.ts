// expect: a memfd held as descriptors by several processes of a tree is planned as one memfd: created once (memfd_create
// with MFD_ALLOW_SEALING, fd 3 of the fresh stub) in the holder that is an ancestor of the others, before its children are
// cloned, parked above every descriptor, its contents pwritten back a chunk at a time, its size, seals, status flags and
// offset set, then each process's descriptors dup3'ed into place and the parked one closed; omit=mapping-kinds (the
// control) makes one memfd per holder; one held by no common ancestor is refused naming it; tree.json's memfds field
// round-trips, is written only when there are memfds, and hostile fields are refused naming them; a daemon of one
// process holding a memfd is restored as a tree (its memfd with it), not as one process.
import t from 'tap';
import { imageEntries } from '../harness/restore/checkpoint-image.ts';
import { describeTreeShape, isSingleProcess } from '../harness/repro/daemon-tree.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { fdinfoInode, MAX_MEMFD_BYTES, memfdCreator, memfdName, privateCopies, withMemfds } from '../harness/restore/tree-memfds.ts';
import { parseTreeEntries, treeEntries } from '../harness/restore/tree-image.ts';
import { planTreeRestore, skeletonSteps } from '../harness/restore/tree-restore.ts';
import { planTreeSkeleton, SIGCHLD, type ProcessTree, type TreeMember, type TreeMemfd } from '../harness/restore/tree.ts';
import { reseal, syntheticImage } from './support/synthetic-image.ts';

const member = (pid: number, ppid: number): TreeMember => ({ pid, ppid, pgid: 100, sid: 100, exitSignal: SIGCHLD });
const members = [member(100, 1), member(101, 100), member(102, 101)];
const tree = (memfds?: TreeMemfd[]): ProcessTree => ({
  members: members.map((m) => {
    const base = syntheticImage();
    return { ...m, image: { ...base, process: { ...base.process, pid: m.pid }, task: { ...base.task, pgid: 100, sid: 100 } } };
  }),
  ...(memfds ? { memfds } : {}),
});
const memfd = (ends: TreeMemfd['ends'], contents = Buffer.alloc(40000, 0x61)): TreeMemfd => ({
  inode: 9001,
  name: 'shared-state',
  seals: 0x3,
  flags: 0o4000,
  pos: 7,
  contents,
  ends,
});
const described = (actions: ReturnType<typeof planTreeSkeleton>): string[] =>
  actions.map((a) =>
    a.kind === 'fd-dup'
      ? `dup ${a.pid} ${a.from}->${a.to}${a.cloexec ? ' cloexec' : ''}`
      : a.kind === 'fd-close'
        ? `close ${a.pid} ${a.fd}`
        : a.kind === 'memfd-create'
          ? `memfd ${a.pid} ${a.name} at ${a.fd}`
          : a.kind === 'clone'
            ? `clone ${a.pid}`
            : `${a.kind} ${a.pid}`,
  );

t.test('links and fdinfo: the name of a memfd, the inode fdinfo shows', async (t) => {
  t.equal(memfdName('/memfd:shared-state (deleted)'), 'shared-state');
  t.equal(memfdName('/memfd:with space (deleted)'), 'with space');
  t.equal(memfdName('/tmp/memfd:x'), undefined, 'a path is no memfd');
  t.equal(memfdName('pipe:[5]'), undefined);
  t.equal(fdinfoInode('pos:\t7\nflags:\t0100002\nmnt_id:\t16\nino:\t9001\n'), 9001);
  t.equal(fdinfoInode('pos:\t7\nflags:\t0100002\n'), undefined, 'a kernel before 5.14');
});

t.test('one memfd: created in the holding ancestor before its children, parked, then each descriptor in place', async (t) => {
  const m = memfd([
    { pid: 101, fd: 3, cloexec: false },
    { pid: 102, fd: 3, cloexec: false },
    { pid: 102, fd: 9, cloexec: true },
  ]);
  t.equal(memfdCreator(members, m), 101, 'the child holds it and is the grandchild’s parent');
  t.same(described(withMemfds(planTreeSkeleton(members), members, [m], 120)), [
    'spawn-root 100',
    'setsid 100',
    'clone 101',
    'memfd 101 shared-state at 120',
    'clone 102',
    'dup 101 120->3',
    'close 101 120',
    'dup 102 120->3',
    'dup 102 120->9 cloexec',
    'close 102 120',
  ]);
  const stub = { scratch: 0x7fffffffd000n, rip: 0x401000n, word: Buffer.alloc(8) };
  const steps = skeletonSteps(withMemfds(planTreeSkeleton(members), members, [m], 120), stub).filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.pid === 101);
  const at = stub.scratch - 0x9000n;
  t.same(
    steps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? `${s.op.nr}(${s.op.args.slice(0, 4).join(',')})=${s.expect}` : '')),
    [
      `319(${stub.scratch + 256n},2)=3`,
      '292(3,120,0)=120',
      '3(3)=0',
      `18(120,${at},32768,0)=32768`,
      `18(120,${at},7232,32768)=7232`,
      '77(120,40000)=0',
      '72(120,1033,3)=0',
      '72(120,4,2048)=0',
      '8(120,7,0)=7',
      `435(${stub.scratch},88)=102`,
      '292(120,3,0)=3',
      '3(120)=0',
    ],
    'memfd_create at fd 3, parked, contents in two pwrites, ftruncate, F_ADD_SEALS, F_SETFL, lseek; then the grandchild cloned (it inherits it); then fd 3 in place',
  );
  const name = skeletonSteps(withMemfds(planTreeSkeleton(members), members, [m], 120), stub).find(
    (s) => s.op.op === 'WRITE_MEM' && s.op.address === stub.scratch + 256n,
  );
  t.same(name?.op.op === 'WRITE_MEM' ? name.op.data : undefined, Buffer.from('shared-state\0'), 'its name, NUL-terminated');
  t.throws(
    () =>
      memfdCreator(
        [...members, member(103, 100)],
        memfd([
          { pid: 102, fd: 3, cloexec: false },
          { pid: 103, fd: 3, cloexec: false },
        ]),
      ),
    { name: 'PlanError', message: /memfd:shared-state \(inode 9001\) is held by pid 102, pid 103, none an ancestor/ },
  );
});

t.test('a tree restore plans its memfds above every descriptor; omit=mapping-kinds gives each holder its own copy', async (t) => {
  const m = memfd([
    { pid: 100, fd: 3, cloexec: false },
    { pid: 101, fd: 3, cloexec: false },
  ]);
  const one = planTreeRestore(tree([m]), DEFAULT_POLICY);
  t.equal(one.actions.filter((a) => a.kind === 'memfd-create').length, 1, 'one memfd');
  const control = planTreeRestore(tree([m]), { ...DEFAULT_POLICY, omit: ['mapping-kinds'] });
  t.same(
    control.actions.filter((a) => a.kind === 'memfd-create').map((a) => a.pid),
    [100, 101],
    'the control: one memfd in each holder',
  );
  t.same(
    privateCopies([m]).map((c) => c.ends),
    [[{ pid: 100, fd: 3, cloexec: false }], [{ pid: 101, fd: 3, cloexec: false }]],
  );
});

t.test('tree.json memfds: round trip, no field without memfds, hostile fields refused naming them', async (t) => {
  const m = memfd([
    { pid: 100, fd: 3, cloexec: false },
    { pid: 102, fd: 3, cloexec: true },
  ]);
  const withMemfd = tree([m]);
  const entries = imageEntries(withMemfd.members[0]!.image, await treeEntries(withMemfd));
  t.same((await parseTreeEntries(entries)).memfds, [m], 'as written, contents included');
  t.notOk('memfds' in JSON.parse((await treeEntries(tree())).get('tree.json')!.toString()), 'no memfds: no field');
  const treeJson = JSON.parse(entries.get('tree.json')!.toString()) as { memfds: Array<Record<string, unknown> & { ends: Array<Record<string, unknown>> }> };
  const edited = (edit: (x: (typeof treeJson.memfds)[number]) => void): Map<string, Buffer> => {
    const copy = structuredClone(treeJson);
    edit(copy.memfds[0]!);
    return reseal(entries, { 'tree.json': Buffer.from(JSON.stringify(copy)) });
  };
  const cases: Array<[(x: (typeof treeJson.memfds)[number]) => void, string, string]> = [
    [(x) => (x.name = '../etc'), 'memfds[0].name', 'a name with a slash'],
    [(x) => (x.name = 'n'.repeat(250)), 'memfds[0].name', 'a name longer than memfd_create takes'],
    [(x) => (x.seals = 0x40), 'memfds[0].seals', 'an unknown seal'],
    [(x) => (x.flags = 0o2), 'memfds[0].flags', 'an access mode among the flags'],
    [(x) => (x.pos = -1), 'memfds[0].pos', 'a negative offset'],
    [(x) => (x.contents = Buffer.alloc(MAX_MEMFD_BYTES + 1).toString('base64')), 'memfds[0].contents', 'more than an image holds'],
    [(x) => (x.contents = 'not base64!'), 'memfds[0].contents', 'contents that are not base64'],
    [(x) => (x.ends[0]!.pid = 999), 'memfds[0].ends[0].pid', 'a descriptor in no process of the tree'],
    [(x) => (x.ends[1] = { ...x.ends[0]! }), 'memfds[0].ends[1].fd', 'one descriptor twice'],
    [(x) => (x.ends[0]!.fd = 70000), 'memfds[0].ends[0].fd', 'no descriptor number'],
    [(x) => (x.ends = []), 'memfds[0].ends', 'no descriptor'],
    [(x) => (x.extra = 1), 'memfds[0].extra', 'an unknown field'],
    [(x) => (x.ends[0]!.write = true), 'memfds[0].ends[0].write', 'an unknown field of a descriptor'],
  ];
  for (const [edit, field, what] of cases) await t.rejects(parseTreeEntries(edited(edit)), { name: 'ImageRejectedError', field }, what);
  const withPipe: ProcessTree = {
    ...withMemfd,
    pipes: [
      { inode: 5, ends: [{ pid: 100, fd: 3, write: false, cloexec: false }], nonblockRead: false, nonblockWrite: false, size: 65536, queued: Buffer.alloc(0) },
    ],
  };
  await t.rejects(
    parseTreeEntries(imageEntries(withPipe.members[0]!.image, await treeEntries(withPipe))),
    { name: 'ImageRejectedError', field: 'memfds[0].ends[0].fd' },
    'a descriptor that is a memfd and a pipe end',
  );
});

t.test('a daemon of one process that holds a memfd is restored as a tree, and its shape names the memfd', async (t) => {
  const one: ProcessTree = { members: tree().members.slice(0, 1) };
  t.ok(isSingleProcess(one), 'one process, nothing shared: one process');
  const holding: ProcessTree = { ...one, memfds: [memfd([{ pid: 100, fd: 3, cloexec: false }])] };
  t.notOk(isSingleProcess(holding), 'one process holding a memfd: a tree, so the memfd is restored');
  t.equal(describeTreeShape(holding), '1 process (pid 100), 1 memfd');
});

t.test('a memfd mapped MAP_SHARED: mapped in its creator before the clone, unmapped where inherited unheld; tree.json maps refused by field', async (t) => {
  const start = 0x7ffff7ff0000n;
  const mapped: TreeMemfd = {
    ...memfd([{ pid: 101, fd: 3, cloexec: false }], Buffer.alloc(8192, 0x62)),
    maps: [
      { pid: 101, start, end: start + 0x2000n, offset: 0n },
      { pid: 102, start, end: start + 0x2000n, offset: 0n },
    ],
  };
  const withMap: ProcessTree = { ...tree([mapped]), members: [...tree().members] };
  const { actions } = planTreeRestore(withMap, DEFAULT_POLICY);
  const create = actions.find((a) => a.kind === 'memfd-create');
  t.same(
    create?.kind === 'memfd-create' ? [create.pid, create.maps] : [],
    [101, [{ start, end: start + 0x2000n, offset: 0n }]],
    'created and mapped in the child',
  );
  t.ok(
    actions.findIndex((a) => a.kind === 'memfd-create') < actions.findIndex((a) => a.kind === 'clone' && a.pid === 102),
    'before the grandchild is cloned (it inherits the mapping)',
  );
  const stub = { scratch: 0x7fffffffd000n, rip: 0x401000n, word: Buffer.alloc(8) };
  t.ok(
    skeletonSteps(actions, stub).some(
      (s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9 && s.op.pid === 101 && s.op.args[0] === start && s.op.args[4] === 100n,
    ),
    'mmap of the parked memfd (fd 100) at the range, in the child',
  );
  const onlyChild: TreeMemfd = { ...mapped, maps: [mapped.maps![0]!] };
  t.same(
    planTreeRestore(tree([onlyChild]), DEFAULT_POLICY)
      .actions.filter((a) => a.kind === 'unmap-inherited')
      .map((a) => a.pid),
    [102],
    'the grandchild inherited it without mapping it: unmapped again',
  );
  t.throws(() => planTreeRestore(tree([{ ...mapped, maps: [mapped.maps![1]!] }]), DEFAULT_POLICY), {
    name: 'PlanError',
    message: /mapped by pid 102 but not by pid 101, where it is created/,
  });
  const entries = imageEntries(withMap.members[0]!.image, await treeEntries(withMap));
  t.same((await parseTreeEntries(entries)).memfds?.[0]?.maps, mapped.maps, 'maps round-trip');
  const treeJson = JSON.parse(entries.get('tree.json')!.toString()) as { memfds: Array<Record<string, unknown> & { maps: Array<Record<string, unknown>> }> };
  const edited = (edit: (x: (typeof treeJson.memfds)[number]) => void): Map<string, Buffer> => {
    const copy = structuredClone(treeJson);
    edit(copy.memfds[0]!);
    return reseal(entries, { 'tree.json': Buffer.from(JSON.stringify(copy)) });
  };
  const cases: Array<[(x: (typeof treeJson.memfds)[number]) => void, string, string]> = [
    [(x) => (x.maps[0]!.pid = 999), 'memfds[0].maps[0].pid', 'a mapping in no process of the tree'],
    [(x) => (x.maps[0]!.start = '0x7ffff7ff0001'), 'memfds[0].maps[0].end', 'a range of no whole pages'],
    [(x) => (x.maps[0]!.end = '0x800000000000'), 'memfds[0].maps[0].end', 'a range beyond user space'],
    [(x) => (x.maps[0]!.start = 'near the top'), 'memfds[0].maps[0].start', 'a start that is no hex number'],
    [(x) => (x.maps[0]!.offset = '0x3000'), 'memfds[0].maps[0].offset', 'a mapping past the end of the memfd'],
    [(x) => (x.maps[1]!.start = '0x7ffff7fe0000'), 'memfds[0].maps', 'holders at different ranges'],
    [(x) => (x.maps = []), 'memfds[0].maps', 'an empty list'],
    [(x) => (x.maps[0]!.prot = 3), 'memfds[0].maps[0].prot', 'an unknown field of a mapping'],
  ];
  for (const [edit, field, what] of cases) await t.rejects(parseTreeEntries(edited(edit)), { name: 'ImageRejectedError', field }, what);
});
