/**
 * Hang diagnosis: when a wait times out, stop the VM through the gdbstub and
 * say where every vCPU is — RIP and CS (user or kernel mode), symbolized —
 * so the error shows whether the guest was stuck in the kernel, in a
 * workload, or idle. The VM is resumed afterwards (detach).
 */
import { GdbClient } from '../gdb/client.ts';
import type { SymbolTable } from '../symbols/symbols.ts';
import { hex } from '../x86/registers.ts';

export async function diagnoseVcpus(gdbSocket: string, symbols?: SymbolTable, timeoutMs = 5000): Promise<string> {
  const gdb = await GdbClient.connect({ path: gdbSocket }, { timeoutMs });
  try {
    const lines: string[] = [];
    for (const thread of await gdb.threads()) {
      await gdb.selectThread('g', thread);
      const regs = await gdb.readRegisters();
      const rip = regs.get('rip') ?? 0n;
      const cs = regs.get('cs') ?? 0n;
      const mode = (cs & 3n) === 3n ? 'user' : 'kernel';
      lines.push(
        `vCPU ${thread}: ${mode} mode, rip ${hex(rip)} ${symbols ? symbols.symbolize(rip) : ''}, cs ${hex(cs)}, rsp ${hex(regs.get('rsp') ?? 0n)}`.replace(
          '  ',
          ' ',
        ),
      );
    }
    return lines.join('\n');
  } finally {
    await gdb.close();
  }
}
