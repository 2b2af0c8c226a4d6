// expect: a process single-stepping itself (TF set with popf, a SIGTRAP handler recording each trap IP), checkpointed
// at a breakpoint in the middle of the sequence with TF set, records exactly the uninterrupted list of trap IPs after a
// restore that returns through IRET (restorer=ptrace and restorer=sigreturn). Negative control restorer=popf (the 2010
// Rozycki/Desnoyers report): TF loaded by POPF traps one instruction late — after the trampoline's ret — so the resume
// address is recorded twice.
// Tracer-set TF: the host single-steps the same sequence (stepper traced, no TF of its own) with the agent's STEP from a
// breakpoint on step_seq to step_tail and checkpoints at step_mid. The image holds no TF (the kernel hides the tracer's
// forced TF from GETREGS, while the CPU oracle sees TF in the #DB frame at step_mid), and after a ptrace restore the
// stepped IPs are exactly the uninterrupted list, with no #DB at step_mid and no trap seen by the program. Negative
// controls: restorer=popf — the tracer steps the trampoline (its ret, then step_mid again, a #DB there) and the stepped
// popfq makes the kernel hand the tracer's TF to the program, which, let go, traps by itself through the epilogue (the
// late trap); restorer=sigreturn — the first step runs the trampoline's rt_sigreturn, which the kernel reports at
// step_mid without a #DB: step_mid twice in the tracer's list, the program itself unaffected.
import t, { type Test } from 'tap';
import type { DebugTrap } from '../harness/oracle/cpu-oracle.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import type { Workload } from '../harness/testing/scenario.ts';
import { EFLAGS, hex } from '../harness/x86/registers.ts';
import { runCriuControl, runCriuScenario, runsEngine, type CriuScenario } from '../harness/testing/criu-engine.ts';
import { recordCriuSkip, skipNotForCriu } from '../harness/scenarios/runner.ts';
import { POLICY_NOT_FOR_CRIU } from '../harness/criu/known-gaps.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { tracerStepScenario } from '../harness/scenarios/tracer-step-scenario.ts';
import { runTable } from '../harness/scenarios/table.ts';

const CASE = 'single-step';
const SCENARIO = 'TF set by popf in the workload, checkpoint mid-sequence';
const TRACED_SCENARIO = 'TF set by the tracer (PTRACE_SINGLESTEP), checkpoint mid-sequence';
/** More steps than the sequence has: a tracer that never reaches step_tail stops here. */
const MAX_STEPS = 32;
const DR6_BS = 0x4000n;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.stepper!;
  const stepSeq = guest.symbols.resolve('stepper:step_seq');
  const stepMid = guest.symbols.resolve('stepper:step_mid');
  const midOffset = `+${stepMid - stepSeq}`;
  const workload: Workload = { binary, argv: [binary], breakAt: stepMid };
  const ips = (output: string): string | undefined => /ips=(\S+)/.exec(output)?.[1];

  // Provoke: the workload sets TF with popf; its handler records each trap IP. Checkpointed at step_mid, TF set.
  const scenario = await breakpointScenario(t, guest, {
    name: SCENARIO,
    workload,
    expected: (r) => `ips=${ips(r.output)}`,
    judge: (r, ref) => ({ matched: ips(r.output) === ips(ref.output), observed: `ips=${ips(r.output)}` }),
  });
  const reference = ips(scenario.reference.output);
  t.equal(scenario.reference.run.code, 0);
  t.ok(reference, `uninterrupted trap IPs: ${reference}`);
  t.equal(reference?.split(',').filter((ip) => ip === midOffset).length, 1, `the resume address ${midOffset} appears once`);

  // Restore and oracle: the trap list after an IRET restore, and after the popf trampoline's late trap.
  const tfInImage = (t: Test, a: BreakpointAttempt): void => {
    const eflags = a.checkpointed!.image!.regs.eflags;
    t.ok((eflags & EFLAGS.TF) !== 0n, `TF is set in the image (eflags ${hex(eflags)})`);
  };
  await runTable(t, CASE, scenario, [
    ...(['ptrace', 'sigreturn'] as const).map((restorer) => ({
      title: `restorer=${restorer} (IRET): the exact trap list`,
      policy: { ...DEFAULT_POLICY, restorer },
      tag: restorer,
      expect: 'resumes' as const,
      check: (t: Test, a: BreakpointAttempt) => {
        tfInImage(t, a);
        t.equal(a.observed, `ips=${reference}`, `trap IPs after restore: ${a.observed}`);
        t.equal(a.restoredRun?.run.code, 0);
      },
    })),
    {
      title: 'negative control restorer=popf (2010): TF from POPF traps one instruction late, the resume address twice',
      policy: { ...DEFAULT_POLICY, restorer: 'popf' },
      tag: 'popf',
      expect: 'differs',
      check: (t, a) => {
        tfInImage(t, a);
        const late = reference?.replace(midOffset, `${midOffset},${midOffset}`);
        t.equal(a.observed, `ips=${late}`, `trap IPs: ${a.observed} — ${midOffset} recorded twice (after the trampoline's ret, then after the instruction)`);
      },
    },
  ]);

  await t.test('tracer-set TF: the tracer single-steps the sequence, checkpointed mid-sequence', async (t) => {
    const stepTail = guest.symbols.resolve('stepper:step_tail');
    const at = (rip: bigint): string => (rip >= stepSeq && rip <= stepTail ? `+${rip - stepSeq}` : guest.symbols.symbolize(rip));
    const dbAtMid = (traps: DebugTrap[]): string => traps.map((d) => `eflags ${hex(d.flags)}`).join(', ') || 'none';

    // Provoke: stepped from step_seq to step_tail uninterrupted; the CPU's #DB at step_mid witnessed through the gdbstub.
    const traced = await tracerStepScenario(guest, {
      name: TRACED_SCENARIO,
      workload: { binary, argv: [binary, 'traced'], breakAt: stepSeq },
      outputName: 'stepper-traced',
      stepUntil: stepTail,
      maxSteps: MAX_STEPS,
      countDebugTrapsAt: stepMid,
      label: at,
      conditions: { kernelRelease: guest.profile.kernelRelease },
    });
    const { steps: refSteps, observation: refCpu, output: refOutput } = traced.reference;
    const tracedReference = traced.list(refSteps);
    t.equal(traced.reference.atStart.hitRip, stepSeq, `stopped at the breakpoint on step_seq (${hex(stepSeq)})`);
    t.comment(`uninterrupted stepped IPs: ${tracedReference}; output: ${refOutput}`);
    t.equal(refSteps.at(-1)?.rip, stepTail, 'the tracer reached step_tail');
    t.ok(
      refSteps.every((s) => (s.dr6 & DR6_BS) !== 0n),
      'every stop is a single-step trap (DR6.BS)',
    );
    t.ok(
      refSteps.every((s) => (s.eflags & EFLAGS.TF) === 0n),
      "the tracer's TF is hidden from eflags at every stop",
    );
    t.equal(refCpu.debugTraps.length, 1, `oracle: one #DB at step_mid (${dbAtMid(refCpu.debugTraps)})`);
    t.ok(
      refCpu.debugTraps.every((d) => (d.flags & EFLAGS.TF) !== 0n),
      "oracle: the CPU had TF set there — it is the tracer's, not in the registers ptrace shows",
    );
    t.equal(refOutput, 'stepper traps=0 sum=28 ips=', 'the handler saw no trap (the tracer suppressed them) and the sequence ran once');
    const midIndex = refSteps.findIndex((s) => s.rip === stepMid) + 1;
    t.ok(midIndex > 0 && midIndex < refSteps.length, `step_mid is step ${midIndex} of ${refSteps.length}`);

    // Checkpoint: stepped to step_mid in one STEP, TF forced by the tracer.
    const stop = await traced.checkpointAfter(midIndex, 'traced');
    t.equal(stop.atStart.hitRip, stepSeq, `stopped at the breakpoint on step_seq (${hex(stepSeq)})`);
    t.equal(stop.toStop.rip, stepMid, `${midIndex} steps in one STEP: at step_mid`);
    t.equal(traced.list(stop.toStop.steps), traced.list(refSteps.slice(0, midIndex)), `the same first ${midIndex} steps: ${traced.list(stop.toStop.steps)}`);
    t.equal(stop.image.regs.rip, stepMid, 'the image resumes at step_mid');
    t.equal(
      (stop.image.regs.eflags & EFLAGS.TF) !== 0n,
      false,
      `the image's eflags ${hex(stop.image.regs.eflags)} hold no TF: a tracer's TF is not the process's state`,
    );

    // Restore, step on as the tracer did (as many steps in one STEP, then to step_tail), and let it finish.
    /** The uninterrupted stepped list with `extra` stops inserted after the checkpoint's. */
    const withStopsAtResume = (...extra: string[]): string =>
      [...tracedReference.split(',').slice(0, midIndex), ...extra, ...tracedReference.split(',').slice(midIndex)].join(',');
    const restores = traced.restoresOf(stop);
    const policyOf = (restorer: RestorePolicy['restorer']): RestorePolicy => ({ ...DEFAULT_POLICY, restorer });
    await runTable(t, CASE, restores, [
      {
        title: 'restorer=ptrace (IRET): the exact list of stepped IPs',
        policy: policyOf('ptrace'),
        tag: 'ptrace',
        expect: 'resumes',
        check: (t, r) => {
          t.equal(r.list, tracedReference, `stepped IPs across the restore: ${r.list}`);
          t.ok(
            r.steps.every((s) => (s.dr6 & DR6_BS) !== 0n && (s.eflags & EFLAGS.TF) === 0n),
            "every stop a single-step trap, the tracer's TF hidden as before",
          );
          t.equal(r.debugTraps, 0, 'oracle: no #DB at step_mid after the restore — the first step ran the instruction there');
          t.equal(r.output, refOutput, 'let go, the program saw no trap and the sum is right');
        },
      },
      {
        title: 'negative control restorer=popf (2010): the tracer steps the trampoline, and the program takes over the TF (the late trap)',
        policy: policyOf('popf'),
        tag: 'popf',
        expect: 'differs',
        check: (t, r) => {
          const page = r.plan.find((s) => s.op.op === 'WRITE_MEM' && s.why.startsWith('popf trampoline'))?.op as { address: bigint } | undefined;
          t.ok(page, `the plan wrote the trampoline at ${page ? hex(page.address) : '?'}`);
          // popfq is one byte: the tracer's first step stops at the trampoline's ret, the second (the ret) at the resume address.
          const expected = withStopsAtResume(at((page?.address ?? 0n) + 1n), at(stepMid));
          t.equal(r.list, expected, `stepped IPs: ${r.list} — the trampoline's ret, then step_mid again`);
          t.equal(r.debugTraps, 1, 'oracle: the CPU raised a #DB at step_mid after the restore (the ret landing there)');
          // The kernel took the stepped popfq for one that sets TF itself (docs/agent-protocol.md, STEP): from then on the
          // tracer's TF is the program's, so let go at step_tail it traps after every instruction of the epilogue, as the
          // popf mode's own TF does there, until the epilogue's popfq clears it.
          const epilogue = reference?.split(',').slice(reference.split(',').indexOf(at(stepTail)) + 1) ?? [];
          t.equal(r.output, `stepper traps=${epilogue.length} sum=28 ips=${epilogue.join(',')}`, `let go, the program trapped by itself: ${r.output}`);
          t.ok(
            r.steps.slice(1).every((s) => (s.eflags & EFLAGS.TF) !== 0n),
            "after the trampoline's popfq, TF shows in eflags at every stop",
          );
        },
      },
      {
        title: "negative control restorer=sigreturn: the tracer's first step runs the trampoline's rt_sigreturn — the resume address twice",
        policy: policyOf('sigreturn'),
        tag: 'sigreturn',
        expect: 'differs',
        check: (t, r) => {
          t.equal(r.list, withStopsAtResume(at(stepMid)), `stepped IPs: ${r.list} — step_mid again`);
          t.equal(
            (r.steps[0]?.dr6 ?? DR6_BS) & DR6_BS,
            0n,
            `that stop is the kernel's report of the stepped system call, no single-step #DB (DR6 ${hex(r.steps[0]?.dr6 ?? 0n)})`,
          );
          t.equal(r.debugTraps, 0, 'oracle: and the CPU raised no #DB at step_mid');
          t.equal(r.output, refOutput, "let go, the program saw no trap and the sum is right: only the tracer's view differs");
        },
      },
    ]);
  });

  // engine criu (crh run --engine …criu): the popf scenario's stop (TF set, mid-sequence) handed to CRIU.
  if (!runsEngine('criu')) return;
  const criuScenario: CriuScenario = {
    case: CASE,
    scenario: SCENARIO,
    workload,
    hit: 1,
    dr7BeforeDump: 0n,
    watch: {},
    expected: `ips=${reference}`,
    judge: (a) => {
      // The scenario holds only when the dump caught TF set (eflags as CRIU dumped it, in the row).
      const tf = (a.regsAtDump.eflags & EFLAGS.TF) !== 0n;
      return {
        observed: `ips=${ips(a.output)}; TF at the dump: ${tf}`,
        exact: tf && ips(a.output) === reference && a.run.outcome === 'exited' && a.run.code === 0,
      };
    },
    control: {
      policy: 'criu, TF cleared after the restore',
      tamper: (regs) => ({ ...regs, eflags: regs.eflags & ~EFLAGS.TF }),
      expected: 'differs from the uninterrupted trap list (the steps from the resume address lost)',
      showedIt: (a) => ips(a.output) !== reference,
    },
  };
  await t.test("engine criu: the exact trap list after CRIU's dump and restore mid-sequence", (t) => runCriuScenario(t, guest, criuScenario, 'criu'));
  await t.test("engine criu, negative control: TF cleared after CRIU's restore loses the rest of the steps", (t) =>
    runCriuControl(t, guest, criuScenario, 'criu-tf-cleared'),
  );
  await t.test(`engine criu: restorer=popf ${POLICY_NOT_FOR_CRIU}; the tracer-set scenario is crh's alone`, async (t) => {
    skipNotForCriu(t, { case: CASE, scenario: SCENARIO, policy: describePolicy({ ...DEFAULT_POLICY, restorer: 'popf' }) });
    recordCriuSkip(
      t,
      { case: CASE, scenario: TRACED_SCENARIO },
      "not handed to CRIU: the tracer single-stepping the restored process is the scenario, and CRIU takes the task from the agent (DETACH) for the dump — the tracer-set TF is the agent's, not the program's state",
    );
  });
});
