// expect: `crh zdtm`'s run (zdtm/test-run.ts) on our own ZDTM-protocol tests — a daemon waiting for SIGTERM with an
// outfile, a directory fd and a shared page; one spinning with integer, SSE and x87 counters in step; one living on a
// 1 ms ITIMER_REAL; one whose daemon talks to a child through pipes — each in a fresh working directory, launched with a clean environment, passes natively (the
// reference: no tracer, no checkpoint) and again after checkpoint → kill → restore of the tree rooted at the daemon its
// pid file names, with the same pids (the outfile renamed to T.out); the spinning one also across three cycles.
// Negative controls: omit=mapping-kinds (the shared page made private: zdtm-wait FAILs), omit=timers (zdtm-itimer's
// timer stalls), omit=pipe-contents (zdtm-pipe finds the pipe from its child empty); a test that fails natively is
// reported as such, with no C/R verdict; a daemon whose child sits outside its session is refused by name.
import t, { type Test } from 'tap';
import path from 'node:path';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { RUN_TIMEOUT_MS } from '../harness/testing/scenario.ts';
import { prepareZdtmGuest, runZdtmTest, ZDTM_DIRS, type ZdtmSession } from '../harness/zdtm/test-run.ts';
import { zdtmExitCode } from '../harness/zdtm/verdict.ts';

const CASE = 'zdtm';
/** Long enough under TCG for the daemon to reach its wait (or its loop) before the first checkpoint. */
const SETTLE_MS = 500;

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_CHECKPOINT_RESTORE', 'CONFIG_FUTEX']), async (t) => {
  const guest = await startGuest(t, CASE, { agentCwd: ZDTM_DIRS.work });
  const { ssh } = guest.machine;
  await prepareZdtmGuest({ shell: (c) => ssh.run(c) });
  const session: ZdtmSession = {
    agent: guest.agent,
    platform: guest.platform,
    shell: (c) => ssh.run(c),
    upload: (p, d, m) => ssh.upload(p, d, m),
    note: (line) => t.comment(line),
    phase: async (name, detail) => void t.comment(`${name}${detail ? `: ${detail}` : ''}`),
  };
  const run = (name: string, tag: string, options: { args?: string[]; policy?: RestorePolicy; iters?: number } = {}) =>
    runZdtmTest(
      session,
      { name, binary: guest.image.guestPaths[name]!, args: options.args ?? [], files: [] },
      {
        policy: options.policy ?? DEFAULT_POLICY,
        iters: options.iters ?? 1,
        settleMs: SETTLE_MS,
        timeoutMs: RUN_TIMEOUT_MS,
        imageFile: path.join(guest.artifactsDir, `checkpoint-${tag}.tar`),
      },
    );

  const row = (t: Test, scenario: string, policy: RestorePolicy, control: boolean, r: Awaited<ReturnType<typeof run>>) =>
    recordRowOutcome(t, {
      case: CASE,
      scenario,
      policy: describePolicy(policy),
      control,
      expected: r.native.summary,
      observed: r.checkpointed?.summary ?? `not checkpointed: ${r.native.summary}`,
      matchedUninterrupted: r.checkpointed?.pass === true,
    });

  const scenarios = [
    { name: 'zdtm-wait', scenario: 'ZDTM protocol: daemon waiting for SIGTERM (outfile, dir fd, shared page)', iters: 1 },
    { name: 'zdtm-spin', scenario: 'ZDTM protocol: daemon spinning (integer, SSE, x87 counters)', iters: 1 },
    { name: 'zdtm-spin', scenario: 'ZDTM protocol: daemon spinning, 3 checkpoint/restore cycles', iters: 3 },
    { name: 'zdtm-itimer', scenario: 'ZDTM protocol: daemon on a 1 ms ITIMER_REAL', iters: 1 },
    { name: 'zdtm-pipe', scenario: 'ZDTM protocol: daemon and child joined by pipes, bytes in flight (a process tree)', iters: 1 },
  ];
  for (const [i, s] of scenarios.entries()) {
    await t.test(`${s.scenario}: PASS natively and after checkpoint/restore`, async (t) => {
      const r = await run(s.name, `default-${i}`, { iters: s.iters });
      t.ok(r.native.pass, `natively (the reference): ${r.native.summary}`);
      t.ok(r.checkpointed?.pass, `after ${s.iters} cycle(s): ${r.checkpointed?.summary}`);
      t.equal(r.checkpointedRun?.cycles.length, s.iters, `${s.iters} checkpoint/restore cycle(s)`);
      t.equal(r.checkpointedRun?.restoredPid, r.checkpointedRun?.pid, `restored with its own pid ${r.checkpointedRun?.pid}`);
      t.equal(r.checkpointedOutfile?.file, 'T.out', 'its exit handler renamed the outfile: the pid never changed');
      t.equal(zdtmExitCode([r]), 0, 'crh zdtm would exit 0');
      for (const [i, c] of (r.checkpointedRun?.cycles ?? []).entries())
        t.comment(`cycle ${i + 1}: ${c.processes} process(es), checkpoint ${c.checkpointMs} ms, image ${c.imageBytes} bytes, restore ${c.restoreMs} ms`);
      row(t, s.scenario, DEFAULT_POLICY, false, r);
    });
  }

  const controls = [
    {
      name: 'zdtm-wait',
      scenario: scenarios[0]!.scenario,
      policy: { ...DEFAULT_POLICY, omit: ['mapping-kinds'] } as RestorePolicy,
      shows: /no longer a shared mapping/,
    },
    { name: 'zdtm-itimer', scenario: scenarios[3]!.scenario, policy: { ...DEFAULT_POLICY, omit: ['timers'] } as RestorePolicy, shows: /the timer stalled/ },
    {
      name: 'zdtm-pipe',
      scenario: scenarios[4]!.scenario,
      policy: { ...DEFAULT_POLICY, omit: ['pipe-contents'] } as RestorePolicy,
      shows: /the pipe from the child held 0 bytes, not 6000/,
    },
  ];
  for (const [i, c] of controls.entries()) {
    await t.test(`negative control ${describePolicy(c.policy)}: ${c.name} FAILs`, async (t) => {
      const r = await run(c.name, `control-${i}`, { policy: c.policy });
      t.ok(r.native.pass, `natively: ${r.native.summary}`);
      t.notOk(r.checkpointed?.pass, `after the restore: ${r.checkpointed?.summary}`);
      t.match(r.checkpointed?.summary ?? '', c.shows, 'the test names what it lost');
      t.equal(zdtmExitCode([r]), 1, 'crh zdtm would exit 1');
      row(t, c.scenario, c.policy, true, r);
    });
  }

  await t.test(
    'a test whose daemon forked a child before its setsid is refused by name: no setsid/setpgid sequence places the child again (crh zdtm exits 1)',
    async (t) => {
      const r = await run('zdtm-wait', 'tree', { args: ['child'] });
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
    const r = await run('zdtm-wait', 'native-fail', { args: ['fail'] });
    t.notOk(r.native.pass, `natively: ${r.native.summary}`);
    t.match(r.native.summary, /FAIL: asked to fail/);
    t.equal(r.checkpointed, undefined, 'no checkpointed run');
    t.equal(zdtmExitCode([r]), 2);
  });
});
