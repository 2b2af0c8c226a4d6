// expect: ticker — a daemon leading its own session, living on a 1 ms ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF,
// POSIX timers 0 and 2 (1 deleted: a gap in the ids; 2 SIGEV_THREAD_ID) and a timerfd at fd 7 — checkpointed at
// arbitrary moments (RUN interrupted after 100 and 350 ms; a breakpoint on ticker_work) while its timers fire: the
// image holds every timer with its interval and the signals that fired during the checkpoint pending, and the restored
// daemon ends with its uninterrupted output. Negative control: omit=timers (no timer restored: the daemon stalls).
// Engine criu: the daemon stopped at the same breakpoint is dumped and restored by CRIU and ends with its uninterrupted
// output; its control disarms ITIMER_REAL in CRIU's restored process (as omit=timers drops it): the daemon stalls.
import t from 'tap';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { policyRowsNotForCriu, runCriuControl, runCriuScenario, runsEngine, sameOutputAs, type CriuScenario } from '../harness/testing/criu-engine.ts';
import { checkpointAtHit, checkpointStopped, restoreAndFinish, runThenInterrupt, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'timers';

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_POSIX_TIMERS', 'CONFIG_TIMERFD', 'CONFIG_CHECKPOINT_RESTORE']), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.ticker!;
  const workload: Workload = { binary, argv: [binary, '1000'] };
  const process = (pid: number): { binary: string; argv: string[]; envp: string[]; noAslr: boolean; pid: number } => ({
    binary,
    argv: workload.argv,
    envp: [],
    noAslr: true,
    pid,
  });

  const { run: reference, output: expected } = await runUninterrupted(guest, workload, '/tmp/ticker-reference.out');
  t.equal(reference.code, 0, `uninterrupted: ${expected.trim()}`);
  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };

  for (const ms of [100, 350]) {
    await t.test(`interrupted ${ms} ms in, wherever it was`, crhOnly, async (t) => {
      const scenario = `daemon on a 1 ms interval timer, POSIX timers and a timerfd, interrupted ${ms} ms in`;
      const stopped = await runThenInterrupt(guest, workload, ms, `/tmp/ticker-after-${ms}.out`);
      if (stopped.ended) return t.fail(`ticker ended before ${ms} ms: ${stopped.ended.outcome} ${stopped.ended.code}`);
      const { file, image } = await checkpointStopped(guest, process(stopped.pid), `after-${ms}`);
      await guest.agent.call({ op: 'KILL', pid: stopped.pid });
      t.same(
        image.timers.itimers.map((i) => [i.which, i.intervalNs]),
        [
          ['real', 1_000_000n],
          ['virtual', 3_000_000n],
          ['prof', 4_000_000n],
        ],
        'the image holds the three interval timers',
      );
      t.same(
        image.timers.posix.map((p) => [p.id, p.notify]),
        [
          [0, 'signal'],
          [2, 'thread-id'],
        ],
        'POSIX timers 0 and 2, the gap kept',
      );
      t.same(
        image.timers.timerfds.map((f) => f.fd),
        [7],
        'the timerfd at fd 7',
      );
      const r = await restoreAndFinish(guest, file, DEFAULT_POLICY, `after-${ms}`, {});
      t.same(r.differences, [], 'read back: as requested');
      t.equal(r.output, expected, `restored: ${r.output.trim()}`);
      t.equal(r.run.code, 0);
      recordRowOutcome(t, {
        case: CASE,
        scenario,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: expected.trim(),
        observed: r.output.trim(),
        matchedUninterrupted: r.output === expected && r.run.code === 0,
      });
    });
  }

  await t.test('checkpoint at a breakpoint (execution 300 of ticker_work)', crhOnly, async (t) => {
    const armed: Workload = { ...workload, breakAt: guest.symbols.resolve('ticker:ticker_work') };
    const checkpointed = await checkpointAtHit(guest, armed, 300, 'hit300', { disarm: true });
    t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped in ticker_work');
    const r = await restoreAndFinish(guest, checkpointed.file, DEFAULT_POLICY, 'hit300', {});
    t.equal(r.output, expected, `restored: ${r.output.trim()}`);
    recordRowOutcome(t, {
      case: CASE,
      scenario: 'daemon on a 1 ms interval timer, POSIX timers and a timerfd, checkpoint at a breakpoint',
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: expected.trim(),
      observed: r.output.trim(),
      matchedUninterrupted: r.output === expected && r.run.code === 0,
    });
  });

  await t.test('negative control omit=timers: the restored daemon stalls', crhOnly, async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['timers'] };
    const stopped = await runThenInterrupt(guest, workload, 200, '/tmp/ticker-omit.out');
    if (stopped.ended) return t.fail(`ticker ended before 200 ms: ${stopped.ended.outcome}`);
    const { file } = await checkpointStopped(guest, process(stopped.pid), 'omit');
    await guest.agent.call({ op: 'KILL', pid: stopped.pid });
    const r = await restoreAndFinish(guest, file, policy, 'omit', {});
    t.match(r.output, /^stalled: /, `restored without its timers: ${r.output.trim()}`);
    t.equal(r.run.code, 3, 'and exits 3');
    recordRowOutcome(t, {
      case: CASE,
      scenario: 'daemon on a 1 ms interval timer, POSIX timers and a timerfd, interrupted 200 ms in',
      policy: describePolicy(policy),
      control: true,
      expected: expected.trim(),
      observed: r.output.trim(),
      matchedUninterrupted: r.output === expected,
    });
  });

  if (!runsEngine('criu')) return;
  const SCENARIO = 'daemon on a 1 ms interval timer, POSIX timers and a timerfd, checkpoint at a breakpoint';
  const criuScenario: CriuScenario = {
    case: CASE,
    scenario: SCENARIO,
    workload: { ...workload, breakAt: guest.symbols.resolve('ticker:ticker_work') },
    hit: 300,
    // The breakpoint only chose where to stop (crh's disarm: true): the dump sees no debug register of ours.
    dr7BeforeDump: 0n,
    watch: {},
    expected: expected.trim(),
    judge: sameOutputAs(expected),
    control: {
      policy: "criu, ITIMER_REAL disarmed in CRIU's restored process (as omit=timers drops it)",
      afterRestore: async (pid) => {
        // setitimer(ITIMER_REAL, NULL, NULL): a NULL new value disarms it (kernel/time/itimer.c).
        const result = await guest.agent.call({ op: 'INJECT_SYSCALL', pid, nr: SYS_SETITIMER, args: [0n, 0n, 0n] });
        if (result !== 0n) throw new Error(`setitimer(ITIMER_REAL, NULL) in pid ${pid} returned ${result}`);
      },
      expected: 'stalled: …, exit 3',
      showedIt: (a) => /^stalled: /.test(a.output) && a.run.code === 3,
    },
  };
  await t.test('engine criu: CRIU dumps and restores the daemon with its timers, and it ends as uninterrupted', async (t) => {
    await runCriuScenario(t, guest, criuScenario, 'criu');
  });
  await t.test("engine criu, negative control: ITIMER_REAL disarmed after CRIU's restore, the daemon stalls", async (t) => {
    await runCriuControl(t, guest, criuScenario, 'criu-no-timer');
  });
  for (const row of policyRowsNotForCriu(CASE, SCENARIO, [describePolicy({ ...DEFAULT_POLICY, omit: ['timers'] })])) {
    await t.test(`engine criu: ${row.policy} ${row.skipped}`, async (t) => {
      t.pass(row.skipped);
      recordRow(t, row);
    });
  }
});

/** x86-64 setitimer(2). */
const SYS_SETITIMER = 38;
