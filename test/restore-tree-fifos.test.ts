// expect: a FIFO held by processes of a tree is planned as the same FIFO: in the holder that is an ancestor of the
// others, before its children are cloned, opened read-write as a helper (fd 3 of the fresh stub: never blocks, and a
// reader), each description opened again non-blocking with its access mode (fd 4), parked, its status flags set, the
// queued bytes written back through the helper, which is closed; then each process's descriptors dup3'ed into place;
// omit=pipe-contents leaves the queued bytes out; a path that no longer names a FIFO is refused naming the field;
// tree.json's fifos round-trips, is written only when there are FIFOs, and hostile fields are refused naming them.
import t from 'tap';
import { imageEntries } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { fifoPathProblem } from '../harness/restore/tree-fifos.ts';
import { parseTreeEntries, treeEntries } from '../harness/restore/tree-image.ts';
import { planTreeRestore, skeletonSteps } from '../harness/restore/tree-restore.ts';
import { SIGCHLD, type ProcessTree, type TreeFifo, type TreeMember } from '../harness/restore/tree.ts';
import { reseal, syntheticImage } from './support/synthetic-image.ts';

const member = (pid: number, ppid: number): TreeMember => ({ pid, ppid, pgid: 100, sid: 100, exitSignal: SIGCHLD });
const members = [member(100, 1), member(101, 100)];
const tree = (fifos?: TreeFifo[]): ProcessTree => ({
  members: members.map((m) => {
    const base = syntheticImage();
    return { ...m, image: { ...base, process: { ...base.process, pid: m.pid }, task: { ...base.task, pgid: 100, sid: 100, files: [] } } };
  }),
  ...(fifos ? { fifos } : {}),
});
const fifo = (): TreeFifo => ({
  path: '/tmp/f',
  size: 65536,
  queued: Buffer.from('queued'),
  descriptions: [
    {
      flags: 0,
      ends: [
        { pid: 100, fd: 3, cloexec: false },
        { pid: 101, fd: 3, cloexec: false },
      ],
    },
    { flags: 0o4001, ends: [{ pid: 101, fd: 4, cloexec: true }] },
  ],
});

t.test('one FIFO: a helper, each description opened again and parked, the queued bytes back, then in place', async (t) => {
  const { actions } = planTreeRestore(tree([fifo()]), DEFAULT_POLICY);
  t.same(
    actions.map((a) =>
      a.kind === 'fd-dup' ? `dup ${a.pid} ${a.from}->${a.to}` : a.kind === 'fifo-open' ? `fifo ${a.pid} ${a.path} at ${a.fds.join(',')}` : `${a.kind} ${a.pid}`,
    ),
    [
      'spawn-root 100',
      'setsid 100',
      'fifo 100 /tmp/f at 100,101',
      'clone 101',
      'dup 100 100->3',
      'fd-close 100',
      'fd-close 100',
      'dup 101 100->3',
      'dup 101 101->4',
      'fd-close 101',
      'fd-close 101',
    ],
  );
  const stub = { scratch: 0x7fffffffd000n, rip: 0x401000n, word: Buffer.alloc(8) };
  const at = stub.scratch - 0x9000n;
  const AT_FDCWD = BigInt.asUintN(64, -100n);
  const calls = skeletonSteps(actions, stub)
    .filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.pid === 100 && s.op.nr !== 435)
    .map((s) => (s.op.op === 'INJECT_SYSCALL' ? `${s.op.nr}(${s.op.args.slice(0, 3).join(',')})=${s.expect}` : ''));
  t.same(
    calls.slice(0, 13),
    [
      '112()=100',
      `257(${AT_FDCWD},${at},${0o4002})=3`,
      `257(${AT_FDCWD},${at},${0o4000})=4`,
      '292(4,100,0)=100',
      '3(4)=0',
      '72(100,4,0)=0',
      `257(${AT_FDCWD},${at},${0o4001})=4`,
      '292(4,101,0)=101',
      '3(4)=0',
      `72(101,4,${0o4000})=0`,
      `1(3,${at},6)=6`,
      '3(3)=0',
      '292(100,3,0)=3',
    ],
    'after its setsid, the helper read-write at fd 3; the read end and the write end at fd 4, parked, their own flags (O_NONBLOCK only for the write end); 6 bytes written back; the helper closed',
  );
  const empty = planTreeRestore(tree([fifo()]), { ...DEFAULT_POLICY, omit: ['pipe-contents'] });
  t.same(
    empty.actions.flatMap((a) => (a.kind === 'fifo-open' ? [a.queued.length] : [])),
    [0],
    'omit=pipe-contents: no queued bytes',
  );
});

t.test('the path must still name a FIFO', async (t) => {
  const f = fifo();
  t.equal(fifoPathProblem([f], [{ dev: 1, ino: 2, mode: 0o10600, size: 0 }]), undefined, 'a FIFO (any: its queue died with its holders)');
  t.match(fifoPathProblem([f], [undefined])?.message, /^fifos\[0\] \(\/tmp\/f\): no longer exists/);
  t.match(fifoPathProblem([f], [{ dev: 1, ino: 2, mode: 0o100600, size: 0 }])?.message, /no longer names a FIFO \(mode 0o100600\)/);
});

t.test('tree.json fifos: round trip, no field without them, hostile fields refused naming them', async (t) => {
  const withFifo = tree([fifo()]);
  const entries = imageEntries(withFifo.members[0]!.image, await treeEntries(withFifo));
  t.same((await parseTreeEntries(entries)).fifos, [fifo()], 'as written, queued bytes included');
  t.notOk('fifos' in JSON.parse((await treeEntries(tree())).get('tree.json')!.toString()), 'no FIFOs: no field');
  type Raw = Record<string, unknown> & { descriptions: Array<Record<string, unknown> & { ends: Array<Record<string, unknown>> }> };
  const treeJson = JSON.parse(entries.get('tree.json')!.toString()) as { fifos: Raw[] };
  const edited = (edit: (x: Raw) => void): Map<string, Buffer> => {
    const copy = structuredClone(treeJson);
    edit(copy.fifos[0]!);
    return reseal(entries, { 'tree.json': Buffer.from(JSON.stringify(copy)) });
  };
  const cases: Array<[(x: Raw) => void, string, string]> = [
    [(x) => (x.path = 'f'), 'fifos[0].path', 'a relative path'],
    [(x) => (x.path = '/tmp/../dev/x'), 'fifos[0].path', 'a path with ..'],
    [(x) => (x.path = '/proc/1/fd/0'), 'fifos[0].path', 'a path under /proc'],
    [(x) => (x.size = 5000), 'fifos[0].size', 'a size that is no power of two'],
    [(x) => (x.queued = Buffer.alloc(40000).toString('base64')), 'fifos[0].queued', 'more queued than an image holds'],
    [(x) => (x.queued = 'not base64!'), 'fifos[0].queued', 'queued bytes that are not base64'],
    [(x) => (x.descriptions = []), 'fifos[0].descriptions', 'no description'],
    [(x) => (x.descriptions[0]!.flags = 3), 'fifos[0].descriptions[0].flags', 'no access mode'],
    [(x) => (x.descriptions[0]!.flags = 0o1000), 'fifos[0].descriptions[0].flags', 'O_TRUNC'],
    [(x) => (x.descriptions = [x.descriptions[1]!]), 'fifos[0].descriptions', 'no read end'],
    [(x) => (x.descriptions[0]!.ends = []), 'fifos[0].descriptions[0].ends', 'a description no descriptor is on'],
    [(x) => (x.descriptions[0]!.ends[0]!.pid = 999), 'fifos[0].descriptions[0].ends[0].pid', 'a descriptor in no process of the tree'],
    [(x) => (x.descriptions[1]!.ends[0]!.fd = 3), 'fifos[0].descriptions[1].ends[0].fd', 'one descriptor on two descriptions'],
    [(x) => (x.descriptions[0]!.ends[0]!.cloexec = 'no'), 'fifos[0].descriptions[0].ends[0].cloexec', 'close-on-exec not a boolean'],
    [(x) => (x.extra = 1), 'fifos[0].extra', 'an unknown field'],
    [(x) => (x.descriptions[0]!.write = true), 'fifos[0].descriptions[0].write', 'an unknown field of a description'],
  ];
  for (const [edit, field, what] of cases) await t.rejects(parseTreeEntries(edited(edit)), { name: 'ImageRejectedError', field }, what);
  const own = tree([fifo()]);
  const root = own.members[0]!;
  root.image = { ...root.image, task: { ...root.image.task, files: [{ fd: 3, path: '/tmp/f', flags: 0, pos: 0n, kind: 'file' }] } };
  await t.rejects(
    parseTreeEntries(imageEntries(root.image, await treeEntries(own))),
    { name: 'ImageRejectedError', field: 'fifos[0].descriptions[0].ends[0].fd' },
    "a FIFO's descriptor that is also one of the process's own files",
  );
});
