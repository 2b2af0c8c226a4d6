/**
 * `--inject-fault PHASE:KIND` (crh repro / crh cr): makes the infrastructure
 * fail on purpose when the run enters a phase, so that the way crh fails —
 * exit 69 within seconds, an error naming the phase and the cause, the
 * artifacts kept, no QEMU and no temp directory left behind — is tested
 * (test/fault-injection.test.ts) rather than hoped for. Documented in
 * docs/ci.md; the usage lists it last, marked as for tests of crh itself.
 *
 * The fault lands as the phase begins: after the phase is shown and marked in
 * the guest console, before the phase's first request to the guest returns.
 * Kinds that end the guest wait until the machine has noticed, so the error
 * is the phase's own and never the next one's.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { QemuMachine } from '../machine/machine.ts';
import { UsageError } from './usage-error.ts';

export const FAULT_PHASES = ['checkpoint', 'restore'] as const;
export const FAULT_KINDS = ['kill-qemu', 'kill-agent', 'drop-ssh', 'drop-agent', 'guest-panic'] as const;
export type FaultPhase = (typeof FAULT_PHASES)[number];
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface InjectedFault {
  phase: FaultPhase;
  kind: FaultKind;
}

/** How long a kind that ends the guest waits for the machine to notice before the phase goes on regardless. */
const NOTICE_BOUND_MS = 15_000;

export function parseFault(text: string): InjectedFault {
  const [phase, kind, ...rest] = text.split(':');
  if (rest.length > 0 || !(FAULT_PHASES as readonly string[]).includes(phase ?? '') || !(FAULT_KINDS as readonly string[]).includes(kind ?? '')) {
    throw new UsageError(`--inject-fault: "${text}" is not PHASE:KIND (PHASE one of ${FAULT_PHASES.join(', ')}; KIND one of ${FAULT_KINDS.join(', ')})`);
  }
  return { phase: phase as FaultPhase, kind: kind as FaultKind };
}

export interface FaultTarget {
  machine: QemuMachine;
  /** the agent's pid in the guest (HELLO) */
  agentPid: number;
  /** drops the agent's own connection (its port's socket, or the SSH connection it runs on) */
  dropAgent: () => void;
  /** rejects once the agent session has failed for a reason other than the machine (open-guest.ts sessionFailure) */
  sessionFailure: Promise<never>;
  log: (line: string) => void;
}

/** Makes `fault` happen now; returns once the harness can see it (or after a bound, saying so). */
export async function injectFault(fault: InjectedFault, target: FaultTarget): Promise<void> {
  const { machine, log } = target;
  log(`injecting fault ${fault.kind} (--inject-fault ${fault.phase}:${fault.kind})`);
  switch (fault.kind) {
    case 'kill-qemu': {
      const pid = machine.pid;
      if (pid === undefined) throw new UsageError('--inject-fault kill-qemu: the machine has no process');
      process.kill(pid, 'SIGKILL');
      return noticed(machine.failure, log);
    }
    // The session kinds wait for the session's failure too: over the agent port a phase may need
    // neither the agent's dead process nor SSH for a while, and would fail only in the next one.
    case 'kill-agent':
      // Its own exec channel: the agent's channel is the one about to break.
      await machine.ssh.run(`kill -9 ${target.agentPid}`);
      return noticed(target.sessionFailure, log);
    case 'drop-ssh':
      machine.ssh.dropConnection();
      return noticed(target.sessionFailure, log);
    case 'drop-agent':
      target.dropAgent();
      return noticed(target.sessionFailure, log);
    case 'guest-panic':
      // The command never answers: the kernel dies under it. Its channel ends with the connection.
      void machine.ssh.exec('echo c > /proc/sysrq-trigger').catch(() => {});
      return noticed(machine.failure, log);
  }
}

async function noticed(failure: Promise<never>, log: (line: string) => void): Promise<void> {
  const bound = new AbortController();
  const seen = await Promise.race([
    failure.then(
      () => true,
      () => true,
    ),
    sleep(NOTICE_BOUND_MS, false, { signal: bound.signal }).catch(() => false),
  ]);
  bound.abort();
  if (!seen) log(`the fault was not reported within ${NOTICE_BOUND_MS} ms; the phase goes on`);
}
