/**
 * Does this platform push EFLAGS.RF = 1 in the exception frame of a user
 * page fault, as the architecture says for fault-class exceptions? Measured
 * at the CPU, not inferred: a gdbstub hardware breakpoint on the kernel's
 * page-fault entry (exc_page_fault(struct pt_regs *regs, error_code)) stops
 * the VM at each fault; the frame the CPU pushed is read through regs (rdi)
 * until one comes from user mode inside a program of ours.
 */
import type { AgentClient } from '../agent/client.ts';
import { GdbClient } from '../gdb/client.ts';
import type { GuestImage } from '../image/build.ts';
import { readGuestManifest } from '../image/guest-binaries.ts';
import type { QemuMachine } from '../machine/machine.ts';
import { kernelSymbolFile } from '../symbols/kernel-symbols.ts';
import { SymbolTable } from '../symbols/symbols.ts';
import { EFLAGS, hex } from '../x86/registers.ts';
import { readExceptionFrame } from '../oracle/exception-frame.ts';
import type { Measured } from './probe-runner.ts';

/** Faults from other processes and the kernel are skipped; give up after this many. */
const MAX_STOPS = 5000;
const PROGRAM = 'hwbreak';

export async function measureRfOnUserPageFault(ctx: {
  image: GuestImage;
  machine: QemuMachine;
  agent: AgentClient;
}): Promise<{ measured: Measured<boolean>; symbolsOrigin: string }> {
  const { image, machine, agent } = ctx;
  const source = await kernelSymbolFile(image, machine.ssh);
  const symbols = await (await new SymbolTable().addSystemMap(source.file)).addProgram(PROGRAM, image.binaries[PROGRAM]!);
  const entry = symbols.resolve('kernel:exc_page_fault');
  const spec = (await readGuestManifest()).binaries.find((b) => b.name === PROGRAM)!;
  const low = BigInt(spec.textSegment);
  const high = low + 0x100_0000n;

  const binary = image.guestPaths[PROGRAM]!;
  const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv: [binary, '1'], envp: [], stdoutPath: '/tmp/probe-pf.out', noAslr: true });
  const gdb = await GdbClient.connect({ path: machine.gdbSocket });
  let found: { ip: bigint; flags: bigint } | undefined;
  let stops = 0;
  try {
    await gdb.insertBreakpoint('hardware', entry, 1);
    // The fresh process faults on its first instruction fetch and stack touch.
    const run = agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 60_000 });
    while (!found && stops < MAX_STOPS) {
      const stop = await gdb.cont();
      stops++;
      if (stop.kind !== 'signal') break;
      const frame = await readExceptionFrame(gdb, await gdb.readRegisters());
      if (frame.fromUser && frame.ip >= low && frame.ip < high) found = frame;
    }
    await gdb.removeBreakpoint('hardware', entry, 1);
    await gdb.detach();
    await run;
  } finally {
    await gdb.close();
    await agent.call({ op: 'KILL', pid }).catch(() => {});
  }
  const symbolsOrigin = `${source.origin}; exc_page_fault = ${hex(entry)}`;
  if (!found) return { measured: { value: null, how: `no user page fault of ${PROGRAM} among ${stops} stops at kernel:exc_page_fault` }, symbolsOrigin };
  return {
    measured: {
      value: (found.flags & EFLAGS.RF) !== 0n,
      how: `gdbstub Z1 at kernel:exc_page_fault, pt_regs of a user fault at ${symbols.symbolize(found.ip)}: pushed eflags ${hex(found.flags)} (${stops} stops)`,
    },
    symbolsOrigin,
  };
}
