// expect: a sleep checkpointed while it blocks (interrupted with ERESTART_RESTARTBLOCK: glibc nanosleep, system call 35,
// a relative CLOCK_MONOTONIC clock_nanosleep; with and without a SIGUSR2 handler lacking SA_RESTART; and an absolute
// one, ERESTARTNOHAND) returns 0 after a kill-and-restore at the time the uninterrupted call would have — the deadline
// taken from the checkpoint (rmtp + CLOCK_MONOTONIC) — not after starting over. A relative sleep with no handler only
// stopped by the tracer at the same point (the stop every checkpoint begins with) and continued, with no restore,
// goes on through the kernel's own restart_block (restart_syscall) and returns 0 on time, as natively. A poll with a
// timeout, whose remaining time only the kernel's restart_block holds, is refused at checkpoint by name. Negative
// controls: syscall-restart=off (the raw -ERESTART_RESTARTBLOCK, 516, reaches the program), the stopped sleep sent a
// SIGUSR2 its handler takes without SA_RESTART (EINTR, as natively), and the poll checkpointed anyway
// (uncapturable=ignore): it starts over and returns late.
import t, { type Test } from 'tap';
import { DEFAULT_POLICY, describePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuests, type Guest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import type { Workload } from '../harness/testing/scenario.ts';
import { hex } from '../harness/x86/registers.ts';
import { CheckpointError } from '../harness/errors.ts';
import { continueInterrupted, interruptedScenario, type Continued } from '../harness/scenarios/interrupted-scenario.ts';
import { differs, resumes, type Attempt } from '../harness/scenarios/attempt.ts';
import { settle } from '../harness/scenarios/runner.ts';
import { attemptsUnderWay, runTable, type Row } from '../harness/scenarios/table.ts';
import type { InterruptedAttempt, InterruptedScenario } from '../harness/scenarios/interrupted-scenario.ts';

const CASE = 'sleep-restart';
/**
 * Longer than a checkpoint, kill and restore take under TCG, so the deadline is still ahead at restore: 8 s after
 * the checkpoint, where they take ~0.4 s on a quiet machine (a restore row that returns at once, the
 * syscall-restart=off control, ends 2.4 s after the start) and a few times that at load 15. It was 15 s when page
 * data crossed SSH. Each row sleeps it twice (reference and restored run), in a guest of its own since the rows
 * overlap (GUESTS).
 */
const SLEEP_MS = 10_000;
const CHECKPOINT_AFTER_MS = 2_000;
const SLEEPS = [
  { mode: 'nanosleep', handler: 'none', nr: 230, rax: -516n },
  { mode: 'sys-nanosleep', handler: 'none', nr: 35, rax: -516n },
  { mode: 'monotonic', handler: 'norestart', nr: 230, rax: -516n },
  { mode: 'absolute', handler: 'norestart', nr: 230, rax: -514n },
] as const;
const SIGUSR2 = 12;
/** The case's own guest (the native run, the stops continued), one per sleep, and the poll's. */
const GUESTS = 1 + SLEEPS.length + 1;
/** The first line is the verdict; the second, elapsed-ms, differs from run to run. */
const verdict = (output: string): string => output.split('\n')[0] ?? '';
const elapsedMs = (output: string): number => Number(/elapsed-ms=(\d+)/.exec(output)?.[1] ?? NaN);
const oneLine = (output: string): string => output.trim().replace('\n', ' ');
const onTime = (mode: string, handler: string): string => `sleeper ${mode} ${handler} ret=0 errno=0 on-time=1`;

/** The poll's negative control: checkpointed anyway (uncapturable=ignore), it starts over and returns late. */
const pollControl: Row<InterruptedAttempt>[] = [
  {
    title: 'negative control: the poll checkpointed anyway (uncapturable=ignore) starts over and returns late',
    policy: DEFAULT_POLICY,
    policyName: `${describePolicy(DEFAULT_POLICY)} uncapturable=ignore`,
    tag: 'control-poll',
    expect: 'differs',
    notForCriu: false,
    check: (t, a) => {
      const output = a.witnesses.output ?? '';
      t.match(a.observed, /^sleeper poll none ret=0 errno=0 on-time=0$/, `caught: ${oneLine(output)}`);
      t.ok(elapsedMs(output) >= SLEEP_MS + CHECKPOINT_AFTER_MS, `late by at least the time slept before the checkpoint: ${elapsedMs(output)} ms`);
      t.equal(a.restored?.run.code, 1, 'and exits 1');
    },
  },
];

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  // One guest per group of runs below (an agent session runs one program at a time): the sleeps are real, so the
  // groups overlap and the case takes its longest group's time, about two sleeps, where one guest took them all in
  // turn (141 s). Each group's runs start now; the subtests below take their results in order.
  const [stops, ...guests] = await startGuests(t, CASE, GUESTS, 'sleeps');
  const binary = stops!.image.guestPaths.sleeper!;
  const workload = (mode: string, handler: string): Workload => ({ binary, argv: [binary, mode, handler, String(SLEEP_MS)] });
  /** Provoke: the sleeper runs CHECKPOINT_AFTER_MS into its sleep and is interrupted there; judged by its verdict line and exit 0. */
  const sleepScenario = (guest: Guest, mode: string, handler: string) =>
    interruptedScenario(guest, {
      name: `${mode} (handler ${handler}) ${SLEEP_MS} ms, checkpoint after ${CHECKPOINT_AFTER_MS} ms`,
      label: `${mode}-${handler}`,
      workload: workload(mode, handler),
      afterMs: CHECKPOINT_AFTER_MS,
      summary: verdict,
      judge: (r, reference) => ({ matched: verdict(r.output) === verdict(reference.output) && r.run.code === 0, observed: verdict(r.output) }),
    });

  const sleeps = SLEEPS.map((s, i) =>
    sleepScenario(guests[i]!, s.mode, s.handler).then((scenario) => {
      const rows = sleepRows(s, scenario);
      return { scenario, rows, table: attemptsUnderWay(scenario, rows) };
    }),
  );
  const poll = sleepScenario(guests[SLEEPS.length]!, 'poll', 'none').then(async (scenario) => {
    const refused = await scenario.attempt(DEFAULT_POLICY, 'poll-refused');
    // Checkpointed anyway (uncapturable=ignore), the poll starts over.
    const anyway = {
      ...scenario,
      attempt: (policy: typeof DEFAULT_POLICY, tag: string) => scenario.attemptWith(policy, tag, { checkpoint: { uncapturable: 'ignore' } }),
    };
    return { scenario, refused, table: attemptsUnderWay(anyway, pollControl) };
  });
  // The case's own guest: the native run (over SSH, beside the agent's) and the stops continued with no restore.
  const native = nativeReference(stops!, workload('nanosleep', 'none'));
  const continuedRuns = (async () => {
    const plain = await continueInterrupted(stops!, workload('nanosleep', 'none'), CHECKPOINT_AFTER_MS, 'stop-continue');
    const usr2 = await continueInterrupted(stops!, workload('nanosleep', 'norestart'), CHECKPOINT_AFTER_MS, 'stop-continue-usr2', SIGUSR2);
    return { plain, usr2 };
  })();
  // Each is awaited by its subtest below; one that fails before then is that subtest's failure, not an unhandled one.
  for (const underWay of [...sleeps, poll, native, continuedRuns]) underWay.catch(() => {});

  await t.test('the traced reference is the native run', async (t) => {
    const run = await native;
    t.equal(endedAs(run), 'exited 0');
    t.equal(verdict(run.output), onTime('nanosleep', 'none'), `native: ${oneLine(run.output)}`);
  });

  for (const [i, s] of SLEEPS.entries()) {
    await t.test(`${s.mode} (handler ${s.handler}) checkpointed while it sleeps`, async (t) => {
      const { scenario, rows, table } = await sleeps[i]!;
      const { reference } = scenario;
      t.equal(reference.run.code, 0, `uninterrupted: ${oneLine(reference.output)}`);
      t.equal(verdict(reference.output), onTime(s.mode, s.handler));
      await runTable(t, CASE, table, rows);
    });
  }

  // The same stop, no checkpoint: the kernel's own restart_block resumes the sleep (and a queued SIGUSR2 interrupts it).
  const continued = (c: Continued, expected: string): Attempt => ({
    matched: verdict(c.output) === expected && c.run.code === 0,
    observed: verdict(c.output),
    witnesses: { output: c.output, ended: endedAs(c.run) },
  });
  const stoppedAndContinued = (mode: string, handler: string) =>
    `${mode} (handler ${handler}) ${SLEEP_MS} ms, stopped after ${CHECKPOINT_AFTER_MS} ms and continued`;
  await t.test("nanosleep (handler none) stopped while it sleeps and continued, no restore: the kernel's restart_block resumes it on time", async (t) => {
    // The uninterrupted run is the nanosleep row's (another guest of the same image and kernel).
    const { scenario: reference } = await sleeps[0]!;
    t.equal(reference.reference.run.code, 0, `uninterrupted: ${oneLine(reference.reference.output)}`);
    t.equal(reference.expected, onTime('nanosleep', 'none'));
    const { plain: c, usr2 } = await continuedRuns;
    t.equal(c.regs.orig_rax, 230n, 'stopped inside system call 230 (clock_nanosleep)');
    t.equal(BigInt.asIntN(64, c.regs.rax), -516n, `rax ${hex(c.regs.rax)} at the stop: ERESTART_RESTARTBLOCK, the kernel resumes through restart_syscall`);
    t.equal(verdict(c.output), reference.expected, `continued: ${oneLine(c.output)} (uninterrupted: ${SLEEP_MS} ms)`);
    t.equal(c.run.code, 0);
    const key = { case: CASE, scenario: stoppedAndContinued('nanosleep', 'none'), policy: "no restore (the kernel's restart_block)" };
    settle(t, key, resumes(reference.expected), continued(c, reference.expected));

    await t.test('negative control: SIGUSR2 queued while stopped, its handler without SA_RESTART — EINTR, early', async (t) => {
      const c = usr2;
      t.same(
        c.run.signals.map((s) => s.signo),
        [SIGUSR2],
        'the SIGUSR2 was delivered',
      );
      t.match(verdict(c.output), /^sleeper nanosleep norestart ret=-1 errno=4 on-time=0$/, `caught: ${oneLine(c.output)}`);
      t.equal(c.run.code, 1, 'and exits 1');
      const key = { case: CASE, scenario: stoppedAndContinued('nanosleep', 'norestart'), policy: 'no restore, SIGUSR2 queued in the stop' };
      settle(t, key, differs(onTime('nanosleep', 'norestart')), continued(c, onTime('nanosleep', 'norestart')));
    });
  });

  await t.test("poll with a timeout: refused at checkpoint, its remaining time is the kernel's alone", async (t) => {
    const { scenario, refused: a, table } = await poll;
    t.equal(scenario.reference.run.code, 0, `uninterrupted: ${oneLine(scenario.reference.output)}`);
    t.equal(scenario.expected, onTime('poll', 'none'));
    // expect: the checkpoint refuses the poll, by name.
    t.type(a.refusedAtCheckpoint, CheckpointError);
    t.match(
      a.refusedAtCheckpoint?.message,
      /system call 7 was interrupted with ERESTART_RESTARTBLOCK: its remaining timeout lives only in the kernel's restart_block/,
      'named: poll (7) and the restart_block',
    );
    const refusal: Attempt = {
      matched: a.refusedAtCheckpoint !== undefined,
      observed: a.refusedAtCheckpoint?.message ?? a.observed,
      witnesses: a.witnesses,
    };
    settle(t, { case: CASE, scenario: scenario.name, policy: 'refused at checkpoint' }, resumes('CheckpointError naming the restart_block'), refusal);
    // expect (control): checkpointed anyway (uncapturable=ignore), the poll starts over and returns late.
    await runTable(t, CASE, table, pollControl);
  });
});

/** A sleep's rows: restored, it returns 0 on time; sys-nanosleep's control has syscall-restart=off. */
function sleepRows(s: (typeof SLEEPS)[number], scenario: InterruptedScenario): Row<InterruptedAttempt>[] {
  // Checkpoint: inside the sleep's system call, with the deadline the restore gives back (or an absolute one of its own).
  const insideTheSleep = (t: Test, a: InterruptedAttempt): void => {
    if (!a.image || !a.restored) return void t.fail(a.observed);
    const image = a.image;
    t.equal(image.regs.orig_rax, BigInt(s.nr), `checkpointed inside system call ${s.nr}`);
    t.equal(BigInt.asIntN(64, image.regs.rax), s.rax, `rax ${hex(image.regs.rax)} at the checkpoint`);
    if (s.rax === -516n) {
      t.ok(image.sleep, "the image holds the sleep's deadline");
      t.comment(`remaining at the checkpoint ${image.sleep!.remainingNs / 1_000_000n} ms, deadline ${image.sleep!.deadlineNs} ns CLOCK_MONOTONIC`);
    } else t.equal(image.sleep, null, 'an absolute sleep carries its own deadline: no sleep.json');
    t.same(a.restored.differences, [], 'read back: as requested');
    t.equal(a.observed, scenario.expected, `restored: ${oneLine(a.restored.output)} (uninterrupted: ${SLEEP_MS} ms)`);
    t.equal(a.restored.run.code, 0);
  };
  // expect: returns 0 on time after a kill-and-restore; control syscall-restart=off: the raw -516 reaches the program.
  const rows: Row<InterruptedAttempt>[] = [
    { title: 'returns 0 on time', policy: DEFAULT_POLICY, tag: `${s.mode}-${s.handler}`, expect: 'resumes', notForCriu: false, check: insideTheSleep },
  ];
  if (s.mode === 'sys-nanosleep')
    rows.push({
      title: 'negative control syscall-restart=off: the raw ERESTART_RESTARTBLOCK reaches the program',
      policy: { ...DEFAULT_POLICY, syscallRestart: 'off' },
      tag: 'control-off',
      expect: 'differs',
      notForCriu: false,
      check: (t, a) => {
        t.match(a.observed, /^sleeper sys-nanosleep none ret=-1 errno=516 on-time=0$/, `caught: ${oneLine(a.witnesses.output ?? a.observed)}`);
        t.equal(a.restored?.run.code, 1, 'and exits 1');
      },
    });
  return rows;
}
