// expect: a platform probe that cannot conclude is a finding with what it saw, within its bound —
// never a hang or an error that stops the guest — and the scenarios resting on it get FAIL rows
// carrying that reason. The rseq probe meets a scripted agent whose kernel never aborts rseq.
import t from 'tap';
import { constants } from 'node:os';
import type { AgentClient } from '../harness/agent/client.ts';
import { AgentError, InfraError } from '../harness/errors.ts';
import { rseqDeprecatedFlagsProbe } from '../harness/platform/profile.ts';
import { inconclusiveProbes, ProbeInconclusiveError, runBoundedProbe } from '../harness/platform/probe-runner.ts';
import { formatVerdictTable, outcome } from '../harness/report/verdicts.ts';
import { probeUnmeasuredVerdict } from '../harness/testing/probe-rows.ts';

type Call = { op: string; [k: string]: unknown };

/** An agent scripted per op, recording every call: the fake backend the probe code is driven against. */
function scriptedAgent(script: Record<string, (call: Call) => Promise<unknown>>): { agent: Pick<AgentClient, 'call'>; calls: Call[] } {
  const calls: Call[] = [];
  const agent = {
    call: async (call: Call) => {
      calls.push(call);
      const answer = script[call.op];
      if (!answer) throw new Error(`unscripted op ${call.op}`);
      return answer(call);
    },
  };
  return { agent: agent as unknown as Pick<AgentClient, 'call'>, calls };
}

const exited = (code: number) => ({ outcome: 'exited', code, hits: [], signals: [], stoppedTid: 0, threads: [] });
const killed = (signo: number) => ({ outcome: 'killed', code: signo, hits: [], signals: [], stoppedTid: 0, threads: [] });

t.test('a probe that never concludes gives up at twice its bound and a second, naming itself', async (t) => {
  const started = Date.now();
  const m = await runBoundedProbe<boolean>('never', () => new Promise<never>(() => {}), 50);
  const elapsed = Date.now() - started;
  t.same(m, { value: null, how: 'never: no conclusion within 1100 ms (the probe did not return)', inconclusive: true });
  t.ok(elapsed >= 1_095 && elapsed < 3_000, `gave up after ${elapsed} ms`);
});

t.test('a probe that saw the kernel not do it says what it saw; other failures propagate', async (t) => {
  t.same(
    await runBoundedProbe(
      'p',
      async () => {
        throw new ProbeInconclusiveError('no abort');
      },
      50,
    ),
    { value: null, how: 'p: no abort', inconclusive: true },
  );
  t.same(
    await runBoundedProbe(
      'p',
      async () => {
        throw new AgentError('RUN timed out', 'RUN', constants.errno.ETIMEDOUT);
      },
      50,
    ),
    { value: null, how: 'p: the program did not finish within 50 ms', inconclusive: true },
  );
  await t.rejects(
    runBoundedProbe(
      'p',
      async () => {
        throw new InfraError('QEMU died');
      },
      50,
    ),
    InfraError,
    'the host failing is not a finding about the kernel',
  );
  t.same(await runBoundedProbe('p', async () => ({ value: true, how: 'measured' }), 50), { value: true, how: 'measured' }, 'a conclusion passes through');
});

t.test('the rseq probe on a kernel whose rseq never aborts: the finding, the program killed, within the bound', async (t) => {
  const BOUND = 200;
  const { agent, calls } = scriptedAgent({
    SPAWN: async () => ({ pid: 4242 }),
    // As the real agent does: RUN's timeout interrupts the still-spinning program and answers ETIMEDOUT.
    RUN: async (call) => {
      await new Promise((r) => setTimeout(r, call.timeoutMs as number));
      throw new AgentError('RUN: Connection timed out', 'RUN', constants.errno.ETIMEDOUT);
    },
    KILL: async () => undefined,
  });
  const started = Date.now();
  const m = await runBoundedProbe('rseq probe', rseqDeprecatedFlagsProbe(agent, '/bin/rseq-flags'), BOUND);
  const elapsed = Date.now() - started;
  t.equal(m.value, null);
  t.equal(m.inconclusive, true);
  t.match(m.how, /^rseq probe: no rseq abort within 200 ms \(rseq-flags 0: /, m.how);
  t.ok(elapsed < BOUND + 500, `answered in ${elapsed} ms, by the agent's own timeout, not 30 s`);
  t.same(
    calls.map((c) => c.op),
    ['SPAWN', 'RUN', 'KILL'],
    'the control alone ran, and was killed',
  );
  t.equal(calls[1]!.timeoutMs, BOUND, 'RUN waited the bound');
  t.equal(calls[2]!.pid, 4242);
  t.same(inconclusiveProbes({ rseqDeprecatedFlagsRejected: m, rfAtHwBreakpointStop: { value: true, how: 'x' } }), [`rseqDeprecatedFlagsRejected: ${m.how}`]);
});

t.test('the rseq probe on a working 6.1 kernel still concludes', async (t) => {
  const runs: string[] = [];
  const { agent } = scriptedAgent({
    SPAWN: async (call) => (runs.push((call.argv as string[])[1]!), { pid: 100 + runs.length }),
    RUN: async () => (runs.at(-1) === '0' ? exited(0) : killed(11)),
    READ_FILE: async () => Buffer.from('outcome=abort\n'),
  });
  t.same(await runBoundedProbe('rseq probe', rseqDeprecatedFlagsProbe(agent, '/bin/rseq-flags'), 200), {
    value: true,
    how: 'flags=0 aborted; flags=4 (NO_RESTART_ON_MIGRATE) killed by SIGSEGV',
  });
});

t.test("a scenario resting on an unmeasured probe: a FAIL row with the probe's reason", async (t) => {
  const probe = { value: null, how: 'rseq probe: no rseq abort within 5000 ms (…)', inconclusive: true } as const;
  const v = probeUnmeasuredVerdict(
    { case: 'rseq', scenario: 'deprecated flags', policy: 'rseq-fixup=on', control: false, expected: 'as the kernel treats them' },
    'probes.rseqDeprecatedFlagsRejected',
    probe,
  );
  t.equal(outcome(v), 'FAIL');
  t.match(
    v.observed,
    /not run: its expectation rests on probes\.rseqDeprecatedFlagsRejected, which this kernel left unmeasured — rseq probe: no rseq abort within 5000 ms/,
  );
  t.same(v.conditions, { 'probes.rseqDeprecatedFlagsRejected': 'null' });
  t.match(formatVerdictTable([v]), /no rseq abort within 5000 ms.*FAIL/);
});
