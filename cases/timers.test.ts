// expect: ticker — a daemon leading its own session, living on a 1 ms ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF,
// POSIX timers 0 and 2 (1 deleted: a gap in the ids; 2 SIGEV_THREAD_ID) and a timerfd at fd 7 — checkpointed at
// arbitrary moments (RUN interrupted after 100 and 350 ms; a breakpoint on ticker_work) while its timers fire: the
// image holds every timer with its interval and the signals that fired during the checkpoint pending, and the restored
// daemon ends with its uninterrupted output. Negative control: omit=timers (no timer restored: the daemon stalls).
// Engine criu: the daemon stopped at the same breakpoint is dumped and restored by CRIU and ends with its uninterrupted
// output; its control disarms ITIMER_REAL in CRIU's restored process (as omit=timers drops it): the daemon stalls.
import t, { type Test } from 'tap';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { runsEngine } from '../harness/testing/criu-engine.ts';
import type { Workload } from '../harness/testing/scenario.ts';
import { breakpointScenario } from '../harness/scenarios/breakpoint-scenario.ts';
import { interruptedScenario, type InterruptedAttempt } from '../harness/scenarios/interrupted-scenario.ts';
import { shows } from '../harness/scenarios/attempt.ts';
import { skipNotForCriu } from '../harness/scenarios/runner.ts';
import { runTable } from '../harness/scenarios/table.ts';
import { injectSyscall } from '../harness/agent/guest-run.ts';

const CASE = 'timers';
const NAME = 'daemon on a 1 ms interval timer, POSIX timers and a timerfd';
const OMIT_TIMERS: RestorePolicy = { ...DEFAULT_POLICY, omit: ['timers'] };

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_POSIX_TIMERS', 'CONFIG_TIMERFD', 'CONFIG_CHECKPOINT_RESTORE']), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.ticker!;
  const workload: Workload = { binary, argv: [binary, '1000'] };
  // Provoke: the daemon runs MS ms on its timers and is interrupted wherever it is (the uninterrupted run taken once).
  const interrupted = async (ms: number, reference?: Awaited<ReturnType<typeof interruptedScenario>>['reference']) =>
    interruptedScenario(guest, { name: `${NAME}, interrupted ${ms} ms in`, label: `after-${ms}`, workload, afterMs: ms, ...(reference ? { reference } : {}) });
  const first = await interrupted(100);
  const { reference } = first;
  const expected = reference.output;
  t.equal(reference.run.code, 0, `uninterrupted: ${expected.trim()}`);

  // Checkpoint: every timer with its interval, the gap in the POSIX ids kept.
  const timersInTheImage = (t: Test, a: InterruptedAttempt): void => {
    if (!a.image || !a.restored) return void t.fail(a.observed);
    t.same(
      a.image.timers.itimers.map((i) => [i.which, i.intervalNs]),
      [
        ['real', 1_000_000n],
        ['virtual', 3_000_000n],
        ['prof', 4_000_000n],
      ],
      'the image holds the three interval timers',
    );
    t.same(
      a.image.timers.posix.map((p) => [p.id, p.notify]),
      [
        [0, 'signal'],
        [2, 'thread-id'],
      ],
      'POSIX timers 0 and 2, the gap kept',
    );
    t.same(
      a.image.timers.timerfds.map((f) => f.fd),
      [7],
      'the timerfd at fd 7',
    );
    t.same(a.restored.differences, [], 'read back: as requested');
    t.equal(a.restored.output, expected, `restored: ${a.restored.output.trim()}`);
    t.equal(a.restored.run.code, 0);
  };
  // Restore and oracle: the restored daemon ends with its uninterrupted output.
  for (const ms of [100, 350]) {
    const scenario = ms === 100 ? first : await interrupted(ms, reference);
    await runTable(t, CASE, scenario, [
      { title: `interrupted ${ms} ms in, wherever it was`, policy: DEFAULT_POLICY, tag: `after-${ms}`, expect: 'resumes', check: timersInTheImage },
    ]);
  }

  // The same daemon stopped at execution 100 of ticker_work (at load a run under the breakpoint has ended in fewer than 300: docs/BENCHMARKS.md, Flake rate); also handed to CRIU (crh run --engine …criu).
  const atBreakpoint = await breakpointScenario(t, guest, {
    name: `${NAME}, checkpoint at a breakpoint`,
    workload: { ...workload, breakAt: guest.symbols.resolve('ticker:ticker_work') },
    hit: 100,
  });
  await runTable(t, CASE, atBreakpoint, [
    {
      title: 'checkpoint at a breakpoint (execution 100 of ticker_work)',
      policy: DEFAULT_POLICY,
      tag: 'hit100',
      expect: 'resumes',
      check: (t, a) => void t.equal(a.restoredRun?.output, expected, `restored: ${a.restoredRun?.output.trim()}`),
    },
    { title: 'engine criu: CRIU dumps and restores the daemon with its timers, and it ends as uninterrupted', criu: {}, tag: 'criu', expect: 'resumes' },
    {
      title: "engine criu, negative control: ITIMER_REAL disarmed after CRIU's restore, the daemon stalls",
      criu: {
        afterRestore: async (pid) => {
          // setitimer(ITIMER_REAL, NULL, NULL): a NULL new value disarms it (kernel/time/itimer.c).
          const result = await injectSyscall(guest.agent, pid, SYS_SETITIMER, [0n, 0n, 0n]);
          if (result !== 0n) throw new Error(`setitimer(ITIMER_REAL, NULL) in pid ${pid} returned ${result}`);
        },
      },
      policyName: "criu, ITIMER_REAL disarmed in CRIU's restored process (as omit=timers drops it)",
      tag: 'criu-no-timer',
      expect: shows('stalled: …, exit 3', (a) => /^stalled: /.test(a.witnesses.output ?? '') && a.witnesses.ended === 'exited 3'),
    },
  ]);

  // Negative control omit=timers: no timer restored, the daemon stalls.
  await runTable(t, CASE, await interrupted(200, reference), [
    {
      title: 'negative control omit=timers: the restored daemon stalls',
      policy: OMIT_TIMERS,
      tag: 'omit',
      expect: 'differs',
      notForCriu: false,
      check: (t, a) => {
        t.match(a.witnesses.output, /^stalled: /, `restored without its timers: ${a.observed}`);
        t.equal(a.restored?.run.code, 3, 'and exits 3');
      },
    },
  ]);
  // Under CRIU the control is a SKIP row of the breakpoint scenario, the one CRIU is asked about.
  if (runsEngine('criu'))
    await t.test(`engine criu: ${describePolicy(OMIT_TIMERS)}`, async (t) => {
      skipNotForCriu(t, { case: CASE, scenario: atBreakpoint.name, policy: describePolicy(OMIT_TIMERS) });
    });
});

/** x86-64 setitimer(2). */
const SYS_SETITIMER = 38;
