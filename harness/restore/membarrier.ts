/**
 * membarrier(2) registrations: captured at the checkpoint and made again
 * in the restored process. A process that registered for a private
 * expedited command and uses it after a restore would otherwise get EPERM
 * — the fresh process never registered (CRIU's ZDTM membarrier test fails
 * exactly so).
 *
 * The kernel shows the registrations nowhere in /proc; they are found as
 * CRIU finds them: each private expedited command is run in the stopped
 * process (an injected syscall), and a process not registered for it gets
 * -EPERM. Running one is harmless: a memory barrier on the CPUs that run
 * the process's threads — none, while it is stopped. (A global expedited
 * registration cannot be probed this way: GLOBAL_EXPEDITED succeeds
 * registered or not; nor need it be: a process that was not registered
 * gets the same answer.) The caller injects with signals blocked and the
 * rseq critical section parked, as for every injected capture.
 *
 * Restored by the registering command itself, injected: the registration
 * belongs to the mm, so one call serves every thread.
 */
import type { AgentClient } from '../agent/client.ts';
import type { MembarrierRegistration } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';

const NR_MEMBARRIER = 324;

/** The commands probed (uapi linux/membarrier.h), each with the registration it needs and the command that registers it. */
export const MEMBARRIER_PROBES: ReadonlyArray<{ cmd: number; register: number; registration: MembarrierRegistration; name: string }> = [
  { cmd: 1 << 3, register: 1 << 4, registration: 'private-expedited', name: 'MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED' },
  { cmd: 1 << 5, register: 1 << 6, registration: 'private-expedited-sync-core', name: 'MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE' },
  { cmd: 1 << 7, register: 1 << 8, registration: 'private-expedited-rseq', name: 'MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ' },
];

/** The registrations whose command returned 0 (the others -EPERM, or -EINVAL on a kernel without the command). Pure. */
export function membarrierRegistrations(results: ReadonlyArray<{ cmd: number; result: bigint }>): MembarrierRegistration[] {
  return MEMBARRIER_PROBES.filter((p) => results.some((r) => r.cmd === p.cmd && r.result === 0n)).map((p) => p.registration);
}

/** Runs each probe in the stopped process `pid`: the registrations it holds. */
export async function probeMembarrier(agent: AgentClient, pid: number): Promise<MembarrierRegistration[]> {
  const results: Array<{ cmd: number; result: bigint }> = [];
  for (const { cmd } of MEMBARRIER_PROBES)
    results.push({ cmd, result: await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR_MEMBARRIER, args: [BigInt(cmd), 0n, 0n] }) });
  return membarrierRegistrations(results);
}

/** The registering calls, one per registration of the image. */
export function membarrierSteps(pid: number, registrations: readonly MembarrierRegistration[]): PlanStep[] {
  return MEMBARRIER_PROBES.filter((p) => registrations.includes(p.registration)).map((p) => ({
    op: { op: 'INJECT_SYSCALL', pid, nr: NR_MEMBARRIER, args: [BigInt(p.register), 0n, 0n] },
    why: `membarrier(${p.name}): the process had registered`,
    expect: 0n,
  }));
}

/** A message naming the field, or undefined: task.json's membarrier list, as hostile input. Pure. */
export function membarrierProblem(list: unknown): { field: string; why: string } | undefined {
  if (!Array.isArray(list) || list.length > MEMBARRIER_PROBES.length)
    return { field: 'membarrier', why: `must be a list of at most ${MEMBARRIER_PROBES.length} registrations` };
  const seen = new Set<unknown>();
  for (const [i, r] of list.entries()) {
    if (!MEMBARRIER_PROBES.some((p) => p.registration === r))
      return { field: `membarrier[${i}]`, why: `${JSON.stringify(r)?.slice(0, 40)} is not one of ${MEMBARRIER_PROBES.map((p) => p.registration).join(', ')}` };
    if (seen.has(r)) return { field: `membarrier[${i}]`, why: `${String(r)} appears twice` };
    seen.add(r);
  }
  return undefined;
}
