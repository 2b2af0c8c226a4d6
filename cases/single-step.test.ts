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
import path from 'node:path';
import type { SingleStep } from '../harness/agent/ops.ts';
import { observeCpu, type DebugTrap } from '../harness/oracle/cpu-oracle.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { readCheckpointImage, writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../harness/testing/scenario.ts';
import { EFLAGS, debugRegOffset, hex } from '../harness/x86/registers.ts';
import { runCriuControl, runCriuScenario, runsEngine, type CriuScenario } from '../harness/testing/criu-engine.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { POLICY_NOT_FOR_CRIU } from '../harness/criu/known-gaps.ts';

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

  const { pid } = await guest.agent.call({ op: 'SPAWN', path: binary, argv: [binary], envp: [], stdoutPath: '/tmp/stepper-reference.out', noAslr: true });
  const run = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  const referenceOutput = await readOutput(guest, '/tmp/stepper-reference.out');
  const reference = ips(referenceOutput);
  t.equal(run.code, 0);
  // The reference is a traced run: it must be what the program does with no tracer at all.
  const native = await nativeReference(guest, { binary, argv: [binary] });
  t.equal(`${endedAs(run)}\n${referenceOutput}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');
  t.ok(reference, `uninterrupted trap IPs: ${reference}`);
  t.equal(reference?.split(',').filter((ip) => ip === midOffset).length, 1, `the resume address ${midOffset} appears once`);

  const cycle = async (policy: RestorePolicy, tag: string) => {
    const checkpointed = await checkpointAtHit(guest, workload, 1, tag, { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
    t.ok((r.image.regs.eflags & EFLAGS.TF) !== 0n, `TF is set in the image (eflags ${hex(r.image.regs.eflags)})`);
    return { r, observed: ips(r.output) };
  };

  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`restorer=${restorer} (IRET): the exact trap list`, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const { r, observed } = await cycle(policy, restorer);
      t.equal(observed, reference, `trap IPs after restore: ${observed}`);
      t.equal(r.run.code, 0);
      recordRowOutcome(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: describePolicy(policy),
        control: false,
        expected: `ips=${reference}`,
        observed: `ips=${observed}`,
        matchedUninterrupted: observed === reference,
      });
    });
  }

  await t.test('negative control restorer=popf (2010): TF from POPF traps one instruction late, the resume address twice', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer: 'popf' };
    const { observed } = await cycle(policy, 'popf');
    const late = reference?.replace(midOffset, `${midOffset},${midOffset}`);
    t.equal(observed, late, `trap IPs: ${observed} — ${midOffset} recorded twice (after the trampoline's ret, then after the instruction)`);
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(policy),
      control: true,
      expected: `ips=${reference}`,
      observed: `ips=${observed}`,
      matchedUninterrupted: observed === reference,
    });
  });

  await t.test('tracer-set TF: the tracer single-steps the sequence, checkpointed mid-sequence', async (t) => {
    const { agent, symbols } = guest;
    const stepTail = symbols.resolve('stepper:step_tail');
    const traced: Workload = { binary, argv: [binary, 'traced'], breakAt: stepSeq };
    const at = (rip: bigint): string => (rip >= stepSeq && rip <= stepTail ? `+${rip - stepSeq}` : symbols.symbolize(rip));
    const list = (steps: readonly SingleStep[]): string => steps.map((s) => at(s.rip)).join(',');
    const dbAtMid = (traps: DebugTrap[]): string => traps.map((d) => `eflags ${hex(d.flags)}`).join(', ') || 'none';

    /** Spawned with DR0 on step_seq, run to that hit, DR7 cleared: the tracer steps from here. */
    const atSequenceStart = async (out: string): Promise<number> => {
      const pid = await spawnArmed(guest, traced, out);
      const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
      t.equal(run.hits[0]?.rip, stepSeq, `stopped at the breakpoint on step_seq (${hex(stepSeq)})`);
      await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
      return pid;
    };
    /** `first` steps in one STEP, then one at a time until step_tail (the epilogue that clears TF is not stepped). */
    const stepToTail = async (pid: number, first: number): Promise<SingleStep[]> => {
      const steps: SingleStep[] = [];
      for (let count = first; steps.length < MAX_STEPS && steps.at(-1)?.rip !== stepTail; count = 1) {
        const r = await agent.call({ op: 'STEP', pid, count, timeoutMs: RUN_TIMEOUT_MS });
        steps.push(...r.steps);
        if (r.outcome !== 'stepped') throw new Error(`STEP ended with ${r.outcome} ${r.code} after ${list(steps)}`);
      }
      return steps;
    };
    /** Let go by the tracer: the process runs to its end and prints what its handler saw. */
    const finish = async (pid: number, out: string): Promise<string> => {
      const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
      const text = (await readOutput(guest, out)).trim();
      return run.outcome === 'exited' && run.code === 0 ? text : `${text} (${run.outcome} ${run.code})`;
    };

    // Uninterrupted: stepped from step_seq to step_tail; the CPU's #DB at step_mid witnessed through the gdbstub.
    const refOut = '/tmp/stepper-traced-reference.out';
    const refPid = await atSequenceStart(refOut);
    const { result: refSteps, observation: refCpu } = await observeCpu(guest.machine.gdbSocket, symbols, { countDebugTrapsAt: stepMid }, () =>
      stepToTail(refPid, 1),
    );
    const tracedReference = list(refSteps);
    const refOutput = await finish(refPid, refOut);
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

    // The checkpoint: stepped to step_mid in one STEP, TF forced by the tracer.
    const ckOut = '/tmp/stepper-traced.original.out';
    const pid = await atSequenceStart(ckOut);
    const toMid = await agent.call({ op: 'STEP', pid, count: midIndex, timeoutMs: RUN_TIMEOUT_MS });
    t.equal(toMid.rip, stepMid, `${midIndex} steps in one STEP: at step_mid`);
    t.equal(list(toMid.steps), list(refSteps.slice(0, midIndex)), `the same first ${midIndex} steps: ${list(toMid.steps)}`);
    const file = path.join(guest.artifactsDir, 'checkpoint-traced.tar');
    await writeCheckpointImage(await checkpointProcess(agent, { binary, argv: traced.argv, envp: [], noAslr: true, pid }, guest.platform), file);
    await agent.call({ op: 'KILL', pid });
    const image = await readCheckpointImage(file);
    const imageTf = (image.regs.eflags & EFLAGS.TF) !== 0n;
    t.equal(image.regs.rip, stepMid, 'the image resumes at step_mid');
    t.equal(imageTf, false, `the image's eflags ${hex(image.regs.eflags)} hold no TF: a tracer's TF is not the process's state`);

    /** Restores the image, steps on as the tracer did (as many steps in one STEP, then to step_tail) and lets it finish. */
    const cycle = async (policy: RestorePolicy, tag: string) => {
      const out = `/tmp/stepper-traced-${tag}.restored.out`;
      const restored = await restoreWitnessed(agent, image, { policy, stdoutPath: out }, `traced-${tag}`);
      const { result: steps, observation } = await observeCpu(guest.machine.gdbSocket, symbols, { countDebugTrapsAt: stepMid }, () =>
        stepToTail(restored.pid, refSteps.length - midIndex),
      );
      const output = await finish(restored.pid, out);
      const observed = list([...toMid.steps, ...steps]);
      const tf = steps.map((s) => ((s.eflags & EFLAGS.TF) !== 0n ? 'TF' : '-')).join(' ');
      t.comment(
        `restorer=${policy.restorer}: after restore ${list(steps)} (DR6 ${steps.map((s) => hex(s.dr6)).join(' ')}; eflags ${tf}); #DB at step_mid: ${dbAtMid(observation.debugTraps)}; output: ${output}`,
      );
      return {
        steps,
        observed,
        output,
        plan: restored.plan,
        dbAtMid: observation.debugTraps.length,
        matched: observed === tracedReference && output === refOutput,
      };
    };
    const verdict = (t: Test, policy: RestorePolicy, control: boolean, r: Awaited<ReturnType<typeof cycle>>): void =>
      recordRowOutcome(t, {
        case: CASE,
        scenario: TRACED_SCENARIO,
        policy: describePolicy(policy),
        control,
        expected: `ips=${tracedReference}; ${refOutput}`,
        observed: `ips=${r.observed}; ${r.output}`,
        matchedUninterrupted: r.matched,
        conditions: { kernelRelease: guest.profile.kernelRelease },
      });
    /** The uninterrupted stepped list with `extra` stops inserted after the checkpoint's. */
    const withStopsAtResume = (...extra: string[]): string =>
      [...tracedReference.split(',').slice(0, midIndex), ...extra, ...tracedReference.split(',').slice(midIndex)].join(',');

    await t.test('restorer=ptrace (IRET): the exact list of stepped IPs', async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer: 'ptrace' };
      const r = await cycle(policy, 'ptrace');
      t.equal(r.observed, tracedReference, `stepped IPs across the restore: ${r.observed}`);
      t.ok(
        r.steps.every((s) => (s.dr6 & DR6_BS) !== 0n && (s.eflags & EFLAGS.TF) === 0n),
        "every stop a single-step trap, the tracer's TF hidden as before",
      );
      t.equal(r.dbAtMid, 0, 'oracle: no #DB at step_mid after the restore — the first step ran the instruction there');
      t.equal(r.output, refOutput, 'let go, the program saw no trap and the sum is right');
      verdict(t, policy, false, r);
    });

    await t.test('negative control restorer=popf (2010): the tracer steps the trampoline, and the program takes over the TF (the late trap)', async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer: 'popf' };
      const r = await cycle(policy, 'popf');
      const page = r.plan.find((s) => s.op.op === 'WRITE_MEM' && s.why.startsWith('popf trampoline'))?.op as { address: bigint } | undefined;
      t.ok(page, `the plan wrote the trampoline at ${page ? hex(page.address) : '?'}`);
      // popfq is one byte: the tracer's first step stops at the trampoline's ret, the second (the ret) at the resume address.
      const expected = withStopsAtResume(at((page?.address ?? 0n) + 1n), at(stepMid));
      t.equal(r.observed, expected, `stepped IPs: ${r.observed} — the trampoline's ret, then step_mid again`);
      t.equal(r.dbAtMid, 1, 'oracle: the CPU raised a #DB at step_mid after the restore (the ret landing there)');
      // The kernel took the stepped popfq for one that sets TF itself (docs/agent-protocol.md, STEP): from then on the
      // tracer's TF is the program's, so let go at step_tail it traps after every instruction of the epilogue, as the
      // popf mode's own TF does there, until the epilogue's popfq clears it.
      const epilogue = reference?.split(',').slice(reference.split(',').indexOf(at(stepTail)) + 1) ?? [];
      t.equal(r.output, `stepper traps=${epilogue.length} sum=28 ips=${epilogue.join(',')}`, `let go, the program trapped by itself: ${r.output}`);
      t.ok(
        r.steps.slice(1).every((s) => (s.eflags & EFLAGS.TF) !== 0n),
        "after the trampoline's popfq, TF shows in eflags at every stop",
      );
      verdict(t, policy, true, r);
    });

    await t.test("negative control restorer=sigreturn: the tracer's first step runs the trampoline's rt_sigreturn — the resume address twice", async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer: 'sigreturn' };
      const r = await cycle(policy, 'sigreturn');
      t.equal(r.observed, withStopsAtResume(at(stepMid)), `stepped IPs: ${r.observed} — step_mid again`);
      t.equal(
        (r.steps[0]?.dr6 ?? DR6_BS) & DR6_BS,
        0n,
        `that stop is the kernel's report of the stepped system call, no single-step #DB (DR6 ${hex(r.steps[0]?.dr6 ?? 0n)})`,
      );
      t.equal(r.dbAtMid, 0, 'oracle: and the CPU raised no #DB at step_mid');
      t.equal(r.output, refOutput, "let go, the program saw no trap and the sum is right: only the tracer's view differs");
      verdict(t, policy, true, r);
    });
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
    t.pass(POLICY_NOT_FOR_CRIU);
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy({ ...DEFAULT_POLICY, restorer: 'popf' }),
      engine: 'criu',
      control: true,
      expected: '-',
      observed: '-',
      pass: false,
      skipped: POLICY_NOT_FOR_CRIU,
    });
    recordRow(t, {
      case: CASE,
      scenario: TRACED_SCENARIO,
      policy: 'criu defaults',
      engine: 'criu',
      control: false,
      expected: '-',
      observed: '-',
      pass: false,
      skipped:
        "not handed to CRIU: the tracer single-stepping the restored process is the scenario, and CRIU takes the task from the agent (DETACH) for the dump — the tracer-set TF is the agent's, not the program's state",
    });
  });
});
