// expect: a userfaultfd's fdinfo and smaps VmFlags (recorded from a real kernel) parse to its flags, features and
// registrations; what a checkpoint cannot hold (two userfaultfds, write-protect mode, a registered file) is refused
// naming it; the plan leaves absent pages unwritten, and after every memory write creates the userfaultfd at its
// number, repeats UFFDIO_API with its features and UFFDIO_REGISTER for each registered range; omit=userfaultfd writes
// the whole region and creates nothing; memory.json's and task.json's new fields are checked as hostile input.
import t from 'tap';
import { CheckpointError, ImageRejectedError } from '../harness/errors.ts';
import { imageEntries, parseImageEntries, type CheckpointImage, type MemoryRegion } from '../harness/restore/checkpoint-image.ts';
import { compileRestorePlan, type PlanStep } from '../harness/restore/plan.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { validateTask } from '../harness/restore/validate.ts';
import {
  checkRegistrations,
  parseSmapsRegistrations,
  parseUserfaultfdFdinfo,
  presentSlices,
  UFFD_MODE,
  userfaultfdSteps,
} from '../harness/restore/userfaultfd.ts';
import { reseal, syntheticImage, syntheticRegs, SYNTHETIC_MAPS } from './support/synthetic-image.ts';

/** /proc/PID/fdinfo/3 of userfaultfd(O_CLOEXEC|O_NONBLOCK) after UFFDIO_API with UFFD_FEATURE_THREAD_ID (Linux 6.18). */
const FDINFO = 'pos:\t0\nflags:\t02004000\nmnt_id:\t17\nino:\t767163\npending:\t0\ntotal:\t0\nAPI:\taa:80000100:80000000000001ff\n';
/** The same kernel's smaps for three pages, the middle one registered MISSING (Rss and VmFlags lines kept). */
const SMAPS = [
  '300000000-300001000 rw-p 00000000 00:00 0 ',
  'Rss:                   4 kB',
  'VmFlags: rd wr mr mw me ac ',
  '300001000-300002000 rw-p 00000000 00:00 0 ',
  'Rss:                   0 kB',
  'VmFlags: rd wr mr mw me um ac ',
  '300002000-300003000 rw-p 00000000 00:00 0 ',
  'Rss:                   0 kB',
  'VmFlags: rd wr mr mw me ac ',
].join('\n');

t.test('fdinfo and smaps, as the kernel writes them', async (t) => {
  t.same(
    parseUserfaultfdFdinfo(FDINFO),
    { flags: 0o2004000, features: 0x100 },
    "O_CLOEXEC|O_NONBLOCK, UFFD_FEATURE_THREAD_ID (the kernel's INITIALIZED bit dropped)",
  );
  t.same(parseUserfaultfdFdinfo(FDINFO.replace('80000100', '0')), { flags: 0o2004000, features: null }, 'no UFFDIO_API yet: no features to ask for again');
  t.throws(() => parseUserfaultfdFdinfo('pos:\t0\nflags:\t02\n'), CheckpointError, 'an fdinfo without its API line is refused');
  const modes = parseSmapsRegistrations(SMAPS);
  t.same(
    [...modes],
    [
      [0x300000000n, 0],
      [0x300001000n, UFFD_MODE.MISSING],
      [0x300002000n, 0],
    ],
  );
  t.equal(parseSmapsRegistrations('300000000-300001000 rw-p 0 00:00 0\nVmFlags: rd wr um uw ui\n').get(0x300000000n), 7, 'um uw ui: MISSING|WP|MINOR');
});

t.test('what a checkpoint cannot hold is refused, naming it', async (t) => {
  const maps = parseMaps(
    SMAPS.split('\n')
      .filter((l) => /^3/.test(l))
      .join('\n'),
  );
  const registered = maps.map((m, i) => ({ ...m, userfault: i === 1 ? UFFD_MODE.MISSING : 0 }));
  const one = [{ fd: 3, flags: 0, features: 0 }];
  t.doesNotThrow(() => checkRegistrations(42, registered, one));
  t.doesNotThrow(
    () =>
      checkRegistrations(
        42,
        maps.map((m) => ({ ...m, userfault: 0 })),
        [],
      ),
    'nothing registered: nothing needed',
  );
  t.throws(() => checkRegistrations(42, registered, []), /0 userfaultfd descriptors/);
  t.throws(() => checkRegistrations(42, registered, [...one, { fd: 4, flags: 0, features: 0 }]), /2 userfaultfd descriptors/);
  t.throws(
    () =>
      checkRegistrations(
        42,
        registered.map((m) => ({ ...m, userfault: m.userfault ? UFFD_MODE.WP : 0 })),
        one,
      ),
    /300001000.*registered WP: only MISSING/,
  );
  t.throws(
    () =>
      checkRegistrations(
        42,
        registered.map((m) => ({ ...m, name: '/tmp/f' })),
        one,
      ),
    /not private anonymous/,
  );
});

t.test('present slices: what a restore writes of a region', async (t) => {
  const region = { start: 0x1000n, end: 0x5000n };
  t.same(presentSlices({ ...region, absent: [] }), [[0, 0x4000]]);
  t.same(presentSlices({ ...region, absent: [[0x2000n, 0x3000n]] }), [
    [0, 0x1000],
    [0x2000, 0x4000],
  ]);
  t.same(
    presentSlices({
      ...region,
      absent: [
        [0x1000n, 0x2000n],
        [0x4000n, 0x5000n],
      ],
    }),
    [[0x1000, 0x3000]],
  );
  t.same(presentSlices({ ...region, absent: [[0x1000n, 0x5000n]] }), []);
});

const UFFD_MAPS = '300000000-300001000 rw-p 00000000 00:00 0 \n300001000-300002000 rw-p 00000000 00:00 0 ';
const REGISTERED: MemoryRegion[] = [
  { start: 0x300000000n, end: 0x300001000n, perms: 'rw-p', name: '', file: null, offset: 0n, entry: 'memory/0200.bin', stored: [[0x300000000n, 0x300001000n]] },
  {
    start: 0x300001000n,
    end: 0x300002000n,
    perms: 'rw-p',
    name: '',
    file: null,
    offset: 0n,
    entry: 'memory/0201.bin',
    userfault: UFFD_MODE.MISSING,
    absent: [[0x300001000n, 0x300002000n]],
    stored: [],
  },
];

function imageWithUserfaultfd(): CheckpointImage {
  const base = syntheticImage();
  const lines = SYNTHETIC_MAPS.split('\n');
  const memory = new Map(base.memory);
  memory.set('memory/0200.bin', Buffer.alloc(0x1000, 0x77));
  memory.set('memory/0201.bin', Buffer.alloc(0x1000));
  return {
    ...base,
    maps: [...lines.slice(0, 4), UFFD_MAPS, ...lines.slice(4)].join('\n'),
    regions: [...base.regions.slice(0, 3), ...REGISTERED, ...base.regions.slice(3)],
    memory,
    task: {
      pgid: 1,
      sid: 1,
      files: [{ fd: 3, path: '/tmp/log', flags: 1, pos: 0n, kind: 'file' }],
      userfaultfds: [{ fd: 4, flags: 0o2000000, features: 0x100 }],
    },
  };
}

const probe = {
  pid: 7,
  regs: syntheticRegs(),
  maps: parseMaps(
    SYNTHETIC_MAPS.split('\n')
      .filter((l) => !l.includes('[heap]'))
      .join('\n'),
  ),
  fds: [0, 1, 2],
  files: new Map(),
};
const injected = (steps: PlanStep[], nr: number) => steps.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === nr);
const argsOf = (s: PlanStep): bigint[] => (s.op.op === 'INJECT_SYSCALL' ? [...s.op.args] : []);
const writesTo = (steps: PlanStep[], start: bigint, end: bigint) => steps.filter((s) => s.op.op === 'WRITE_MEM' && s.op.address >= start && s.op.address < end);

t.test('plan: absent pages unwritten; the userfaultfd at its number, its features, its ranges — after the writes', async (t) => {
  const steps = compileRestorePlan(imageWithUserfaultfd(), probe, { rf: 'keep' });
  t.equal(writesTo(steps, 0x300000000n, 0x300001000n).length, 1, 'the present page beside it is written');
  t.equal(writesTo(steps, 0x300001000n, 0x300002000n).length, 0, 'the absent page is not');
  const created = injected(steps, 323);
  t.equal(created.length, 1);
  t.same(argsOf(created[0]!), [0o2000000n], 'userfaultfd(O_CLOEXEC)');
  t.equal(created[0]!.expect, 4n, 'fd 3 is the restored file, so the lowest free descriptor is the checkpointed 4: no dup3');
  const ioctls = injected(steps, 16).map(argsOf);
  t.same(
    ioctls.map((a) => [a[0], a[1]]),
    [
      [4n, 0xc018aa3fn],
      [4n, 0xc020aa00n],
    ],
    'UFFDIO_API, then UFFDIO_REGISTER, on fd 4',
  );
  const scratch = steps.find((s) => s.op.op === 'WRITE_MEM' && s.why === 'uffdio_api and uffdio_register structures')!.op;
  const at = (address: bigint) => (scratch.op === 'WRITE_MEM' ? Buffer.from(scratch.data).subarray(Number(address - scratch.address)) : Buffer.alloc(0));
  t.equal(at(ioctls[0]![2]!).readBigUInt64LE(0), 0xaan, 'uffdio_api.api = UFFD_API');
  t.equal(at(ioctls[0]![2]!).readBigUInt64LE(8), 0x100n, 'uffdio_api.features as checkpointed');
  t.same(
    [0, 8, 16].map((o) => at(ioctls[1]![2]!).readBigUInt64LE(o)),
    [0x300001000n, 0x1000n, 1n],
    'uffdio_register: the range, MISSING',
  );
  const lastWrite = Math.max(...steps.flatMap((s, i) => (s.op.op === 'WRITE_MEM' && s.op.address >= 0x300000000n && s.op.address < 0x300002000n ? [i] : [])));
  t.ok(steps.indexOf(created[0]!) > lastWrite, "created after the region's memory is written");

  const noFiles = compileRestorePlan(imageWithUserfaultfd(), probe, { rf: 'keep', omit: ['files'] });
  t.same(injected(noFiles, 323)[0]!.expect, 3n, 'omit=files: fd 3 is free, so userfaultfd returns 3 …');
  t.same(
    injected(noFiles, 292).map((s) => argsOf(s).slice(0, 2)),
    [[3n, 4n]],
    '… and dup3 moves it to 4',
  );

  const omitted = compileRestorePlan(imageWithUserfaultfd(), probe, { rf: 'keep', omit: ['userfaultfd'] });
  t.equal(injected(omitted, 323).length + injected(omitted, 16).length, 0, 'omit=userfaultfd: no userfaultfd, no ioctl');
  // Format 8: the image does not store an absent page; the region is mapped fresh, unregistered, so it reads zeros.
  t.equal(writesTo(omitted, 0x300001000n, 0x300002000n).length, 0, 'and the absent page, not stored, is left to read as zeros');
});

t.test('userfaultfdSteps: nothing without a userfaultfd; a taken number is refused', async (t) => {
  t.same(userfaultfdSteps(7, [], REGISTERED, [0, 1, 2], 0x1000n), []);
  t.throws(() => userfaultfdSteps(7, [{ fd: 5, flags: 0, features: 0 }], REGISTERED, [0, 1, 2, 5], 0x1000n), /fd 5 is already open/);
  const noApi = userfaultfdSteps(7, [{ fd: 3, flags: 0, features: null }], REGISTERED, [0, 1, 2], 0x1000n);
  t.equal(noApi.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 16).length, 0, 'a userfaultfd that never had UFFDIO_API gets none');
});

t.test('memory.json and task.json: the new fields, as hostile input', async (t) => {
  const entries = imageEntries(imageWithUserfaultfd());
  const back = parseImageEntries(entries);
  t.same(
    back.regions.find((r) => r.userfault),
    REGISTERED[1],
    'round trip: registration and absent range',
  );
  t.same(back.task.userfaultfds, [{ fd: 4, flags: 0o2000000, features: 0x100 }]);

  const regionsJson = () => JSON.parse(entries.get('memory.json')!.toString()) as Array<Record<string, unknown>>;
  const rejects = (entry: string, data: Buffer, field: RegExp | string) => {
    try {
      parseImageEntries(reseal(entries, { [entry]: data }));
      t.fail(`accepted a bad ${field}`);
    } catch (error) {
      t.ok(
        error instanceof ImageRejectedError && error.entry === entry && (typeof field === 'string' ? error.field === field : field.test(error.field)),
        `${(error as Error).message}`,
      );
    }
  };
  const index = regionsJson().findIndex((r) => r.userfault === 1);
  const region = (mutate: (r: Record<string, unknown>) => void) => {
    const list = regionsJson();
    mutate(list[index]!);
    return Buffer.from(JSON.stringify(list));
  };
  rejects(
    'memory.json',
    region((r) => (r.userfault = 2)),
    `[${index}].userfault`,
  );
  rejects(
    'memory.json',
    region((r) => (r.userfault = 'x')),
    `[${index}].userfault`,
  );
  rejects(
    'memory.json',
    region((r) => delete r.absent),
    `[${index}].absent`,
  );
  rejects(
    'memory.json',
    region((r) => (r.absent = [['0x300001000', '0x300003000']])),
    `[${index}].absent[0]`,
  );
  rejects(
    'memory.json',
    region((r) => (r.absent = [['0x300001800', '0x300002000']])),
    `[${index}].absent[0]`,
  );
  rejects(
    'memory.json',
    region((r) => (r.absent = [['0x300001000']])),
    `[${index}].absent[0]`,
  );
  rejects(
    'memory.json',
    region((r) => (r.userfault = 0)),
    `[${index}].absent`,
  );
  // Format 8: an absent page is never stored — bytes for it do not fit the stored ranges, and a range naming it is refused.
  const withData = reseal(entries, { 'memory/0201.bin': Buffer.alloc(0x1000, 1) });
  t.throws(
    () => parseImageEntries(withData),
    /0x0 bytes memory\.json\[\d+\]\.stored names|bytes for the 0 bytes/,
    'an absent page with bytes in the image is refused: nothing hides there',
  );
  rejects(
    'memory.json',
    region((r) => (r.stored = [['0x300001000', '0x300002000']])),
    `[${index}].stored[0]`,
  );
  const task = (mutate: (j: Record<string, unknown> & { userfaultfds: Array<Record<string, unknown>> }) => void) => {
    const j = JSON.parse(entries.get('task.json')!.toString());
    mutate(j);
    return Buffer.from(JSON.stringify(j));
  };
  rejects(
    'task.json',
    task((j) => (j.userfaultfds = [])),
    'userfaultfds',
  );
  rejects(
    'task.json',
    task((j) => (j.userfaultfds[0]!.fd = 3)),
    'userfaultfds[0].fd',
  );
  rejects(
    'task.json',
    task((j) => (j.userfaultfds[0]!.flags = 2)),
    'userfaultfds[0].flags',
  );
  rejects(
    'task.json',
    task((j) => (j.userfaultfds[0]!.features = 0x10000)),
    'userfaultfds[0].features',
  );
  rejects(
    'task.json',
    task((j) => (j.userfaultfds[0]!.features = null)),
    'userfaultfds',
  );
  rejects(
    'task.json',
    task((j) => (j.userfaultfds = 'x' as never)),
    'userfaultfds',
  );
  t.same(
    validateTask({ pgid: 1, sid: 1, files: [], userfaultfds: [{ fd: 9, flags: 0o4000, features: null }] }).userfaultfds,
    [{ fd: 9, flags: 0o4000, features: null }],
    'a userfaultfd that owns nothing needs no API',
  );
});
