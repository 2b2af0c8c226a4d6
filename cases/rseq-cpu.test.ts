// expect: the rseq area's cpu_id and cpu_id_start, made stale (0xdead) by the program after a kill-and-restore taken at
// a breakpoint, hold the current CPU once it takes an rseq event (a signal delivery): the restore registered the area
// again, so the kernel keeps it current; mm_cid (6.3+, where AT_RSEQ_FEATURE_SIZE covers it; made stale too) rewritten
// below the CPU count — the uninterrupted output (ptrace and sigreturn). (The stale value the program wrote before the
// checkpoint does not reach the image: the checkpoint's injected calls return to user mode, and the kernel refreshes
// the area then.) Negative control: omit=rseq (not registered: the stale values stay). Engine criu: the same stop
// handed to CRIU, which registers the area again (its rseq support), ends as uninterrupted; its control unregisters
// the area in CRIU's restored process (as omit=rseq leaves it unregistered): the stale values stay.
import t, { type Test } from 'tap';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { shows } from '../harness/scenarios/attempt.ts';
import { runTable } from '../harness/scenarios/table.ts';
import { CrhError } from '../harness/errors.ts';

const CASE = 'rseq-cpu';
const SCENARIO = "the C library's rseq area with cpu_id and cpu_id_start stale, checkpoint at a breakpoint, a signal after";
/** x86-64 rseq(2), and its flag that unregisters the area (linux/rseq.h). */
const SYS_RSEQ = 334;
const RSEQ_FLAG_UNREGISTER = 1n;

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_RSEQ']), async (t) => {
  const guest = await startGuest(t, CASE);
  // mm_cid exists from 6.3 on: the profile's AT_RSEQ_FEATURE_SIZE says whether this kernel has it.
  const featureSize = guest.platform['features.rseqFeatureSize'];
  const mmCid = typeof featureSize === 'number' && featureSize >= 28 ? 'ok' : 'n/a';
  // Provoke: the program stops at rseq_checkpoint, then makes the area stale and takes a signal after the restore.
  const binary = guest.image.guestPaths.rseqcpu!;
  const scenario = await breakpointScenario(t, guest, {
    name: SCENARIO,
    workload: { binary, argv: [binary], breakAt: guest.symbols.resolve('rseqcpu:rseq_checkpoint') },
  });
  t.equal(
    `${scenario.reference.ended}: ${scenario.expected}`,
    `exited 0: rseqcpu registered=1 cpu_id=current cpu_id_start=current mm_cid=${mmCid}`,
    `uninterrupted (profile AT_RSEQ_FEATURE_SIZE: ${String(featureSize)})`,
  );

  // Checkpoint, restore and oracle: crh's restorers, its control, and CRIU's restore of the same stop with its control.
  await runTable(t, CASE, scenario, [
    ...(['ptrace', 'sigreturn'] as const).map((restorer) => ({
      title: `kill-and-restore, restorer=${restorer}: cpu_id current after the first rseq event`,
      policy: { ...DEFAULT_POLICY, restorer },
      tag: `rseqcpu-${restorer}`,
      expect: 'resumes' as const,
      notForCriu: restorer === 'sigreturn',
      check: (t: Test, a: BreakpointAttempt) => void t.ok(a.checkpointed!.image!.rseq, 'the image holds the rseq registration'),
    })),
    {
      title: 'negative control omit=rseq: the stale cpu_id stays',
      policy: { ...DEFAULT_POLICY, omit: ['rseq'] },
      tag: 'rseqcpu-omit',
      expect: 'differs',
      check: (t, a) => {
        t.match(a.witnesses.output, /cpu_id=stale cpu_id_start=stale/, `caught: ${a.observed}`);
        t.equal(a.witnesses.ended, 'exited 1', 'and exits 1');
      },
    },
    { title: 'engine criu: CRIU registers the area again, cpu_id current after the first rseq event', criu: {}, tag: 'criu', expect: 'resumes' },
    {
      title: "engine criu, negative control: the area unregistered after CRIU's restore, the stale cpu_id stays",
      criu: {
        afterRestore: async (pid) => {
          const config = await guest.agent.call({ op: 'RSEQ_CONFIG', pid });
          if (config.area === 0n) throw new CrhError(`CRIU's restored pid ${pid} has no rseq registration to take away`);
          const args = [config.area, BigInt(config.size), RSEQ_FLAG_UNREGISTER, BigInt(config.signature)];
          const result = await guest.agent.call({ op: 'INJECT_SYSCALL', pid, nr: SYS_RSEQ, args });
          if (result !== 0n) throw new CrhError(`rseq(UNREGISTER) in pid ${pid} returned ${result}`);
        },
      },
      policyName: "criu, the rseq area unregistered in CRIU's restored process (as omit=rseq)",
      tag: 'criu-unregistered',
      expect: shows(
        'cpu_id=stale cpu_id_start=stale, exit 1',
        (a) => /cpu_id=stale cpu_id_start=stale/.test(a.witnesses.output ?? '') && a.witnesses.ended === 'exited 1',
      ),
    },
  ]);
});
