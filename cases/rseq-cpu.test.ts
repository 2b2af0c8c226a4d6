// expect: the rseq area's cpu_id and cpu_id_start, made stale (0xdead) by the program after a kill-and-restore taken at
// a breakpoint, hold the current CPU once it takes an rseq event (a signal delivery): the restore registered the area
// again, so the kernel keeps it current; mm_cid (6.3+, where AT_RSEQ_FEATURE_SIZE covers it; made stale too) rewritten
// below the CPU count — the uninterrupted output (ptrace and sigreturn). (The stale value the program wrote before the
// checkpoint does not reach the image: the checkpoint's injected calls return to user mode, and the kernel refreshes
// the area then.) Negative control: omit=rseq (not registered: the stale values stay). Engine criu: the same stop
// handed to CRIU, which registers the area again (its rseq support), ends as uninterrupted; its control unregisters
// the area in CRIU's restored process (as omit=rseq leaves it unregistered): the stale values stay.
import t from 'tap';
import { policyRowsNotForCriu, runCriuControl, runCriuScenario, runsEngine, sameOutputAs, type CriuScenario } from '../harness/testing/criu-engine.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'rseq-cpu';
const SCENARIO = "the C library's rseq area with cpu_id and cpu_id_start stale, checkpoint at a breakpoint, a signal after";

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_RSEQ']), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.rseqcpu!;
  const workload: Workload = { binary, argv: [binary], breakAt: guest.symbols.resolve('rseqcpu:rseq_checkpoint') };
  // mm_cid exists from 6.3 on: the profile's AT_RSEQ_FEATURE_SIZE says whether this kernel has it.
  const featureSize = guest.platform['features.rseqFeatureSize'];
  const mmCid = typeof featureSize === 'number' && featureSize >= 28 ? 'ok' : 'n/a';
  const UNINTERRUPTED = `rseqcpu registered=1 cpu_id=current cpu_id_start=current mm_cid=${mmCid}`;

  const { run: reference, output: expected } = await runUninterrupted(guest, workload, '/tmp/rseqcpu-reference.out');
  t.equal(reference.code, 0, `uninterrupted: ${expected.trim()}`);
  t.equal(expected.trim(), UNINTERRUPTED, `uninterrupted (profile AT_RSEQ_FEATURE_SIZE: ${String(featureSize)})`);
  const native = await nativeReference(guest, workload);
  t.equal(`${endedAs(native)}\n${native.output}`, `${endedAs(reference)}\n${expected}`, 'the traced reference is the native run (no tracer)');

  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`kill-and-restore, restorer=${restorer}: cpu_id current after the first rseq event`, crhOnly, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const checkpointed = await checkpointAtHit(guest, workload, 1, `rseqcpu-${restorer}`, { disarm: true });
      t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at rseq_checkpoint');
      t.ok(checkpointed.image!.rseq, 'the image holds the rseq registration');
      const r = await restoreAndFinish(guest, checkpointed.file, policy, `rseqcpu-${restorer}`, {});
      t.same(r.differences, [], 'read back: as requested');
      t.equal(r.output, expected, `the restored run is the uninterrupted run: ${r.output.trim()}`);
      t.equal(r.run.code, 0);
      recordRowOutcome(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: describePolicy(policy),
        control: false,
        expected: expected.trim(),
        observed: r.output.trim(),
        matchedUninterrupted: r.output === expected && r.run.code === 0,
      });
    });
  }

  await t.test('negative control omit=rseq: the stale cpu_id stays', crhOnly, async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['rseq'] };
    const checkpointed = await checkpointAtHit(guest, workload, 1, 'rseqcpu-omit', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, 'rseqcpu-omit', {});
    const line = r.output.trim();
    t.match(line, /cpu_id=stale cpu_id_start=stale/, `caught: ${line}`);
    t.equal(r.run.code, 1, 'and exits 1');
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(policy),
      control: true,
      expected: expected.trim(),
      observed: line,
      matchedUninterrupted: r.output === expected,
    });
  });

  if (!runsEngine('criu')) return;
  const criuScenario: CriuScenario = {
    case: CASE,
    scenario: SCENARIO,
    workload,
    hit: 1,
    // The breakpoint only chose where to stop (crh's disarm: true).
    dr7BeforeDump: 0n,
    watch: {},
    expected: expected.trim(),
    judge: sameOutputAs(expected),
    control: {
      policy: "criu, the rseq area unregistered in CRIU's restored process (as omit=rseq)",
      afterRestore: async (pid) => {
        const config = await guest.agent.call({ op: 'RSEQ_CONFIG', pid });
        if (config.area === 0n) throw new Error(`CRIU's restored pid ${pid} has no rseq registration to take away`);
        const result = await guest.agent.call({
          op: 'INJECT_SYSCALL',
          pid,
          nr: SYS_RSEQ,
          args: [config.area, BigInt(config.size), RSEQ_FLAG_UNREGISTER, BigInt(config.signature)],
        });
        if (result !== 0n) throw new Error(`rseq(UNREGISTER) in pid ${pid} returned ${result}`);
      },
      expected: 'cpu_id=stale cpu_id_start=stale, exit 1',
      showedIt: (a) => /cpu_id=stale cpu_id_start=stale/.test(a.output) && a.run.code === 1,
    },
  };
  await t.test('engine criu: CRIU registers the area again, cpu_id current after the first rseq event', async (t) => {
    await runCriuScenario(t, guest, criuScenario, 'criu');
  });
  await t.test("engine criu, negative control: the area unregistered after CRIU's restore, the stale cpu_id stays", async (t) => {
    await runCriuControl(t, guest, criuScenario, 'criu-unregistered');
  });
  for (const row of policyRowsNotForCriu(CASE, SCENARIO, [
    describePolicy({ ...DEFAULT_POLICY, restorer: 'sigreturn' }),
    describePolicy({ ...DEFAULT_POLICY, omit: ['rseq'] }),
  ])) {
    await t.test(`engine criu: ${row.policy} ${row.skipped}`, async (t) => {
      t.pass(row.skipped);
      recordRow(t, row);
    });
  }
});

/** x86-64 rseq(2), and its flag that unregisters the area (linux/rseq.h). */
const SYS_RSEQ = 334;
const RSEQ_FLAG_UNREGISTER = 1n;
