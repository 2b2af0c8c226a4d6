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
import { isRunTimeout } from '../harness/agent/run-to-end.ts';
import type { RunResult } from '../harness/agent/ops.ts';
import { readCheckpointImage, type CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest, type Guest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointStopped, readOutput, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../harness/testing/scenario.ts';
import { debugRegOffset, hex } from '../harness/x86/registers.ts';

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

  const native = await nativeReference(guest, { binary, argv });
  t.equal(
    `${endedAs(native)}: ${native.output.trim()}`,
    'exited 0: trappend pending=1 blocked=1 delivered=1 code=SI_QUEUE value=0x5eed pending-after=0 stores=4',
    'native: one SIGTRAP pending, blocked, delivered once when unblocked',
  );

  // The uninterrupted reference under the watchpoint: the program's line is the native one (a debugger's watchpoint
  // is invisible to it) and the watchpoint traps at every store, B1 each time.
  const pid = await spawnArmed(guest, watching, '/tmp/trappend-reference.out');
  const reference = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  const expected = await readOutput(guest, '/tmp/trappend-reference.out');
  t.equal(`${endedAs(reference)}: ${expected}`, `${endedAs(native)}: ${native.output}`, 'the watched reference is the native run');
  t.equal(reference.hits.length, 4, `the watchpoint trapped at each of the 4 stores: ${describeHits(reference)}`);
  t.ok(
    reference.hits.every((h) => (h.dr6 & DR6_B1) !== 0n),
    'each a DR1 trap (DR6 B1)',
  );
  t.same(reference.signals.filter((s) => s.signo === SIGTRAP).length, 1, "the agent saw the program's one SIGTRAP delivered (and passed it on)");
  const afterCheckpoint = reference.hits.slice(1).map((h) => hex(h.rip));

  const taken = await checkpointInWait(t, guest, watching, blockAt);
  const image = taken.image;
  const shared = image.signals.pending.shared.map(siginfoSummary);
  t.same(shared, [`signo ${SIGTRAP} code ${SI_QUEUE} value 0x5eed`], `the image holds the one SIGTRAP pending, as queued: ${shared.join('; ')}`);
  t.same(image.signals.pending.thread.map(siginfoSummary), [], 'nothing else pending (no trap of ours left in the queue)');
  t.ok((image.signals.blocked & (1n << BigInt(SIGTRAP - 1))) !== 0n, `SIGTRAP blocked in the image (mask ${hex(image.signals.blocked)})`);
  t.equal(image.debugRegs.dr1, watched, 'DR1 watches the variable');
  t.equal(image.debugRegs.dr7, WATCH_DR7, 'DR7: the watchpoint only (the breakpoint that chose the moment disarmed)');

  const cases: Array<{ name: string; policy: RestorePolicy; control: boolean }> = [
    { name: 'restored: the pending SIGTRAP delivered once when unblocked, the watchpoint still trapping', policy: DEFAULT_POLICY, control: false },
    { name: 'negative control omit=signals: the pending SIGTRAP and the mask lost', policy: { ...DEFAULT_POLICY, omit: ['signals'] }, control: true },
    { name: 'negative control omit=debugregs: the watchpoint lost', policy: { ...DEFAULT_POLICY, omit: ['debugregs'] }, control: true },
  ];
  for (const c of cases) {
    await t.test(c.name, async (t) => {
      const tag = `trappend-${c.control ? c.policy.omit!.join('-') : 'restored'}`;
      const r = await restoreAndRun(guest, taken.file, c.policy, tag);
      const hits = r.run.hits.map((h) => hex(h.rip));
      const observed = `${endedAs(r.run)}: ${r.output.trim()}; watch traps at ${hits.join(' ') || 'none'}`;
      const want = `exited 0: ${expected.trim()}; watch traps at ${afterCheckpoint.join(' ')}`;
      if (c.control) {
        t.not(observed, want, `caught: ${observed}`);
      } else {
        t.same(
          r.differences.filter((d) => d.what !== 'session'),
          [],
          'read back: as requested',
        );
        t.equal(r.output, expected, `the program's line is the native one: ${r.output.trim()}`);
        t.same(hits, afterCheckpoint, 'the watchpoint trapped at each remaining store, as uninterrupted');
        t.ok(
          r.run.hits.every((h) => (h.dr6 & DR6_B1) !== 0n),
          'each a DR1 trap',
        );
        t.equal(r.run.signals.filter((s) => s.signo === SIGTRAP).length, 1, 'one SIGTRAP delivered to the program, as uninterrupted');
      }
      recordRowOutcome(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: describePolicy(c.policy),
        control: c.control,
        expected: want,
        observed,
        matchedUninterrupted: observed === want,
      });
    });
  }
});

/**
 * Runs the program to our DR0 breakpoint at trap_block (after its first watched store, SIGTRAP still unblocked there:
 * our trap must not meet a blocked SIGTRAP, whose forced delivery would unblock it and reset the handler), disarms
 * DR0 keeping the watchpoint, lets it block SIGTRAP, queue one and wait, and interrupts it there for the checkpoint.
 */
async function checkpointInWait(t: Test, guest: Guest, watching: Workload, blockAt: bigint): Promise<{ file: string; image: CheckpointImage }> {
  const { agent } = guest;
  const pid = await spawnArmed(
    guest,
    { ...watching, breakAt: blockAt, debugRegs: { ...watching.debugRegs, 7: WATCH_DR7 | DR7_EXECUTE_DR0 } },
    '/tmp/trappend-original.out',
  );
  const first = await agent.call({ op: 'RUN', pid, stopAfterHits: 2, timeoutMs: RUN_TIMEOUT_MS });
  t.equal(first.outcome, 'hit-limit', 'stopped at our breakpoint');
  t.same(first.hits.map((h) => hex(h.rip)).at(-1), hex(blockAt), `the first store's watch trap, then trap_block: ${describeHits(first)}`);
  await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: WATCH_DR7 });
  const waited = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: INTERRUPT_AFTER_MS }).then(
    (run) => `ended first: ${endedAs(run)}`,
    (error: unknown) => {
      if (isRunTimeout(error)) return 'interrupted';
      throw error;
    },
  );
  t.equal(waited, 'interrupted', `interrupted in its wait after ${INTERRUPT_AFTER_MS} ms`);
  try {
    return await checkpointStopped(guest, { binary: watching.binary, argv: watching.argv, envp: [], noAslr: true, pid }, 'trappend');
  } finally {
    await agent.call({ op: 'KILL', pid }).catch(() => {});
  }
}

async function restoreAndRun(
  guest: Guest,
  file: string,
  policy: RestorePolicy,
  tag: string,
): Promise<{ run: RunResult; output: string; differences: Array<{ what: string }> }> {
  const image = await readCheckpointImage(file);
  const out = `/tmp/${tag}.restored.out`;
  const restored = await restoreWitnessed(guest.agent, image, { policy, stdoutPath: out }, tag);
  const run = await guest.agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  return { run, output: await readOutput(guest, out), differences: restored.differences };
}

/** si_signo, si_code and (for a queued signal) the value of a raw 128-byte siginfo. */
function siginfoSummary(raw: Buffer): string {
  const code = raw.readInt32LE(8);
  return `signo ${raw.readInt32LE(0)} code ${code}${code === SI_QUEUE ? ` value 0x${raw.readInt32LE(24).toString(16)}` : ''}`;
}

function describeHits(run: RunResult): string {
  return run.hits.map((h) => `${hex(h.rip)} (DR6 ${hex(h.dr6)})`).join(', ') || 'none';
}
