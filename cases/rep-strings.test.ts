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
import { CALLEE_SAVED, DEFAULT_POLICY, describePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { runCriuControl, runCriuScenario, runsEngine, type CriuScenario } from '../harness/testing/criu-engine.ts';
import { recordCriuSkip, skipNotForCriu } from '../harness/scenarios/runner.ts';
import { POLICY_NOT_FOR_CRIU } from '../harness/criu/known-gaps.ts';
import {
  handlerStopScenario,
  type HandlerRestoredRun,
  type HandlerStopAttempt,
  type HandlerStopScenario,
  type HandlerStopSpec,
} from '../harness/scenarios/handler-stop-scenario.ts';
import { runTable } from '../harness/scenarios/table.ts';

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

/** How many times the workload ran the instruction before the timer landed inside it. */
const attemptsOf = (output: string): number => Number(/ attempts=(\d+)/.exec(output)?.[1] ?? 1);

/** The output without the interrupt's timing, which differs from run to run. */
const stable = (out: string): string =>
  out
    .trim()
    .replace(/ attempts=\d+/, ' attempts=*')
    .replace(/ progress=\d+\//, ' progress=*/');

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
   * Restore and oracle: the restored run under the default policy, then the
   * regs=partial control. Hits are compared for the interrupted attempt
   * alone: every attempt the timer missed ran the whole instruction once
   * more, which costs `hitsPerMissedAttempt` (the reference and the restored
   * run may need different numbers of attempts on a busy host).
   */
  const restoreBoth = async (
    t: Test,
    spec: HandlerStopSpec,
    prepared: HandlerStopScenario,
    countHits: (r: RunResult) => number,
    extra: Record<string, string> = {},
    hitsPerMissedAttempt = 0,
  ): Promise<void> => {
    const { view } = spec;
    const { reference } = prepared;
    const interruptedAttemptHits = (hits: number, output: string): number => hits - (attemptsOf(output) - 1) * hitsPerMissedAttempt;
    const expectedHits = interruptedAttemptHits(countHits(reference.result), reference.output);
    const resultOf = (r: HandlerRestoredRun): { result: string; hits: number } => ({
      result: r.run.outcome === 'killed' ? `killed by signal ${r.run.code}` : view(r.output),
      hits: interruptedAttemptHits(countHits(r.checkpointRun) + countHits(r.run), r.output),
    });
    const restored = (a: HandlerStopAttempt): HandlerRestoredRun | undefined =>
      a.restored && { checkpointRun: a.checkpointed.run, run: a.restored.run, output: a.restored.output };
    const inTheHandler = (t: Test, a: HandlerStopAttempt): void =>
      void t.equal(a.checkpointed.run.hits.at(-1)?.rip, inHandler, 'checkpointed inside the SIGALRM handler');
    const scenario = prepared.judgedBy({
      expected: `${view(reference.output)}; ${expectedHits} rep hit(s)`,
      observe: (r) => `${resultOf(r).result}; ${resultOf(r).hits} rep hit(s)`,
      conditions: conditions(reference.output, extra),
    });
    await runTable(t, CASE, scenario, [
      {
        title: 'restored: the exact result, RCX/RSI/RDI continued',
        policy: DEFAULT_POLICY,
        tag: spec.tag,
        expect: 'resumes',
        check: (t, a) => {
          inTheHandler(t, a);
          const r = restored(a);
          if (!r) return;
          const { result, hits } = resultOf(r);
          t.equal(result, view(reference.output), `exact result, RCX/RSI/RDI continued: ${r.output.trim()}`);
          t.equal(
            hits,
            expectedHits,
            `${hits} hit(s) on the rep instruction across the checkpoint in the interrupted attempt, as uninterrupted (attempts: ${attemptsOf(reference.output)} uninterrupted, ${attemptsOf(r.output)} restored)`,
          );
        },
      },
      {
        title: "negative control regs=partial (2015): the handler's callee-saved registers lost",
        policy: { ...DEFAULT_POLICY, regs: 'partial' },
        tag: `${spec.tag}-regs-partial`,
        expect: 'differs',
        check: (t, a) => {
          inTheHandler(t, a);
          const r = restored(a);
          if (r) t.not(resultOf(r).result, view(reference.output), `regs=partial is caught: ${resultOf(r).result}`);
        },
      },
    ]);
  };

  for (const v of VARIANTS) {
    await t.test(`rep ${v.op} ${v.dir === 'back' ? 'backward (DF=1)' : 'forward'}, ${Number(BIG_KIB) >> 10} MiB`, async (t) => {
      // Provoke: the 2 MiB instruction interrupted by SIGALRM; checkpoint at the first execution of rep_in_handler.
      const spec: HandlerStopSpec = {
        name: `rep ${v.op} ${v.dir}, ${Number(BIG_KIB) >> 10} MiB, interrupted by SIGALRM, checkpoint in the handler`,
        workload: { binary, argv: [binary, v.op, v.dir, BIG_KIB], debugRegs: { 0: inHandler, 7: DR7_HANDLER } },
        tag: `${v.op}-${v.dir}`,
        stopAt: inHandler,
        dr7After: 0n,
        view: stable,
      };
      const prepared = await handlerStopScenario(t, guest, spec);
      const { reference } = prepared;
      if (runsEngine('crh')) await restoreBoth(t, spec, prepared, () => 0);
      if (!runsEngine('criu')) return;
      // The same stop (the first execution of rep_in_handler, the rep instruction interrupted) handed to CRIU.
      const criuScenario: CriuScenario = {
        case: CASE,
        scenario: spec.name,
        workload: spec.workload,
        hit: 1,
        dr7BeforeDump: spec.dr7After,
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
        runCriuScenario(t, guest, criuScenario, `criu-${spec.tag}`),
      );
      await t.test('engine criu, negative control: callee-saved registers zeroed in the handler after the restore are caught', (t) =>
        runCriuControl(t, guest, criuScenario, `criu-${spec.tag}-zeroed`),
      );
      await t.test(`engine criu: regs=partial ${POLICY_NOT_FOR_CRIU}`, async (t) => {
        skipNotForCriu(t, { case: CASE, scenario: spec.name, policy: describePolicy({ ...DEFAULT_POLICY, regs: 'partial' }) });
      });
    });
  }

  await t.test('an execute breakpoint on the rep instruction itself', async (t) => {
    const repInsn = guest.symbols.resolve('repstr:rep_movsb_insn');
    const workload = { binary, argv: [binary, 'movsb', 'fwd', SMALL_KIB], debugRegs: { 0: inHandler, 1: repInsn, 7: DR7_BOTH } };
    // expect: natively the 4 KiB copy is never interrupted; traced, the DR1 traps let the timer land in it (docs/platform.md).
    const spec: HandlerStopSpec = {
      name: `rep movsb fwd, ${SMALL_KIB} KiB, DR1 on the rep instruction, checkpoint in the handler`,
      workload,
      tag: 'movsb-fwd-rep-breakpoint',
      stopAt: inHandler,
      dr7After: DR7_REP_ONLY,
      view: stable,
      incomparable: 'the DR1 trap on the rep instruction is what lets the timer land inside a 4 KiB copy',
    };
    const prepared = await handlerStopScenario(t, guest, spec);
    const { reference } = prepared;
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
    // expect: with per-iteration traps (TCG) the frame's RF depends on where the timer lands, so it is compared through
    // the rep hits across the checkpoint, not the reference's line (docs/platform.md).
    const view = perIteration ? (out: string): string => stable(out).replace(/ frame-rf=\d/, ' frame-rf=*') : stable;
    if (perIteration) t.comment(`frame-rf not compared with the reference (per-iteration traps): the reference's is ${conditions(reference.output).frameRf}`);
    if (runsEngine('crh')) await restoreBoth(t, { ...spec, view }, prepared, repHits, { repBreakpoint: behaviour }, perIteration ? bytes : 1);
    if (runsEngine('criu')) {
      // Its witness is the DR1 breakpoint on the rep instruction across the checkpoint: exactly what CRIU does not restore.
      recordCriuSkip(
        t,
        { case: CASE, scenario: spec.name },
        "not handed to CRIU: the scenario's witness is a DR1 breakpoint kept across the checkpoint, and CRIU does not restore the task's debug registers (known engine gap, harness/criu/known-gaps.ts); the rep result through CRIU is in the rows above",
      );
    }
  });
});
