// expect: an open file description several processes of a tree share is planned as one description: opened once by
// path (never creating or truncating: fd 3 of the fresh stub) in the holder that is an ancestor of the others, before
// its children are cloned, parked, its offset set, then each process's descriptors dup3'ed into place;
// omit=shared-descriptions (the control) opens it once per holder; a file gone, replaced or grown is refused naming
// the field; tree.json's sharedFiles round-trips, is written only when there are shared files, and hostile fields
// are refused naming them (also a descriptor that is one of the process's own files, or another object's); a daemon's
// tree holding one is described so and never restored as one process.
import t from 'tap';
import { imageEntries } from '../harness/restore/checkpoint-image.ts';
import { describeTreeShape, isSingleProcess } from '../harness/repro/daemon-tree.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { identityProblem, parseStat, privateDescriptions, STAT_BYTES } from '../harness/restore/tree-files.ts';
import { parseTreeEntries, treeEntries } from '../harness/restore/tree-image.ts';
import { planTreeRestore, skeletonSteps } from '../harness/restore/tree-restore.ts';
import { SIGCHLD, type ProcessTree, type TreeMember, type TreeSharedFile } from '../harness/restore/tree.ts';
import { reseal, syntheticImage } from './support/synthetic-image.ts';

const member = (pid: number, ppid: number): TreeMember => ({ pid, ppid, pgid: 100, sid: 100, exitSignal: SIGCHLD });
const members = [member(100, 1), member(101, 100), member(102, 101)];
const tree = (sharedFiles?: TreeSharedFile[]): ProcessTree => ({
  members: members.map((m) => {
    const base = syntheticImage();
    return { ...m, image: { ...base, process: { ...base.process, pid: m.pid }, task: { ...base.task, pgid: 100, sid: 100, files: [] } } };
  }),
  ...(sharedFiles ? { sharedFiles } : {}),
});
const file = (ends: TreeSharedFile['ends']): TreeSharedFile => ({ path: '/tmp/data', flags: 0o102002, pos: 10, dev: 2049, ino: 77, size: 10, ends });

t.test('one shared file: opened once in the holding ancestor before its children, parked, its offset set, then in place', async (t) => {
  const f = file([
    { pid: 101, fd: 3, cloexec: false },
    { pid: 102, fd: 3, cloexec: false },
    { pid: 102, fd: 7, cloexec: true },
  ]);
  const { actions } = planTreeRestore(tree([f]), DEFAULT_POLICY);
  t.same(
    actions.map((a) =>
      a.kind === 'fd-dup' ? `dup ${a.pid} ${a.from}->${a.to}` : a.kind === 'file-open' ? `open ${a.pid} ${a.path} at ${a.fd}` : `${a.kind} ${a.pid}`,
    ),
    [
      'spawn-root 100',
      'setsid 100',
      'clone 101',
      'open 101 /tmp/data at 100',
      'clone 102',
      'dup 101 100->3',
      'fd-close 101',
      'dup 102 100->3',
      'dup 102 100->7',
      'fd-close 102',
    ],
  );
  const stub = { scratch: 0x7fffffffd000n, rip: 0x401000n, word: Buffer.alloc(8) };
  const at = stub.scratch - 0x9000n;
  const steps = skeletonSteps(actions, stub).filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.pid === 101);
  t.same(
    steps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? `${s.op.nr}(${s.op.args.slice(0, 3).join(',')})=${s.expect}` : '')).slice(0, 4),
    [`257(${BigInt.asUintN(64, -100n)},${at},${0o102002})=3`, '292(3,100,0)=100', '3(3)=0', '8(100,10,0)=10'],
    'openat at fd 3 (no O_CREAT, no O_TRUNC), parked, closed, the shared offset',
  );
  const path = skeletonSteps(actions, stub).find((s) => s.op.op === 'WRITE_MEM' && s.op.address === at);
  t.same(path?.op.op === 'WRITE_MEM' ? path.op.data : undefined, Buffer.from('/tmp/data\0'), 'its path, NUL-terminated');
  const control = planTreeRestore(tree([f]), { ...DEFAULT_POLICY, omit: ['shared-descriptions'] });
  t.same(
    control.actions.filter((a) => a.kind === 'file-open').map((a) => a.pid),
    [101, 102],
    'the control: opened once in each holder',
  );
  t.same(
    privateDescriptions([f]).map((c) => c.ends.map((e) => `${e.pid}:${e.fd}`)),
    [['101:3'], ['102:3', '102:7']],
  );
});

t.test("the file's identity: gone, replaced or grown is refused naming the field", async (t) => {
  const f = file([{ pid: 100, fd: 3, cloexec: false }]);
  const stat = Buffer.alloc(STAT_BYTES);
  stat.writeBigUInt64LE(2049n, 0);
  stat.writeBigUInt64LE(77n, 8);
  stat.writeUInt32LE(0o100600, 24);
  stat.writeBigInt64LE(10n, 48);
  const same = parseStat(stat);
  t.same(same, { dev: 2049, ino: 77, mode: 0o100600, size: 10 });
  t.equal(identityProblem([f], [same]), undefined, 'the same file');
  t.match(identityProblem([f], [undefined])?.message, /^sharedFiles\[0\] \(\/tmp\/data\): no longer exists/);
  t.match(identityProblem([f], [{ ...same, ino: 78 }])?.message, /another file is at the path \(device 2049 inode 78, not 2049 77\)/);
  t.match(identityProblem([f], [{ ...same, dev: 2050 }])?.message, /another file is at the path/);
  t.match(identityProblem([f], [{ ...same, size: 11 }])?.message, /11 bytes long, 10 at checkpoint/);
});

t.test('tree.json sharedFiles: round trip, no field without them, hostile fields refused naming them', async (t) => {
  const f = file([
    { pid: 100, fd: 3, cloexec: false },
    { pid: 102, fd: 3, cloexec: true },
  ]);
  const withFile = tree([f]);
  const entries = imageEntries(withFile.members[0]!.image, await treeEntries(withFile));
  t.same((await parseTreeEntries(entries)).sharedFiles, [f], 'as written');
  t.notOk('sharedFiles' in JSON.parse((await treeEntries(tree())).get('tree.json')!.toString()), 'no shared files: no field');
  const treeJson = JSON.parse(entries.get('tree.json')!.toString()) as {
    sharedFiles: Array<Record<string, unknown> & { ends: Array<Record<string, unknown>> }>;
  };
  const edited = (edit: (x: (typeof treeJson.sharedFiles)[number]) => void): Map<string, Buffer> => {
    const copy = structuredClone(treeJson);
    edit(copy.sharedFiles[0]!);
    return reseal(entries, { 'tree.json': Buffer.from(JSON.stringify(copy)) });
  };
  const cases: Array<[(x: (typeof treeJson.sharedFiles)[number]) => void, string, string]> = [
    [(x) => (x.path = 'relative'), 'sharedFiles[0].path', 'a relative path'],
    [(x) => (x.path = '/tmp/../etc/shadow'), 'sharedFiles[0].path', 'a path with ..'],
    [(x) => (x.path = '/dev/sda'), 'sharedFiles[0].path', 'a device'],
    [(x) => (x.path = '/proc/1/mem'), 'sharedFiles[0].path', 'a file of /proc'],
    [(x) => (x.flags = 0o1002), 'sharedFiles[0].flags', 'O_TRUNC: opening again would truncate'],
    [(x) => (x.flags = 0o102), 'sharedFiles[0].flags', 'O_CREAT'],
    [(x) => (x.flags = 0o2000002), 'sharedFiles[0].flags', "O_CLOEXEC, which is each descriptor's"],
    [(x) => (x.flags = 0o200000), 'sharedFiles[0].flags', 'O_DIRECTORY'],
    [(x) => (x.flags = 3), 'sharedFiles[0].flags', 'no access mode'],
    [(x) => (x.flags = 0o40000000000), 'sharedFiles[0].flags', 'an unknown bit'],
    [(x) => (x.pos = -1), 'sharedFiles[0].pos', 'a negative offset'],
    [(x) => (x.pos = 1.5), 'sharedFiles[0].pos', 'an offset that is no integer'],
    [(x) => (x.dev = 'sda'), 'sharedFiles[0].dev', 'a device that is no number'],
    [(x) => (x.ino = 0), 'sharedFiles[0].ino', 'inode 0'],
    [(x) => (x.size = -5), 'sharedFiles[0].size', 'a negative size'],
    [(x) => (x.ends = []), 'sharedFiles[0].ends', 'no descriptor'],
    [(x) => (x.ends[0]!.pid = 999), 'sharedFiles[0].ends[0].pid', 'a descriptor in no process of the tree'],
    [(x) => (x.ends[0]!.fd = -1), 'sharedFiles[0].ends[0].fd', 'no descriptor number'],
    [(x) => (x.ends[0]!.cloexec = 1), 'sharedFiles[0].ends[0].cloexec', 'close-on-exec not a boolean'],
    [(x) => (x.ends[1] = { ...x.ends[0]! }), 'sharedFiles[0].ends[1].fd', 'one descriptor twice'],
    [(x) => (x.extra = 1), 'sharedFiles[0].extra', 'an unknown field'],
    [(x) => (x.ends[0]!.write = true), 'sharedFiles[0].ends[0].write', 'an unknown field of a descriptor'],
  ];
  for (const [edit, field, what] of cases) await t.rejects(parseTreeEntries(edited(edit)), { name: 'ImageRejectedError', field }, what);
  const alsoMemfd: ProcessTree = {
    ...withFile,
    memfds: [{ inode: 5, name: 'm', seals: 0, flags: 0, pos: 0, contents: Buffer.alloc(0), ends: [{ pid: 102, fd: 3, cloexec: false }] }],
  };
  await t.rejects(
    parseTreeEntries(imageEntries(alsoMemfd.members[0]!.image, await treeEntries(alsoMemfd))),
    { name: 'ImageRejectedError', field: 'sharedFiles[0].ends[1].fd' },
    'a descriptor that is a shared file and a memfd',
  );
  const own = tree([f]);
  const root = own.members[0]!;
  root.image = { ...root.image, task: { ...root.image.task, files: [{ fd: 3, path: '/tmp/data', flags: 0o100002, pos: 0n, kind: 'file' }] } };
  await t.rejects(
    parseTreeEntries(imageEntries(root.image, await treeEntries(own))),
    { name: 'ImageRejectedError', field: 'sharedFiles[0].ends[0].fd' },
    "a descriptor that is also one of the process's own files",
  );
});

t.test('a daemon tree that shares a description: restored as a tree, and its shape names it', async (t) => {
  const shared = tree([
    file([
      { pid: 100, fd: 3, cloexec: false },
      { pid: 101, fd: 3, cloexec: false },
    ]),
  ]);
  t.equal(describeTreeShape(shared), '3 processes (pid 100, 101, 102), 1 shared file description');
  t.notOk(isSingleProcess({ ...shared, members: shared.members.slice(0, 1) }), 'even of one process (a hostile image): a tree, so the description is restored');
});
