// expect: the allocated protection keys follow from what the injected pkey_alloc probe returned (EINVAL: no PKU, none); smaps ProtectionKey lines name each VMA's key; the plan allocates 1..max in order, frees the gaps, tags each mapping with pkey_mprotect, after the protections and before the registers, and omit=pkeys does none of it; pkeys.json is validated field by field.
import t, { type Test } from 'tap';
import { ImageRejectedError } from '../harness/errors.ts';
import { imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import { compileRestorePlan } from '../harness/restore/plan.ts';
import { allocatedFromMprotect, parseSmapsPkeys, pkeySteps } from '../harness/restore/pkeys.ts';
import type { PkeyState } from '../harness/restore/image-model.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { reseal, SYNTHETIC_MAPS, syntheticImage, syntheticRegs } from './support/synthetic-image.ts';

const POLICY = { rf: 'keep-and-preserve', regs: 'full', restorer: 'ptrace', rseqFixup: 'on', syscallRestart: 'on' } as const;
const HEAP = { start: 0x100a2000n, end: 0x100c5000n };
const STACK = { start: 0x7ffffffde000n, end: 0x7ffffffff000n };
const PKEYS: PkeyState = {
  allocated: [1, 3],
  tagged: [
    { ...HEAP, pkey: 1 },
    { ...STACK, pkey: 3 },
  ],
};

function rejects(t: Test, fn: () => unknown, field: RegExp | string): void {
  try {
    fn();
    t.fail(`accepted, expected rejection of pkeys.json ${field}`);
  } catch (error) {
    t.ok(error instanceof ImageRejectedError, `ImageRejectedError (${(error as Error).message})`);
    t.equal((error as ImageRejectedError).entry, 'pkeys.json');
    t.match((error as ImageRejectedError).field, field);
  }
}

t.test('the allocated keys from the probe: pkey_mprotect of a scratch page with keys 1..15', async (t) => {
  const refusedAll = Array.from({ length: 15 }, () => -22n);
  t.same(allocatedFromMprotect(refusedAll), [], 'EINVAL for every key: none allocated (or no PKU)');
  t.same(allocatedFromMprotect(refusedAll.map((r, i) => (i === 0 || i === 2 ? 0n : r))), [1, 3], 'the keys it took are the allocated ones');
  t.same(
    allocatedFromMprotect(Array.from({ length: 15 }, () => 0n)),
    Array.from({ length: 15 }, (_, i) => i + 1),
    'all taken: all allocated',
  );
  t.throws(
    () => allocatedFromMprotect(refusedAll.map((r, i) => (i === 4 ? -12n : r))),
    /pkey_mprotect with key 5 returned -12/,
    'ENOMEM is no answer about a key',
  );
  t.throws(() => allocatedFromMprotect([0n]), /1 results for 15 keys/);
});

t.test('smaps ProtectionKey', async (t) => {
  const smaps = [
    '10000000-10001000 r--p 00000000 00:02 12 /bin/x',
    'Size:                  4 kB',
    'ProtectionKey:         0',
    '7ffff7a00000-7ffff7a01000 rw-p 00000000 00:00 0',
    'Rss: 4 kB',
    'ProtectionKey:         3',
    'VmFlags: rd wr mr mw me ac',
  ].join('\n');
  t.same(
    [...parseSmapsPkeys(smaps)],
    [
      [0x10000000n, 0],
      [0x7ffff7a00000n, 3],
    ],
  );
  t.same([...parseSmapsPkeys('10000000-10001000 r--p 00000000 00:02 12 /bin/x\nSize: 4 kB\n')], [], 'a kernel without PKU prints no ProtectionKey');
});

t.test('the plan', async (t) => {
  const steps = pkeySteps(7, PKEYS, syntheticImage().regions);
  t.same(
    steps.map((s) => [(s.op as { nr: number }).nr, (s.op as unknown as { args: bigint[] }).args, s.expect]),
    [
      [330, [0n, 1n], 1n],
      [330, [0n, 1n], 2n],
      [330, [0n, 1n], 3n],
      [331, [2n], 0n],
      [329, [HEAP.start, HEAP.end - HEAP.start, 3n, 1n], 0n],
      [329, [STACK.start, STACK.end - STACK.start, 3n, 3n], 0n],
    ],
    'alloc 1, 2, 3 (each must be that key), free the gap 2, tag the heap with 1 and the stack with 3',
  );
  t.same(pkeySteps(7, { allocated: [], tagged: [] }, []), [], 'no keys: nothing');
  const image = syntheticImage({ pkeys: PKEYS });
  const probe = { pid: 7, regs: syntheticRegs(), maps: parseMaps(SYNTHETIC_MAPS).filter((m) => m.name !== '[heap]') };
  const plan = compileRestorePlan(image, probe, POLICY);
  const first = plan.findIndex((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 330);
  const lastProtect = plan.findLastIndex((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 10);
  const regs = plan.findIndex((s) => s.op.op === 'SETREGSET' || s.op.op === 'SETREGS');
  t.ok(first > lastProtect, 'after the protections');
  t.ok(first < regs, 'before the xstate and registers (PKRU)');
  const omitted = compileRestorePlan(image, probe, { ...POLICY, omit: ['pkeys'] });
  t.notOk(
    omitted.some((s) => s.op.op === 'INJECT_SYSCALL' && [329, 330, 331].includes(s.op.nr)),
    'omit=pkeys: no pkey call',
  );
});

t.test('pkeys.json round-trips and is validated', async (t) => {
  const base = imageEntries(syntheticImage({ pkeys: PKEYS }));
  t.same(parseImageEntries(base).pkeys, PKEYS, 'round trip');
  const withPkeys = (value: unknown) => reseal(base, { 'pkeys.json': Buffer.from(JSON.stringify(value)) });
  const good = JSON.parse(base.get('pkeys.json')!.toString()) as { allocated: number[]; tagged: Array<Record<string, unknown>> };
  rejects(t, () => parseImageEntries(withPkeys(null)), '(root)');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, extra: 1 })), 'extra');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, allocated: [0] })), 'allocated[0]');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, allocated: [16] })), 'allocated[0]');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, allocated: [3, 1] })), 'allocated[1]');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, allocated: [1, 1, 3] })), 'allocated[1]');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, allocated: [1.5] })), 'allocated[0]');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, allocated: Array.from({ length: 16 }, (_, i) => i) })), 'allocated');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, tagged: [{ ...good.tagged[0], pkey: 2 }] })), 'tagged[0].pkey');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, tagged: [{ ...good.tagged[0], start: '0x100a3000' }] })), 'tagged[0]');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, tagged: [good.tagged[1], good.tagged[0]] })), 'tagged[1]');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, tagged: [{ ...good.tagged[0], end: 7 }] })), 'tagged[0].end');
  rejects(t, () => parseImageEntries(withPkeys({ ...good, tagged: 'x' })), 'tagged');
});
