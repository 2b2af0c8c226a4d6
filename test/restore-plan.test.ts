// expect: the plan compiler recreates missing memory, writes every dumped region, restores protections, xstate, registers under the RF policy, and debug registers with DR7 last.
import t from 'tap';
import { compileRestorePlan, PlanError } from '../harness/restore/plan.ts';
import { isDumped, isKernelProvided, parseMaps, uncovered } from '../harness/restore/proc-maps.ts';
import { syntheticImage, syntheticRegs, SYNTHETIC_MAPS } from './support/synthetic-image.ts';
import { debugRegOffset, EFLAGS } from '../harness/x86/registers.ts';

// The fresh target: same binary, no heap yet, a smaller stack.
const targetMaps = parseMaps(
  SYNTHETIC_MAPS.split('\n')
    .filter((l) => !l.includes('[heap]'))
    .map((l) => l.replace('7ffffffde000-7ffffffff000', '7ffffffef000-7ffffffff000'))
    .join('\n'),
);
const probe = { pid: 100, regs: syntheticRegs({ eflags: 0x202n }), maps: targetMaps };

t.test('memory: heap by brk, holes by mmap, contents, protections', async (t) => {
  const plan = compileRestorePlan(syntheticImage(), probe, { rf: 'keep-and-preserve' });
  const ops = plan.map((s) => s.op);
  t.same(ops[0], { op: 'INJECT_SYSCALL', pid: 100, nr: 12, args: [0x100c5000n] }, 'brk grows the heap first');
  t.equal(plan[0]!.expect, 0x100c5000n);
  const mmaps = plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9);
  t.equal(mmaps.length, 1, 'one hole: the stack part the fresh process lacks');
  t.same((mmaps[0]!.op as { args: readonly bigint[] }).args.slice(0, 2), [0x7ffffffde000n, 0x11000n]);
  t.equal(mmaps[0]!.expect, 0x7ffffffde000n);
  const writes = plan.filter((s) => s.op.op === 'WRITE_MEM');
  t.equal(
    writes.reduce((n, s) => n + (s.op as { data: Uint8Array }).data.length, 0),
    0x1000 + 0x2000 + 0x23000 + 0x21000,
    'every dumped byte written',
  );
  const mprotects = plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 10);
  t.same(
    mprotects.map((s) => (s.op as { args: readonly bigint[] }).args[2]),
    [1n, 3n, 3n, 3n],
    'r--p → PROT_READ, rw-p → PROT_READ|PROT_WRITE',
  );
  const firstWrite = ops.findIndex((o) => o.op === 'WRITE_MEM');
  const lastMap = ops.findLastIndex((o) => o.op === 'INJECT_SYSCALL' && (o.nr === 9 || o.nr === 12));
  t.ok(lastMap < firstWrite, 'memory exists before it is written');
});

t.test('registers and debug registers', async (t) => {
  const image = syntheticImage();
  const plan = compileRestorePlan(image, probe, { rf: 'keep-and-preserve' });
  const setregs = plan.find((s) => s.op.op === 'SETREGS')!.op as { regs: { eflags: bigint; rip: bigint } };
  t.equal(setregs.regs.eflags, image.regs.eflags, 'RF kept');
  t.equal(setregs.regs.rip, image.regs.rip);
  const cleared = compileRestorePlan(image, probe, { rf: 'clear' }).find((s) => s.op.op === 'SETREGS')!.op as { regs: { eflags: bigint } };
  t.equal(cleared.regs.eflags & EFLAGS.RF, 0n, 'rf=clear drops RF');
  const pokes = plan.filter((s) => s.op.op === 'POKEUSER').map((s) => (s.op as { offset: number }).offset);
  t.same(pokes, [0, 1, 2, 3, 6, 7].map(debugRegOffset), 'DR0-3, DR6, then DR7 last');
  t.ok(plan.findIndex((s) => s.op.op === 'SETREGSET') < plan.findIndex((s) => s.op.op === 'SETREGS'));
});

t.test('the vdso must be where the image had it', async (t) => {
  const moved = { ...probe, maps: targetMaps.map((m) => (m.name === '[vdso]' ? { ...m, start: m.start + 0x10000n, end: m.end + 0x10000n } : m)) };
  t.throws(() => compileRestorePlan(syntheticImage(), moved, { rf: 'keep' }), PlanError);
});

t.test("a process that unmapped its vDSO is restored without one: the target's [vdso] and [vvar] are unmapped, first", async (t) => {
  const image = syntheticImage();
  const without = {
    ...image,
    maps: image.maps
      .split('\n')
      .filter((l) => !/\[(vdso|vvar)\]/.test(l))
      .join('\n'),
  };
  const steps = compileRestorePlan(without, probe, { rf: 'keep' });
  const unmaps = steps.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 11);
  const kernels = targetMaps.filter((m) => /^\[(vdso|vvar)\]$/.test(m.name));
  t.ok(kernels.length > 0, 'the target has a vDSO to unmap');
  t.same(
    unmaps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? s.op.args : [])),
    kernels.map((m) => [m.start, m.end - m.start]),
    'one munmap per kernel mapping the image lacks',
  );
  const withVdso = compileRestorePlan(image, probe, { rf: 'keep' }).filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 11);
  t.same(withVdso, [], 'an image with its vDSO unmaps nothing');
});

t.test('uncovered ranges', async (t) => {
  const maps = parseMaps('1000-2000 rw-p 00000000 00:00 0\n3000-4000 rw-p 00000000 00:00 0');
  t.same(uncovered(0x0n, 0x5000n, maps), [
    [0x0n, 0x1000n],
    [0x2000n, 0x3000n],
    [0x4000n, 0x5000n],
  ]);
  t.same(uncovered(0x1000n, 0x2000n, maps), []);
  t.same(uncovered(0x1800n, 0x3800n, maps), [[0x2000n, 0x3000n]]);
});

t.test('restorer=popf: trampoline page, frame below the red zone, registers through popfq; ret $128', async (t) => {
  const image = syntheticImage();
  const plan = compileRestorePlan(image, probe, { rf: 'keep-and-preserve', restorer: 'popf' });
  const mmap = plan.find((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9 && s.why.includes('trampoline'))!;
  const page = (mmap.op as { args: readonly bigint[] }).args[0]!;
  t.equal(mmap.expect, page);
  const code = plan.find((s) => s.op.op === 'WRITE_MEM' && s.op.address === page)!.op as { data: Uint8Array };
  t.same([...code.data], [0x9d, 0xc2, 0x80, 0x00], 'popfq; ret $128');
  const frame = image.regs.rsp - 128n - 16n;
  const frameWrite = plan.find((s) => s.op.op === 'WRITE_MEM' && s.op.address === frame)!.op as { data: Uint8Array };
  t.equal(Buffer.from(frameWrite.data).readBigUInt64LE(0), image.regs.eflags, 'eflags in the frame');
  t.equal(Buffer.from(frameWrite.data).readBigUInt64LE(8), image.regs.rip, 'then rip');
  const setregs = plan.find((s) => s.op.op === 'SETREGS')!.op as { regs: { rip: bigint; rsp: bigint; eflags: bigint; rbx: bigint } };
  t.same([setregs.regs.rip, setregs.regs.rsp, setregs.regs.eflags], [page, frame, 0x202n], 'the task starts in the trampoline');
  t.equal(setregs.regs.rbx, image.regs.rbx, 'every other register as in the image');
  const lastMemory = plan.findLastIndex((s) => s.op.op === 'WRITE_MEM' && s.why.startsWith('contents'));
  t.ok(plan.indexOf(plan.find((s) => s.op.op === 'WRITE_MEM' && s.op.address === frame)!) > lastMemory, 'the frame is written after the stack contents');
});

t.test('restorer=sigreturn: an rt_sigframe with the registers and the XSAVE area as signal fpstate', async (t) => {
  const image = syntheticImage();
  const plan = compileRestorePlan(image, probe, { rf: 'keep-and-preserve', restorer: 'sigreturn' });
  t.notOk(
    plan.some((s) => s.op.op === 'SETREGSET'),
    'xstate travels in the frame, not through ptrace',
  );
  const setregs = plan.find((s) => s.op.op === 'SETREGS')!.op as { regs: Record<string, bigint> };
  const code = plan.find((s) => s.op.op === 'WRITE_MEM' && s.op.address === setregs.regs.rip)!.op as { data: Uint8Array };
  t.same([...code.data], [0x0f, 0x05], 'the task starts on a syscall instruction');
  t.equal(setregs.regs.rax, 15n, 'rax = rt_sigreturn');
  t.equal(setregs.regs.fs_base, image.regs.fs_base, 'fs_base set through ptrace: sigcontext has no field for it');
  const frameAt = setregs.regs.rsp! - 8n;
  const frame = Buffer.from((plan.find((s) => s.op.op === 'WRITE_MEM' && s.op.address === frameAt)!.op as { data: Uint8Array }).data);
  t.equal(frame.length, 440);
  t.equal(frame.readBigUInt64LE(8), 7n, 'uc_flags = UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS');
  t.equal(frame.readInt32LE(24 + 8), 2, 'uc_stack.ss_flags = SS_DISABLE');
  const sc = 48;
  t.equal(frame.readBigUInt64LE(sc + 128), image.regs.rip, 'sigcontext rip');
  t.equal(frame.readBigUInt64LE(sc + 136), image.regs.eflags, 'sigcontext eflags, RF included');
  t.equal(frame.readBigUInt64LE(sc + 88), image.regs.rbx, 'sigcontext rbx');
  t.equal(frame.readBigUInt64LE(sc + 120), image.regs.rsp, 'sigcontext rsp');
  t.equal(frame.readUInt16LE(sc + 144), 0x33, 'cs');
  const fpAt = frame.readBigUInt64LE(sc + 184);
  t.equal(fpAt % 64n, 0n, 'fpstate is 64-byte aligned');
  t.ok(fpAt + BigInt(image.xstate.length) + 4n <= image.regs.rsp - 128n, 'fpstate lies below the red zone');
  const fp = Buffer.from((plan.find((s) => s.op.op === 'WRITE_MEM' && s.op.address === fpAt)!.op as { data: Uint8Array }).data);
  t.equal(fp.readUInt32LE(464), 0x46505853, 'FP_XSTATE_MAGIC1');
  t.equal(fp.readUInt32LE(468), image.xstate.length + 4, 'extended_size');
  t.equal(fp.readBigUInt64LE(472), image.xstate.readBigUInt64LE(464), 'xfeatures = XCR0 from the image');
  t.equal(fp.readUInt32LE(480), image.xstate.length, 'xstate_size');
  t.equal(fp.readUInt32LE(image.xstate.length), 0x46505845, 'FP_XSTATE_MAGIC2 right after the area');
  t.ok(fp.subarray(0, 464).equals(image.xstate.subarray(0, 464)), 'legacy area as in the image');
});

t.test('a heap the kernel shows as several [heap] VMAs is grown to its last end with one brk', async (t) => {
  const split = SYNTHETIC_MAPS.replace(
    '100a2000-100c5000 rw-p 00000000 00:00 0 [heap]',
    '100a2000-100b0000 rw-p 00000000 00:00 0 [heap]\n100b0000-100c5000 rw-p 00000000 00:00 0 [heap]',
  );
  const plan = compileRestorePlan(syntheticImage({ maps: split }), probe, { rf: 'keep' });
  const brks = plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 12);
  t.equal(brks.length, 1);
  t.equal(brks[0]!.expect, 0x100c5000n);
  t.notOk(
    plan.some((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 9 && (s.op.args[0] ?? 0n) >= 0x100a2000n && (s.op.args[0] ?? 0n) < 0x100c5000n),
    'no anonymous mapping inside the heap',
  );
});

t.test("the kernel's special mappings are never dumped, including the vvar split of 6.13+", async (t) => {
  const maps = parseMaps(
    '7ffff7ff9000-7ffff7ffb000 r--p 00000000 00:00 0 [vvar]\n7ffff7ffb000-7ffff7ffd000 r--p 00000000 00:00 0 [vvar_vclock]\n7ffff7ffd000-7ffff7fff000 r-xp 00000000 00:00 0 [vdso]\n7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]',
  );
  t.same(
    maps.map((m) => [m.name, isDumped(m), isKernelProvided(m)]),
    [
      ['[vvar]', false, true],
      ['[vvar_vclock]', false, true],
      ['[vdso]', false, true],
      ['[stack]', true, false],
    ],
  );
});
