/**
 * How registers reach the restored task — the `restorer` policy, each a
 * mechanism with its own history:
 * - ptrace: PTRACE_SETREGSET/SETREGS; the task returns to user mode through
 *   the kernel's IRET path, which restores every flag, RF and TF included.
 * - popf: registers set, then a user-space trampoline `popfq; ret $128` loads
 *   EFLAGS and jumps to the saved RIP (the 2010 Rozycki/Desnoyers report):
 *   POPF cannot set RF, so a breakpoint at the resume address fires again, and
 *   a TF it sets traps after the `ret` — one instruction early compared with
 *   IRET, which traps after the first restored instruction.
 * - sigreturn: as CRIU does, an rt_sigframe is built on the task's stack —
 *   ucontext with the registers, the XSAVE area as the signal fpstate — and
 *   the task is started on a `syscall` with rax = rt_sigreturn; the kernel
 *   loads everything from the frame and returns through IRET. fs_base and
 *   gs_base are not part of a 64-bit sigcontext and are set with ptrace.
 * The trampoline page (PROT_READ|PROT_EXEC, at a free address) stays mapped
 * in the restored process.
 */
import { NT_X86_XSTATE, hex, type UserRegs } from '../x86/registers.ts';
import type { CheckpointImage, SignalState, ThreadState } from './image-model.ts';
import { omits, restoredRegisters, type RestorePolicy } from './policy.ts';
import type { Mapping } from './proc-maps.ts';
import { PlanError, type PlanStep, type TargetProbe } from './plan-step.ts';
import { mapFixedStep, PROT, protectStep } from './syscall-steps.ts';
import { xstateFeatures } from './validate.ts';
import { SS_DISABLE, SS_ONSTACK } from './signals.ts';
import { creationMask, threadXstateStep } from './threads.ts';

const PAGE = 0x1000n;
/** The System V red zone: a leaf function may keep live data this far below rsp. */
const RED_ZONE = 128n;
/** popfq; ret $128 — EFLAGS from the frame, then RIP, then skip the red zone. */
const POPF_TRAMPOLINE = Buffer.from([0x9d, 0xc2, Number(RED_ZONE), 0x00]);
/** A neutral EFLAGS for the trampoline itself: IF and bit 1, nothing that traps. */
const TRAMPOLINE_EFLAGS = 0x202n;

/** Candidate addresses for scratch pages, far from where programs and the kernel map things. */
const SCRATCH_CANDIDATES = [0x1000_0000_0000n, 0x2000_0000_0000n, 0x3000_0000_0000n];

/** A page no mapping of the target or the image uses: for trampolines and scratch structures. */
export function freePage(...mapSets: Mapping[][]): bigint {
  const all = mapSets.flat();
  const free = SCRATCH_CANDIDATES.find((a) => all.every((m) => m.end <= a || m.start >= a + PAGE));
  if (free === undefined) throw new PlanError('no free page for the restorer trampoline');
  return free;
}

/** The main thread's xstate through ptrace (the ptrace and popf restorers). */
export function xstateStep(image: CheckpointImage, pid: number, why = 'FPU/SSE/AVX state (xstate)'): PlanStep {
  return { op: { op: 'SETREGSET', pid, noteType: NT_X86_XSTATE, data: image.xstate }, why };
}

/**
 * Steps that give the (main) task the image's xstate and registers, by
 * `restorer`. `xstateSetEarlier`: the plan has already set the xstate with
 * ptrace (for the threads it creates to copy); the sigreturn restorer,
 * which carries it in the frame, ignores it.
 */
export function registerSteps(
  image: CheckpointImage,
  probe: TargetProbe,
  imageMaps: Mapping[],
  policy: RestorePolicy,
  { xstateSetEarlier = false } = {},
): PlanStep[] {
  const pid = probe.pid;
  const regs = restoredRegisters(image.regs, probe.regs, policy);
  const omitXstate = omits(policy, 'xstate');
  const xstate: PlanStep[] = omitXstate || xstateSetEarlier ? [] : [xstateStep(image, pid)];
  const describe = `registers (regs=${policy.regs ?? 'full'}${omits(policy, 'tls') ? ', TLS omitted' : ''})`;
  switch (policy.restorer ?? 'ptrace') {
    case 'ptrace':
      return [...xstate, { op: { op: 'SETREGS', pid, regs }, why: `${describe}, eflags ${hex(regs.eflags)} under rf=${policy.rf}, returned through IRET` }];
    case 'popf':
      return [...xstate, ...popfSteps(pid, regs, probe, imageMaps)];
    case 'sigreturn':
      return sigreturnSteps(pid, regs, omitXstate ? null : image.xstate, omits(policy, 'signals') ? FRESH_TASK_SIGNALS : image.signals, probe, imageMaps);
  }
}

/** Maps a scratch page at a free address, writes `code` there and makes it executable. */
function trampolineSteps(pid: number, page: bigint, code: Buffer, what: string): PlanStep[] {
  return [
    mapFixedStep(pid, page, PAGE, PROT.READ | PROT.WRITE, `map the ${what} page at ${hex(page)}`),
    { op: { op: 'WRITE_MEM', pid, address: page, data: code }, why: `${what}: ${code.toString('hex')}` },
    protectStep(pid, page, PAGE, PROT.READ | PROT.EXEC, `make the ${what} executable`),
  ];
}

function writableHolding(imageMaps: Mapping[], start: bigint, end: bigint, what: string): void {
  if (!imageMaps.some((m) => m.start <= start && end <= m.end && m.perms[1] === 'w')) {
    throw new PlanError(`no writable mapping of the image holds the ${what} at ${hex(start)}-${hex(end)}`);
  }
}

/** What rt_sigreturn takes from the frame besides registers: the blocked mask and the alternate stack. */
type FrameSignals = Pick<SignalState, 'blocked' | 'altstack'>;
/** A freshly exec'd task: nothing blocked, no alternate stack. */
const FRESH_TASK_SIGNALS: FrameSignals = { blocked: 0n, altstack: { sp: 0n, flags: SS_DISABLE, size: 0n } };

/** Layout of the x86-64 signal frame (arch/x86/include/asm/sigframe.h, uapi sigcontext.h). */
const SIGFRAME = {
  size: 440, // pretcode 8 + ucontext 304 + siginfo 128
  ucFlags: 8,
  ucStack: 24, // ss_sp, ss_flags, ss_size
  mcontext: 48, // struct sigcontext, 256 bytes
  sigmask: 304,
} as const;
/** struct sigcontext field offsets, in the order the kernel reads them. */
const SIGCONTEXT: Readonly<Record<string, number>> = {
  r8: 0,
  r9: 8,
  r10: 16,
  r11: 24,
  r12: 32,
  r13: 40,
  r14: 48,
  r15: 56,
  rdi: 64,
  rsi: 72,
  rbp: 80,
  rbx: 88,
  rdx: 96,
  rax: 104,
  rcx: 112,
  rsp: 120,
  rip: 128,
  eflags: 136,
};
const SC_CS = 144;
const SC_SS = 150;
const SC_FPSTATE = 184;
const UC_FP_XSTATE = 1n;
const UC_SIGCONTEXT_SS = 2n;
const UC_STRICT_RESTORE_SS = 4n;
const FP_XSTATE_MAGIC1 = 0x46505853;
const FP_XSTATE_MAGIC2 = 0x46505845;
const FX_SW_BYTES = 464;
const NR_RT_SIGRETURN = 15n;
const SYSCALL = Buffer.from([0x0f, 0x05]);

/** `ptraceXstate` null: a frame without fpstate, which makes the kernel give the task a fresh FPU. */
function sigreturnSteps(
  pid: number,
  regs: UserRegs,
  ptraceXstate: Buffer | null,
  signals: FrameSignals,
  probe: TargetProbe,
  imageMaps: Mapping[],
  mapTrampoline = true,
): PlanStep[] {
  const page = freePage(probe.maps, imageMaps);
  if (!ptraceXstate) {
    const frameAt = ((regs.rsp - RED_ZONE - BigInt(SIGFRAME.size)) & ~15n) - 8n;
    writableHolding(imageMaps, frameAt, frameAt + BigInt(SIGFRAME.size), 'signal frame');
    return sigframeSteps(pid, regs, signals, page, frameAt, 0n, [], mapTrampoline);
  }
  // The signal fpstate is the ptrace XSAVE area with the software bytes a
  // signal frame carries (magic, sizes, XCR0) and FP_XSTATE_MAGIC2 after it;
  // a mismatch would make the kernel fall back to FXRSTOR and drop AVX state.
  const xsize = ptraceXstate.length;
  const fpstate = Buffer.alloc(xsize + 4);
  ptraceXstate.copy(fpstate);
  const xcr0 = xstateFeatures(ptraceXstate);
  fpstate.fill(0, FX_SW_BYTES, 512);
  fpstate.writeUInt32LE(FP_XSTATE_MAGIC1, FX_SW_BYTES);
  fpstate.writeUInt32LE(xsize + 4, FX_SW_BYTES + 4);
  fpstate.writeBigUInt64LE(xcr0, FX_SW_BYTES + 8);
  fpstate.writeUInt32LE(xsize, FX_SW_BYTES + 16);
  fpstate.writeUInt32LE(FP_XSTATE_MAGIC2, xsize);

  // Below the red zone: the fpstate 64-byte aligned, then the frame as the kernel places one.
  const fpAt = (regs.rsp - RED_ZONE - BigInt(fpstate.length)) & ~63n;
  const frameAt = ((fpAt - BigInt(SIGFRAME.size)) & ~15n) - 8n;
  writableHolding(imageMaps, frameAt, fpAt + BigInt(fpstate.length), 'signal frame');

  return sigframeSteps(
    pid,
    regs,
    signals,
    page,
    frameAt,
    fpAt,
    [{ op: { op: 'WRITE_MEM', pid, address: fpAt, data: fpstate }, why: `signal fpstate (${xsize}-byte XSAVE area + magic) at ${hex(fpAt)}` }],
    mapTrampoline,
  );
}

/** The frame, the trampoline and the registers that start it; fpAt 0 means no fpstate. */
function sigframeSteps(
  pid: number,
  regs: UserRegs,
  { blocked, altstack }: FrameSignals,
  page: bigint,
  frameAt: bigint,
  fpAt: bigint,
  fpSteps: PlanStep[],
  mapTrampoline: boolean,
): PlanStep[] {
  const frame = Buffer.alloc(SIGFRAME.size);
  frame.writeBigUInt64LE((fpAt === 0n ? 0n : UC_FP_XSTATE) | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, SIGFRAME.ucFlags);
  // rt_sigreturn restores the alternate stack from uc_stack too.
  frame.writeBigUInt64LE(altstack.sp, SIGFRAME.ucStack);
  frame.writeInt32LE(altstack.flags & ~SS_ONSTACK, SIGFRAME.ucStack + 8);
  frame.writeBigUInt64LE(altstack.size, SIGFRAME.ucStack + 16);
  for (const [name, offset] of Object.entries(SIGCONTEXT)) frame.writeBigUInt64LE(BigInt.asUintN(64, regs[name as keyof UserRegs]), SIGFRAME.mcontext + offset);
  frame.writeUInt16LE(Number(regs.cs), SIGFRAME.mcontext + SC_CS);
  frame.writeUInt16LE(Number(regs.ss), SIGFRAME.mcontext + SC_SS);
  frame.writeBigUInt64LE(fpAt, SIGFRAME.mcontext + SC_FPSTATE);
  // rt_sigreturn sets the blocked mask from the frame.
  frame.writeBigUInt64LE(blocked, SIGFRAME.sigmask);

  return [
    ...(mapTrampoline ? trampolineSteps(pid, page, SYSCALL, 'sigreturn trampoline (syscall)') : []),
    ...fpSteps,
    { op: { op: 'WRITE_MEM', pid, address: frameAt, data: frame }, why: `rt_sigframe at ${hex(frameAt)}: rip ${hex(regs.rip)}, eflags ${hex(regs.eflags)}` },
    {
      op: {
        op: 'SETREGS',
        pid,
        regs: { ...regs, rip: page, rsp: frameAt + 8n, rax: NR_RT_SIGRETURN, orig_rax: BigInt.asUintN(64, -1n), eflags: TRAMPOLINE_EFLAGS },
      },
      why: 'start on the trampoline: rt_sigreturn with rsp at the frame (fs_base, gs_base set here; sigcontext has no place for them)',
    },
  ];
}

function popfSteps(pid: number, regs: UserRegs, probe: TargetProbe, imageMaps: Mapping[], mapTrampoline = true): PlanStep[] {
  const page = freePage(probe.maps, imageMaps);
  const frame = regs.rsp - RED_ZONE - 16n;
  writableHolding(imageMaps, frame, frame + 16n, 'popf frame');
  const frameBytes = Buffer.alloc(16);
  frameBytes.writeBigUInt64LE(regs.eflags, 0);
  frameBytes.writeBigUInt64LE(regs.rip, 8);
  return [
    ...(mapTrampoline ? trampolineSteps(pid, page, POPF_TRAMPOLINE, 'popf trampoline (popfq; ret $128)') : []),
    {
      op: { op: 'WRITE_MEM', pid, address: frame, data: frameBytes },
      why: `popf frame below the red zone at ${hex(frame)}: eflags ${hex(regs.eflags)}, rip ${hex(regs.rip)}`,
    },
    {
      op: { op: 'SETREGS', pid, regs: { ...regs, rip: page, rsp: frame, eflags: TRAMPOLINE_EFLAGS } },
      why: `registers through the popf trampoline: rip ${hex(page)}, rsp ${hex(frame)} (eflags ${hex(regs.eflags)} left to popfq, which cannot set RF)`,
    },
  ];
}

/**
 * Xstate and registers of a thread other than the main one, by the same
 * restorer; the trampoline page the main thread's steps mapped serves every
 * thread, each with its frame on its own stack (sigreturn: with the thread's
 * own mask and alternate stack, which rt_sigreturn sets). What the policy
 * takes from the "restarting task" (RF to preserve, callee-saved registers
 * under regs=partial, TLS when omitted) is the main thread's at the probe:
 * clone3 copied those registers into the new thread.
 */
export function threadRegisterSteps(t: ThreadState, probe: TargetProbe, imageMaps: Mapping[], policy: RestorePolicy): PlanStep[] {
  const regs = restoredRegisters(t.regs, probe.regs, policy);
  const describe = `registers of thread ${t.tid} (regs=${policy.regs ?? 'full'}${omits(policy, 'tls') ? ', TLS omitted' : ''})`;
  switch (policy.restorer ?? 'ptrace') {
    case 'ptrace':
      return [
        ...threadXstateStep(t, policy),
        { op: { op: 'SETREGS', pid: t.tid, regs }, why: `${describe}, eflags ${hex(regs.eflags)} under rf=${policy.rf}, returned through IRET` },
      ];
    case 'popf':
      return [...threadXstateStep(t, policy), ...popfSteps(t.tid, regs, probe, imageMaps, false)];
    case 'sigreturn': {
      const xstate = omits(policy, 'xstate') || omits(policy, 'thread-xstate') ? null : t.xstate;
      const signals: FrameSignals = omits(policy, 'signals')
        ? FRESH_TASK_SIGNALS
        : { blocked: omits(policy, 'thread-masks') ? creationMask(policy) : t.blocked, altstack: t.altstack };
      return sigreturnSteps(t.tid, regs, xstate, signals, probe, imageMaps, false);
    }
  }
}
