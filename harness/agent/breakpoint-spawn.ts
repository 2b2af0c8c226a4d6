import { debugRegOffset } from '../x86/registers.ts';
import type { AgentClient } from './client.ts';

/** DR7: L0 enable, R/W0 = 00 (execute), LEN0 = 00 (1 byte). */
export const DR7_EXECUTE_DR0 = 0x1n;

export interface ArmedProgram {
  /** guest path */
  binary: string;
  argv: string[];
  /** address of the DR0 execute breakpoint */
  breakAt: bigint;
}

/**
 * Spawns a program (ASLR off) stopped before its first instruction with an
 * execute breakpoint in DR0 — how every breakpoint scenario and probe starts.
 */
export async function spawnWithBreakpoint(agent: AgentClient, program: ArmedProgram, stdoutPath: string): Promise<number> {
  const { pid } = await agent.call({ op: 'SPAWN', path: program.binary, argv: program.argv, envp: [], stdoutPath, noAslr: true });
  await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(0), value: program.breakAt });
  await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: DR7_EXECUTE_DR0 });
  return pid;
}
