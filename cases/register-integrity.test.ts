// expect: every general-purpose register, ymm0-15, mxcsr, x87, fs_base and EFLAGS.DF survive a checkpoint
// taken with distinct patterns in all of them and DF set (ptrace restorer, regs=full) — as the workload
// checks itself and as the CPU shows through the gdbstub oracle, under every restorer; the fault injection regs=partial
// (the 2015 entry-code bug: callee-saved registers not restored) is caught naming exactly
// rbx rbp r12 r13 r14 r15. With --engine criu the same stop is handed to CRIU and must come back with
// every register as dumped (the workload's own check and the oracle); regs=partial does not apply to CRIU.
import t, { type Test } from 'tap';
import { CALLEE_SAVED, DEFAULT_POLICY, RESTORERS } from '../harness/restore/policy.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { EFLAGS, hex } from '../harness/x86/registers.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { shows, type Attempt } from '../harness/scenarios/attempt.ts';
import { runTable } from '../harness/scenarios/table.ts';

const CASE = 'register-integrity';
const SCENARIO = 'patterns in every register, checkpoint at regcheck_checkpoint';
/** The GPRs regcheck fills with patterns (all but rsp), and the ones the oracle also compares. */
const CHECKED = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rsp', 'fs_base'] as const;
/** What regs=partial loses, sorted as the workload and the oracle name it. */
const CALLEE_SAVED_SORTED = [...CALLEE_SAVED].sort();

/** The registers the workload names as damaged ([] for "regcheck ok"), undefined when it said neither. */
const mismatches = (output: string): string[] | undefined => {
  if (/^regcheck ok/m.test(output)) return [];
  const m = /^regcheck mismatch:(.*)$/m.exec(output);
  return m ? m[1]!.trim().split(/\s+/).sort() : undefined;
};
/** The registers the oracle saw differ from the checkpoint (the judge's register diff, one line each). */
const cpuDiffers = (a: Attempt): string[] => (a.registerDiff?.split('\n') ?? []).map((line) => line.split(':')[0]!).sort();
/** A control's bug: exactly the callee-saved registers damaged, as the workload and the CPU both see it. */
const calleeSavedLost = (a: Attempt): boolean =>
  JSON.stringify(mismatches(a.witnesses.output ?? '')) === JSON.stringify(CALLEE_SAVED_SORTED) &&
  JSON.stringify(cpuDiffers(a)) === JSON.stringify(CALLEE_SAVED_SORTED);

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  t.comment(`profile: guest CPU flags ${guest.profile.cpuFlags.join(' ')}; XCR0 ${guest.profile.xcr0}`);
  // Provoke: regcheck fills every register with a pattern, sets DF and stops at regcheck_checkpoint; the oracle reads the
  // CPU at regcheck_resumed, the first instruction after it.
  const binary = guest.image.guestPaths.regcheck!;
  const scenario = await breakpointScenario(t, guest, {
    name: SCENARIO,
    workload: { binary, argv: [binary], breakAt: guest.symbols.resolve('regcheck:regcheck_checkpoint') },
    checkpoint: {},
    watch: { firstExecutionAt: guest.symbols.resolve('regcheck:regcheck_resumed') },
    expected: () => 'regcheck ok; CPU GPRs = image',
    judge: (r) => {
      const cpu = r.observation.first;
      const registerDiff = CHECKED.filter((n) => cpu?.get(n) !== r.regsAtCheckpoint[n]).map(
        (n) => `${n}: image ${hex(r.regsAtCheckpoint[n])}, cpu ${cpu?.get(n) === undefined ? '?' : hex(cpu.get(n)!)}`,
      );
      return {
        matched: r.run.outcome === 'exited' && r.run.code === 0 && mismatches(r.output)?.length === 0 && registerDiff.length === 0,
        observed: `${r.output.trim() || `${r.run.outcome} ${r.run.code}`}; CPU differs in [${registerDiff.map((l) => l.split(':')[0]).join(' ')}]`,
        registerDiff,
      };
    },
  });
  t.equal(scenario.reference.ended, 'exited 0', `uninterrupted run: ${scenario.reference.output.trim()}`);
  t.same(mismatches(scenario.reference.output), [], 'the workload finds every register intact without a checkpoint');

  // Restore and oracle under every restorer; the control and CRIU's rows on the same stop.
  await runTable(t, CASE, scenario, [
    ...RESTORERS.map((restorer) => ({
      title: `regs=full, restorer=${restorer}: nothing lost, at the workload and at the CPU`,
      policy: { ...DEFAULT_POLICY, regs: 'full' as const, restorer },
      policyName: `restorer=${restorer} regs=full`,
      tag: `${restorer}-regs-full`,
      expect: 'resumes' as const,
      check: (t: Test, a: BreakpointAttempt) => {
        const eflags = a.checkpointed!.image!.regs.eflags;
        t.not(eflags & EFLAGS.DF, 0n, `the image holds DF=1 (eflags ${hex(eflags)}): the restore must set the direction flag`);
        t.ok(a.restoredRun?.observation.first, 'oracle: the CPU reached regcheck_resumed');
        t.same(mismatches(a.witnesses.output ?? ''), [], 'the workload finds every register intact');
      },
    })),
    {
      title: 'negative control regs=partial (the 2015 entry-code bug): caught, naming exactly the callee-saved registers',
      policy: { ...DEFAULT_POLICY, regs: 'partial', restorer: 'ptrace' },
      policyName: 'restorer=ptrace regs=partial',
      tag: 'ptrace-regs-partial',
      expect: shows(`mismatch: ${CALLEE_SAVED_SORTED.join(' ')}`, calleeSavedLost),
      check: (t, a) => {
        t.same(mismatches(a.witnesses.output ?? ''), CALLEE_SAVED_SORTED, `the workload names exactly ${CALLEE_SAVED_SORTED.join(' ')}: ${a.observed}`);
        t.equal(a.restoredRun?.run.code, 1, 'and exits 1');
        t.same(cpuDiffers(a), CALLEE_SAVED_SORTED, 'oracle: exactly those differ from the image in the CPU');
      },
    },
    { title: 'engine criu: CRIU restores every register, at the workload and at the CPU', criu: {}, tag: 'criu', expect: 'resumes' },
    {
      title: "engine criu, negative control: callee-saved registers zeroed after CRIU's restore are caught by name",
      criu: { tamper: (regs) => ({ ...regs, ...Object.fromEntries(CALLEE_SAVED.map((r) => [r, 0n])) }) },
      policyName: 'criu, callee-saved registers zeroed after the restore',
      tag: 'criu-zeroed',
      expect: shows(`mismatch: ${CALLEE_SAVED_SORTED.join(' ')}, at the workload and at the CPU`, calleeSavedLost),
    },
  ]);
});
