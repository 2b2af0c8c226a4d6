// expect: a process checkpointed at the 2nd of N hardware-breakpoint hits (RF=1 at that stop)
// resumes with exactly N hits in all and the uninterrupted checksum under the default RF policy —
// as the agent counts them and as the CPU shows them through the gdbstub oracle; rf=clear (the
// first 2009 patch) shows one spurious re-trigger at both witnesses, rf=reject refuses the image
// naming RF before touching the guest. With --engine criu the same stop is handed to CRIU: the lost
// breakpoint is CRIU's known gap (it does not restore the task's debug registers); re-armed by the
// harness after CRIU's restore, the breakpoint must not fire again at the resumed instruction (RF kept),
// and clearing RF there (the control) must make it fire again.
import t, { type Test } from 'tap';
import { ImageRejectedError } from '../harness/errors.ts';
import { describeRegisters, observeCpu, type Observation } from '../harness/oracle/cpu-oracle.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { probeUnmeasuredVerdict } from '../harness/testing/probe-rows.ts';
import { readCheckpointImage, type CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import type { Restorer, RfPolicy } from '../harness/restore/policy.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../harness/testing/scenario.ts';
import { EFLAGS, hex, type UserRegs } from '../harness/x86/registers.ts';
import {
  clearRf,
  criuAtHit,
  debugRegisterLost,
  generalRegisterDifferences,
  lostDebugRegisters,
  policyRowsNotForCriu,
  runsEngine,
  type CriuAttempt,
} from '../harness/testing/criu-engine.ts';
import { CRIU_GAPS } from '../harness/criu/known-gaps.ts';

const CASE = 'hwbreak-rf';
const SCENARIO = 'hw breakpoint, checkpoint at hit 2 (RF=1)';
const CALLS = 5;
const CHECKPOINT_AT_HIT = 2;
/** Registers the oracle compares with the image once the resumed nop at hwbreak:target has run. */
const CHECKED_REGISTERS = ['rsp', 'rbx', 'rbp', 'r12', 'r13', 'r14', 'r15', 'rdi', 'rsi', 'rax', 'rcx', 'rdx', 'r8', 'r9', 'r10', 'r11', 'fs_base'] as const;

interface Outcome {
  totalHits: number;
  checksum: string | undefined;
  exitCode: number;
  oracle: Observation;
}

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent, profile, symbols } = guest;
  const binary = guest.image.guestPaths.hwbreak!;
  const target = symbols.resolve('hwbreak:target');
  // hwbreak:target is a nop: at target_body the CPU holds exactly the registers the process resumed with.
  const targetBody = symbols.resolve('hwbreak:target_body');
  const argv = [binary, String(CALLS)];
  t.comment(`hwbreak:target = ${hex(target)}`);

  // The scenario needs the kernel to report RF=1 at a hardware-breakpoint stop; the profile measured it.
  const rfAtStop = profile.probes.rfAtHwBreakpointStop;
  t.comment(`profile: RF at a hw-breakpoint ptrace stop = ${rfAtStop.value} (${rfAtStop.how})`);
  if (rfAtStop.value === null) {
    // The kernel left the probe without an answer: a finding about it, not a platform to skip on.
    t.fail(`RF at a hardware-breakpoint stop unmeasured: ${rfAtStop.how}`);
    recordRow(
      t,
      probeUnmeasuredVerdict(
        { case: CASE, scenario: SCENARIO, policy: '-', control: false, expected: 'RF=1 at the breakpoint stop, then the scenario' },
        'probes.rfAtHwBreakpointStop',
        rfAtStop,
      ),
    );
    return;
  }
  if (rfAtStop.value !== true) {
    await t.test(
      'RF scenario',
      { skip: `this platform does not set RF at hardware-breakpoint stops (profile: ${rfAtStop.how}); the scenario cannot be built` },
      async () => {},
    );
    return;
  }

  const workload: Workload = { binary, argv, breakAt: target };
  const checksumIn = (text: string): string | undefined => /checksum=([0-9a-f]{16}) calls=(\d+)/.exec(text)?.[1];

  // The reference: the same program with the same breakpoint, never checkpointed, watched by the oracle too.
  const reference = await (async (): Promise<Outcome> => {
    const pid = await spawnArmed(guest, workload, '/tmp/hwbreak-reference.out');
    const { result: run, observation } = await observeCpu(guest.machine.gdbSocket, symbols, { countDebugTrapsAt: target }, () =>
      agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS }),
    );
    const output = await readOutput(guest, '/tmp/hwbreak-reference.out');
    // The reference is a traced run: it must be what the program does with no tracer at all.
    const native = await nativeReference(guest, workload);
    t.equal(`${endedAs(run)}\n${output}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');
    return { totalHits: run.hits.length, checksum: checksumIn(output), exitCode: run.code, oracle: observation };
  })();
  t.equal(reference.exitCode, 0, 'uninterrupted run exits 0');
  t.equal(reference.totalHits, CALLS, `uninterrupted run: one ptrace hit per call (${CALLS})`);
  t.equal(reference.oracle.debugTraps.length, CALLS, `oracle: the CPU raised ${CALLS} #DB at hwbreak:target in the uninterrupted run`);
  t.ok(reference.checksum, `uninterrupted checksum ${reference.checksum}`);

  /** The case's main assertion: the restored run is indistinguishable from the reference, at the agent and at the CPU. */
  const resumedExactly = (o: Outcome, regs: UserRegs): boolean =>
    o.totalHits === CALLS &&
    o.checksum === reference.checksum &&
    o.exitCode === 0 &&
    o.oracle.debugTraps.length === CALLS - CHECKPOINT_AT_HIT &&
    o.oracle.first !== undefined &&
    o.oracle.debugTraps.every((trap) => trap.ip === target) &&
    CHECKED_REGISTERS.every((r) => o.oracle.first!.get(r) === regs[r]);

  const restoreAt = async (
    t: Test,
    tag: string,
    rf: RfPolicy,
    restorer: Restorer = 'ptrace',
  ): Promise<{ outcome: Outcome; image: CheckpointImage; differences: string[] }> => {
    const checkpointed = await checkpointAtHit(guest, workload, CHECKPOINT_AT_HIT, tag);
    t.equal(checkpointed.run.outcome, 'hit-limit', `original stopped at hit ${CHECKPOINT_AT_HIT}`);
    t.equal(checkpointed.run.hits.at(-1)?.rip, target, 'stopped at hwbreak:target');
    const r = await restoreAndFinish(guest, checkpointed.file, { rf, restorer }, tag, { firstExecutionAt: targetBody, countDebugTrapsAt: target });
    t.ok((r.image.regs.eflags & EFLAGS.RF) !== 0n, `EFLAGS.RF is set in the image (${hex(r.image.regs.eflags)}), as the profile says`);
    t.equal(r.image.regs.rip, target, 'the image resumes at hwbreak:target');
    t.comment(
      `oracle: #DB frames at hwbreak:target after restore: ${r.observation.debugTraps.map((d) => `eflags ${hex(d.flags)}`).join(', ') || 'none'} (${r.observation.stops} VM stops)`,
    );
    if (r.observation.first)
      t.comment(`oracle, after the resumed nop: ${describeRegisters(r.observation.first, ['rip', 'cs', 'eflags', 'rsp', 'rbx', 'rbp', 'fs_base'], symbols)}`);
    return {
      image: r.image,
      outcome: {
        totalHits: checkpointed.run.hits.length + r.run.hits.length,
        checksum: checksumIn(r.output),
        exitCode: r.run.outcome === 'exited' ? r.run.code : 128 + r.run.code,
        oracle: r.observation,
      },
      differences: r.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
    };
  };

  // The crh engine's rows run unless the run asked for criu alone.
  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };

  // Both restorers that return through IRET must keep RF: ptrace directly, sigreturn from the frame.
  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(
      `default policy (keep-and-preserve), restorer=${restorer}: exactly N hits and the reference checksum, at the agent and at the CPU`,
      crhOnly,
      async (t) => {
        const { outcome: o, image, differences } = await restoreAt(t, `default-${restorer}`, 'keep-and-preserve', restorer);
        t.same(differences, [], 'the kernel accepted every restored register as requested');
        t.equal(o.totalHits, CALLS, `${CALLS} ptrace hits across original and restored process`);
        t.equal(o.checksum, reference.checksum, 'same checksum as the uninterrupted run');
        t.ok(o.oracle.first, 'oracle: the CPU executed the resumed instruction and reached hwbreak:target_body');
        for (const r of CHECKED_REGISTERS) t.equal(o.oracle.first?.get(r), image.regs[r], `oracle: ${r} = ${hex(image.regs[r])} in the CPU after resuming`);
        t.equal(o.oracle.first?.get('cs'), 0x33n, 'oracle: user code segment');
        t.equal(
          o.oracle.debugTraps.length,
          CALLS - CHECKPOINT_AT_HIT,
          `oracle: ${CALLS - CHECKPOINT_AT_HIT} #DB at hwbreak:target after restore — none at the resumed instruction, RF took effect`,
        );
        t.ok(resumedExactly(o, image.regs), 'resumed exactly as the uninterrupted run');
        recordRow(t, {
          case: CASE,
          scenario: SCENARIO,
          policy: `rf=keep-and-preserve restorer=${restorer}`,
          control: false,
          expected: `${CALLS} hits, ${CALLS - CHECKPOINT_AT_HIT} #DB after restore, checksum ${reference.checksum}`,
          observed: `${o.totalHits} hits, ${o.oracle.debugTraps.length} #DB after restore, checksum ${o.checksum}`,
          pass: resumedExactly(o, image.regs),
          conditions: { 'probes.rfAtHwBreakpointStop': String(rfAtStop.value) },
        });
      },
    );
  }

  await t.test('negative control rf=clear: the spurious re-trigger makes the main assertion fail, at the agent and at the CPU', crhOnly, async (t) => {
    const { outcome: o, image } = await restoreAt(t, 'clear', 'clear');
    t.equal(o.totalHits, CALLS + 1, `${CALLS + 1} ptrace hits: the restored task re-hits the breakpoint it stopped at`);
    t.equal(
      o.oracle.debugTraps.length,
      CALLS - CHECKPOINT_AT_HIT + 1,
      `oracle: ${CALLS - CHECKPOINT_AT_HIT + 1} #DB at hwbreak:target after restore — the CPU trapped again at the resumed instruction`,
    );
    t.equal(
      o.oracle.debugTraps[0]?.flags !== undefined ? o.oracle.debugTraps[0].flags & EFLAGS.RF : undefined,
      0n,
      'oracle: the spurious #DB was taken with RF clear',
    );
    t.equal(o.checksum, reference.checksum, 'the extra trap changes no data, only the trap count');
    t.notOk(resumedExactly(o, image.regs), 'the main assertion fails on this control');
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: 'rf=clear',
      control: true,
      expected: `${CALLS + 1} hits, ${CALLS - CHECKPOINT_AT_HIT + 1} #DB after restore (spurious re-trigger)`,
      observed: `${o.totalHits} hits, ${o.oracle.debugTraps.length} #DB after restore`,
      pass: o.totalHits === CALLS + 1 && o.oracle.debugTraps.length === CALLS - CHECKPOINT_AT_HIT + 1 && !resumedExactly(o, image.regs),
      conditions: { 'probes.rfAtHwBreakpointStop': String(rfAtStop.value) },
    });
  });

  await t.test('negative control restorer=popf (2010, Rozycki/Desnoyers): POPF cannot set RF, so the breakpoint fires again', crhOnly, async (t) => {
    const { outcome: o, image } = await restoreAt(t, 'popf', 'keep-and-preserve', 'popf');
    t.equal(o.totalHits, CALLS + 1, `${CALLS + 1} ptrace hits: RF from the image never reached the CPU`);
    t.equal(o.oracle.debugTraps.length, CALLS - CHECKPOINT_AT_HIT + 1, `oracle: ${CALLS - CHECKPOINT_AT_HIT + 1} #DB at hwbreak:target after restore`);
    t.equal(o.checksum, reference.checksum, 'registers and memory arrive intact: only the trap count differs');
    for (const r of CHECKED_REGISTERS) t.equal(o.oracle.first?.get(r), image.regs[r], `oracle: ${r} in the CPU after the trampoline`);
    t.notOk(resumedExactly(o, image.regs), 'the main assertion fails on this control');
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: 'restorer=popf',
      control: true,
      expected: `${CALLS + 1} hits, ${CALLS - CHECKPOINT_AT_HIT + 1} #DB after restore (RF lost by POPF)`,
      observed: `${o.totalHits} hits, ${o.oracle.debugTraps.length} #DB after restore`,
      pass: o.totalHits === CALLS + 1 && o.oracle.debugTraps.length === CALLS - CHECKPOINT_AT_HIT + 1 && !resumedExactly(o, image.regs),
      conditions: { 'probes.rfAtHwBreakpointStop': String(rfAtStop.value) },
    });
  });

  await t.test('negative control rf=reject: refused before any guest operation, naming RF', crhOnly, async (t) => {
    const { file } = await checkpointAtHit(guest, workload, CHECKPOINT_AT_HIT, 'reject');
    const image = await readCheckpointImage(file);
    const before = agent.requestsSent;
    // Every earlier hwbreak was killed and reaped: a restore that spawned one would show here.
    const hwbreaksIn = async (): Promise<string> => {
      const r = await guest.machine.ssh.exec('pidof hwbreak'); // exit 1: none running
      if ((r.code !== 0 && r.code !== 1) || r.stderr) throw new Error(`pidof failed: ${r.code} ${r.stderr}`);
      return r.stdout.trim();
    };
    const processesBefore = await hwbreaksIn();
    const error = await restoreWitnessed(agent, image, { policy: { rf: 'reject' }, stdoutPath: '/tmp/hwbreak-reject.restored.out' }, 'rf-reject').then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(error instanceof ImageRejectedError, 'restore refused with ImageRejectedError');
    t.match(String((error as Error | undefined)?.message), /RF/, `the error names RF: ${(error as Error | undefined)?.message}`);
    t.equal(agent.requestsSent, before, 'no request reached the agent');
    t.equal(processesBefore, '', 'no hwbreak process before');
    t.equal(await hwbreaksIn(), processesBefore, 'no hwbreak process was spawned');
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: 'rf=reject',
      control: true,
      expected: 'refused, naming RF, guest untouched',
      observed: error instanceof ImageRejectedError ? `refused at ${error.entry} ${error.field}, ${agent.requestsSent - before} requests sent` : 'restored',
      pass: error instanceof ImageRejectedError && /RF/.test(error.message) && agent.requestsSent === before,
    });
  });

  if (!runsEngine('criu')) return;
  // The criu engine: the same stop (hit 2, RF=1 in the kernel's frame) handed to CRIU — dump, kill, restore — and taken back.
  const criuOutcome = (a: Extract<CriuAttempt, { kind: 'restored' }>): Outcome => ({
    totalHits: a.checkpointRun.hits.length + a.run.hits.length,
    checksum: checksumIn(a.output),
    exitCode: a.run.outcome === 'exited' ? a.run.code : 128 + a.run.code,
    oracle: a.observation,
  });
  /** The oracle's registers after the resumed nop against the registers at the dump: what CRIU must have restored. */
  const cpuDiff = (a: Extract<CriuAttempt, { kind: 'restored' }>): string[] =>
    a.observation.first
      ? CHECKED_REGISTERS.filter((r) => a.observation.first!.get(r) !== a.regsAtDump[r]).map(
          (r) => `${r}: dumped ${hex(a.regsAtDump[r])}, cpu ${hex(a.observation.first!.get(r) ?? -1n)}`,
        )
      : ['the CPU never reached hwbreak:target_body'];
  const watch = { firstExecutionAt: targetBody, countDebugTrapsAt: target };
  const expectedExactly = `${CALLS} hits, ${CALLS - CHECKPOINT_AT_HIT} #DB after restore, checksum ${reference.checksum}`;
  const observedOf = (o: Outcome): string => `${o.totalHits} hits, ${o.oracle.debugTraps.length} #DB after restore, checksum ${o.checksum}`;
  const refusedRow = (t: Test, policy: string, control: boolean, a: Extract<CriuAttempt, { kind: 'refused' | 'ended' }>): void => {
    const why = a.kind === 'refused' ? a.reason : `the workload ended before hit ${CHECKPOINT_AT_HIT} (${a.checkpointRun.outcome} ${a.checkpointRun.code})`;
    t.fail(`CRIU dumped and restored the process: ${why}`);
    recordRow(t, { case: CASE, scenario: SCENARIO, policy, engine: 'criu', control, expected: expectedExactly, observed: why, pass: false });
  };

  await t.test('engine criu: CRIU restores the stop at hit 2; the breakpoint it does not restore is its known gap, nothing else differs', async (t) => {
    const a = await criuAtHit(guest, workload, CHECKPOINT_AT_HIT, 'criu', { watch });
    if (a.kind !== 'restored') return refusedRow(t, 'criu defaults', false, a);
    const o = criuOutcome(a);
    const registers = [...generalRegisterDifferences(a), ...cpuDiff(a)];
    t.comment(
      `CRIU ${a.handoff.dumpMs} ms dump, ${a.handoff.restoreMs} ms restore, ${a.handoff.imageBytes} bytes of images; debug registers: ${lostDebugRegisters(a) || 'as dumped'}`,
    );
    t.equal((a.regsAtDump.eflags & EFLAGS.RF) !== 0n, true, 'RF=1 in the registers CRIU dumped');
    t.same(registers, [], 'CRIU restored every general register (ptrace read-back) and the CPU resumed with them (oracle)');
    t.equal(o.checksum, reference.checksum, 'same checksum as the uninterrupted run');
    t.equal(o.exitCode, 0, 'the restored process exits 0');
    const exact = resumedExactly(o, a.regsAtDump);
    // Exactly the gap: the breakpoint is gone (no hit, no #DB after the restore) and nothing else differs.
    const gapOnly =
      !exact &&
      debugRegisterLost(a, 0) &&
      o.totalHits === CHECKPOINT_AT_HIT &&
      o.oracle.debugTraps.length === 0 &&
      registers.length === 0 &&
      o.checksum === reference.checksum &&
      o.exitCode === 0;
    t.ok(exact || gapOnly, `resumed exactly, or differs by the known gap alone (${exact ? 'exact' : gapOnly ? 'the gap' : 'neither'})`);
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: 'criu defaults',
      engine: 'criu',
      control: false,
      expected: expectedExactly,
      observed: `${observedOf(o)}${lostDebugRegisters(a) ? `; restored ${lostDebugRegisters(a)}` : ''}`,
      pass: exact,
      ...(gapOnly ? { engineGap: CRIU_GAPS.debugRegisters } : {}),
      ...(registers.length > 0 ? { registerDiff: registers.join('\n') } : {}),
      conditions: { 'probes.rfAtHwBreakpointStop': String(rfAtStop.value), 'criu.version': guest.image.criu?.version ?? '?' },
    });
  });

  await t.test('engine criu, breakpoint re-armed after the restore: RF from the stop survives CRIU, so it fires exactly as uninterrupted', async (t) => {
    const a = await criuAtHit(guest, workload, CHECKPOINT_AT_HIT, 'criu-rearmed', { watch, rearmDebugRegisters: true });
    if (a.kind !== 'restored') return refusedRow(t, 'criu, breakpoint re-armed', false, a);
    const o = criuOutcome(a);
    const registers = [...generalRegisterDifferences(a), ...cpuDiff(a)];
    t.equal(o.totalHits, CALLS, `${CALLS} ptrace hits across original and CRIU's restored process`);
    t.equal(o.oracle.debugTraps.length, CALLS - CHECKPOINT_AT_HIT, `oracle: ${CALLS - CHECKPOINT_AT_HIT} #DB after restore — none at the resumed instruction`);
    t.same(registers, [], 'registers as dumped, at ptrace and at the CPU');
    const exact = resumedExactly(o, a.regsAtDump);
    t.ok(exact, 'resumed exactly as the uninterrupted run');
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: 'criu, breakpoint re-armed',
      engine: 'criu',
      control: false,
      expected: expectedExactly,
      observed: observedOf(o),
      pass: exact,
      ...(registers.length > 0 ? { registerDiff: registers.join('\n') } : {}),
      conditions: { 'probes.rfAtHwBreakpointStop': String(rfAtStop.value) },
    });
  });

  await t.test('engine criu, negative control: re-armed and RF cleared after the restore, the breakpoint fires again', async (t) => {
    const a = await criuAtHit(guest, workload, CHECKPOINT_AT_HIT, 'criu-rf-cleared', { watch, rearmDebugRegisters: true, tamper: clearRf });
    if (a.kind !== 'restored') return refusedRow(t, 'criu, breakpoint re-armed, RF cleared', true, a);
    const o = criuOutcome(a);
    t.equal(o.totalHits, CALLS + 1, `${CALLS + 1} ptrace hits: the re-trigger`);
    t.equal(o.oracle.debugTraps.length, CALLS - CHECKPOINT_AT_HIT + 1, 'oracle: one #DB more, at the resumed instruction');
    t.notOk(resumedExactly(o, a.regsAtDump), 'the main assertion fails on this control');
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: 'criu, breakpoint re-armed, RF cleared',
      engine: 'criu',
      control: true,
      expected: `${CALLS + 1} hits, ${CALLS - CHECKPOINT_AT_HIT + 1} #DB after restore (spurious re-trigger)`,
      observed: observedOf(o),
      pass: o.totalHits === CALLS + 1 && o.oracle.debugTraps.length === CALLS - CHECKPOINT_AT_HIT + 1 && !resumedExactly(o, a.regsAtDump),
    });
  });

  // crh's controls are policies of its restore core: under CRIU each is a SKIP saying so.
  for (const row of policyRowsNotForCriu(CASE, SCENARIO, ['rf=clear', 'restorer=popf', 'rf=reject'])) {
    await t.test(`engine criu: ${row.policy} ${row.skipped}`, async (t) => {
      t.pass(row.skipped);
      recordRow(t, row);
    });
  }
});
