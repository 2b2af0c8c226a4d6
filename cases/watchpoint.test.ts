// expect: a DR1 data-write watchpoint of length 1, 2, 4 or 8, armed across a checkpoint taken at its third trap, is still
// armed after restore (DR1/DR7 read back as checkpointed) and traps exactly once per remaining store — the same trap IPs as
// the uninterrupted run, DR6 = B1 each time, none for the store just past the watched bytes, and the CPU shows the same
// count of #DB exceptions at that IP. The 8-byte watch is also held to 4-byte stores into its upper half (bytes 4-7),
// which only a watchpoint that really covers 8 bytes sees: one trap per round, uninterrupted and restored. Negative
// controls: omit=debugregs (the OpenVZ 2008 restart that dropped debug registers) loses every remaining trap, for the
// 8-byte watch and for its upper half.
import t from 'tap';
import type { RunResult } from '../harness/agent/ops.ts';
import { dr7WriteWatch } from '../harness/agent/breakpoint-spawn.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { hex } from '../harness/x86/registers.ts';
import { debugRegisterLost } from '../harness/testing/criu-engine.ts';
import { CRIU_GAPS } from '../harness/criu/known-gaps.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { shows } from '../harness/scenarios/attempt.ts';
import { runTable, type Row } from '../harness/scenarios/table.ts';

const CASE = 'watchpoint';
const ROUNDS = 6;
const CHECKPOINT_AT_TRAP = 3;
const REMAINING = ROUNDS - CHECKPOINT_AT_TRAP;
const WIDTHS = [1, 2, 4, 8] as const;
/**
 * What the workload stores each round: WIDTH bytes at the watched address (`watch WIDTH`), or 4 bytes into the upper
 * half of an 8-byte watch (`watch upper`). `length` is the watchpoint's, `label` names the mode in tags and rows.
 */
interface Mode {
  arg: string;
  length: (typeof WIDTHS)[number];
  label: string;
  /** the subtest's words for the mode */
  title: string;
}
const widthMode = (width: (typeof WIDTHS)[number]): Mode => ({ arg: String(width), length: width, label: `len${width}`, title: `${width}-byte write watch` });
// A kernel that programs the 8-byte watch as 4 bytes still sees every 8-byte store at its start; only a store to
// bytes 4-7 tells the lengths apart.
const UPPER_HALF: Mode = { arg: 'upper', length: 8, label: 'len8-upper', title: '8-byte write watch, 4-byte stores to its upper half (bytes 4-7),' };
/** DR6 B0-B3: which breakpoint fired. B1 alone: DR1's watchpoint. */
const DR6_HITS = 0xfn;
const DR6_B1 = 0x2n;
const onlyB1 = (run: RunResult): boolean => run.hits.every((h) => (h.dr6 & DR6_HITS) === DR6_B1);
const traps = (run: RunResult): string => run.hits.map((h) => `${hex(h.rip)}/dr6 B${(h.dr6 & DR6_HITS).toString(2).padStart(4, '0')}`).join(' ');

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.watch!;
  const watched = guest.symbols.resolve('watch:watched');

  for (const mode of [...WIDTHS.map(widthMode), UPPER_HALF]) {
    // Provoke: DR1 watches `watched` for writes of its length; the workload stores ROUNDS times and once just past it.
    const scenario = await breakpointScenario(t, guest, {
      name:
        mode === UPPER_HALF
          ? `DR1 write watch, length 8, 4-byte stores to bytes 4-7, checkpoint at trap ${CHECKPOINT_AT_TRAP}`
          : `DR1 write watch, length ${mode.length}, checkpoint at trap ${CHECKPOINT_AT_TRAP}`,
      workload: { binary, argv: [binary, mode.arg, String(ROUNDS)], debugRegs: { 1: watched, 7: dr7WriteWatch(1, mode.length) } },
      hit: CHECKPOINT_AT_TRAP,
      checkpoint: {},
      reference: 'armed',
      watch: (reference) => ({ countDebugTrapsAt: reference.run.hits[0]!.rip }),
      expected: () => `${CHECKPOINT_AT_TRAP}+${REMAINING} traps, CPU #DB ${REMAINING}, DR6 0x2, same output`,
      judge: (r, reference) => {
        const same = r.output === reference.output;
        const cpu = r.observation.debugTraps.length;
        return {
          matched: r.run.hits.length === REMAINING && cpu === REMAINING && same && onlyB1(r.run),
          observed: `${r.checkpointRun.hits.length}+${r.run.hits.length} traps, CPU #DB ${cpu}, DR6 ${[...new Set(r.run.hits.map((h) => hex(h.dr6 & DR6_HITS)))].join(',') || '-'}, ${same ? 'same' : 'different'} output`,
          witnesses: { oracle: { debugTraps: cpu, firstReached: false } },
        };
      },
      // CRIU's known gap, and nothing else: the watch is gone (no trap, no #DB), the program's own result is the same.
      criuGap: (criu, r, reference) =>
        debugRegisterLost(criu, 1) && r.run.hits.length === 0 && r.observation.debugTraps.length === 0 && r.output === reference.output && r.run.code === 0
          ? CRIU_GAPS.debugRegisters
          : undefined,
    });
    const reference = scenario.reference.run;
    const trapIp = reference.hits[0]?.rip;
    t.equal(
      reference.hits.length,
      ROUNDS,
      `${mode.label} uninterrupted: one trap per store to the watched bytes, none for the neighbour (${traps(reference)})`,
    );
    t.ok(onlyB1(reference), `${mode.label} uninterrupted: DR6 = B1 at every trap`);

    // Checkpoint at the third trap; restore; the remaining traps at the same IPs, at the agent and at the CPU.
    const rows: Row<BreakpointAttempt>[] = [
      {
        title: `${mode.title} armed across the checkpoint`,
        policy: DEFAULT_POLICY,
        tag: mode.label,
        expect: 'resumes',
        check: (t, a) => {
          t.same(
            a.checkpointRun.hits.map((h) => h.rip),
            [trapIp, trapIp, trapIp],
            'the original trapped three times before the checkpoint',
          );
          t.equal(a.checkpointed!.image!.debugRegs.dr1, watched, `DR1 = ${hex(watched)} in the image`);
          t.same(
            a.restoredRun?.run.hits.map((h) => h.rip),
            reference.hits.slice(CHECKPOINT_AT_TRAP).map((h) => h.rip),
            `restored: the remaining ${REMAINING} traps at the same IPs (${a.restoredRun ? traps(a.restoredRun.run) : '-'})`,
          );
        },
      },
    ];
    if (mode.length === 8)
      rows.push({
        title: `negative control omit=debugregs${mode === UPPER_HALF ? ', stores to the upper half of the 8-byte watch' : ''} (OpenVZ 2008: debug registers not restored): the remaining traps are lost`,
        policy: { ...DEFAULT_POLICY, omit: ['debugregs'] },
        tag: `${mode.label}-omit-debugregs`,
        expect: shows(
          `${CHECKPOINT_AT_TRAP}+0 traps, CPU #DB 0 (the watch lost)`,
          (a) => a.witnesses.hits === CHECKPOINT_AT_TRAP && a.witnesses.oracle?.debugTraps === 0,
        ),
        check: (t, a) => {
          const drs = (a.restored?.differences ?? []).filter((d) => d.what.startsWith('dr'));
          t.ok(
            drs.some((d) => d.what === 'dr7'),
            `read back: DR7 differs (${JSON.stringify(drs)})`,
          );
        },
      });
    // engine criu (crh run --engine …criu): the same stop handed to CRIU; the watch it does not restore is its known gap.
    if (mode !== UPPER_HALF)
      rows.push({ title: `engine criu: ${mode.title} across CRIU's dump and restore`, criu: {}, tag: `criu-${mode.label}`, expect: 'resumes' });
    await runTable(t, CASE, scenario, rows);
  }
});
