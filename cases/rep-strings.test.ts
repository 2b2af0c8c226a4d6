// expect: a `rep movsb`, `rep movsq` (forward and, with DF=1, backward) or `rep stosq` of 2 MiB interrupted after a
// non-final iteration by a timer signal, checkpointed inside the signal handler, restored, and returning to the
// instruction finishes with the exact result: RCX/RSI/RDI continue from the interrupted context, no element done twice
// or skipped. With an execute breakpoint on the rep instruction itself (a 4 KiB copy), the restored run traps exactly as
// often as the uninterrupted run: on hardware once (plus one re-trigger when the interrupt frame's RF is 0); under QEMU
// TCG, which re-checks instruction breakpoints at every iteration, once per iteration — measured, printed as the
// condition, never assumed. Negative control: regs=partial inside the handler (the 2015 callee-saved corruption).
// With --engine criu each 2 MiB variant's stop in the handler is handed to CRIU and must finish with the exact result
// (control: the handler's callee-saved registers zeroed after CRIU's restore); the DR1 scenario says why it is not.
import t, { type Test } from 'tap';
import type { RunResult } from '../harness/agent/ops.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { CALLEE_SAVED, DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest, type Guest } from '../harness/testing/guest-fixture.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../harness/testing/scenario.ts';
import { runCriuControl, runCriuScenario, runsEngine, type CriuScenario } from '../harness/testing/criu-engine.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { POLICY_NOT_FOR_CRIU } from '../harness/criu/known-gaps.ts';

const CASE = 'rep-strings';
const BIG_KIB = '2048';
const SMALL_KIB = '4';
const VARIANTS = [
  { op: 'movsb', dir: 'fwd' },
  { op: 'movsb', dir: 'back' },
  { op: 'movsq', dir: 'fwd' },
  { op: 'movsq', dir: 'back' },
  { op: 'stosq', dir: 'fwd' },
] as const;
/** DR0 execute on rep_in_handler (L0); DR1 execute on the rep instruction (L1). */
const DR7_HANDLER = 0x1n;
const DR7_BOTH = 0x5n;
const DR7_REP_ONLY = 0x4n;

/** The output without the interrupt's timing, which differs from run to run. */
/** How many times the workload ran the instruction before the timer landed inside it. */
const attemptsOf = (output: string): number => Number(/ attempts=(\d+)/.exec(output)?.[1] ?? 1);

const stable = (out: string): string =>
  out
    .trim()
    .replace(/ attempts=\d+/, ' attempts=*')
    .replace(/ progress=\d+\//, ' progress=*/');

interface Run {
  workload: Workload;
  tag: string;
  scenario: string;
  /** DR7 left for the restored process */
  dr7After: bigint;
  /** where the checkpoint is taken: the first hit at rep_in_handler (rep-instruction hits before it vary with timing) */
  checkpointAt: { at: bigint };
}

/**
 * `incomparable`: why this reference cannot be held to the native run; the native run is still made and shown.
 */
async function referenceRun(guest: Guest, t: Test, run: Run, incomparable?: string): Promise<{ result: RunResult; output: string }> {
  const out = `/tmp/repstr-${run.tag}.reference.out`;
  const pid = await spawnArmed(guest, run.workload, out);
  const result = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  const output = await readOutput(guest, out);
  t.equal(result.code, 0, `uninterrupted: ${output.trim()}`);
  // The reference is a traced run: it must be what the program does with no tracer at all. Compared through stable(),
  // the case's own view of the output: attempts and progress depend on where the 0.5 ms timer lands (timing), the
  // rest — interrupted, frame-rf, result — must agree.
  const native = await nativeReference(guest, run.workload);
  if (incomparable) {
    t.comment(`not compared with the native run (${incomparable}); natively: ${endedAs(native)}, ${native.output.trim()}`);
    return { result, output };
  }
  t.equal(
    `${endedAs(result)}\n${stable(output)}`,
    `${endedAs(native)}\n${stable(native.output)}`,
    'the traced reference is the native run (no tracer), attempts and progress masked',
  );
  return { result, output };
}

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.repstr!;
  const inHandler = guest.symbols.resolve('repstr:rep_in_handler');
  const conditions = (output: string, extra: Record<string, string> = {}): Record<string, string> => ({
    frameRf: /frame-rf=(\d)/.exec(output)?.[1] ?? '?',
    accel: guest.profile.accel,
    ...extra,
  });

  /**
   * The restored run under the default policy, then the regs=partial
   * control. Hits are compared for the interrupted attempt alone: every
   * attempt the timer missed ran the whole instruction once more, which
   * costs `hitsPerMissedAttempt` (the reference and the restored run may
   * need different numbers of attempts on a busy host).
   */
  const restoreBoth = async (
    t: Test,
    run: Run,
    reference: { result: RunResult; output: string },
    countHits: (r: RunResult) => number,
    extra: Record<string, string> = {},
    hitsPerMissedAttempt = 0,
    view: (output: string) => string = stable,
  ) => {
    const interruptedAttemptHits = (hits: number, output: string): number => hits - (attemptsOf(output) - 1) * hitsPerMissedAttempt;
    const expectedHits = interruptedAttemptHits(countHits(reference.result), reference.output);
    for (const policy of [DEFAULT_POLICY, { ...DEFAULT_POLICY, regs: 'partial' } as RestorePolicy]) {
      const control = policy.regs === 'partial';
      const tag = `${run.tag}${control ? '-regs-partial' : ''}`;
      const checkpointed = await checkpointAtHit(guest, run.workload, run.checkpointAt, tag, { dr7: run.dr7After });
      t.equal(checkpointed.run.hits.at(-1)?.rip, inHandler, 'checkpointed inside the SIGALRM handler');
      if (checkpointed.run.outcome !== 'hit-limit') {
        // The timer never landed inside the instruction (the workload retries 50 times): nothing to restore.
        recordRowOutcome(t, {
          case: CASE,
          scenario: run.scenario,
          policy: describePolicy(policy),
          control,
          expected: view(reference.output),
          observed: `no checkpoint: the run ended (${checkpointed.run.outcome} ${checkpointed.run.code}) before the handler`,
          matchedUninterrupted: control,
        });
        continue;
      }
      const r = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
      const observed = r.run.outcome === 'killed' ? `killed by signal ${r.run.code}` : view(r.output);
      const hits = interruptedAttemptHits(countHits(checkpointed.run) + countHits(r.run), r.output);
      if (control) {
        t.not(observed, view(reference.output), `regs=partial is caught: ${observed}`);
      } else {
        t.equal(observed, view(reference.output), `exact result, RCX/RSI/RDI continued: ${r.output.trim()}`);
        t.equal(
          hits,
          expectedHits,
          `${hits} hit(s) on the rep instruction across the checkpoint in the interrupted attempt, as uninterrupted (attempts: ${attemptsOf(reference.output)} uninterrupted, ${attemptsOf(r.output)} restored)`,
        );
      }
      recordRowOutcome(t, {
        case: CASE,
        scenario: run.scenario,
        policy: describePolicy(policy),
        control,
        expected: `${view(reference.output)}; ${expectedHits} rep hit(s)`,
        observed: `${observed}; ${hits} rep hit(s)`,
        matchedUninterrupted: observed === view(reference.output) && hits === expectedHits,
        conditions: conditions(reference.output, extra),
      });
    }
  };

  for (const v of VARIANTS) {
    await t.test(`rep ${v.op} ${v.dir === 'back' ? 'backward (DF=1)' : 'forward'}, ${Number(BIG_KIB) >> 10} MiB`, async (t) => {
      const run: Run = {
        workload: { binary, argv: [binary, v.op, v.dir, BIG_KIB], debugRegs: { 0: inHandler, 7: DR7_HANDLER } },
        tag: `${v.op}-${v.dir}`,
        scenario: `rep ${v.op} ${v.dir}, ${Number(BIG_KIB) >> 10} MiB, interrupted by SIGALRM, checkpoint in the handler`,
        dr7After: 0n,
        checkpointAt: { at: inHandler },
      };
      const reference = await referenceRun(guest, t, run);
      if (runsEngine('crh')) await restoreBoth(t, run, reference, () => 0);
      if (!runsEngine('criu')) return;
      // The same stop (the first execution of rep_in_handler, the rep instruction interrupted) handed to CRIU.
      const criuScenario: CriuScenario = {
        case: CASE,
        scenario: run.scenario,
        workload: run.workload,
        hit: 1,
        dr7BeforeDump: run.dr7After,
        watch: {},
        expected: stable(reference.output),
        judge: (a) => {
          const observed = a.run.outcome === 'killed' ? `killed by signal ${a.run.code}` : stable(a.output);
          return {
            observed,
            exact: observed === stable(reference.output) && a.run.outcome === 'exited' && a.run.code === 0,
            conditions: conditions(reference.output),
          };
        },
        control: {
          // What regs=partial does to crh's restore, done to CRIU's: the handler's callee-saved registers lost.
          policy: 'criu, callee-saved registers zeroed after the restore',
          tamper: (regs) => ({ ...regs, ...Object.fromEntries(CALLEE_SAVED.map((r) => [r, 0n])) }),
          expected: `differs from: ${stable(reference.output)}`,
          showedIt: (_a, j) => j.observed !== stable(reference.output),
        },
      };
      await t.test("engine criu: the exact result after CRIU's dump and restore in the handler", (t) =>
        runCriuScenario(t, guest, criuScenario, `criu-${run.tag}`),
      );
      await t.test('engine criu, negative control: callee-saved registers zeroed in the handler after the restore are caught', (t) =>
        runCriuControl(t, guest, criuScenario, `criu-${run.tag}-zeroed`),
      );
      await t.test(`engine criu: regs=partial ${POLICY_NOT_FOR_CRIU}`, async (t) => {
        t.pass(POLICY_NOT_FOR_CRIU);
        recordRow(t, {
          case: CASE,
          scenario: run.scenario,
          policy: describePolicy({ ...DEFAULT_POLICY, regs: 'partial' }),
          engine: 'criu',
          control: true,
          expected: '-',
          observed: '-',
          pass: false,
          skipped: POLICY_NOT_FOR_CRIU,
        });
      });
    });
  }

  await t.test('an execute breakpoint on the rep instruction itself', async (t) => {
    const repInsn = guest.symbols.resolve('repstr:rep_movsb_insn');
    const workload: Workload = { binary, argv: [binary, 'movsb', 'fwd', SMALL_KIB], debugRegs: { 0: inHandler, 1: repInsn, 7: DR7_BOTH } };
    const run: Run = {
      workload,
      tag: 'movsb-fwd-rep-breakpoint',
      scenario: `rep movsb fwd, ${SMALL_KIB} KiB, DR1 on the rep instruction, checkpoint in the handler`,
      dr7After: DR7_REP_ONLY,
      checkpointAt: { at: inHandler },
    };
    // Natively the 4 KiB copy takes far less than the 0.5 ms timer, so no attempt is interrupted (measured: exited 1,
    // interrupted=0, measured under TCG); traced, the DR1 traps on the rep instruction (one per iteration under TCG) slow
    // the copy until the timer lands in it. The reference is the tracer's by construction here, not the program's alone.
    const reference = await referenceRun(guest, t, run, 'the DR1 trap on the rep instruction is what lets the timer land inside a 4 KiB copy');
    const repHits = (r: RunResult): number => r.hits.filter((h) => h.rip === repInsn).length;
    const bytes = Number(SMALL_KIB) << 10;
    const attempts = attemptsOf(reference.output);
    const hits = repHits(reference.result) / attempts;
    // The platform's behaviour, measured on the uninterrupted run: once per execution (the architecture, with RF
    // suppressing re-triggers between iterations) or once per iteration (QEMU TCG).
    const perIteration = hits >= bytes;
    const behaviour = perIteration ? 'per-iteration' : 'once';
    t.comment(
      `measured: ${hits} hits per attempt on the rep instruction for ${bytes} iterations (${attempts} attempt(s)) — ${behaviour}${perIteration ? ' (a QEMU TCG fidelity gap: the architecture traps once)' : ''}`,
    );
    if (guest.profile.accel === 'kvm') t.equal(behaviour, 'once', 'under KVM the CPU traps once per execution');
    t.ok(
      reference.result.hits.some((h) => h.rip === inHandler),
      'the uninterrupted run reached rep_in_handler',
    );
    // Per-iteration traps (TCG) make the frame's RF depend on where the timer lands, as attempts and progress do
    // (measured: frame-rf=0 at progress=1 once, 1 elsewhere): the restored run carries the checkpointed run's frame, not
    // the reference's, so RF is compared through the rep hits across the checkpoint, and shown here.
    const view = perIteration ? (out: string): string => stable(out).replace(/ frame-rf=\d/, ' frame-rf=*') : stable;
    if (perIteration) t.comment(`frame-rf not compared with the reference (per-iteration traps): the reference's is ${conditions(reference.output).frameRf}`);
    if (runsEngine('crh')) await restoreBoth(t, run, reference, repHits, { repBreakpoint: behaviour }, perIteration ? bytes : 1, view);
    if (runsEngine('criu')) {
      // Its witness is the DR1 breakpoint on the rep instruction across the checkpoint: exactly what CRIU does not restore.
      recordRow(t, {
        case: CASE,
        scenario: run.scenario,
        policy: 'criu defaults',
        engine: 'criu',
        control: false,
        expected: '-',
        observed: '-',
        pass: false,
        skipped:
          "not handed to CRIU: the scenario's witness is a DR1 breakpoint kept across the checkpoint, and CRIU does not restore the task's debug registers (known engine gap, harness/criu/known-gaps.ts); the rep result through CRIU is in the rows above",
      });
    }
  });
});
