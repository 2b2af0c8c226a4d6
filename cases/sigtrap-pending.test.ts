// expect: a task with SIGTRAP blocked and one SIGTRAP of its own pending (sigqueue: SI_QUEUE, value 0x5eed) while a
// DR1 data watchpoint watches a variable of its — the state checkpointed (interrupted in its wait, after our execute
// breakpoint that chose the moment was disarmed) and restored: the pending SIGTRAP is still one, still blocked, and
// delivered to the handler with its SI_QUEUE siginfo when the program unblocks it, exactly as in the native run (the
// program's own line); the watchpoint still traps once per remaining store, at the same instructions as in the
// uninterrupted run, none of the restorer's own traps (injected calls, the agent's stops) taken for the program's
// SIGTRAP or the other way round. The watchpoint is a debugger's (ptrace DR1, the harness's part of the scenario): a
// program cannot arm its own debug registers, and a perf_event hardware breakpoint it could own is a descriptor no
// image holds (refused by name, uncapturable.ts). Negative controls: omit=signals (the pending SIGTRAP and the mask
// lost: the program says so, exit 1) and omit=debugregs (the watchpoint gone: no trap at the remaining stores).
import t, { type Test } from 'tap';
import { DR7_EXECUTE_DR0, dr7WriteWatch } from '../harness/agent/breakpoint-spawn.ts';
import type { RunResult } from '../harness/agent/ops.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs } from '../harness/testing/native-reference.ts';
import type { Workload } from '../harness/testing/scenario.ts';
import { hex } from '../harness/x86/registers.ts';
import { nativeParityScenario } from '../harness/scenarios/native-parity-scenario.ts';
import { checkpointInterrupted, imageScenario, type ImageAttempt, type ImageRun } from '../harness/scenarios/interrupted-image-scenario.ts';
import { runTable } from '../harness/scenarios/table.ts';

const CASE = 'sigtrap-pending';
const SCENARIO = 'SIGTRAP blocked with one of its own pending (SI_QUEUE) and a DR1 write watchpoint armed, checkpointed in its wait';
const SIGTRAP = 5;
const SI_QUEUE = -1;
/** How long the program waits with the SIGTRAP pending; the checkpoint interrupts it well inside. */
const WINDOW_MS = 4000;
const INTERRUPT_AFTER_MS = 1000;
const WATCH_DR7 = dr7WriteWatch(1, 8);
/** The DR1 status bit: the watchpoint, as opposed to our DR0 breakpoint (B0) or a single-step (BS). */
const DR6_B1 = 1n << 1n;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.trappend!;
  const watched = guest.symbols.resolve('trappend:watched');
  const blockAt = guest.symbols.resolve('trappend:trap_block');
  const argv = [binary, String(WINDOW_MS)];
  const watching: Workload = { binary, argv, debugRegs: { 1: watched, 7: WATCH_DR7 } };

  const parity = await nativeParityScenario(guest, { binary, argv });
  const { native } = parity;
  t.equal(
    `${endedAs(native)}: ${native.output.trim()}`,
    'exited 0: trappend pending=1 blocked=1 delivered=1 code=SI_QUEUE value=0x5eed pending-after=0 stores=4',
    'native: one SIGTRAP pending, blocked, delivered once when unblocked',
  );

  // The uninterrupted reference under the watchpoint: the program's line is the native one (a debugger's watchpoint
  // is invisible to it) and the watchpoint traps at every store, B1 each time.
  const { run: reference, output: expected } = await parity.runUnderAgent(watching, 'reference');
  t.equal(`${endedAs(reference)}: ${expected}`, `${endedAs(native)}: ${native.output}`, 'the watched reference is the native run');
  t.equal(reference.hits.length, 4, `the watchpoint trapped at each of the 4 stores: ${describeHits(reference)}`);
  t.ok(
    reference.hits.every((h) => (h.dr6 & DR6_B1) !== 0n),
    'each a DR1 trap (DR6 B1)',
  );
  t.same(reference.signals.filter((s) => s.signo === SIGTRAP).length, 1, "the agent saw the program's one SIGTRAP delivered (and passed it on)");
  const afterCheckpoint = reference.hits.slice(1).map((h) => hex(h.rip));

  // Provoke and checkpoint: our DR0 breakpoint at trap_block (after the first watched store, SIGTRAP still unblocked:
  // our trap must not meet a blocked SIGTRAP, whose forced delivery would unblock it and reset the handler) is disarmed,
  // the watchpoint kept; the program blocks SIGTRAP, queues one and waits, and is interrupted there.
  const taken = await checkpointInterrupted(guest, {
    workload: { ...watching, breakAt: blockAt, debugRegs: { ...watching.debugRegs, 7: WATCH_DR7 | DR7_EXECUTE_DR0 } },
    tag: 'trappend',
    hits: 2,
    dr7: WATCH_DR7,
    runOnMs: INTERRUPT_AFTER_MS,
  });
  t.equal(taken.toBreakpoint.outcome, 'hit-limit', 'stopped at our breakpoint');
  t.same(
    taken.toBreakpoint.hits.map((h) => hex(h.rip)).at(-1),
    hex(blockAt),
    `the first store's watch trap, then trap_block: ${describeHits(taken.toBreakpoint)}`,
  );
  t.equal(taken.waited, 'interrupted', `interrupted in its wait after ${INTERRUPT_AFTER_MS} ms`);
  const image = taken.image;
  const shared = image.signals.pending.shared.map(siginfoSummary);
  t.same(shared, [`signo ${SIGTRAP} code ${SI_QUEUE} value 0x5eed`], `the image holds the one SIGTRAP pending, as queued: ${shared.join('; ')}`);
  t.same(image.signals.pending.thread.map(siginfoSummary), [], 'nothing else pending (no trap of ours left in the queue)');
  t.ok((image.signals.blocked & (1n << BigInt(SIGTRAP - 1))) !== 0n, `SIGTRAP blocked in the image (mask ${hex(image.signals.blocked)})`);
  t.equal(image.debugRegs.dr1, watched, 'DR1 watches the variable');
  t.equal(image.debugRegs.dr7, WATCH_DR7, 'DR7: the watchpoint only (the breakpoint that chose the moment disarmed)');

  // Restore and oracle: the program's own line and the watchpoint's traps at the remaining stores.
  const watchTraps = (r: ImageRun): string => r.run.hits.map((h) => hex(h.rip)).join(' ') || 'none';
  const scenario = imageScenario(guest, {
    name: SCENARIO,
    expected: `exited 0: ${expected.trim()}; watch traps at ${afterCheckpoint.join(' ')}`,
    file: taken.file,
    observe: (r) => `${endedAs(r.run)}: ${r.output.trim()}; watch traps at ${watchTraps(r)}`,
  });
  const caught = (t: Test, a: ImageAttempt): void => void t.not(a.observed, scenario.expected, `caught: ${a.observed}`);
  await runTable(t, CASE, scenario, [
    {
      title: 'restored: the pending SIGTRAP delivered once when unblocked, the watchpoint still trapping',
      policy: DEFAULT_POLICY,
      tag: 'trappend-restored',
      expect: 'resumes',
      check: (t, { restoredRun: r }) => {
        t.same(
          r.differences.filter((d) => d.what !== 'session'),
          [],
          'read back: as requested',
        );
        t.equal(r.output, expected, `the program's line is the native one: ${r.output.trim()}`);
        t.same(
          r.run.hits.map((h) => hex(h.rip)),
          afterCheckpoint,
          'the watchpoint trapped at each remaining store, as uninterrupted',
        );
        t.ok(
          r.run.hits.every((h) => (h.dr6 & DR6_B1) !== 0n),
          'each a DR1 trap',
        );
        t.equal(r.run.signals.filter((s) => s.signo === SIGTRAP).length, 1, 'one SIGTRAP delivered to the program, as uninterrupted');
      },
    },
    {
      title: 'negative control omit=signals: the pending SIGTRAP and the mask lost',
      policy: { ...DEFAULT_POLICY, omit: ['signals'] },
      tag: 'trappend-signals',
      expect: 'differs',
      check: caught,
    },
    {
      title: 'negative control omit=debugregs: the watchpoint lost',
      policy: { ...DEFAULT_POLICY, omit: ['debugregs'] },
      tag: 'trappend-debugregs',
      expect: 'differs',
      check: caught,
    },
  ]);
});

/** si_signo, si_code and (for a queued signal) the value of a raw 128-byte siginfo. */
function siginfoSummary(raw: Buffer): string {
  const code = raw.readInt32LE(8);
  return `signo ${raw.readInt32LE(0)} code ${code}${code === SI_QUEUE ? ` value 0x${raw.readInt32LE(24).toString(16)}` : ''}`;
}

function describeHits(run: RunResult): string {
  return run.hits.map((h) => `${hex(h.rip)} (DR6 ${hex(h.dr6)})`).join(', ') || 'none';
}
