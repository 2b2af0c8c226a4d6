// expect: the rseq area's cpu_id and cpu_id_start, made stale (0xdead) by the program after a kill-and-restore taken at
// a breakpoint, hold the current CPU once it takes an rseq event (a signal delivery): the restore registered the area
// again, so the kernel keeps it current; mm_cid (6.3+, where AT_RSEQ_FEATURE_SIZE covers it) below the CPU count — the
// uninterrupted output (ptrace and sigreturn). (The stale value the program wrote before the checkpoint does not reach
// the image: the checkpoint's injected calls return to user mode, and the kernel refreshes the area then.) Negative
// control: omit=rseq (not registered: the stale values stay).
import t from 'tap';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'rseq-cpu';
const SCENARIO = 'the C library\'s rseq area with cpu_id and cpu_id_start stale, checkpoint at a breakpoint, a signal after';

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

  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`kill-and-restore, restorer=${restorer}: cpu_id current after the first rseq event`, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const checkpointed = await checkpointAtHit(guest, workload, 1, `rseqcpu-${restorer}`, { disarm: true });
      t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at rseq_checkpoint');
      t.ok(checkpointed.image!.rseq, 'the image holds the rseq registration');
      const r = await restoreAndFinish(guest, checkpointed.file, policy, `rseqcpu-${restorer}`, {});
      t.same(r.differences, [], 'read back: as requested');
      t.equal(r.output, expected, `the restored run is the uninterrupted run: ${r.output.trim()}`);
      t.equal(r.run.code, 0);
      recordRowOutcome(t, { case: CASE, scenario: SCENARIO, policy: describePolicy(policy), control: false, expected: expected.trim(), observed: r.output.trim(), matchedUninterrupted: r.output === expected && r.run.code === 0 });
    });
  }

  await t.test('negative control omit=rseq: the stale cpu_id stays', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['rseq'] };
    const checkpointed = await checkpointAtHit(guest, workload, 1, 'rseqcpu-omit', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, 'rseqcpu-omit', {});
    const line = r.output.trim();
    t.match(line, /cpu_id=stale cpu_id_start=stale/, `caught: ${line}`);
    t.equal(r.run.code, 1, 'and exits 1');
    recordRowOutcome(t, { case: CASE, scenario: SCENARIO, policy: describePolicy(policy), control: true, expected: expected.trim(), observed: line, matchedUninterrupted: r.output === expected });
  });
});
