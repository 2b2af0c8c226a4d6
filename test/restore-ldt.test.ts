// expect: LDT descriptors decode to the user_desc modify_ldt makes them from and encode back bit for bit; descriptors modify_ldt cannot make are refused by slot; ldt.json is validated field by field; the plan installs the LDT before any register write, and omit=ldt installs nothing.
import t from 'tap';
import { rejects } from './support/rejects.ts';
import { CheckpointError } from '../harness/errors.ts';
import { imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import { decodeDescriptor, encodeDescriptor, encodeUserDesc, ldtEntryProblem, ldtSteps, parseLdtTable } from '../harness/restore/ldt.ts';
import type { LdtEntry } from '../harness/restore/image-model.ts';
import { compileRestorePlan } from '../harness/restore/plan.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { reseal, SYNTHETIC_LDT, SYNTHETIC_MAPS, syntheticImage, syntheticRegs } from './support/synthetic-image.ts';

/** Read by modify_ldt(0) from the ldt workload on a 6.18 host kernel: entry 3 (data, present, AVL) and entry 5 (not present). */
const RECORDED = { 3: 0x1a50f30a60d00017n, 5: 0x1a50730a8400003fn } as const;
const data = (overrides: Partial<LdtEntry> = {}): LdtEntry => ({
  entry_number: 3,
  base_addr: 0x1a0a60d0,
  limit: 0x17,
  seg_32bit: 1,
  contents: 0,
  read_exec_only: 0,
  limit_in_pages: 0,
  seg_not_present: 0,
  useable: 1,
  lm: 0,
  ...overrides,
});

t.test('recorded descriptors decode to the user_desc the workload passed, and encode back', async (t) => {
  t.same(decodeDescriptor(3, RECORDED[3]), { entry: data() });
  t.same(decodeDescriptor(5, RECORDED[5]), { entry: data({ entry_number: 5, base_addr: 0x1a0a8400, limit: 0x3f, seg_not_present: 1 }) });
  t.equal(encodeDescriptor(data()), RECORDED[3]);
  t.equal(decodeDescriptor(0, 0n), undefined, 'a zero descriptor is an empty slot');
});

t.test('every user_desc modify_ldt accepts round-trips through its descriptor', async (t) => {
  let tried = 0;
  for (let flags = 0; flags < 1 << 6; flags++) {
    for (let contents = 0; contents < 4; contents++) {
      for (const [base, limit] of [
        [0, 0],
        [0xdeadbeef, 0xfffff],
        [0x12345678, 0x1],
      ] as const) {
        const e = data({
          entry_number: 8191,
          base_addr: base,
          limit,
          contents,
          seg_32bit: flags & 1,
          read_exec_only: (flags >> 1) & 1,
          limit_in_pages: (flags >> 2) & 1,
          seg_not_present: (flags >> 3) & 1,
          useable: (flags >> 4) & 1,
        });
        if (ldtEntryProblem(e)) continue;
        tried++;
        const back = decodeDescriptor(8191, encodeDescriptor(e));
        if (!back || !('entry' in back) || JSON.stringify(back.entry) !== JSON.stringify(e))
          t.fail(`${JSON.stringify(e)} came back as ${JSON.stringify(back)}`);
      }
    }
  }
  t.ok(tried > 300, `${tried} user_descs round-tripped`);
});

t.test('descriptors modify_ldt never writes are refused, naming the slot', async (t) => {
  const present = RECORDED[3];
  t.match(decodeDescriptor(1, present & ~(1n << 44n)), { why: /system descriptor/ });
  t.match(decodeDescriptor(1, present & ~(3n << 45n)), { why: /DPL 0/ });
  t.match(decodeDescriptor(1, (present & ~(3n << 45n)) | (1n << 45n) | (1n << 43n)), { why: /DPL 1/ }, 'a code segment with DPL 1');
  t.match(decodeDescriptor(1, present | (1n << 53n)), { why: /L = 1/ });
  t.match(decodeDescriptor(1, present & ~(1n << 40n)), { why: /accessed/ });
  t.match(decodeDescriptor(1, present | (3n << 42n)), { why: /conforming code/ }, 'present conforming code');
  const table = Buffer.alloc(64);
  table.writeBigUInt64LE(RECORDED[3], 3 * 8);
  table.writeBigUInt64LE(RECORDED[5], 5 * 8);
  t.same(
    parseLdtTable(7, table, 64n).map((e) => e.entry_number),
    [3, 5],
    'empty slots skipped',
  );
  t.same(parseLdtTable(7, table, 0n), [], 'no LDT');
  table.writeBigUInt64LE(present | (1n << 53n), 6 * 8);
  const refusal = (() => {
    try {
      parseLdtTable(7, table, 64n);
    } catch (error) {
      return error;
    }
  })();
  t.ok(refusal instanceof CheckpointError, 'a CheckpointError');
  t.match((refusal as CheckpointError).message, /LDT entry 6 of pid 7: .*L = 1/);
  t.equal((refusal as CheckpointError).details.field, 'ldt[6]');
  t.throws(() => parseLdtTable(7, table, 60n), CheckpointError, 'not a whole number of descriptors');
  t.throws(() => parseLdtTable(7, table, -22n), CheckpointError, 'an errno');
});

t.test('user_desc layout and the plan steps', async (t) => {
  const b = encodeUserDesc(data({ seg_not_present: 1, limit_in_pages: 1, contents: 1 }));
  t.same([b.readUInt32LE(0), b.readUInt32LE(4), b.readUInt32LE(8), b.readUInt32LE(12)], [3, 0x1a0a60d0, 0x17, 0b1110011]);
  const steps = ldtSteps(9, SYNTHETIC_LDT, 0x1000_0000_0000n);
  t.same(
    steps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? [s.op.nr, s.op.args.slice(0, 3), s.expect] : [s.op.op])),
    [
      [9, [0x1000_0000_0000n, 0x1000n, 3n], 0x1000_0000_0000n],
      ['WRITE_MEM'],
      [154, [0x11n, 0x1000_0000_0000n, 16n], 0n],
      [154, [0x11n, 0x1000_0000_0010n, 16n], 0n],
      [11, [0x1000_0000_0000n, 0x1000n], 0n],
    ],
  );
  t.same(ldtSteps(9, [], 0x1000_0000_0000n), [], 'no LDT, no steps');
});

t.test('the plan installs the LDT before any register write; omit=ldt installs nothing', async (t) => {
  const image = syntheticImage({ ldt: SYNTHETIC_LDT, regs: syntheticRegs({ gs: 0x1fn }) });
  const probe = {
    pid: 100,
    regs: syntheticRegs({ eflags: 0x202n }),
    maps: parseMaps(SYNTHETIC_MAPS).filter((m) => m.name.startsWith('/') || m.name === '[vvar]' || m.name === '[vdso]' || m.name === '[stack]'),
  };
  const isLdt = (s: { op: { op: string; nr?: number } }): boolean => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 154;
  for (const restorer of ['ptrace', 'popf', 'sigreturn'] as const) {
    const plan = compileRestorePlan(image, probe, { rf: 'keep', restorer });
    const lastLdt = plan.findLastIndex(isLdt);
    const firstRegs = plan.findIndex((s) => s.op.op === 'SETREGS' || s.op.op === 'SETREGSET');
    t.equal(plan.filter(isLdt).length, 2, `${restorer}: one modify_ldt per entry`);
    t.ok(lastLdt >= 0 && lastLdt < firstRegs, `${restorer}: the last LDT step (${lastLdt}) comes before the first register write (${firstRegs})`);
  }
  t.equal(compileRestorePlan(image, probe, { rf: 'keep', omit: ['ldt'] }).filter(isLdt).length, 0);
});

t.test('ldt.json is validated field by field', async (t) => {
  const base = imageEntries(syntheticImage({ ldt: SYNTHETIC_LDT }));
  t.same(parseImageEntries(base).ldt, SYNTHETIC_LDT, 'a valid table round-trips');
  const withEntry = (change: Record<string, unknown>, i = 0): Map<string, Buffer> => {
    const json = JSON.parse(base.get('ldt.json')!.toString()) as { entries: Array<Record<string, unknown>> };
    Object.assign(json.entries[i]!, change);
    return reseal(base, { 'ldt.json': Buffer.from(JSON.stringify(json)) });
  };
  rejects(t, () => parseImageEntries(withEntry({ entry_number: 8192 })), 'ldt.json', 'entries[0].entry_number');
  rejects(t, () => parseImageEntries(withEntry({ entry_number: 5 })), 'ldt.json', 'entries[1].entry_number');
  rejects(t, () => parseImageEntries(withEntry({ contents: 4 })), 'ldt.json', 'entries[0].contents');
  rejects(t, () => parseImageEntries(withEntry({ contents: 3 })), 'ldt.json', 'entries[0].contents');
  rejects(t, () => parseImageEntries(withEntry({ lm: 1 })), 'ldt.json', 'entries[0].lm');
  rejects(t, () => parseImageEntries(withEntry({ useable: 2 })), 'ldt.json', 'entries[0].useable');
  rejects(t, () => parseImageEntries(withEntry({ base_addr: '0x100000000' })), 'ldt.json', 'entries[0].base_addr');
  rejects(t, () => parseImageEntries(withEntry({ limit: '0x100000' })), 'ldt.json', 'entries[0].limit');
  rejects(t, () => parseImageEntries(withEntry({ dpl: 0 })), 'ldt.json', 'entries[0].dpl');
  rejects(
    t,
    () => parseImageEntries(withEntry({ base_addr: '0x0', limit: '0x0', read_exec_only: 1, seg_32bit: 0, seg_not_present: 1, useable: 0 })),
    'ldt.json',
    'entries[0].entry_number',
  );
  rejects(t, () => parseImageEntries(reseal(base, { 'ldt.json': Buffer.from('[]') })), 'ldt.json', '(root)');
  const regs = (gs: string): Map<string, Buffer> => {
    const json = JSON.parse(base.get('regs.json')!.toString()) as Record<string, string>;
    return reseal(base, { 'regs.json': Buffer.from(JSON.stringify({ ...json, gs })) });
  };
  t.equal(parseImageEntries(regs('0x1f')).regs.gs, 0x1fn, 'gs naming installed, present entry 3');
  rejects(t, () => parseImageEntries(regs('0x2f')), 'ldt.json', 'entries[1].seg_not_present');
  rejects(t, () => parseImageEntries(regs('0x27')), 'regs.json', 'gs');
});

t.test('a version 6 image is refused naming what it lacks', async (t) => {
  const v6 = reseal(imageEntries(syntheticImage()), {}, (m) => (m.version = 6));
  rejects(t, () => parseImageEntries(v6), 'manifest.json', 'version');
  t.throws(() => parseImageEntries(v6), /version 6 image has no ldt.json/);
});
