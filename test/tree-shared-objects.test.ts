// expect: one planner places every object a tree shares through descriptors — pipes, socketpairs, memfds together —
// each created in its holding ancestor before that process clones its first child, parked one after another above
// every descriptor of the tree, every creation before any dup3 (a leaf that creates a pipe and a memfd finds fd 3 free
// for both, whatever it holds), then each holder's descriptors in place and the parked ones closed; an object held by
// no common ancestor is refused naming it; one endProblem refuses a hostile end by its field (pid not in the tree, a
// descriptor out of range, close-on-exec not a boolean, one descriptor held twice across objects).
import t from 'tap';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { creatorOf, endProblem, parkingBase, withSharedObjects, type SharedObject } from '../harness/restore/tree-shared-objects.ts';
import { planTreeRestore } from '../harness/restore/tree-restore.ts';
import { planTreeSkeleton, SIGCHLD, type ProcessTree, type TreeAction, type TreeMember } from '../harness/restore/tree.ts';
import { syntheticImage } from './support/synthetic-image.ts';

const member = (pid: number, ppid: number): TreeMember => ({ pid, ppid, pgid: 100, sid: 100, exitSignal: SIGCHLD });
const members = [member(100, 1), member(101, 100), member(102, 101)];
const described = (actions: readonly TreeAction[]): string[] =>
  actions.map((a) =>
    a.kind === 'fd-dup'
      ? `dup ${a.pid} ${a.from}->${a.to}`
      : a.kind === 'fd-close'
        ? `close ${a.pid} ${a.fd}`
        : a.kind === 'clone'
          ? `clone ${a.pid}`
          : a.kind === 'pipe-create'
            ? `pipe ${a.pid} ${a.read}/${a.write}`
            : a.kind === 'memfd-create'
              ? `memfd ${a.pid} ${a.fd}`
              : `${a.kind} ${a.pid}`,
  );

t.test('one planner: every kind of object in one pass, each created before its creator clones, all creations before any dup3', async (t) => {
  const tree: ProcessTree = {
    members: members.map((m) => {
      const base = syntheticImage();
      return { ...m, image: { ...base, process: { ...base.process, pid: m.pid }, task: { ...base.task, pgid: 100, sid: 100 } } };
    }),
    // A pipe held by the root and the grandchild; a pipe and a memfd held by the grandchild alone (a leaf creates them).
    pipes: [
      {
        inode: 7,
        ends: [
          { pid: 100, fd: 3, write: false, cloexec: false },
          { pid: 102, fd: 4, write: true, cloexec: false },
        ],
        nonblockRead: false,
        nonblockWrite: false,
        size: 65536,
        queued: Buffer.alloc(0),
      },
      {
        inode: 8,
        ends: [
          { pid: 102, fd: 3, write: false, cloexec: false },
          { pid: 102, fd: 5, write: true, cloexec: false },
        ],
        nonblockRead: false,
        nonblockWrite: false,
        size: 65536,
        queued: Buffer.alloc(0),
      },
    ],
    memfds: [{ inode: 9, name: 'm', seals: 0, flags: 0, pos: 0, contents: Buffer.alloc(0), ends: [{ pid: 102, fd: 6, cloexec: false }] }],
  };
  const { actions } = planTreeRestore(tree, DEFAULT_POLICY);
  t.same(described(actions), [
    'spawn-root 100',
    'setsid 100',
    'pipe 100 100/101',
    'clone 101',
    'clone 102',
    'pipe 102 102/103',
    'memfd 102 104',
    'dup 100 100->3',
    'close 100 100',
    'close 100 101',
    'close 101 100',
    'close 101 101',
    'dup 102 101->4',
    'dup 102 102->3',
    'dup 102 103->5',
    'dup 102 104->6',
    'close 102 100',
    'close 102 101',
    'close 102 102',
    'close 102 103',
    'close 102 104',
  ]);
  t.equal(parkingBase([3, 4, 5, 6, 250]), 251, 'parked above the highest descriptor of the tree');
});

t.test('an object held by no common ancestor is refused, naming it', async (t) => {
  const siblings = [...members, member(103, 100)];
  const object: SharedObject = {
    name: 'thing:[1]',
    slots: ['thing'],
    ends: [
      { pid: 102, fd: 3, cloexec: false, slot: 0, what: 'thing' },
      { pid: 103, fd: 3, cloexec: false, slot: 0, what: 'thing' },
    ],
    create: (pid, [fd]) => ({ kind: 'fd-close', pid, fd: fd!, why: 'stands for a creation' }),
  };
  t.throws(() => creatorOf(siblings, object), { name: 'PlanError', message: /thing:\[1\] is held by pid 102, pid 103, none an ancestor of the others/ });
  t.throws(() => withSharedObjects(planTreeSkeleton(siblings), siblings, [object], 100), { name: 'PlanError' });
  t.equal(creatorOf(siblings, { ...object, ends: [object.ends[0]!, { ...object.ends[1]!, pid: 100 }] }), 100, 'the root and a grandchild: the root');
});

t.test('endProblem: a hostile end refused by its field', async (t) => {
  const pids = new Set([100, 101]);
  const check = (e: { pid: unknown; fd: unknown; cloexec: unknown }, used = new Set<string>()) => endProblem(e, 'x[0].ends[1]', pids, used);
  t.equal(check({ pid: 100, fd: 3, cloexec: false }), undefined, 'a good end');
  t.same(check({ pid: 999, fd: 3, cloexec: false })?.field, 'x[0].ends[1].pid', 'a pid not in the tree');
  t.same(check({ pid: 100, fd: 70000, cloexec: false })?.field, 'x[0].ends[1].fd', 'a descriptor out of range');
  t.same(check({ pid: 100, fd: 2.5, cloexec: false })?.field, 'x[0].ends[1].fd', 'a descriptor that is no integer');
  t.same(check({ pid: 100, fd: 3, cloexec: 'yes' })?.field, 'x[0].ends[1].cloexec', 'close-on-exec not a boolean');
  const used = new Set(['100:3']);
  t.match(check({ pid: 100, fd: 3, cloexec: false }, used), { field: 'x[0].ends[1].fd', why: /pid 100 fd 3 appears twice/ }, 'held twice (by another object)');
});
