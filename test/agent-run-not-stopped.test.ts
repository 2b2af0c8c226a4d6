// expect: through the real agent on the host's kernel, RUN's timeout answers ETIMEDOUT (isRunTimeout) only when it left
// every thread stopped: a sleeper in nanosleep is interrupted and stopped (GETREGS reads it); a sleeper whose thread
// waits in vfork — a killable wait no PTRACE_INTERRUPT breaks — is not stopped within the agent's 10 s, and RUN answers
// EBUSY naming that thread, which isRunTimeout does not take for a timeout, and the thread is indeed in no stop (GETREGS:
// ESRCH). Before this, both answered ETIMEDOUT and a caller would checkpoint a process that was still running.
import t from 'tap';
import { constants } from 'node:os';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { isRunTimeout } from '../harness/agent/run-to-end.ts';
import { AgentError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';

const { EBUSY, ESRCH, ETIMEDOUT } = constants.errno;
const SIGKILL = 9;
/** Far longer than the agent's 10 s for stopping every thread: the vfork parent is still waiting when it gives up. */
const CHILD_SLEEP_MS = 30_000;
const RUN_BOUND_MS = 200;

/** The error a call fails with, or undefined when it succeeds. */
async function failure(call: Promise<unknown>): Promise<unknown> {
  return call.then(
    () => undefined,
    (e: unknown) => e,
  );
}

t.test("RUN's timeout through the real agent: ETIMEDOUT only for a process left stopped", async (t) => {
  const bins = await buildGuestBinaries();
  const { client } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => client.close());
  const sleeper = bins.hostPath.sleeper!;
  const out = `/tmp/crh-agent-run-not-stopped-${process.pid}.out`;

  await t.test('a thread in an interruptible sleep: interrupted, left stopped, ETIMEDOUT', async (t) => {
    const { pid } = await client.call({
      op: 'SPAWN',
      path: sleeper,
      argv: [sleeper, 'nanosleep', 'none', String(CHILD_SLEEP_MS)],
      envp: [],
      stdoutPath: out,
      noAslr: true,
    });
    const error = await failure(client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_BOUND_MS }));
    t.ok(error instanceof AgentError && error.errno === ETIMEDOUT, `ETIMEDOUT: ${String(error)}`);
    t.ok(isRunTimeout(error), 'isRunTimeout: left stopped');
    const regs = await client.call({ op: 'GETREGS', pid });
    t.ok(regs.rip > 0n, 'in a ptrace stop: GETREGS reads it');
    t.equal((await client.call({ op: 'KILL', pid })).waitStatus & 0x7f, SIGKILL, 'killed');
  });

  await t.test('a thread in vfork, which PTRACE_INTERRUPT cannot stop: EBUSY, not a RUN timeout', async (t) => {
    const { pid } = await client.call({
      op: 'SPAWN',
      path: sleeper,
      argv: [sleeper, 'vfork', 'none', String(CHILD_SLEEP_MS)],
      envp: [],
      stdoutPath: out,
      noAslr: true,
    });
    const error = await failure(client.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_BOUND_MS }));
    t.ok(
      error instanceof AgentError && error.errno === EBUSY && new RegExp(`thread ${pid} of process ${pid} did not stop`).test(error.message),
      `EBUSY naming the thread: ${String(error)}`,
    );
    t.notOk(isRunTimeout(error), 'isRunTimeout: no, nothing was left stopped');
    const getregs = await failure(client.call({ op: 'GETREGS', pid }));
    t.ok(getregs instanceof AgentError && getregs.errno === ESRCH, `indeed in no ptrace stop: GETREGS fails with ESRCH (${String(getregs)})`);
    t.equal((await client.call({ op: 'KILL', pid })).waitStatus & 0x7f, SIGKILL, 'SIGKILL ends the killable wait: killed and reaped');
  });
});
