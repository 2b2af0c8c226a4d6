// expect: a signal that arrives before an injected call runs (a periodic timer firing while the process is stopped) no longer fails the injection: the call runs, the signal stays pending with its siginfo, and the mask is the process's own again.
import t from 'tap';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { AgentError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';

const NR_GETPID = 39;
const SIGALRM = 14;

t.test('injected calls under a 1 ms interval timer, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.ticker!;
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const pid = await spawnWithBreakpoint(agent, { binary, argv: [binary] }, `/tmp/crh-inject-signal-${process.pid}.out`);
  t.teardown(() => agent.call({ op: 'KILL', pid }).catch(() => {}));
  const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 300 }).catch((e: unknown) => e);
  t.ok(run instanceof AgentError, 'interrupted while its timers run');

  const mask = await agent.call({ op: 'GETSIGMASK', pid });
  let pendingAlarm = 0;
  for (let i = 0; i < 20; i++) {
    // Stopped for 5 ms: ITIMER_REAL (1 ms) has fired, SIGALRM is queued and unblocked.
    await new Promise((resolve) => setTimeout(resolve, 5));
    const got = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR_GETPID, args: [] });
    t.equal(got, BigInt(pid), `injection ${i}: getpid answered`);
    const queued = [...(await agent.call({ op: 'PEEKSIGINFO', pid, shared: true })), ...(await agent.call({ op: 'PEEKSIGINFO', pid, shared: false }))];
    if (queued.some((b) => b.readInt32LE(0) === SIGALRM)) pendingAlarm++;
  }
  t.equal(pendingAlarm, 20, 'SIGALRM stayed pending after every injection');
  t.equal(await agent.call({ op: 'GETSIGMASK', pid }), mask, "the mask is the process's own again");
  const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 60_000 });
  t.same([end.outcome, end.code], ['exited', 0], 'and it runs on to its end');
});
