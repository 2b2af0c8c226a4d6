// expect: an image stores the touched pages of anonymous memory and no anonymous zero page, every page of a private file mapping; a userfaultfd region keeps every provided page; stored ranges pack and unpack exactly; a restore drops the target's own pages only where the image leaves pages out.
import t from 'tap';
import { PAGE_FILE, PAGE_PRESENT, PAGE_SWAPPED } from '../harness/agent/ops.ts';
import { dropZeroPages, packStored, pagesToRead, storeRule, unpackStored } from '../harness/restore/stored-pages.ts';
import { compileRestorePlan } from '../harness/restore/plan.ts';
import { imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import { ImageRejectedError } from '../harness/errors.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { reseal, SYNTHETIC_MAPS, syntheticImage, syntheticRegs } from './support/synthetic-image.ts';

const P = 0x1000n;
const anon = { start: 0x7000_0000n, end: 0x7000_0000n + 6n * P, file: null, perms: 'rw-p', userfault: 0 };

t.test('rules: anonymous touched-nonzero, private file every page, shared nonzero, userfaultfd all but absent', async (t) => {
  t.equal(storeRule(anon), 'touched-nonzero');
  t.equal(storeRule({ ...anon, file: '/bin/x' }), 'every');
  t.equal(storeRule({ ...anon, perms: 'rw-s' }), 'nonzero');
  t.equal(storeRule({ ...anon, userfault: 1 }), 'all-but-absent');
});

t.test('pagemap: present or swapped pages are read, merged into ranges; untouched ones are not', async (t) => {
  const map = Buffer.from([PAGE_PRESENT, PAGE_PRESENT | PAGE_FILE, 0, PAGE_SWAPPED, 0, PAGE_PRESENT]);
  t.same(pagesToRead(anon, map), [
    [anon.start, anon.start + 2n * P],
    [anon.start + 3n * P, anon.start + 4n * P],
    [anon.start + 5n * P, anon.end],
  ]);
  t.same(pagesToRead({ ...anon, file: '/bin/x' }, map), [[anon.start, anon.end]], 'a private file mapping: every page, touched or not');
  t.same(pagesToRead({ ...anon, perms: 'rw-s' }, map), [[anon.start, anon.end]], 'shared memory: pagemap is not asked, every page read');
  t.same(
    pagesToRead({ ...anon, userfault: 1, absent: [[anon.start + P, anon.start + 2n * P]] }, map),
    [
      [anon.start, anon.start + P],
      [anon.start + 2n * P, anon.end],
    ],
    'userfaultfd: all but the absent pages',
  );
});

t.test('zero pages: dropped from anonymous memory, kept in file mappings and userfaultfd regions', async (t) => {
  const read = Buffer.alloc(Number(4n * P));
  read.fill(7, 0, 1); // page 0 non-zero
  read.fill(9, Number(3n * P) + 4095, Number(4n * P)); // last byte of page 3
  const ranges: Array<[bigint, bigint]> = [[anon.start, anon.start + 4n * P]];
  t.same(dropZeroPages(anon, ranges, read), [
    [anon.start, anon.start + P],
    [anon.start + 3n * P, anon.start + 4n * P],
  ]);
  t.same(dropZeroPages({ ...anon, perms: 'rw-s' }, ranges, read), [
    [anon.start, anon.start + P],
    [anon.start + 3n * P, anon.start + 4n * P],
  ]);
  t.same(dropZeroPages({ ...anon, file: '/bin/x' }, ranges, read), ranges, "a zero page of a file mapping is not the file's bytes: kept");
  t.same(dropZeroPages({ ...anon, userfault: 1 }, ranges, read), ranges, 'a zero page the server provided is not a missing one: kept');
});

t.test('pack and unpack: the stored bytes in order, zeros elsewhere', async (t) => {
  const full = Buffer.alloc(Number(6n * P));
  for (let i = 0; i < 6; i++) full.fill(i + 1, i * 4096, (i + 1) * 4096);
  const stored: Array<[bigint, bigint]> = [
    [anon.start + P, anon.start + 3n * P],
    [anon.start + 5n * P, anon.end],
  ];
  const packed = packStored(anon, stored, full);
  t.equal(packed.length, 3 * 4096);
  t.same([packed[0], packed[4096], packed[8192]], [2, 3, 6]);
  const back = unpackStored(anon, stored, packed);
  t.same([back[0], back[4096], back[2 * 4096], back[3 * 4096], back[4 * 4096], back[5 * 4096]], [0, 2, 3, 0, 0, 6]);
  t.equal(packStored(anon, [[anon.start, anon.end]], full), full, 'a whole region is not copied');
});

t.test("plan: MADV_DONTNEED on the target's own mappings where pages are left out, before the writes", async (t) => {
  const image = syntheticImage();
  const stack = image.regions[3]!;
  const maps = parseMaps(SYNTHETIC_MAPS);
  const probe = { pid: 7, regs: syntheticRegs(), maps, fds: [0, 1, 2] };
  const whole = compileRestorePlan(image, probe, { rf: 'keep' });
  t.equal(whole.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 28).length, 0, 'every page stored: nothing dropped');
  stack.stored = [[stack.end - P, stack.end]];
  const steps = compileRestorePlan(image, probe, { rf: 'keep' });
  const drops = steps.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 28);
  const inTarget = maps.filter((m) => m.start < stack.end && stack.start < m.end);
  t.ok(inTarget.length > 0, 'the probed target has the stack');
  t.equal(drops.length, inTarget.length, 'one madvise per part of the region the target has');
  for (const d of drops) t.same(d.op.op === 'INJECT_SYSCALL' && d.op.args[2], 4n, 'MADV_DONTNEED');
  const writes = steps.filter((s) => s.op.op === 'WRITE_MEM' && s.op.address >= stack.start && s.op.address < stack.end);
  t.same(
    writes.map((w) => (w.op.op === 'WRITE_MEM' ? [w.op.address, w.op.data.length] : [])),
    [[stack.end - P, 4096]],
    'only the stored page is written',
  );
  t.ok(steps.indexOf(drops.at(-1)!) < steps.indexOf(writes[0]!), 'dropped before written');
});

t.test('a version 8 image (timers, sleep, pkeys, but every page stored) is refused naming what it lacks', async (t) => {
  const v8 = reseal(imageEntries(syntheticImage()), {}, (m) => (m.version = 8));
  let error: unknown;
  try {
    parseImageEntries(v8);
  } catch (e) {
    error = e;
  }
  t.ok(error instanceof ImageRejectedError, `refused: ${(error as Error | undefined)?.message}`);
  t.match((error as ImageRejectedError).message, /version 8 image has no stored page ranges in memory\.json/);
  t.equal((error as ImageRejectedError).field, 'version');
});
