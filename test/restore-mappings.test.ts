// expect: shared anonymous memory is mapped MAP_SHARED|MAP_ANONYMOUS and written; a file mapping the target lacks is
// opened, mapped MAP_PRIVATE or MAP_SHARED with its offset (each piece its own) and closed; a shared file mapping's
// contents are never written; a missing or shrunk file fails the plan naming the mapping; omit=mapping-kinds maps
// everything private anonymous; memory.json's new fields are checked as hostile input; checkpoint selection keeps
// shared mappings and other files' text.
import t from 'tap';
import { ImageRejectedError } from '../harness/errors.ts';
import { imageEntries, memoryEntryName, parseImageEntries, type CheckpointImage, type MemoryRegion } from '../harness/restore/checkpoint-image.ts';
import { compileRestorePlan, PlanError, type PlanStep } from '../harness/restore/plan.ts';
import { hasContents, isDumped, mappedFile, parseMaps } from '../harness/restore/proc-maps.ts';
import { reseal, syntheticImage, syntheticRegs, SYNTHETIC_MAPS } from './support/synthetic-image.ts';

const PRIV = '/tmp/data.priv';
const SHARED = '/tmp/data.shared';
const EXTRA_MAPS = [
  '200000000-200002000 rw-s 00000000 00:01 1031 /dev/zero (deleted)',
  '200100000-200102000 rw-p 00001000 00:02 77 /tmp/data.priv',
  '200102000-200103000 r--p 00003000 00:02 77 /tmp/data.priv',
  '200200000-200202000 rw-s 00001000 00:02 78 /tmp/data.shared',
];
const EXTRA: MemoryRegion[] = [
  { start: 0x200000000n, end: 0x200002000n, perms: 'rw-s', name: '/dev/zero (deleted)', file: null, offset: 0n, entry: 'memory/0100.bin' },
  { start: 0x200100000n, end: 0x200102000n, perms: 'rw-p', name: PRIV, file: PRIV, offset: 0x1000n, entry: 'memory/0101.bin' },
  { start: 0x200102000n, end: 0x200103000n, perms: 'r--p', name: PRIV, file: PRIV, offset: 0x3000n, entry: 'memory/0102.bin' },
  { start: 0x200200000n, end: 0x200202000n, perms: 'rw-s', name: SHARED, file: SHARED, offset: 0x1000n, entry: null },
];

function imageWithMappings(): CheckpointImage {
  const base = syntheticImage();
  const lines = SYNTHETIC_MAPS.split('\n');
  const maps = [...lines.slice(0, 4), ...EXTRA_MAPS, ...lines.slice(4)].join('\n');
  const regions = [...base.regions.slice(0, 3), ...EXTRA, ...base.regions.slice(3)];
  const memory = new Map(base.memory);
  for (const r of EXTRA) if (r.entry) memory.set(r.entry, Buffer.alloc(Number(r.end - r.start), 0x5a));
  return { ...base, maps, regions, memory };
}

const targetMaps = parseMaps(
  SYNTHETIC_MAPS.split('\n')
    .filter((l) => !l.includes('[heap]'))
    .map((l) => l.replace('7ffffffde000-7ffffffff000', '7ffffffef000-7ffffffff000'))
    .join('\n'),
);
const files = new Map([
  [PRIV, { size: 0x4000n, regular: true }],
  [SHARED, { size: 0x3000n, regular: true }],
  ['/usr/local/bin/hwbreak', { size: 0x100000n, regular: true }],
]);
const probe = { pid: 100, regs: syntheticRegs({ eflags: 0x202n }), maps: targetMaps, fds: [0, 1, 2], files };
const syscalls = (plan: PlanStep[], nr: number) =>
  plan
    .filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === nr)
    .map((s) => ({ args: (s.op as { args: readonly bigint[] }).args, expect: s.expect, why: s.why }));
const MAP_SHARED = 0x01n;
const MAP_PRIVATE = 0x02n;
const MAP_ANONYMOUS = 0x20n;
const MAP_FIXED_NOREPLACE = 0x100000n;

t.test('each kind of mapping gets its own mmap', async (t) => {
  const plan = compileRestorePlan(imageWithMappings(), probe, { rf: 'keep' });
  const mmaps = syscalls(plan, 9).filter((m) => m.args[0]! >= 0x200000000n && m.args[0]! < 0x300000000n);
  t.same(
    mmaps.map((m) => [m.args[0], m.args[1], m.args[3], m.args[4], m.args[5]]),
    [
      [0x200000000n, 0x2000n, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, 0xffffffffffffffffn, 0n],
      [0x200100000n, 0x2000n, MAP_PRIVATE | MAP_FIXED_NOREPLACE, 3n, 0x1000n],
      [0x200102000n, 0x1000n, MAP_PRIVATE | MAP_FIXED_NOREPLACE, 3n, 0x3000n],
      [0x200200000n, 0x2000n, MAP_SHARED | MAP_FIXED_NOREPLACE, 3n, 0x1000n],
    ],
    'shared anonymous; private file at its offsets (one piece each); shared file at its offset',
  );
  t.same(
    mmaps.map((m) => m.expect),
    [0x200000000n, 0x200100000n, 0x200102000n, 0x200200000n],
    'each must land at its address',
  );
  t.same(
    mmaps.map((m) => m.args[2]),
    [3n, 3n, 3n, 3n],
    'mapped writable (shared rw-s: its own prot), protections come later',
  );

  const opens = syscalls(plan, 257);
  t.equal(opens.length, 3, 'one open per file piece');
  t.same(
    opens.map((o) => [o.args[2], o.expect]),
    [
      [0o2000000n, 3n],
      [0o2000000n, 3n],
      [0o2000002n, 3n],
    ],
    'read-only for the private file, read-write for the shared rw-s one; the lowest free fd, 3',
  );
  const pathAt = opens[0]!.args[1]!;
  const written = plan.find((s) => s.op.op === 'WRITE_MEM' && s.op.address === pathAt)!.op as { data: Uint8Array };
  t.equal(Buffer.from(written.data).toString('latin1'), `${PRIV}\0${SHARED}\0`, 'the paths, NUL-terminated, in a scratch page');
  const closes = syscalls(plan, 3);
  t.same(
    closes.map((c) => [c.args[0], c.expect]),
    [
      [3n, 0n],
      [3n, 0n],
      [3n, 0n],
    ],
    'every fd closed again',
  );
  const order = plan.map((s) => (s.op.op === 'INJECT_SYSCALL' ? s.op.nr : -1));
  for (let i = 0; i < order.length; i++) if (order[i] === 257) t.same([order[i + 1], order[i + 2]], [9, 3], `open ${i}: then mmap, then close`);

  const contents = plan.filter((s) => s.op.op === 'WRITE_MEM' && s.why.startsWith('contents')).map((s) => (s.op as { address: bigint }).address);
  t.ok(contents.includes(0x200000000n), 'shared anonymous contents written');
  t.ok(contents.includes(0x200100000n) && contents.includes(0x200102000n), 'private file contents (copy-on-write pages) written');
  t.notOk(
    contents.some((a) => a >= 0x200200000n && a < 0x200202000n),
    'no write into the shared file mapping (it would write the file)',
  );
  const mprotects = syscalls(plan, 10).filter((m) => m.args[0]! >= 0x200000000n && m.args[0]! < 0x300000000n);
  t.same(
    mprotects.map((m) => m.args[2]),
    [3n, 3n, 1n, 3n],
    'protections per region',
  );
  t.notOk(
    syscalls(plan, 257).some((o) =>
      plan.some(
        (s) =>
          s.op.op === 'WRITE_MEM' &&
          s.op.address === o.args[1] &&
          Buffer.from((s.op as { data: Uint8Array }).data)
            .toString()
            .includes('hwbreak'),
      ),
    ),
    'the binary, which the target maps already, is not opened',
  );
});

t.test('a missing or shrunk file fails the plan, naming the mapping', async (t) => {
  const gone = { ...probe, files: new Map([...files, [SHARED, null]]) };
  t.throws(
    () => compileRestorePlan(imageWithMappings(), gone, { rf: 'keep' }),
    new PlanError('mapping 0x200200000-0x200202000 rw-s /tmp/data.shared @ 0x1000: /tmp/data.shared no longer exists'),
  );
  const shrunk = { ...probe, files: new Map([...files, [PRIV, { size: 0x3000n, regular: true }]]) };
  t.throws(
    () => compileRestorePlan(imageWithMappings(), shrunk, { rf: 'keep' }),
    /mapping 0x200102000-0x200103000 r--p \/tmp\/data\.priv @ 0x3000: .* is 12288 bytes now, the mapping reaches file offset 0x4000/,
  );
  const partial = { ...probe, files: new Map([...files, [PRIV, { size: 0x3001n, regular: true }]]) };
  t.doesNotThrow(() => compileRestorePlan(imageWithMappings(), partial, { rf: 'keep' }), 'a file ending inside the last page is enough');
  const unprobed = { ...probe, files: undefined };
  t.throws(() => compileRestorePlan(imageWithMappings(), unprobed, { rf: 'keep' }), PlanError, 'no probe, no plan');
});

t.test('a shared or file region over something else in the target fails the plan', async (t) => {
  const occupied = { ...probe, maps: [...targetMaps, ...parseMaps('200200000-200201000 rw-p 00000000 00:00 0')] };
  t.throws(
    () => compileRestorePlan(imageWithMappings(), occupied, { rf: 'keep' }),
    /mapping 0x200200000-0x200202000 rw-s .*: the fresh target has 0x200200000-0x200201000 rw-p anonymous there/,
  );
});

t.test('omit=mapping-kinds: everything private anonymous, no file opened, the shared file left unwritten', async (t) => {
  const plan = compileRestorePlan(imageWithMappings(), probe, { rf: 'keep', omit: ['mapping-kinds'] });
  const mmaps = syscalls(plan, 9).filter((m) => m.args[0]! >= 0x200000000n && m.args[0]! < 0x300000000n);
  t.same(
    mmaps.map((m) => m.args[3]),
    [0x100022n, 0x100022n, 0x100022n, 0x100022n],
    'MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE each',
  );
  t.equal(syscalls(plan, 257).length, 0, 'no open');
  const gone = { ...probe, files: new Map([...files, [SHARED, null]]) };
  t.doesNotThrow(() => compileRestorePlan(imageWithMappings(), gone, { rf: 'keep', omit: ['mapping-kinds'] }), 'files are not looked at');
});

t.test('checkpoint selection', async (t) => {
  const maps = parseMaps(
    [...EXTRA_MAPS, '10001000-10080000 r-xp 00001000 00:02 12 /usr/local/bin/hwbreak', '30000000-30010000 r-xp 00000000 00:02 13 /usr/lib/libx.so'].join('\n'),
  );
  t.same(
    maps.map((m) => [isDumped(m, '/usr/local/bin/hwbreak'), mappedFile(m) ?? null, hasContents(m)]),
    [
      [true, null, true],
      [true, PRIV, true],
      [true, PRIV, true],
      [true, SHARED, false],
      [false, '/usr/local/bin/hwbreak', true],
      [true, '/usr/lib/libx.so', true],
    ],
    "shared anonymous (/dev/zero (deleted)) is anonymous; a shared file mapping has no contents of its own; only the binary's text is left out",
  );
});

t.test('memory.json: the new fields are hostile input', async (t) => {
  const image = imageWithMappings();
  // Renumber the entries as the writer would.
  const renamed = new Map<string, string>();
  const regions = image.regions.map((r, i) => (r.entry === null ? r : (renamed.set(memoryEntryName(i), r.entry), { ...r, entry: memoryEntryName(i) })));
  const memory = new Map([...renamed].map(([to, from]) => [to, image.memory.get(from)!]));
  const entries = imageEntries({ ...image, regions, memory });
  const back = parseImageEntries(entries);
  t.same(
    back.regions.map((r) => [r.file, r.offset, r.entry === null]),
    regions.map((r) => [r.file, r.offset, r.entry === null]),
    'round trip',
  );
  const mutate = (edit: (r: Array<Record<string, unknown>>) => void) => {
    const list = JSON.parse(entries.get('memory.json')!.toString()) as Array<Record<string, unknown>>;
    edit(list);
    return () => parseImageEntries(reseal(entries, { 'memory.json': Buffer.from(JSON.stringify(list)) }));
  };
  const rejects = (fn: () => unknown, field: string) => {
    try {
      fn();
      t.fail(`accepted; expected ${field} to be refused`);
    } catch (error) {
      t.ok(error instanceof ImageRejectedError && (error as ImageRejectedError).message.includes(field), `${field}: ${(error as Error).message}`);
    }
  };
  rejects(
    mutate((r) => (r[4]!.file = 'tmp/relative')),
    '[4].file',
  );
  rejects(
    mutate((r) => (r[4]!.file = '/tmp/../etc/shadow')),
    '[4].file',
  );
  rejects(
    mutate((r) => (r[4]!.file = '/proc/self/mem')),
    '[4].file',
  );
  rejects(
    mutate((r) => (r[4]!.file = '/tmp/x (deleted)')),
    '[4].file',
  );
  rejects(
    mutate((r) => (r[4]!.file = 7)),
    '[4].file',
  );
  rejects(
    mutate((r) => delete r[4]!.file),
    '[4].file',
  );
  rejects(
    mutate((r) => (r[4]!.offset = '0x1001')),
    '[4].offset',
  );
  rejects(
    mutate((r) => (r[4]!.offset = 4096)),
    '[4].offset',
  );
  rejects(
    mutate((r) => (r[3]!.offset = '0x1000')),
    '[3].offset',
  );
  rejects(
    mutate((r) => (r[4]!.offset = '0x7ffffffffffff000')),
    '[4].offset',
  );
  rejects(
    mutate((r) => (r[6]!.entry = 'memory/0001.bin')),
    '[6].entry',
  );
  rejects(
    mutate((r) => (r[3]!.entry = null)),
    '[3].entry',
  );
  rejects(
    mutate((r) => (r[6]!.perms = 'rw-x')),
    '[6].perms',
  );
});

t.test('VmFlags given back: MAP_NORESERVE at the mmap, a read-write open for mw, madvise and mlock after the protections', async (t) => {
  const base = imageWithMappings();
  // The private file mapping's first VMA advised and locked and reserved nothing; the shared file mapping read-only now, writable later.
  const regions = base.regions.map((r): MemoryRegion => {
    if (r.start === 0x200000000n) return { ...r, perms: 'rw-p', name: '', vmFlags: ['nr', 'dc', 'lo'] };
    if (r.start === 0x200200000n) return { ...r, perms: 'r--s', vmFlags: ['mw'] };
    return r;
  });
  const image = { ...base, regions };
  const plan = compileRestorePlan(image, probe, { rf: 'keep' });
  const anon = syscalls(plan, 9).find((m) => m.args[0] === 0x200000000n)!;
  t.equal(anon.args[3], MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | 0x4000n, 'MAP_NORESERVE at the mmap');
  const open = syscalls(plan, 257).find((o) => o.why.includes(SHARED))!;
  t.equal(open.args[2]! & 3n, 2n, `O_RDWR for the shared file mapping read-only now (${open.why})`);
  const sharedMap = syscalls(plan, 9).find((m) => m.args[0] === 0x200200000n)!;
  t.equal(sharedMap.args[2], 1n, 'mapped with its present protection, PROT_READ');
  const ops = plan.map((s) => (s.op.op === 'INJECT_SYSCALL' ? s.op.nr : -1));
  const lastProtect = ops.lastIndexOf(10);
  t.same(
    syscalls(plan, 28)
      .filter((m) => m.args[2] === 10n)
      .map((m) => [m.args[0], m.args[1]]),
    [[0x200000000n, 0x2000n]],
    'MADV_DONTFORK on the region',
  );
  t.ok(ops.indexOf(325) > lastProtect && ops.lastIndexOf(28) > lastProtect, 'madvise and mlock2 after the last mprotect');
  t.same(
    syscalls(plan, 325).map((m) => m.args),
    [[0x200000000n, 0x2000n, 0n]],
    'mlock2(flags 0): mlock',
  );
  const control = compileRestorePlan(image, probe, { rf: 'keep', omit: ['vma-flags'] });
  t.equal(syscalls(control, 325).length, 0, 'omit=vma-flags: no mlock');
  t.equal(syscalls(control, 257).find((o) => o.why.includes(SHARED))!.args[2]! & 3n, 0n, 'omit=vma-flags: the file opened read-only');
  t.equal(syscalls(control, 9).find((m) => m.args[0] === 0x200000000n)!.args[3]! & 0x4000n, 0n, 'omit=vma-flags: no MAP_NORESERVE');

  // Through the image: written only when present, read back, hostile values refused naming the field.
  const renamed = new Map<string, string>();
  const numbered = regions.map((r, i) => (r.entry === null ? r : (renamed.set(memoryEntryName(i), r.entry), { ...r, entry: memoryEntryName(i) })));
  const memory = new Map([...renamed].map(([to, from]) => [to, base.memory.get(from)!]));
  const entries = imageEntries({ ...image, regions: numbered, memory });
  const list = JSON.parse(entries.get('memory.json')!.toString()) as Array<Record<string, unknown>>;
  t.equal(list.filter((r) => 'vmFlags' in r).length, 2, 'vmFlags written for the two regions that have some, no other');
  t.same(
    parseImageEntries(entries)
      .regions.filter((r) => r.vmFlags)
      .map((r) => r.vmFlags),
    [['nr', 'dc', 'lo'], ['mw']],
    'read back',
  );
  const at = list.findIndex((r) => r.start === '0x200000000');
  for (const [bad, why] of [
    [['ht'], /"ht" is not a flag a restore gives back/],
    [['mw'], /mw is recorded only for a shared file mapping/],
    ['dc', /non-empty list/],
  ] as const) {
    const copy = structuredClone(list);
    copy[at]!.vmFlags = bad;
    t.throws(() => parseImageEntries(reseal(entries, { 'memory.json': Buffer.from(JSON.stringify(copy)) })), {
      name: 'ImageRejectedError',
      message: new RegExp(`\\[${at}\\]\\.vmFlags.*${why.source}`),
    });
  }
});
