// expect: eventfd and signalfd fdinfo is parsed as the kernel prints it (a 6.1 kernel without the eventfd-semaphore
// line, a 6.6+ one with it; hex counter and mask); task.json's optional eventfds, signalfds and membarrier lists round-trip
// through the image codec and every hostile value is rejected naming its field (a counter past 2^64-2, a mask with
// SIGKILL, unknown flags, a descriptor taken twice or out of range, an unknown registration); the plan makes each at its
// number with eventfd2/signalfd4 and dup3, writes a counter too wide for eventfd2, registers membarrier, and leaves out
// what omit= names.
import t from 'tap';
import { ImageRejectedError } from '../harness/errors.ts';
import { imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import { eventFdSteps, parseEventfdFdinfo, parseSignalfdFdinfo } from '../harness/restore/event-fds.ts';
import type { CheckpointImage, TaskState } from '../harness/restore/image-model.ts';
import { compileRestorePlan } from '../harness/restore/plan.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { compareEventFds } from '../harness/restore/read-back.ts';
import { validateTask } from '../harness/restore/validate.ts';
import { SYNTHETIC_MAPS, syntheticImage, syntheticRegs } from './support/synthetic-image.ts';

const FDINFO_61 = 'pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\neventfd-count:                5\neventfd-id: 3\n';
const FDINFO_66 = 'pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1030\neventfd-count:       200000005\neventfd-id: 11\neventfd-semaphore: 1\n';
const SIGNALFD = 'pos:\t0\nflags:\t04002\nmnt_id:\t15\nino:\t1057\nsigmask:\t0000000000000a00\n';

t.test('fdinfo as the kernel prints it', async (t) => {
  t.same(parseEventfdFdinfo(FDINFO_61), { flags: 0o2000000, count: 5n, semaphore: undefined }, '6.1: no semaphore line (probed instead); O_RDWR dropped');
  t.same(parseEventfdFdinfo(FDINFO_66), { flags: 0o4000, count: 0x200000005n, semaphore: true }, '6.6+: the counter is hex');
  t.throws(() => parseEventfdFdinfo('pos:\t0\nflags:\t02\n'), /unreadable eventfd fdinfo/);
  t.same(parseSignalfdFdinfo(SIGNALFD), { flags: 0o4000, mask: 0xa00n }, 'SIGUSR1|SIGUSR2');
  t.throws(() => parseSignalfdFdinfo('pos:\t0\nflags:\t02\nsigmask:\tzz\n'), /unreadable signalfd fdinfo/);
});

const good = {
  pgid: 5,
  sid: 5,
  files: [{ fd: 3, path: '/tmp/d.log', flags: 1, pos: '0', kind: 'file' }],
  userfaultfds: [],
  eventfds: [
    { fd: 4, count: '3', flags: 0o4000, semaphore: true },
    { fd: 5, count: '8589934597', flags: 0o2000000, semaphore: false },
  ],
  signalfds: [{ fd: 6, mask: '0xa00', flags: 0o4000 }],
  membarrier: ['private-expedited', 'private-expedited-rseq'],
};

t.test('task.json: eventfds, signalfds and membarrier checked as hostile input', async (t) => {
  const task = validateTask(good);
  t.same(task.eventfds, [
    { fd: 4, count: 3n, flags: 0o4000, semaphore: true },
    { fd: 5, count: (1n << 33n) + 5n, flags: 0o2000000, semaphore: false },
  ]);
  t.same(task.signalfds, [{ fd: 6, mask: 0xa00n, flags: 0o4000 }]);
  t.same(task.membarrier, ['private-expedited', 'private-expedited-rseq']);
  const { eventfds: _e, signalfds: _s, membarrier: _m, ...without } = good;
  const plain = validateTask(without);
  t.ok(plain.eventfds === undefined && plain.signalfds === undefined && plain.membarrier === undefined, 'absent when the process had none');
  const rejects = (mutate: (j: any) => void, field: string): void => {
    const j = JSON.parse(JSON.stringify(good));
    mutate(j);
    try {
      validateTask(j);
      t.fail(`accepted a bad ${field}`);
    } catch (error) {
      t.ok(error instanceof ImageRejectedError && error.entry === 'task.json' && error.field === field, `${field}: ${(error as Error).message}`);
    }
  };
  rejects((j) => (j.eventfds[0].count = '18446744073709551615'), 'eventfds[0].count');
  rejects((j) => (j.eventfds[0].count = '-1'), 'eventfds[0].count');
  rejects((j) => (j.eventfds[0].count = 3), 'eventfds[0].count');
  rejects((j) => (j.eventfds[0].count = '1e9'), 'eventfds[0].count');
  rejects((j) => (j.eventfds[0].flags = 0o2), 'eventfds[0].flags');
  rejects((j) => (j.eventfds[0].flags = 1), 'eventfds[0].flags');
  rejects((j) => (j.eventfds[0].semaphore = 1), 'eventfds[0].semaphore');
  rejects((j) => (j.eventfds[0].fd = 3), 'eventfds[0].fd');
  rejects((j) => (j.eventfds[1].fd = 4), 'eventfds[1].fd');
  rejects((j) => (j.eventfds[0].fd = 2), 'eventfds[0].fd');
  rejects((j) => (j.eventfds[0].fd = 65536), 'eventfds[0].fd');
  rejects((j) => (j.eventfds[0].fd = 4.5), 'eventfds[0].fd');
  rejects((j) => (j.eventfds = {}), 'eventfds');
  rejects((j) => (j.eventfds = [null]), 'eventfds[0]');
  rejects((j) => (j.eventfds = new Array(1025).fill(j.eventfds[0])), 'eventfds');
  rejects((j) => (j.signalfds[0].mask = '0x100'), 'signalfds[0].mask');
  rejects((j) => (j.signalfds[0].mask = '0x40000'), 'signalfds[0].mask');
  rejects((j) => (j.signalfds[0].mask = '0x10000000000000000'), 'signalfds[0].mask');
  rejects((j) => (j.signalfds[0].mask = 2560), 'signalfds[0].mask');
  rejects((j) => (j.signalfds[0].flags = 0o10000), 'signalfds[0].flags');
  rejects((j) => (j.signalfds[0].fd = 5), 'signalfds[0].fd');
  rejects((j) => (j.signalfds[0].fd = -1), 'signalfds[0].fd');
  rejects((j) => (j.userfaultfds = [{ fd: 7, flags: 0, features: null }]) && (j.signalfds[0].fd = 7), 'signalfds[0].fd');
  rejects((j) => (j.membarrier = ['global-expedited']), 'membarrier[0]');
  rejects((j) => (j.membarrier = ['private-expedited', 'private-expedited']), 'membarrier[1]');
  rejects((j) => (j.membarrier = 'private-expedited'), 'membarrier');
  rejects((j) => (j.membarrier = new Array(4).fill('private-expedited')), 'membarrier');
});

/** The synthetic image with the task above. */
function imageWith(task: Partial<TaskState>): CheckpointImage {
  const image = syntheticImage();
  return { ...image, task: { ...image.task, ...task } };
}

t.test('the image codec writes them only when present, and reads them back', async (t) => {
  const task = validateTask(good);
  const image = imageWith({ eventfds: task.eventfds, signalfds: task.signalfds, membarrier: task.membarrier });
  const entries = imageEntries(image);
  const back = parseImageEntries(entries);
  t.same(back.task.eventfds, task.eventfds);
  t.same(back.task.signalfds, task.signalfds);
  t.same(back.task.membarrier, task.membarrier);
  const json = JSON.parse(entries.get('task.json')!.toString());
  t.same(json.eventfds[1], { fd: 5, count: '8589934597', flags: 0o2000000, semaphore: false }, 'a counter as a decimal string');
  t.equal(json.signalfds[0].mask, '0xa00', 'a mask as hex');
  const plainJson = JSON.parse(imageEntries(syntheticImage()).get('task.json')!.toString());
  t.notOk('eventfds' in plainJson || 'signalfds' in plainJson || 'membarrier' in plainJson, 'no keys for a process without them');
});

t.test('plan steps', async (t) => {
  const task = validateTask(good);
  const steps = eventFdSteps(9, { eventfds: task.eventfds!, signalfds: task.signalfds! }, [0, 1, 2, 3], 0x7000n);
  const calls = steps.map((s) =>
    s.op.op === 'INJECT_SYSCALL' ? `${s.op.nr}(${s.op.args.map((a) => a.toString(16)).join(',')})=${s.expect?.toString(16)}` : s.op.op,
  );
  t.same(calls, [
    '9(7000,1000,3,100022,ffffffffffffffff,0)=7000',
    'WRITE_MEM',
    // eventfd2(3, EFD_NONBLOCK|EFD_SEMAPHORE) lands at 4, its number
    '290(3,801)=4',
    // the counter wider than 32 bits: eventfd2(0), then a write of it
    '290(0,80000)=5',
    '1(5,7000,8)=8',
    // signalfd4(-1, &mask, 8, SFD_NONBLOCK) at 6
    '289(ffffffffffffffff,7008,8,800)=6',
    '11(7000,1000)=0',
  ]);
  const moved = eventFdSteps(9, { eventfds: [{ fd: 40, count: 0n, flags: 0o2000000, semaphore: false }], signalfds: [] }, [0, 1, 2], 0x7000n);
  t.same(
    moved.map((s) => (s.op.op === 'INJECT_SYSCALL' ? [s.op.nr, s.op.args.map(Number)] : [])),
    [
      [290, [0, 0o2000000]],
      [292, [3, 40, 0o2000000]],
      [3, [3]],
    ],
    'created at the lowest free number, dup3 to its own (close-on-exec kept), no scratch page when nothing is placed',
  );

  const image = imageWith({ eventfds: task.eventfds, signalfds: task.signalfds, membarrier: task.membarrier });
  const probe = { pid: 9, regs: syntheticRegs({ eflags: 0x202n }), maps: parseMaps(SYNTHETIC_MAPS), fds: [0, 1, 2] };
  const nrs = (omit: string[]): number[] =>
    compileRestorePlan(image, probe, { ...DEFAULT_POLICY, omit: omit as never }).flatMap((s) => (s.op.op === 'INJECT_SYSCALL' ? [s.op.nr] : []));
  const count = (list: number[], nr: number): number => list.filter((n) => n === nr).length;
  const all = nrs([]);
  t.equal(count(all, 290), 2, 'two eventfd2');
  t.equal(count(all, 289), 1, 'one signalfd4');
  t.equal(count(all, 324), 2, 'two membarrier registrations');
  t.equal(count(nrs(['eventfd']), 290), 0, 'omit=eventfd: none');
  t.equal(count(nrs(['signalfd']), 289), 0, 'omit=signalfd: none');
  t.equal(count(nrs(['membarrier']), 324), 0, 'omit=membarrier: none');
});

t.test('read-back: counters, masks and flags compared as the descriptors are after the plan', async (t) => {
  const task = validateTask(good);
  const image = imageWith({ eventfds: task.eventfds, signalfds: task.signalfds });
  const now = { eventfds: task.eventfds!.map((e) => ({ ...e, semaphore: false })), signalfds: task.signalfds! };
  t.same(compareEventFds(now, image, DEFAULT_POLICY), [], 'the semaphore flag is not compared (no probe after a restore)');
  const wrong = compareEventFds({ eventfds: [{ ...now.eventfds[0]!, count: 2n }], signalfds: [] }, image, DEFAULT_POLICY);
  t.same(
    wrong.map((d) => `${d.what}: ${d.requested} / ${d.accepted}`),
    [
      'fd 4: eventfd count 3 flags 0o4000 / eventfd count 2 flags 0o4000',
      'fd 5: eventfd count 8589934597 flags 0o2000000 / closed',
      'fd 6: signalfd mask 0xa00 flags 0o4000 / closed',
    ],
  );
  t.same(
    compareEventFds({ eventfds: [], signalfds: [] }, image, { ...DEFAULT_POLICY, omit: ['eventfd', 'signalfd'] }),
    [],
    'what omit= leaves out is not expected',
  );
});
