// expect: through the real agent on the host's kernel, a process whose SIGEV_THREAD timer clones a thread every
// millisecond (fdstate timer-threads, as CRIU's ZDTM pthread_timers does) is run to its end 40 times and every RUN reports
// it exited 0: a thread cloned just as exit_group killed its creator (traced, its PTRACE_EVENT_CLONE never reported) is
// adopted and reaped, so the zombie leader is reported (before the fix 12 of 40 RUNs failed with "did not stop within
// 10000 ms of PTRACE_INTERRUPT").
import t from 'tap';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';

const RUNS = 40;

t.test('RUN to the end of a process that clones a thread per timer expiry as it exits', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath.fdstate!;
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const ends: string[] = [];
  for (let i = 0; i < RUNS; i++) {
    const { pid } = await agent.call({
      op: 'SPAWN',
      path: binary,
      argv: [binary, 'timer-threads'],
      envp: [],
      stdoutPath: `/tmp/crh-exit-race-${process.pid}.out`,
      noAslr: true,
    });
    const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 }).then(
      (r) => `${r.outcome} ${r.code}`,
      async (error: unknown) => {
        await agent.call({ op: 'KILL', pid }).catch(() => undefined);
        return (error as Error).message;
      },
    );
    ends.push(end);
  }
  t.same(
    ends.filter((e) => e !== 'exited 0'),
    [],
    `all ${RUNS} runs reported as exited 0`,
  );
});
