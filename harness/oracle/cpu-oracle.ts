/**
 * The oracle: ground truth from the CPU through QEMU's gdbstub, independent
 * of the agent and ptrace. While a guest operation runs, it can
 * - catch the first execution of a user address (a workload is linked at its
 *   own address, so the address names the program) and read the registers
 *   the CPU really holds there;
 * - count the debug exceptions (#DB) the CPU raises from user mode at an
 *   address, by breaking at the kernel's user #DB entry and reading the frame
 *   the CPU pushed.
 *
 * It must not perturb what it observes, and QEMU TCG makes that subtle
 * (docs/platform.md):
 * - while the gdbstub single-steps, QEMU skips every breakpoint, the guest's
 *   own DR0-DR3 included; so the one-shot breakpoint is removed and the VM
 *   simply continued, and stepping happens only over the kernel's #DB entry,
 *   where no guest breakpoint lives;
 * - a gdbstub breakpoint on an address that also holds a guest DR breakpoint
 *   makes QEMU raise the guest's #DB there whatever RF says, for ever; so the
 *   one-shot breakpoint must never sit on a guest breakpoint address (the
 *   workloads give it a neighbouring label, e.g. hwbreak:target_body).
 */
import { GdbClient } from '../gdb/client.ts';
import type { SymbolTable } from '../symbols/symbols.ts';
import { CrhError } from '../errors.ts';
import { hex } from '../x86/registers.ts';
import { readExceptionFrame } from './exception-frame.ts';

/** The kernel's entry for #DB from user mode on x86-64 (DEFINE_IDTENTRY_DEBUG_USER). */
export const USER_DEBUG_ENTRY = 'kernel:noist_exc_debug';

export interface DebugTrap {
  ip: bigint;
  /** EFLAGS the CPU pushed */
  flags: bigint;
}

export interface Observation {
  /** registers at the first execution of `firstExecutionAt`, if it was reached */
  first?: Map<string, bigint>;
  /** user-mode #DB exceptions whose frame ip is `countDebugTrapsAt` */
  debugTraps: DebugTrap[];
  /** every VM stop the oracle serviced */
  stops: number;
}

export class OracleError extends CrhError {
  override readonly name = 'OracleError';
}

export interface WatchOptions {
  firstExecutionAt?: bigint;
  countDebugTrapsAt?: bigint;
  /** every stop and action, for the case's artifacts */
  log?: (line: string) => void;
}

/**
 * Watches the CPU while `operation` runs and returns what it saw once the
 * operation settles. The VM is stopped while breakpoints are armed and left
 * running, with no breakpoint of ours, afterwards.
 */
export async function observeCpu<T>(
  gdbSocket: string,
  symbols: SymbolTable,
  options: WatchOptions,
  operation: () => Promise<T>,
): Promise<{ result: T; observation: Observation }> {
  const gdb = await GdbClient.connect({ path: gdbSocket });
  const observation: Observation = { debugTraps: [], stops: 0 };
  const dbEntry = options.countDebugTrapsAt !== undefined ? symbols.resolve(USER_DEBUG_ENTRY) : undefined;
  let firstArmed = options.firstExecutionAt !== undefined;
  try {
    if (firstArmed) await gdb.insertBreakpoint('hardware', options.firstExecutionAt!, 1);
    if (dbEntry !== undefined) await gdb.insertBreakpoint('hardware', dbEntry, 1);
    const settled = operation().then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error }),
    );
    let outcome: Awaited<typeof settled> | undefined;
    let stop = gdb.cont();
    while (!outcome) {
      const next = await Promise.race([stop.then((s) => ({ stop: s })), settled.then((o) => ({ outcome: o }))]);
      if ('outcome' in next) {
        outcome = next.outcome;
        break;
      }
      const s = next.stop;
      if (s.kind !== 'signal') throw new OracleError(`the VM ended under observation: ${s.raw}`);
      observation.stops++;
      const regs = await gdb.readRegisters();
      const rip = regs.get('rip')!;
      options.log?.(`stop ${observation.stops}: ${s.raw} at ${symbols.symbolize(rip)}`);
      if (firstArmed && rip === options.firstExecutionAt) {
        observation.first = regs;
        await gdb.removeBreakpoint('hardware', rip, 1);
        firstArmed = false;
        stop = gdb.cont();
      } else if (dbEntry !== undefined && rip === dbEntry) {
        const frame = await readExceptionFrame(gdb, regs);
        const counted = frame.fromUser && frame.ip === options.countDebugTrapsAt;
        if (counted) observation.debugTraps.push({ ip: frame.ip, flags: frame.flags });
        options.log?.(`  #DB frame ip ${symbols.symbolize(frame.ip)} flags ${hex(frame.flags)} pt_regs ${hex(frame.at)}${counted ? ' (counted)' : ''}`);
        // cont() steps off the kernel entry first; no guest breakpoint lives there.
        stop = gdb.cont();
      } else {
        throw new OracleError(`unexpected VM stop at ${symbols.symbolize(rip)} (${hex(rip)})`);
      }
    }
    // Whatever stop the last resume ends with (the detach's interrupt) is not ours to report.
    stop.catch(() => {});
    if (!outcome.ok) throw outcome.error;
    return { result: outcome.value, observation };
  } finally {
    await gdb.close();
  }
}

/** "rip=0x10001720 (hwbreak:target) cs=0x33 eflags=0x10202 ..." for reports. */
export function describeRegisters(regs: Map<string, bigint>, names: readonly string[], symbols?: SymbolTable): string {
  return names
    .map((n) => {
      const v = regs.get(n);
      if (v === undefined) return `${n}=?`;
      return n === 'rip' && symbols ? `${n}=${hex(v)} (${symbols.symbolize(v)})` : `${n}=${hex(v)}`;
    })
    .join(' ');
}
