import { debugRegOffset } from '../x86/registers.ts';
import type { AgentClient } from './client.ts';

/** DR7: L0 enable, R/W0 = 00 (execute), LEN0 = 00 (1 byte). */
export const DR7_EXECUTE_DR0 = 0x1n;

/** DR7 LEN encodings (Intel SDM vol. 3, 18.2.4): 1, 2, 8 and 4 bytes are 00, 01, 10, 11. */
const DR7_LEN_BITS: Readonly<Record<number, bigint>> = { 1: 0n, 2: 1n, 8: 2n, 4: 3n };

/** DR7 for a data-write watchpoint of `length` bytes in DRn (local enable, R/W = 01). */
export function dr7WriteWatch(index: 0 | 1 | 2 | 3, length: 1 | 2 | 4 | 8): bigint {
  const i = BigInt(index);
  return (1n << (2n * i)) | (1n << (16n + 4n * i)) | (DR7_LEN_BITS[length]! << (18n + 4n * i));
}

/** Address registers and DR7 to arm, by index: 0-3 addresses, 7 control. */
export type DebugRegisterValues = Partial<Record<0 | 1 | 2 | 3 | 7, bigint>>;

export interface ArmedProgram {
  /** guest path */
  binary: string;
  argv: string[];
  /** empty when absent */
  envp?: string[];
  /** address of the DR0 execute breakpoint */
  breakAt?: bigint;
  /** debug registers armed instead of (or besides) breakAt; DR7 here replaces breakAt's */
  debugRegs?: DebugRegisterValues;
  /** spawned as exactly this pid (clone3 set_tid; EEXIST when taken) */
  pid?: number;
}

/**
 * Spawns a program (ASLR off) stopped before its first instruction with its
 * debug registers armed — an execute breakpoint in DR0 at `breakAt`, and/or
 * `debugRegs` — how every breakpoint scenario and probe starts; with `pid`,
 * as exactly that pid (clone3 set_tid; EEXIST when taken).
 */
export async function spawnWithBreakpoint(
  agent: Pick<AgentClient, 'call'>,
  program: ArmedProgram,
  stdoutPath: string,
  options: { pid?: number } = {},
): Promise<number> {
  const asPid = options.pid ?? program.pid;
  const { pid } = await agent.call({
    op: 'SPAWN',
    path: program.binary,
    argv: program.argv,
    envp: program.envp ?? [],
    stdoutPath,
    noAslr: true,
    ...(asPid !== undefined ? { pid: asPid } : {}),
  });
  await armDebugRegisters(agent, pid, { ...(program.breakAt === undefined ? {} : { 0: program.breakAt, 7: DR7_EXECUTE_DR0 }), ...program.debugRegs });
  return pid;
}

/**
 * Writes thread `tid`'s debug registers: the addresses first, DR7 last — it
 * enables an address only once the address is in place. Debug registers are
 * per thread: a thread that already exists is armed by its own tid.
 */
export async function armDebugRegisters(agent: Pick<AgentClient, 'call'>, tid: number, values: DebugRegisterValues): Promise<void> {
  for (const index of [0, 1, 2, 3, 7] as const) {
    const value = values[index];
    if (value !== undefined) await agent.call({ op: 'POKEUSER', pid: tid, offset: debugRegOffset(index), value });
  }
}
