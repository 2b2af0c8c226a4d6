// expect: the rseq registration is validated against the image's memory, re-registered before the protections, and a task inside a
// critical section is sent to abort_ip (rseq-fixup=on) — never at the exclusive post-commit bound, never for NO_RESTART flags —
// while rseq-fixup=off leaves the IP; omit=… drops exactly the named state (the OpenVZ 2008 gaps, CRIU before rseq).
import t from 'tap';
import { ImageRejectedError } from '../harness/errors.ts';
import type { CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { compileRestorePlan, PlanError, type PlanStep } from '../harness/restore/plan.ts';
import { describePolicy, parseOmit, parseRseqFixupPolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { applyRseqFixup, inCriticalSection } from '../harness/restore/rseq.ts';
import { validateRseq } from '../harness/restore/validate.ts';
import { policyFromFlags } from '../harness/flags/policy-flags.ts';
import { SYNTHETIC_MAPS, SYNTHETIC_RSEQ, syntheticImage, syntheticRegs } from './support/synthetic-image.ts';

const probe = {
  pid: 7,
  regs: syntheticRegs({ eflags: 0x202n, fs_base: 0n }),
  maps: parseMaps(
    SYNTHETIC_MAPS.split('\n')
      .filter((l) => !l.includes('[heap]'))
      .join('\n'),
  ),
};
const POLICY: RestorePolicy = { rf: 'keep-and-preserve' };

/** A critical section in the text, its descriptor in .data. */
const CS = { at: 0x100a0100n, start: 0x10001200n, postCommit: 0x40n, abort: 0x10001300n } as const;
/** An abort handler in a dumped page (made executable in maps.txt), so the signature before it is in the image. */
const DUMPED_ABORT = 0x100a0200n;

interface SectionOptions {
  flags?: number;
  abort?: bigint;
  signature?: number;
}

/** The synthetic image stopped at `rip`, with rseq_cs pointing at CS's descriptor. */
function inSection(rip: bigint, { flags = 0, abort = CS.abort, signature = SYNTHETIC_RSEQ.signature }: SectionOptions = {}): CheckpointImage {
  const image = syntheticImage({ regs: syntheticRegs({ rip }) });
  const data = Buffer.from(image.memory.get(image.regions[1]!.entry!)!);
  const d = Number(CS.at - image.regions[1]!.start);
  data.fill(0, d, d + 32);
  data.writeUInt32LE(flags, d + 4);
  data.writeBigUInt64LE(CS.start, d + 8);
  data.writeBigUInt64LE(CS.postCommit, d + 16);
  data.writeBigUInt64LE(abort, d + 24);
  if (abort === DUMPED_ABORT) data.writeUInt32LE(signature, Number(abort - 4n - image.regions[1]!.start));
  const heap = Buffer.from(image.memory.get(image.regions[2]!.entry!)!);
  heap.writeBigUInt64LE(CS.at, Number(SYNTHETIC_RSEQ.area + 8n - image.regions[2]!.start));
  const memory = new Map(image.memory);
  memory.set(image.regions[1]!.entry!, data);
  memory.set(image.regions[2]!.entry!, heap);
  const maps = abort === DUMPED_ABORT ? image.maps.replace('100a0000-100a2000 rw-p', '100a0000-100a2000 rwxp') : image.maps;
  return { ...image, memory, maps };
}

const setregs = (plan: PlanStep[]) => (plan.find((s) => s.op.op === 'SETREGS')!.op as { regs: { rip: bigint; fs_base: bigint } }).regs;
const rseqSteps = (plan: PlanStep[]) => plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 334);

t.test('rseq.json: null or an aligned area inside one writable dumped region', async (t) => {
  const regions = syntheticImage().regions;
  t.equal(validateRseq(null, regions), null);
  t.same(validateRseq({ area: '0x100c0020', size: 32, signature: '0x53053053' }, regions), { area: 0x100c0020n, size: 32, signature: 0x53053053 });
  const rejects = (raw: unknown, field: string): void => {
    try {
      validateRseq(raw, regions);
      t.fail(`accepted ${JSON.stringify(raw)}`);
    } catch (error) {
      t.ok(error instanceof ImageRejectedError && error.entry === 'rseq.json' && error.field === field, `${JSON.stringify(raw)} → ${(error as Error).message}`);
    }
  };
  rejects({ area: '0x100c0021', size: 32, signature: '0x1' }, 'area');
  rejects({ area: '0x10000020', size: 32, signature: '0x1' }, 'area'); // r--p text
  rejects({ area: '0x100c4fe0', size: 64, signature: '0x1' }, 'area'); // crosses the heap's end
  rejects({ area: '0x800000000000', size: 32, signature: '0x1' }, 'area');
  rejects({ area: '0x100c0020', size: 16, signature: '0x1' }, 'size');
  rejects({ area: '0x100c0020', size: 1 << 20, signature: '0x1' }, 'size');
  rejects({ area: '0x100c0020', size: 32, signature: '0x100000000' }, 'signature');
  rejects({ area: '0x100c0020', size: 32, signature: '0x1', flags: 0 }, 'flags');
  rejects([], '(root)');
});

t.test('the registration is injected after the memory it lives in and before the protections', async (t) => {
  const plan = compileRestorePlan(syntheticImage(), probe, POLICY);
  const [step] = rseqSteps(plan);
  t.ok(step, 'one rseq() injection');
  t.same((step!.op as { args: readonly bigint[] }).args.slice(0, 4), [SYNTHETIC_RSEQ.area, 32n, 0n, BigInt(SYNTHETIC_RSEQ.signature)]);
  t.equal(step!.expect, 0n);
  const at = plan.indexOf(step!);
  t.ok(plan.findLastIndex((s) => s.op.op === 'WRITE_MEM' && s.why.startsWith('contents')) < at, 'after every content write');
  t.ok(plan.findIndex((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 10) > at, 'before the first mprotect');
  t.match(step!.why, /rseq_cs is 0: not in a critical section/);
  t.same(rseqSteps(compileRestorePlan(syntheticImage({ rseq: null }), probe, POLICY)), [], 'no registration, no injection');
});

t.test('rseq-fixup=on: inside the section → abort_ip and rseq_cs cleared; the bounds are [start, start + post_commit_offset)', async (t) => {
  for (const [rip, aborts] of [
    [CS.start, true],
    [CS.start + 0x3fn, true],
    [CS.start + CS.postCommit, false],
    [CS.start - 1n, false],
  ] as const) {
    const image = inSection(rip);
    const plan = compileRestorePlan(image, probe, POLICY);
    t.equal(setregs(plan).rip, aborts ? CS.abort : rip, `rip 0x${rip.toString(16)}: ${aborts ? 'abort_ip' : 'unchanged'}`);
    const fixed = applyRseqFixup(image).image;
    const heap = fixed.memory.get(fixed.regions[2]!.entry!)!;
    t.equal(heap.readBigUInt64LE(Number(SYNTHETIC_RSEQ.area + 8n - fixed.regions[2]!.start)), aborts ? 0n : CS.at, aborts ? 'rseq_cs cleared' : 'rseq_cs kept');
  }
  const original = inSection(CS.start + 4n);
  applyRseqFixup(original);
  t.equal(
    original.memory.get(original.regions[2]!.entry!)!.readBigUInt64LE(Number(SYNTHETIC_RSEQ.area + 8n - 0x100a2000n)),
    CS.at,
    'the fixup works on a copy: the input image keeps its rseq_cs',
  );
  t.ok(inCriticalSection(CS.start, { at: 0n, version: 0, flags: 0, startIp: CS.start, postCommitOffset: CS.postCommit, abortIp: CS.abort }));
});

t.test('rseq-fixup=off leaves the IP inside the section (the restorer that did not know)', async (t) => {
  const plan = compileRestorePlan(inSection(CS.start + 4n), probe, { ...POLICY, rseqFixup: 'off' });
  t.equal(setregs(plan).rip, CS.start + 4n);
  t.match(rseqSteps(plan)[0]!.why, /rseq-fixup=off: not applied/);
});

t.test('NO_RESTART flags are left to the kernel; a wrong signature, version or abort_ip is refused before the guest is touched', async (t) => {
  const noRestart = compileRestorePlan(inSection(CS.start + 4n, { flags: 4 }), probe, POLICY);
  t.equal(setregs(noRestart).rip, CS.start + 4n, 'flags=4: IP unchanged');
  const last = noRestart.at(-1)!.op as { op: string; address: bigint; data: Uint8Array };
  t.same(
    [last.op, last.address, Buffer.from(last.data).readBigUInt64LE(0)],
    ['WRITE_MEM', SYNTHETIC_RSEQ.area + 8n, CS.at],
    'flags=4: rseq_cs written back as the very last step',
  );
  t.notOk(
    compileRestorePlan(inSection(CS.start + 4n, { flags: 4 }), probe, { ...POLICY, rseqFixup: 'off' })
      .at(-1)!
      .why.startsWith('rseq_cs'),
    'rseq-fixup=off: not written back',
  );
  t.equal(
    setregs(compileRestorePlan(inSection(CS.start + 4n, { abort: DUMPED_ABORT }), probe, POLICY)).rip,
    DUMPED_ABORT,
    'a dumped abort handler with the signature before it',
  );
  t.throws(
    () => compileRestorePlan(inSection(CS.start + 4n, { abort: DUMPED_ABORT, signature: 0x12345678 }), probe, POLICY),
    /not preceded by the registered signature/,
    'signature mismatch',
  );
  t.throws(() => compileRestorePlan(inSection(CS.start + 4n, { abort: 0x100a1000n }), probe, POLICY), /not in an executable mapping/, 'abort_ip in data');
  const badVersion = inSection(CS.start + 4n);
  const data = badVersion.memory.get(badVersion.regions[1]!.entry!)!;
  data.writeUInt32LE(1, Number(CS.at - badVersion.regions[1]!.start));
  t.throws(() => compileRestorePlan(badVersion, probe, POLICY), PlanError, 'version 1');
  const dangling = inSection(CS.start + 4n);
  dangling.memory.get(dangling.regions[2]!.entry!)!.writeBigUInt64LE(0x500000000n, Number(SYNTHETIC_RSEQ.area + 8n - 0x100a2000n));
  t.throws(() => compileRestorePlan(dangling, probe, POLICY), /outside the image's memory/);
});

t.test('omit=…: exactly the named state is not restored', async (t) => {
  const image = syntheticImage();
  const full = compileRestorePlan(image, probe, POLICY);
  const omit = (what: RestorePolicy['omit']): PlanStep[] => compileRestorePlan(image, probe, { ...POLICY, omit: what });
  t.equal(omit(['debugregs']).filter((s) => s.op.op === 'POKEUSER').length, 0, 'debugregs: no DR writes');
  t.equal(full.filter((s) => s.op.op === 'POKEUSER').length, 6);
  t.equal(omit(['xstate']).filter((s) => s.op.op === 'SETREGSET').length, 0, 'xstate: no SETREGSET');
  t.equal(setregs(omit(['tls'])).fs_base, probe.regs.fs_base, "tls: fs_base stays the target's");
  t.equal(setregs(full).fs_base, image.regs.fs_base);
  t.equal(rseqSteps(omit(['rseq'])).length, 0, 'rseq: no registration');
  const sig = compileRestorePlan(image, probe, { ...POLICY, restorer: 'sigreturn', omit: ['xstate'] });
  t.notOk(
    sig.some((s) => s.why.startsWith('signal fpstate')),
    'sigreturn without fpstate',
  );
  const frame = sig.find((s) => s.why.startsWith('rt_sigframe'))!.op as { data: Uint8Array };
  t.equal(Buffer.from(frame.data).readBigUInt64LE(8), 6n, 'uc_flags without UC_FP_XSTATE');
  t.equal(Buffer.from(frame.data).readBigUInt64LE(48 + 184), 0n, 'fpstate pointer 0: the kernel starts a fresh FPU');
});

t.test('policy flags parse and print the same way everywhere', async (t) => {
  t.same(parseOmit('debugregs, xstate,tls'), ['debugregs', 'xstate', 'tls']);
  t.same(parseOmit(''), []);
  t.throws(() => parseOmit('fpu'), RangeError);
  t.equal(parseRseqFixupPolicy('off'), 'off');
  t.throws(() => parseRseqFixupPolicy('maybe'), RangeError);
  const policy = policyFromFlags({ 'rseq-fixup': 'off', omit: 'rseq', restorer: 'popf' });
  t.equal(describePolicy(policy), 'rf=keep-and-preserve restorer=popf regs=full rseq-fixup=off omit=rseq');
  t.equal(describePolicy(policyFromFlags({})), 'rf=keep-and-preserve restorer=ptrace regs=full rseq-fixup=on');
});
