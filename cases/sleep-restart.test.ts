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
import { CheckpointError } from '../harness/errors.ts';
import type { ProcessInfo } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import type { CheckpointProcessOptions } from '../harness/restore/checkpoint.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import {
  checkpointStopped,
  readOutput,
  restoreAndFinish,
  RUN_TIMEOUT_MS,
  runThenInterrupt,
  runUninterrupted,
  type Workload,
} from '../harness/testing/scenario.ts';
import { hex } from '../harness/x86/registers.ts';

const CASE = 'sleep-restart';
/** Longer than a checkpoint, kill and restore take under TCG, so the deadline is still ahead at restore. */
const SLEEP_MS = 15_000;
const CHECKPOINT_AFTER_MS = 2_000;
const SLEEPS = [
  { mode: 'nanosleep', handler: 'none', nr: 230, rax: -516n },
  { mode: 'sys-nanosleep', handler: 'none', nr: 35, rax: -516n },
  { mode: 'monotonic', handler: 'norestart', nr: 230, rax: -516n },
  { mode: 'absolute', handler: 'norestart', nr: 230, rax: -514n },
] as const;
const SIGUSR2 = 12;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.sleeper!;
  const workload = (mode: string, handler: string): Workload => ({ binary, argv: [binary, mode, handler, String(SLEEP_MS)] });
  /** The first line is the verdict; the second, elapsed-ms, differs from run to run. */
  const verdict = (output: string): string => output.split('\n')[0] ?? '';
  const elapsedMs = (output: string): number => Number(/elapsed-ms=(\d+)/.exec(output)?.[1] ?? NaN);

  const reference = async (t: Test, mode: string, handler: string): Promise<string> => {
    const w = workload(mode, handler);
    const { run, output } = await runUninterrupted(guest, w, `/tmp/sleeper-${mode}-${handler}.reference.out`);
    t.equal(run.code, 0, `uninterrupted: ${output.trim().replace('\n', ' ')}`);
    t.equal(verdict(output), `sleeper ${mode} ${handler} ret=0 errno=0 on-time=1`);
    return verdict(output);
  };

  const cycle = async (t: Test, mode: string, handler: string, policy: RestorePolicy, tag: string, options: CheckpointProcessOptions = {}) => {
    const w = workload(mode, handler);
    const stopped = await runThenInterrupt(guest, w, CHECKPOINT_AFTER_MS, `/tmp/sleeper-${tag}.out`);
    if (stopped.ended) throw new Error(`sleeper ${mode} ended before the checkpoint: ${endedAs(stopped.ended)}`);
    const process: ProcessInfo = { binary, argv: w.argv, envp: [], noAslr: true, pid: stopped.pid };
    const checkpointed = await checkpointStopped(guest, process, tag, options).catch(async (error: unknown) => {
      await guest.agent.call({ op: 'KILL', pid: stopped.pid });
      throw error;
    });
    await guest.agent.call({ op: 'KILL', pid: stopped.pid });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
    return { image: checkpointed.image, r };
  };

  await t.test('the traced reference is the native run', async (t) => {
    const w = workload('nanosleep', 'none');
    const native = await nativeReference(guest, w);
    t.equal(endedAs(native), 'exited 0');
    t.equal(verdict(native.output), 'sleeper nanosleep none ret=0 errno=0 on-time=1', `native: ${native.output.trim().replace('\n', ' ')}`);
  });

  for (const s of SLEEPS) {
    await t.test(`${s.mode} (handler ${s.handler}) checkpointed while it sleeps: returns 0 on time`, async (t) => {
      const expected = await reference(t, s.mode, s.handler);
      const { image, r } = await cycle(t, s.mode, s.handler, DEFAULT_POLICY, `${s.mode}-${s.handler}`);
      t.equal(image.regs.orig_rax, BigInt(s.nr), `checkpointed inside system call ${s.nr}`);
      t.equal(BigInt.asIntN(64, image.regs.rax), s.rax, `rax ${hex(image.regs.rax)} at the checkpoint`);
      if (s.rax === -516n) {
        t.ok(image.sleep, "the image holds the sleep's deadline");
        t.comment(`remaining at the checkpoint ${image.sleep!.remainingNs / 1_000_000n} ms, deadline ${image.sleep!.deadlineNs} ns CLOCK_MONOTONIC`);
      } else t.equal(image.sleep, null, 'an absolute sleep carries its own deadline: no sleep.json');
      t.same(r.differences, [], 'read back: as requested');
      t.equal(verdict(r.output), expected, `restored: ${r.output.trim().replace('\n', ' ')} (uninterrupted: ${SLEEP_MS} ms)`);
      t.equal(r.run.code, 0);
      recordRowOutcome(t, {
        case: CASE,
        scenario: `${s.mode} (handler ${s.handler}) ${SLEEP_MS} ms, checkpoint after ${CHECKPOINT_AFTER_MS} ms`,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected,
        observed: verdict(r.output),
        matchedUninterrupted: verdict(r.output) === expected && r.run.code === 0,
      });
    });
  }

  /**
   * Stops the sleeper where a checkpoint would (the tracer's interrupt: the sleep returns ERESTART_RESTARTBLOCK into
   * the stop), optionally queues a signal, and continues the same process to its end — no checkpoint, no restore:
   * what is checked is the kernel's own resumption, restart_syscall through the restart_block the sleep left.
   */
  const stopAndContinue = async (mode: string, handler: string, tag: string, signo?: number) => {
    const out = `/tmp/sleeper-${tag}.out`;
    const stopped = await runThenInterrupt(guest, workload(mode, handler), CHECKPOINT_AFTER_MS, out);
    if (stopped.ended) throw new Error(`sleeper ${mode} ended before the stop: ${endedAs(stopped.ended)}`);
    const regs = await guest.agent.call({ op: 'GETREGS', pid: stopped.pid });
    if (signo !== undefined) await guest.agent.call({ op: 'SIGNAL', pid: stopped.pid, signo });
    const run = await guest.agent.call({ op: 'RUN', pid: stopped.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    return { regs, run, output: await readOutput(guest, out) };
  };

  await t.test("nanosleep (handler none) stopped while it sleeps and continued, no restore: the kernel's restart_block resumes it on time", async (t) => {
    const expected = await reference(t, 'nanosleep', 'none');
    const { regs, run, output } = await stopAndContinue('nanosleep', 'none', 'stop-continue');
    t.equal(regs.orig_rax, 230n, 'stopped inside system call 230 (clock_nanosleep)');
    t.equal(BigInt.asIntN(64, regs.rax), -516n, `rax ${hex(regs.rax)} at the stop: ERESTART_RESTARTBLOCK, the kernel resumes through restart_syscall`);
    t.equal(verdict(output), expected, `continued: ${output.trim().replace('\n', ' ')} (uninterrupted: ${SLEEP_MS} ms)`);
    t.equal(run.code, 0);
    recordRowOutcome(t, {
      case: CASE,
      scenario: `nanosleep (handler none) ${SLEEP_MS} ms, stopped after ${CHECKPOINT_AFTER_MS} ms and continued`,
      policy: "no restore (the kernel's restart_block)",
      control: false,
      expected,
      observed: verdict(output),
      matchedUninterrupted: verdict(output) === expected && run.code === 0,
    });

    await t.test('negative control: SIGUSR2 queued while stopped, its handler without SA_RESTART — EINTR, early', async (t) => {
      const { run, output } = await stopAndContinue('nanosleep', 'norestart', 'stop-continue-usr2', SIGUSR2);
      t.same(
        run.signals.map((s) => s.signo),
        [SIGUSR2],
        'the SIGUSR2 was delivered',
      );
      t.match(verdict(output), /^sleeper nanosleep norestart ret=-1 errno=4 on-time=0$/, `caught: ${output.trim().replace('\n', ' ')}`);
      t.equal(run.code, 1, 'and exits 1');
      recordRowOutcome(t, {
        case: CASE,
        scenario: `nanosleep (handler norestart) ${SLEEP_MS} ms, stopped after ${CHECKPOINT_AFTER_MS} ms and continued`,
        policy: 'no restore, SIGUSR2 queued in the stop',
        control: true,
        expected: 'sleeper nanosleep norestart ret=0 errno=0 on-time=1',
        observed: verdict(output),
        matchedUninterrupted: run.code === 0,
      });
    });
  });

  await t.test('negative control syscall-restart=off: the raw ERESTART_RESTARTBLOCK reaches the program', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, syscallRestart: 'off' };
    const { r } = await cycle(t, 'sys-nanosleep', 'none', policy, 'control-off');
    t.match(verdict(r.output), /^sleeper sys-nanosleep none ret=-1 errno=516 on-time=0$/, `caught: ${r.output.trim().replace('\n', ' ')}`);
    t.equal(r.run.code, 1, 'and exits 1');
    recordRowOutcome(t, {
      case: CASE,
      scenario: `sys-nanosleep (handler none) ${SLEEP_MS} ms, checkpoint after ${CHECKPOINT_AFTER_MS} ms`,
      policy: describePolicy(policy),
      control: true,
      expected: `sleeper sys-nanosleep none ret=0 errno=0 on-time=1`,
      observed: verdict(r.output),
      matchedUninterrupted: r.run.code === 0,
    });
  });

  await t.test("poll with a timeout: refused at checkpoint, its remaining time is the kernel's alone", async (t) => {
    const expected = await reference(t, 'poll', 'none');
    const w = workload('poll', 'none');
    const stopped = await runThenInterrupt(guest, w, CHECKPOINT_AFTER_MS, '/tmp/sleeper-poll-refused.out');
    if (stopped.ended) throw new Error(`sleeper poll ended before the checkpoint: ${endedAs(stopped.ended)}`);
    const refused = await checkpointStopped(guest, { binary, argv: w.argv, envp: [], noAslr: true, pid: stopped.pid }, 'poll-refused').then(
      () => undefined,
      (e: unknown) => e,
    );
    await guest.agent.call({ op: 'KILL', pid: stopped.pid });
    t.type(refused, CheckpointError);
    t.match(
      (refused as Error).message,
      /system call 7 was interrupted with ERESTART_RESTARTBLOCK: its remaining timeout lives only in the kernel's restart_block/,
      'named: poll (7) and the restart_block',
    );
    recordRowOutcome(t, {
      case: CASE,
      scenario: `poll (handler none) ${SLEEP_MS} ms, checkpoint after ${CHECKPOINT_AFTER_MS} ms`,
      policy: 'refused at checkpoint',
      control: false,
      expected: 'CheckpointError naming the restart_block',
      observed: (refused as Error).message,
      matchedUninterrupted: refused instanceof CheckpointError,
    });

    await t.test('negative control: the poll checkpointed anyway (uncapturable=ignore) starts over and returns late', async (t) => {
      const { r } = await cycle(t, 'poll', 'none', DEFAULT_POLICY, 'control-poll', { uncapturable: 'ignore' });
      t.match(verdict(r.output), /^sleeper poll none ret=0 errno=0 on-time=0$/, `caught: ${r.output.trim().replace('\n', ' ')}`);
      t.ok(elapsedMs(r.output) >= SLEEP_MS + CHECKPOINT_AFTER_MS, `late by at least the time slept before the checkpoint: ${elapsedMs(r.output)} ms`);
      t.equal(r.run.code, 1, 'and exits 1');
      recordRowOutcome(t, {
        case: CASE,
        scenario: `poll (handler none) ${SLEEP_MS} ms, checkpoint after ${CHECKPOINT_AFTER_MS} ms`,
        policy: `${describePolicy(DEFAULT_POLICY)} uncapturable=ignore`,
        control: true,
        expected,
        observed: verdict(r.output),
        matchedUninterrupted: verdict(r.output) === expected,
      });
    });
  });
});
