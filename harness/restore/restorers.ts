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
 * The trampoline page (PROT_READ|PROT_EXEC, at a free address) stays mapped
 * in the restored process.
 */
import { NT_X86_XSTATE, hex, type UserRegs } from '../x86/registers.ts';
import type { CheckpointImage } from './checkpoint-image.ts';
import { restoredRegisters, type RestorePolicy } from './policy.ts';
import type { Mapping } from './proc-maps.ts';
import { PlanError, type PlanStep, type TargetProbe } from './plan-step.ts';

export const RESTORERS = ['ptrace', 'popf'] as const;
export type Restorer = (typeof RESTORERS)[number];

export function parseRestorer(value: string): Restorer {
  if ((RESTORERS as readonly string[]).includes(value)) return value as Restorer;
  throw new RangeError(`unknown restorer "${value}" (one of ${RESTORERS.join(', ')})`);
}

const SYS = { mmap: 9, mprotect: 10 } as const;
const PAGE = 0x1000n;
const PROT_READ = 1n;
const PROT_WRITE = 2n;
const PROT_EXEC = 4n;
const MAP_PRIVATE = 0x02n;
const MAP_ANONYMOUS = 0x20n;
const MAP_FIXED_NOREPLACE = 0x100000n;
/** The System V red zone: a leaf function may keep live data this far below rsp. */
const RED_ZONE = 128n;
/** popfq; ret $128 — EFLAGS from the frame, then RIP, then skip the red zone. */
const POPF_TRAMPOLINE = Buffer.from([0x9d, 0xc2, Number(RED_ZONE), 0x00]);
/** A neutral EFLAGS for the trampoline itself: IF and bit 1, nothing that traps. */
const TRAMPOLINE_EFLAGS = 0x202n;

/** Candidate addresses for scratch pages, far from where programs and the kernel map things. */
const SCRATCH_CANDIDATES = [0x1000_0000_0000n, 0x2000_0000_0000n, 0x3000_0000_0000n];

function freePage(...mapSets: Mapping[][]): bigint {
  const all = mapSets.flat();
  const free = SCRATCH_CANDIDATES.find((a) => all.every((m) => m.end <= a || m.start >= a + PAGE));
  if (free === undefined) throw new PlanError('no free page for the restorer trampoline');
  return free;
}

/** Steps that give the task the image's xstate and registers, by `restorer`. */
export function registerSteps(image: CheckpointImage, probe: TargetProbe, imageMaps: Mapping[], policy: RestorePolicy): PlanStep[] {
  const pid = probe.pid;
  const regs = restoredRegisters(image.regs, probe.regs, policy);
  const xstate: PlanStep = { op: { op: 'SETREGSET', pid, noteType: NT_X86_XSTATE, data: image.xstate }, why: 'FPU/SSE/AVX state (xstate)' };
  const describe = `registers (regs=${policy.regs ?? 'full'})`;
  switch (policy.restorer ?? 'ptrace') {
    case 'ptrace':
      return [xstate, { op: { op: 'SETREGS', pid, regs }, why: `${describe}, eflags ${hex(regs.eflags)} under rf=${policy.rf}, returned through IRET` }];
    case 'popf':
      return [xstate, ...popfSteps(pid, regs, probe, imageMaps)];
  }
}

function popfSteps(pid: number, regs: UserRegs, probe: TargetProbe, imageMaps: Mapping[]): PlanStep[] {
  const page = freePage(probe.maps, imageMaps);
  const frame = regs.rsp - RED_ZONE - 16n;
  const stack = imageMaps.find((m) => m.start <= frame && frame + 16n <= m.end && m.perms[1] === 'w');
  if (!stack) throw new PlanError(`no writable mapping holds the popf frame at ${hex(frame)} (rsp ${hex(regs.rsp)})`);
  const frameBytes = Buffer.alloc(16);
  frameBytes.writeBigUInt64LE(regs.eflags, 0);
  frameBytes.writeBigUInt64LE(regs.rip, 8);
  return [
    {
      op: { op: 'INJECT_SYSCALL', pid, nr: SYS.mmap, args: [page, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, BigInt.asUintN(64, -1n), 0n] },
      why: `map the popf trampoline page at ${hex(page)}`,
      expect: page,
    },
    { op: { op: 'WRITE_MEM', pid, address: page, data: POPF_TRAMPOLINE }, why: 'trampoline: popfq; ret $128' },
    { op: { op: 'INJECT_SYSCALL', pid, nr: SYS.mprotect, args: [page, PAGE, PROT_READ | PROT_EXEC] }, why: 'make the trampoline executable', expect: 0n },
    { op: { op: 'WRITE_MEM', pid, address: frame, data: frameBytes }, why: `popf frame below the red zone at ${hex(frame)}: eflags ${hex(regs.eflags)}, rip ${hex(regs.rip)}` },
    {
      op: { op: 'SETREGS', pid, regs: { ...regs, rip: page, rsp: frame, eflags: TRAMPOLINE_EFLAGS } },
      why: `registers through the popf trampoline: rip ${hex(page)}, rsp ${hex(frame)} (eflags ${hex(regs.eflags)} left to popfq, which cannot set RF)`,
    },
  ];
}
