/**
 * A process stopped inside a system call (interrupted by PTRACE_INTERRUPT or
 * a signal) shows rax = -ERESTART* with orig_rax = the call. The kernel would
 * restart the call on the way back to user mode; a restored process never
 * takes that path (it resumes from a stop of its own) and would see the raw
 * -512..-516 as the call's result. Rewinding to the `syscall` instruction
 * with rax = the call number makes the restored process issue it again,
 * which is what the kernel does for the original (CRIU's compel rewinds in
 * get_task_regs for the same reason).
 */
import type { UserRegs } from '../x86/registers.ts';

export const RESTART_ERRORS: Readonly<Record<number, string>> = {
  512: 'ERESTARTSYS',
  513: 'ERESTARTNOINTR',
  514: 'ERESTARTNOHAND',
  516: 'ERESTART_RESTARTBLOCK',
};

/** `syscall` (0f 05) and `int $0x80` (cd 80) are both two bytes. */
const SYSCALL_INSN_BYTES = 2n;

export interface SyscallRewind {
  regs: UserRegs;
  /** the interrupted call's number */
  nr: number;
  /** what the kernel had reported, e.g. ERESTARTNOHAND */
  error: string;
  /** for the verdict: what the restored process will do */
  note: string;
}

/** The registers with an interrupted, restartable call rewound; undefined when `regs` show none. */
export function rewindInterruptedSyscall(regs: UserRegs): SyscallRewind | undefined {
  const nr = BigInt.asIntN(64, regs.orig_rax);
  const ret = BigInt.asIntN(64, regs.rax);
  const error = RESTART_ERRORS[Number(-ret)];
  if (nr < 0n || error === undefined) return undefined;
  // ERESTART_RESTARTBLOCK would go through restart_syscall and the kernel's
  // restart_block, which is not part of a checkpoint: the call is issued
  // again with its original arguments instead (a relative sleep starts over).
  const note =
    error === 'ERESTART_RESTARTBLOCK'
      ? `system call ${nr} was interrupted (${error}); it is issued again with its original arguments (a relative timeout starts over)`
      : `system call ${nr} was interrupted (${error}); it is issued again, as the kernel would have restarted it`;
  return { regs: { ...regs, rax: regs.orig_rax, rip: regs.rip - SYSCALL_INSN_BYTES }, nr: Number(nr), error, note };
}
