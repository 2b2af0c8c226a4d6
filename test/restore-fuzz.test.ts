// expect: mutated checkpoint images are either refused with ImageRejectedError or read back identical to the original — never accepted changed, never crashing the reader.
import t from 'tap';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { ImageRejectedError } from '../harness/errors.ts';
import { imageEntries, parseImageEntries, readCheckpointImage, writeCheckpointImage, type CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { reseal, SYNTHETIC_LDT, SYNTHETIC_TIMERS, syntheticSleepImage } from './support/synthetic-image.ts';
import { prng } from './support/prng.ts';

const SEED = Number(process.env.CRH_FUZZ_SEED ?? 20261123);
const BYTE_MUTATIONS = Number(process.env.CRH_FUZZ_BYTES ?? 6000);
const FIELD_MUTATIONS = Number(process.env.CRH_FUZZ_FIELDS ?? 6000);

/**
 * The fuzzed image holds an LDT (and gs names its present entry), timers, an
 * interrupted sleep's deadline and protection keys, so that their bytes and
 * fields are mutated too.
 */
const syntheticImage = (): CheckpointImage => {
  const image = syntheticSleepImage();
  // The heap stores two of its pages (format 9): the stored ranges are mutated too.
  const heap = image.regions[2]!;
  heap.stored = [
    [heap.start, heap.start + 0x1000n],
    [heap.end - 0x1000n, heap.end],
  ];
  return {
    ...image,
    ldt: SYNTHETIC_LDT,
    timers: SYNTHETIC_TIMERS,
    regs: { ...image.regs, gs: 0x1fn },
    pkeys: { allocated: [1, 3], tagged: [{ start: 0x100a2000n, end: 0x100c5000n, pkey: 3 }] },
  };
};

/**
 * Values no valid image may hold, per field: each must be refused even with
 * a correct SHA-256. A field with dots is a path (ldt.json entries.1.lm).
 */
const INVALID: Array<{ entry: string; field: string; values: unknown[] }> = [
  { entry: 'regs.json', field: 'eflags', values: ['0x20246', '0x3246', '0x46', '0x244', '0x80000246', '0x1000000000246', 'zzz', 582, null] },
  { entry: 'regs.json', field: 'cs', values: ['0x10', '0x23', '0x0', '0x30', '0x33 '] },
  { entry: 'regs.json', field: 'ss', values: ['0x18', '0x0', '0x2a'] },
  { entry: 'regs.json', field: 'rip', values: ['0xffffffff81000000', '0x800000000000', '-0x1', '0x', '0x1g'] },
  { entry: 'regs.json', field: 'fs_base', values: ['0xffff888000000000', '0x7ffffffff000'] },
  { entry: 'regs.json', field: 'ds', values: ['0x10', '0x10000', '0x8'] },
  { entry: 'regs.json', field: 'r12', values: [undefined, 12, '0x10000000000000000', ''] },
  { entry: 'debugregs.json', field: 'dr7', values: ['0x2000', '0x800', '0x100000000', '0x20001', '0xc0001', '0x1000'] },
  { entry: 'debugregs.json', field: 'dr0', values: ['0xffffffff81000000', '0x800000000000'] },
  { entry: 'debugregs.json', field: 'dr6', values: ['0x100000000', 'x'] },
  { entry: 'regs.json', field: 'gs', values: ['0x37', '0x27', '0xffff', '0x10'] },
  { entry: 'ldt.json', field: 'entries', values: [null, {}, 'x', undefined] },
  { entry: 'timers.json', field: 'itimers', values: [null, {}, 'x', undefined, [1, 2, 3, 4]] },
  { entry: 'timers.json', field: 'itimers.0.which', values: ['REAL', 0, 'alarm', null, undefined] },
  { entry: 'timers.json', field: 'itimers.0.valueNs', values: ['1500', '-1', '0x10', 1000, '4611686018427387904', '', undefined] },
  { entry: 'timers.json', field: 'itimers.0.intervalNs', values: ['0', '999', '1e6', '00', 1_000_000] },
  { entry: 'timers.json', field: 'itimers.0.extra', values: [1, 'x'] },
  { entry: 'timers.json', field: 'posix.0.id', values: [-1, 3, 4097, 1.5, '0', null, undefined] },
  { entry: 'timers.json', field: 'posix.1.id', values: [0, -3, 100000] },
  { entry: 'timers.json', field: 'posix.0.clock', values: [3, 4, 8, 9, -6, 12, '1'] },
  { entry: 'timers.json', field: 'posix.0.signo', values: [0, 9, 19, 65, -1, '34'] },
  { entry: 'timers.json', field: 'posix.0.notify', values: ['thread', 'SIGEV_SIGNAL', 4, null] },
  { entry: 'timers.json', field: 'posix.0.tid', values: [42, 7, -1] },
  { entry: 'timers.json', field: 'posix.1.tid', values: [0, 43, 4194305] },
  { entry: 'timers.json', field: 'posix.0.sival', values: ['0x10000000000000000', '1234', 5, null] },
  { entry: 'timers.json', field: 'posix.0.overrun', values: [-1, 2147483648, 0.5, '2'] },
  { entry: 'timers.json', field: 'posix.0.valueNs', values: ['-5', 'abc', '9999999999999999999'] },
  { entry: 'timers.json', field: 'timerfds.0.fd', values: [0, 2, 65536, '5', null] },
  { entry: 'timers.json', field: 'timerfds.0.clock', values: [2, 3, 11, -1] },
  { entry: 'timers.json', field: 'timerfds.0.flags', values: [1, 0o2, 0o4001, 0o10000000, -1] },
  { entry: 'timers.json', field: 'timerfds.0.ticks', values: ['-1', '9223372036854775808', 3] },
  { entry: 'timers.json', field: 'timerfds', values: [null, 'x', {}] },
  { entry: 'ldt.json', field: 'entries.0.entry_number', values: [8192, -1, 5, 1.5, '3', null, undefined] },
  { entry: 'ldt.json', field: 'entries.1.entry_number', values: [3, 2, 8192] },
  { entry: 'ldt.json', field: 'entries.0.base_addr', values: ['0x100000000', 4096, '-0x1', undefined] },
  { entry: 'ldt.json', field: 'entries.0.limit', values: ['0x100000', 23, undefined] },
  { entry: 'ldt.json', field: 'entries.0.contents', values: [4, -1, 3, undefined] },
  { entry: 'ldt.json', field: 'entries.1.lm', values: [1, 2] },
  { entry: 'ldt.json', field: 'entries.0.seg_not_present', values: [1, 2, true] },
  { entry: 'ldt.json', field: 'entries.1.useable', values: [2, false, '1'] },
  { entry: 'ldt.json', field: 'entries.0.dpl', values: [0, 3] },
  {
    entry: 'memory.json',
    field: '2.stored',
    values: [
      'all',
      null,
      undefined,
      {},
      [['0x100a2000']],
      [['0x100a2010', '0x100a3000']],
      [['0x100a1000', '0x100a3000']],
      [['0x100c4000', '0x100c6000']],
      [
        ['0x100c4000', '0x100c5000'],
        ['0x100a2000', '0x100a3000'],
      ],
      [
        ['0x100a2000', 4096],
        ['0x100c4000', '0x100c5000'],
      ],
      [
        ['0x100a3000', '0x100a3000'],
        ['0x100c4000', '0x100c5000'],
      ],
    ],
  },
  { entry: 'memory.json', field: '2.stored.1', values: [['0x100a2000', '0x100a3000'], ['0x100c4000'], ['0x100c4000', '0x100c6000'], 'x', null] },
  {
    entry: 'memory.json',
    field: '1.stored',
    values: [
      [
        ['0x100a0000', '0x100a2000'],
        ['0x100a0000', '0x100a2000'],
      ],
      [['0x100a2000', '0x100a3000']],
    ],
  },
  { entry: 'sleep.json', field: 'nr', values: [7, 230, 202, '35', null, undefined] },
  { entry: 'sleep.json', field: 'rmtp', values: ['0x0', '0x100b0008', '0x7ffffffff000', '0xffffffff81000000', 4096, undefined] },
  { entry: 'sleep.json', field: 'deadlineNs', values: ['0x0', '0x8000000000000000', '0x17487b5801', '1', undefined] },
  { entry: 'sleep.json', field: 'remainingNs', values: ['-0x1', '0x10000000000000000', undefined] },
  { entry: 'sleep.json', field: 'bootId', values: ['', 'x', '0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0', 7, undefined] },
  { entry: 'sleep.json', field: 'extra', values: [0, 'x'] },
  { entry: 'pkeys.json', field: 'allocated', values: [[0], [16], [3, 1], [1, 1], [1], ['1'], null, undefined] },
  { entry: 'pkeys.json', field: 'tagged.0.pkey', values: [0, 2, 16, -1, '3', undefined] },
  { entry: 'pkeys.json', field: 'tagged.0.start', values: ['0x100a3000', '0x0', 5, undefined] },
  { entry: 'pkeys.json', field: 'tagged.0.end', values: ['0x100c6000', '0x100c4000', 'x', undefined] },
  { entry: 'pkeys.json', field: 'tagged', values: [{}, 'x', null, undefined] },
];

/** Sets (or, for undefined, deletes) the value at a dotted path. */
function setPath(json: Record<string, unknown>, field: string, value: unknown): void {
  const keys = field.split('.');
  let at = json as Record<string, unknown>;
  for (const key of keys.slice(0, -1)) at = at[key] as Record<string, unknown>;
  const last = keys.at(-1)!;
  if (value === undefined) delete at[last];
  else at[last] = value;
}

t.test('byte-level mutations of the tar: refused, or read back unchanged', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-fuzz-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const original = syntheticImage();
  const file = path.join(dir, 'original.tar');
  await writeCheckpointImage(original, file);
  const bytes = await readFile(file);
  const baseline = await readCheckpointImage(file);
  const random = prng(SEED);
  let refused = 0;
  let unchanged = 0;
  const accepted: string[] = [];
  const crashes: string[] = [];
  const mutant = path.join(dir, 'mutant.tar');
  for (let i = 0; i < BYTE_MUTATIONS; i++) {
    const copy = Buffer.from(bytes);
    const kind = Math.floor(random() * 4);
    const at = Math.floor(random() * copy.length);
    let buf: Buffer = copy;
    if (kind === 0) copy[at] = copy[at]! ^ (1 << Math.floor(random() * 8));
    else if (kind === 1) copy[at] = Math.floor(random() * 256);
    else if (kind === 2)
      buf = copy.subarray(0, at); // truncated
    else buf = Buffer.concat([copy.subarray(0, at), Buffer.alloc(1 + Math.floor(random() * 600), Math.floor(random() * 256)), copy.subarray(at)]);
    await writeFile(mutant, buf);
    try {
      const image = await readCheckpointImage(mutant);
      if (sameImage(image, baseline)) unchanged++;
      else accepted.push(`mutation ${i} (kind ${kind} at ${at})`);
    } catch (error) {
      if (error instanceof ImageRejectedError) refused++;
      else crashes.push(`mutation ${i} (kind ${kind} at ${at}): ${(error as Error).stack ?? String(error)}`);
    }
  }
  t.comment(
    `seed ${SEED}: ${BYTE_MUTATIONS} byte mutations: ${refused} refused, ${unchanged} read back unchanged (padding/header bytes), ${accepted.length} accepted changed, ${crashes.length} crashes`,
  );
  t.same(accepted, [], 'no changed image is accepted');
  t.same(crashes, [], 'no error other than ImageRejectedError');
  t.ok(refused > BYTE_MUTATIONS / 2, 'most mutations hit checked bytes');
});

t.test('field-level mutations resealed with correct checksums: every invalid value refused', async (t) => {
  const random = prng(SEED + 1);
  const base = imageEntries(syntheticImage());
  let refused = 0;
  const accepted: string[] = [];
  const crashes: string[] = [];
  for (let i = 0; i < FIELD_MUTATIONS; i++) {
    const target = INVALID[Math.floor(random() * INVALID.length)]!;
    const value = target.values[Math.floor(random() * target.values.length)];
    const json = JSON.parse(base.get(target.entry)!.toString()) as Record<string, unknown>;
    setPath(json, target.field, value);
    const entries = reseal(base, { [target.entry]: Buffer.from(JSON.stringify(json)) });
    try {
      parseImageEntries(entries);
      accepted.push(`${target.entry} ${target.field} = ${JSON.stringify(value)}`);
    } catch (error) {
      if (error instanceof ImageRejectedError && error.entry === target.entry) refused++;
      else crashes.push(`${target.entry} ${target.field} = ${JSON.stringify(value)}: ${String(error)}`);
    }
  }
  t.comment(
    `seed ${SEED + 1}: ${FIELD_MUTATIONS} field mutations: ${refused} refused naming their entry, ${accepted.length} accepted, ${crashes.length} other errors`,
  );
  t.same(accepted, [], 'no invalid value is accepted');
  t.same(crashes, [], 'every refusal is an ImageRejectedError naming the mutated entry');
  t.equal(refused, FIELD_MUTATIONS);
});

t.test(`at least 10,000 mutated images in all`, async (t) => {
  t.ok(BYTE_MUTATIONS + FIELD_MUTATIONS >= 10_000, `${BYTE_MUTATIONS + FIELD_MUTATIONS} mutated images tried`);
});

function sameImage(a: CheckpointImage, b: CheckpointImage): boolean {
  return isDeepStrictEqual({ ...a, memory: [...a.memory] }, { ...b, memory: [...b.memory] });
}
