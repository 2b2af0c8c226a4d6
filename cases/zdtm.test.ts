// expect: `crh zdtm`'s run (zdtm/test-run.ts) on our own ZDTM-protocol tests — a daemon waiting for SIGTERM with an
// outfile, a directory fd and a shared page; one spinning with integer, SSE and x87 counters in step; one living on a
// 1 ms ITIMER_REAL; one whose daemon talks to a child through pipes — each in a fresh working directory, launched with a clean environment, passes natively (the
// reference: no tracer, no checkpoint) and again after checkpoint → kill → restore of the tree rooted at the daemon its
// pid file names, with the same pids (the outfile renamed to T.out); the spinning one also across three cycles.
// Negative controls: omit=mapping-kinds (the shared page made private: zdtm-wait FAILs), omit=timers (zdtm-itimer's
// timer stalls), omit=pipe-contents (zdtm-pipe finds the pipe from its child empty); a test that fails natively is
// reported as such, with no C/R verdict; a daemon whose child sits outside its session is refused by name.
import t from 'tap';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { RUN_TIMEOUT_MS } from '../harness/testing/scenario.ts';
import { zdtmExitCode } from '../harness/zdtm/verdict.ts';
import { differs, resumes, type RowKey } from '../harness/scenarios/attempt.ts';
import { settle } from '../harness/scenarios/runner.ts';
import { zdtmScenario, ZDTM_DIRS } from '../harness/scenarios/zdtm-scenario.ts';

const CASE = 'zdtm';
/** Long enough under TCG for the daemon to reach its wait (or its loop) before the first checkpoint. */
const SETTLE_MS = 500;
const key = (scenario: string, policy: RestorePolicy): RowKey => ({ case: CASE, scenario, policy: describePolicy(policy) });

const SCENARIOS = [
  { name: 'zdtm-wait', scenario: 'ZDTM protocol: daemon waiting for SIGTERM (outfile, dir fd, shared page)', iters: 1 },
  { name: 'zdtm-spin', scenario: 'ZDTM protocol: daemon spinning (integer, SSE, x87 counters)', iters: 1 },
  { name: 'zdtm-spin', scenario: 'ZDTM protocol: daemon spinning, 3 checkpoint/restore cycles', iters: 3 },
  { name: 'zdtm-itimer', scenario: 'ZDTM protocol: daemon on a 1 ms ITIMER_REAL', iters: 1 },
  { name: 'zdtm-pipe', scenario: 'ZDTM protocol: daemon and child joined by pipes, bytes in flight (a process tree)', iters: 1 },
];
const CONTROLS = [
  { name: 'zdtm-wait', scenario: SCENARIOS[0]!.scenario, omit: ['mapping-kinds'], shows: /no longer a shared mapping/ },
  { name: 'zdtm-itimer', scenario: SCENARIOS[3]!.scenario, omit: ['timers'], shows: /the timer stalled/ },
  { name: 'zdtm-pipe', scenario: SCENARIOS[4]!.scenario, omit: ['pipe-contents'], shows: /the pipe from the child held 0 bytes, not 6000/ },
].map((c) => ({ ...c, policy: { ...DEFAULT_POLICY, omit: c.omit } as RestorePolicy }));

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_CHECKPOINT_RESTORE', 'CONFIG_FUTEX']), async (t) => {
  const guest = await startGuest(t, CASE, { agentCwd: ZDTM_DIRS.work });
  const zdtm = await zdtmScenario(t, guest, { settleMs: SETTLE_MS, timeoutMs: RUN_TIMEOUT_MS });

  for (const [i, s] of SCENARIOS.entries()) {
    await t.test(`${s.scenario}: PASS natively and after checkpoint/restore`, async (t) => {
      // expect: PASS natively and after the cycles, restored with its own pid (the outfile renamed to T.out)
      const a = await zdtm.attempt({ name: s.name, policy: DEFAULT_POLICY, iters: s.iters }, `default-${i}`);
      const r = a.record;
      t.ok(r.native.pass, `natively (the reference): ${r.native.summary}`);
      t.ok(r.checkpointed?.pass, `after ${s.iters} cycle(s): ${r.checkpointed?.summary}`);
      t.equal(r.checkpointedRun?.cycles.length, s.iters, `${s.iters} checkpoint/restore cycle(s)`);
      t.equal(r.checkpointedRun?.restoredPid, r.checkpointedRun?.pid, `restored with its own pid ${r.checkpointedRun?.pid}`);
      t.equal(r.checkpointedOutfile?.file, 'T.out', 'its exit handler renamed the outfile: the pid never changed');
      t.equal(zdtmExitCode([r]), 0, 'crh zdtm would exit 0');
      for (const [i, c] of (r.checkpointedRun?.cycles ?? []).entries())
        t.comment(`cycle ${i + 1}: ${c.processes} process(es), checkpoint ${c.checkpointMs} ms, image ${c.imageBytes} bytes, restore ${c.restoreMs} ms`);
      settle(t, key(s.scenario, DEFAULT_POLICY), resumes(r.native.summary), a);
    });
  }

  for (const [i, c] of CONTROLS.entries()) {
    await t.test(`negative control ${describePolicy(c.policy)}: ${c.name} FAILs`, async (t) => {
      // expect: PASS natively, FAIL after the restore, the test naming what it lost
      const a = await zdtm.attempt({ name: c.name, policy: c.policy }, `control-${i}`);
      const r = a.record;
      t.ok(r.native.pass, `natively: ${r.native.summary}`);
      t.notOk(r.checkpointed?.pass, `after the restore: ${r.checkpointed?.summary}`);
      t.match(r.checkpointed?.summary ?? '', c.shows, 'the test names what it lost');
      t.equal(zdtmExitCode([r]), 1, 'crh zdtm would exit 1');
      settle(t, key(c.scenario, c.policy), differs(r.native.summary), a);
    });
  }

  await t.test(
    'a test whose daemon forked a child before its setsid is refused by name: no setsid/setpgid sequence places the child again (crh zdtm exits 1)',
    async (t) => {
      // expect: PASS natively; the checkpoint refused, naming the child outside the tree's sessions
      const { record: r } = await zdtm.attempt({ name: 'zdtm-wait', args: ['child'], policy: DEFAULT_POLICY }, 'tree');
      t.ok(r.native.pass, `natively: ${r.native.summary}`);
      t.match(
        r.checkpointed?.summary ?? '',
        /process tree: pid \d+ is in session \d+, led by no process of the tree and not the root's: it cannot be created again/,
        `checkpointed: ${r.checkpointed?.summary}`,
      );
      t.equal(zdtmExitCode([r]), 1);
    },
  );

  await t.test('a test that fails natively is reported as such (crh zdtm exits 2), never checkpointed', async (t) => {
    // expect: FAIL natively, no checkpointed run
    const { record: r } = await zdtm.attempt({ name: 'zdtm-wait', args: ['fail'], policy: DEFAULT_POLICY }, 'native-fail');
    t.notOk(r.native.pass, `natively: ${r.native.summary}`);
    t.match(r.native.summary, /FAIL: asked to fail/);
    t.equal(r.checkpointed, undefined, 'no checkpointed run');
    t.equal(zdtmExitCode([r]), 2);
  });
});
