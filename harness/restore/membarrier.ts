/**
 * membarrier(2) registrations, which the image does not hold: refused by
 * name at the checkpoint. A process that registered for a private
 * expedited command and uses it after a restore gets EPERM — the fresh
 * process never registered (CRIU's ZDTM membarrier test fails exactly so).
 *
 * The kernel shows the registrations nowhere in /proc; they are found as
 * CRIU finds them: each private expedited command is run in the stopped
 * process (an injected syscall), and a process not registered for it gets
 * -EPERM. Running one is harmless: a memory barrier on the CPUs that run
 * the process's threads — none, while it is stopped. (A global expedited
 * registration cannot be probed this way: GLOBAL_EXPEDITED succeeds
 * registered or not.) The caller injects with signals blocked and the rseq
 * critical section parked, as for every injected capture.
 */
import type { AgentClient } from '../agent/client.ts';
import type { Uncapturable } from './uncapturable.ts';

const NR_MEMBARRIER = 324;

/** The commands probed (uapi linux/membarrier.h), each with the registration it needs. */
export const MEMBARRIER_PROBES: ReadonlyArray<{ cmd: number; registration: string }> = [
  { cmd: 1 << 3, registration: 'MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED' },
  { cmd: 1 << 5, registration: 'MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE' },
  { cmd: 1 << 7, registration: 'MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ' },
];

/** The registrations whose command returned 0 (the others -EPERM, or -EINVAL on a kernel without the command). */
export function membarrierProblems(pid: number, results: ReadonlyArray<{ cmd: number; result: bigint }>): Uncapturable[] {
  return results.flatMap(({ cmd, result }) => {
    const probe = MEMBARRIER_PROBES.find((p) => p.cmd === cmd);
    return result === 0n && probe
      ? [
          {
            state: 'membarrier registration',
            where: `pid ${pid}`,
            seen: `${probe.registration} (membarrier(${cmd}) succeeded in the process; a restored process is not registered and gets EPERM)`,
          },
        ]
      : [];
  });
}

/** Runs each probe in the stopped process `pid`; the registrations it holds, as refusals. */
export async function probeMembarrier(agent: AgentClient, pid: number): Promise<Uncapturable[]> {
  const results: Array<{ cmd: number; result: bigint }> = [];
  for (const { cmd } of MEMBARRIER_PROBES)
    results.push({ cmd, result: await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR_MEMBARRIER, args: [BigInt(cmd), 0n, 0n] }) });
  return membarrierProblems(pid, results);
}
