/**
 * When the way to a running guest is lost without the machine dying: the
 * SSH connection dropped, or the agent killed by SIGKILL (from outside: a
 * person, the OOM killer, a fault injected on purpose). Like a lost guest,
 * neither says anything about the code under test: both are
 * infrastructure (InfraError, exit 69). An agent that ends by itself (exits,
 * or dies of SIGSEGV or SIGABRT) is not counted here — that is a failure of
 * ours and stays one (agent/client.ts).
 */
import { InfraError } from '../errors.ts';
import type { ChannelExit } from '../ssh/session.ts';

/**
 * How long a session loss waits before it stands: QEMU dying drops the SSH
 * connection too, and the machine's own explanation ("guest lost: QEMU
 * killed by SIGKILL", a kernel panic line) is the one a person needs.
 */
export const SESSION_LOSS_DEFER_MS = 500;

/** Rejects with the agent's killing when its channel reports exit-signal KILL; never settles otherwise. */
export function agentKilled(exit: Promise<ChannelExit>): Promise<never> {
  const killed = new Promise<never>((_, reject) => {
    void exit.then((how) => {
      // ssh2 names the signal as the server sent it: "KILL" (RFC 4254), or with a SIG prefix.
      if (how.signal === 'KILL' || how.signal === 'SIGKILL') reject(new InfraError('the agent was killed by SIGKILL'));
    });
  });
  killed.catch(() => {});
  return killed;
}

/**
 * The machine's failure or, failing that within SESSION_LOSS_DEFER_MS, the
 * first session loss: what the agent client fails its requests with
 * (AgentClient.failWhen). Never resolves.
 */
export function guestOrSessionFailure(
  machineFailure: Promise<never>,
  sessionLosses: readonly Promise<never>[],
  deferMs = SESSION_LOSS_DEFER_MS,
): Promise<never> {
  const failure = new Promise<never>((_, reject) => {
    machineFailure.catch(reject);
    for (const loss of sessionLosses) loss.catch((error: unknown) => setTimeout(() => reject(error), deferMs).unref());
  });
  failure.catch(() => {});
  return failure;
}
