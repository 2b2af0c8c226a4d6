/**
 * The hardware frame of an exception, read at a kernel entry point whose
 * first argument (rdi) is the struct pt_regs the entry code built: the RIP,
 * CS and EFLAGS the CPU pushed. Read through the gdbstub while the VM is
 * stopped at that entry.
 */
import type { GdbClient } from '../gdb/client.ts';

/** Offsets of the hardware frame in struct pt_regs (arch/x86/include/asm/ptrace.h). */
const PT_REGS = { ip: 128, cs: 136, flags: 144, size: 168 } as const;

export interface ExceptionFrame {
  /** the pt_regs address (rdi at the entry) */
  at: bigint;
  ip: bigint;
  cs: bigint;
  flags: bigint;
  /** CS has RPL 3: the exception came from user mode */
  fromUser: boolean;
}

export async function readExceptionFrame(gdb: GdbClient, regs: Map<string, bigint>): Promise<ExceptionFrame> {
  const at = regs.get('rdi')!;
  const frame = await gdb.readMemory(at, PT_REGS.size);
  const cs = frame.readBigUInt64LE(PT_REGS.cs);
  return { at, ip: frame.readBigUInt64LE(PT_REGS.ip), cs, flags: frame.readBigUInt64LE(PT_REGS.flags), fromUser: (cs & 3n) === 3n };
}
