// expect: a process checkpointed at the 2nd of N hardware-breakpoint hits (RF=1 at that stop)
// resumes with exactly N hits in all and the uninterrupted checksum under the default RF policy —
// as the agent counts them and as the CPU shows them through the gdbstub oracle; rf=clear (the
// first 2009 patch) shows one spurious re-trigger at both witnesses, rf=reject refuses the image
// naming RF before touching the guest. With --engine criu the same stop is handed to CRIU: the lost
// breakpoint is CRIU's known gap (it does not restore the task's debug registers); re-armed by the
// harness after CRIU's restore, the breakpoint must not fire again at the resumed instruction (RF kept),
// and clearing RF there (the control) must make it fire again.
import t, { type Test } from 'tap';
import { describeRegisters } from '../harness/oracle/cpu-oracle.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { probeUnmeasuredVerdict } from '../harness/testing/probe-rows.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { EFLAGS, hex } from '../harness/x86/registers.ts';
import { clearRf, debugRegisterLost } from '../harness/testing/criu-engine.ts';
import { CRIU_GAPS } from '../harness/criu/known-gaps.ts';
import { breakpointScenario, type BreakpointAttempt, type RestoredRun } from '../harness/scenarios/breakpoint-scenario.ts';
import { shows, type Attempt } from '../harness/scenarios/attempt.ts';
import { runTable } from '../harness/scenarios/table.ts';

const CASE = 'hwbreak-rf';
const SCENARIO = 'hw breakpoint, checkpoint at hit 2 (RF=1)';
const CALLS = 5;
const CHECKPOINT_AT_HIT = 2;
/** Registers the oracle compares with the image once the resumed nop at hwbreak:target has run. */
const CHECKED_REGISTERS = ['rsp', 'rbx', 'rbp', 'r12', 'r13', 'r14', 'r15', 'rdi', 'rsi', 'rax', 'rcx', 'rdx', 'r8', 'r9', 'r10', 'r11', 'fs_base'] as const;
const checksumIn = (text: string): string | undefined => /checksum=([0-9a-f]{16}) calls=(\d+)/.exec(text)?.[1];
/** A control's bug: the breakpoint fires once more, at the resumed instruction — at the agent and at the CPU. */
const SPURIOUS = `${CALLS + 1} hits, ${CALLS - CHECKPOINT_AT_HIT + 1} #DB after restore`;
const retriggered = (a: Attempt): boolean => a.witnesses.hits === CALLS + 1 && a.witnesses.oracle?.debugTraps === CALLS - CHECKPOINT_AT_HIT + 1;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const { profile, symbols } = guest;
  const binary = guest.image.guestPaths.hwbreak!;
  const target = symbols.resolve('hwbreak:target');
  // hwbreak:target is a nop: at target_body the CPU holds exactly the registers the process resumed with.
  const targetBody = symbols.resolve('hwbreak:target_body');
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

  // Provoke: DR0 on hwbreak:target, called CALLS times; the checkpoint is taken at the 2nd hit, the breakpoint left armed.
  // The reference is the same program with the same breakpoint, never checkpointed, watched by the oracle too.
  const scenario = await breakpointScenario(t, guest, {
    name: SCENARIO,
    workload: { binary, argv: [binary, String(CALLS)], breakAt: target },
    hit: CHECKPOINT_AT_HIT,
    checkpoint: {},
    watch: { firstExecutionAt: targetBody, countDebugTrapsAt: target },
    reference: 'armed-under-oracle',
    expected: (r) => `${CALLS} hits, ${CALLS - CHECKPOINT_AT_HIT} #DB after restore, checksum ${checksumIn(r.output)}`,
    // Resumed exactly: every hit and #DB of the uninterrupted run and no more, its checksum, and the image's registers in the CPU.
    judge: (r: RestoredRun, reference) => {
      const hits = r.checkpointRun.hits.length + r.run.hits.length;
      const traps = r.observation.debugTraps;
      const cpu = r.observation.first;
      const registerDiff = cpu
        ? CHECKED_REGISTERS.filter((n) => cpu.get(n) !== r.regsAtCheckpoint[n]).map(
            (n) => `${n}: image ${hex(r.regsAtCheckpoint[n])}, cpu ${hex(cpu.get(n) ?? -1n)}`,
          )
        : ['the CPU never reached hwbreak:target_body'];
      return {
        matched:
          hits === CALLS &&
          checksumIn(r.output) === checksumIn(reference.output) &&
          r.run.outcome === 'exited' &&
          r.run.code === 0 &&
          traps.length === CALLS - CHECKPOINT_AT_HIT &&
          traps.every((trap) => trap.ip === target) &&
          registerDiff.length === 0,
        observed: `${hits} hits, ${traps.length} #DB after restore, checksum ${checksumIn(r.output)}`,
        witnesses: { oracle: { debugTraps: traps.length, firstReached: cpu !== undefined } },
        registerDiff,
      };
    },
    // CRIU's known gap, and nothing else: the breakpoint gone (no hit and no #DB after the restore), the same checksum.
    criuGap: (criu, r, reference) =>
      debugRegisterLost(criu, 0) &&
      r.checkpointRun.hits.length + r.run.hits.length === CHECKPOINT_AT_HIT &&
      r.observation.debugTraps.length === 0 &&
      checksumIn(r.output) === checksumIn(reference.output) &&
      r.run.outcome === 'exited' &&
      r.run.code === 0
        ? CRIU_GAPS.debugRegisters
        : undefined,
    conditions: { 'probes.rfAtHwBreakpointStop': String(rfAtStop.value) },
  });
  const reference = scenario.reference;
  const referenceChecksum = checksumIn(reference.output);
  t.equal(reference.ended, 'exited 0', 'uninterrupted run exits 0');
  t.equal(reference.run.hits.length, CALLS, `uninterrupted run: one ptrace hit per call (${CALLS})`);
  t.equal(reference.observation?.debugTraps.length, CALLS, `oracle: the CPU raised ${CALLS} #DB at hwbreak:target in the uninterrupted run`);
  t.ok(referenceChecksum, `uninterrupted checksum ${referenceChecksum}`);

  // Checkpoint: every row stops at hwbreak:target with RF=1 in the registers taken.
  const atTheStop = (t: Test, a: BreakpointAttempt): void => {
    const regs = a.checkpointed?.image?.regs ?? a.criu?.regsAtDump;
    t.equal(a.checkpointRun.hits.at(-1)?.rip, target, 'stopped at hwbreak:target');
    t.ok(regs && (regs.eflags & EFLAGS.RF) !== 0n, `EFLAGS.RF is set at the checkpoint (${regs ? hex(regs.eflags) : 'no registers'}), as the profile says`);
    t.equal(regs?.rip, target, 'the checkpoint resumes at hwbreak:target');
    const o = a.restoredRun?.observation;
    if (o?.first) t.comment(`oracle, after the resumed nop: ${describeRegisters(o.first, ['rip', 'cs', 'eflags', 'rsp', 'rbx', 'rbp', 'fs_base'], symbols)}`);
  };
  const registersInCpu = (t: Test, a: BreakpointAttempt, after: string): void => {
    const cpu = a.restoredRun?.observation.first;
    for (const r of CHECKED_REGISTERS) t.equal(cpu?.get(r), a.restoredRun?.regsAtCheckpoint[r], `oracle: ${r} in the CPU ${after}`);
  };
  const sameChecksum = (t: Test, a: BreakpointAttempt): void =>
    void t.equal(checksumIn(a.witnesses.output ?? ''), referenceChecksum, 'same checksum as the uninterrupted run');
  const hwbreaksRunning = async (): Promise<string> => {
    const r = await guest.machine.ssh.exec('pidof hwbreak'); // exit 1: none running
    if ((r.code !== 0 && r.code !== 1) || r.stderr) throw new Error(`pidof failed: ${r.code} ${r.stderr}`);
    return r.stdout.trim();
  };

  // Restore and oracle, row by row; both restorers that return through IRET must keep RF (ptrace directly, sigreturn from the frame).
  await runTable(t, CASE, scenario, [
    ...(['ptrace', 'sigreturn'] as const).map((restorer) => ({
      title: `default policy (keep-and-preserve), restorer=${restorer}: exactly N hits and the reference checksum, at the agent and at the CPU`,
      policy: { ...DEFAULT_POLICY, rf: 'keep-and-preserve' as const, restorer },
      policyName: `rf=keep-and-preserve restorer=${restorer}`,
      tag: `default-${restorer}`,
      expect: 'resumes' as const,
      check: (t: Test, a: BreakpointAttempt) => {
        atTheStop(t, a);
        registersInCpu(t, a, 'after resuming');
        t.equal(a.restoredRun?.observation.first?.get('cs'), 0x33n, 'oracle: user code segment');
      },
    })),
    {
      title: 'negative control rf=clear: the spurious re-trigger makes the main assertion fail, at the agent and at the CPU',
      policy: { ...DEFAULT_POLICY, rf: 'clear' },
      policyName: 'rf=clear',
      tag: 'clear',
      expect: shows(`${SPURIOUS} (spurious re-trigger)`, retriggered),
      check: (t, a) => {
        atTheStop(t, a);
        const first = a.restoredRun?.observation.debugTraps[0];
        t.equal(first ? first.flags & EFLAGS.RF : undefined, 0n, 'oracle: the spurious #DB was taken with RF clear');
        sameChecksum(t, a);
      },
    },
    {
      title: 'negative control restorer=popf (2010, Rozycki/Desnoyers): POPF cannot set RF, so the breakpoint fires again',
      policy: { ...DEFAULT_POLICY, rf: 'keep-and-preserve', restorer: 'popf' },
      policyName: 'restorer=popf',
      tag: 'popf',
      expect: shows(`${SPURIOUS} (RF lost by POPF)`, retriggered),
      check: (t, a) => {
        atTheStop(t, a);
        sameChecksum(t, a);
        registersInCpu(t, a, 'after the trampoline: only the trap count differs');
      },
    },
    {
      title: 'negative control rf=reject: refused before any guest operation, naming RF',
      policy: { ...DEFAULT_POLICY, rf: 'reject' },
      policyName: 'rf=reject',
      tag: 'reject',
      expect: shows('refused, naming RF, guest untouched', (a) => {
        const refused = (a as BreakpointAttempt).refused;
        return refused !== undefined && /RF/.test(refused.error.message) && refused.requestsSent === 0;
      }),
      check: async (t, a) => {
        t.match(a.refused?.error.message, /RF/, `restore refused with ImageRejectedError naming RF: ${a.refused?.error.message}`);
        t.equal(a.refused?.requestsSent, 0, 'no request reached the agent');
        // Every earlier hwbreak was killed and reaped: a restore that spawned one would show here.
        t.equal(await hwbreaksRunning(), '', 'no hwbreak process was spawned');
      },
    },
    // The criu engine: the same stop (hit 2, RF=1 in the kernel's frame) handed to CRIU — dump, kill, restore — and taken back.
    {
      title: 'engine criu: CRIU restores the stop at hit 2; the breakpoint it does not restore is its known gap, nothing else differs',
      criu: {},
      tag: 'criu',
      expect: 'resumes',
      check: (t, a) => {
        atTheStop(t, a);
        sameChecksum(t, a);
        t.equal(a.witnesses.ended, 'exited 0', 'the restored process exits 0');
        t.same(a.registerDiff ?? '', '', 'CRIU restored every general register (ptrace read-back) and the CPU resumed with them (oracle)');
      },
    },
    {
      title: 'engine criu, breakpoint re-armed after the restore: RF from the stop survives CRIU, so it fires exactly as uninterrupted',
      criu: { rearmDebugRegisters: true },
      policyName: 'criu, breakpoint re-armed',
      tag: 'criu-rearmed',
      expect: 'resumes',
    },
    {
      title: 'engine criu, negative control: re-armed and RF cleared after the restore, the breakpoint fires again',
      criu: { rearmDebugRegisters: true, tamper: clearRf },
      policyName: 'criu, breakpoint re-armed, RF cleared',
      tag: 'criu-rf-cleared',
      expect: shows(`${SPURIOUS} (spurious re-trigger)`, retriggered),
    },
  ]);
});
