// expect: memory protection keys survive a kill-and-restore taken at a breakpoint: keys 1 and 3 allocated (2 freed),
// page A tagged with key 1 and page B with key 3, PKRU denying writes through key 1 — after restore smaps shows A with
// key 1 and B with key 3, B and a read of A go through, PKRU still denies, pkey_alloc hands out 2 (the gap), and the
// write to A raises SIGSEGV with si_code SEGV_PKUERR (4) and si_pkey 1 — the uninterrupted output (ptrace and
// sigreturn). Conditioned on the profile's PKU (CPUID, OSPKE). Negative control: omit=pkeys (no key allocated, nothing
// tagged: the write to A goes through, smaps shows A and B without their keys, pkey_alloc returns 1).
import t from 'tap';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'pkeys';
const SCENARIO = 'pkeys 1 and 3 allocated (2 freed), two tagged pages, PKRU denying writes via key 1, checkpoint at a breakpoint';
const UNINTERRUPTED = 'pkeys a-write=SEGV/4/pkey1 b-write=ok a-read=1 pkru-k1=2 smaps-keys=1,3 next-key=2';

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const pku = guest.platform['features.pku.ospke'];
  // The restore needs the kernel's PKU; without it the workload has nothing to tag (exit 2).
  if (pku !== true) {
    t.comment(`the guest CPU or kernel has no PKU (profile features.pku.ospke = ${String(pku)}): nothing to restore`);
    return;
  }
  const binary = guest.image.guestPaths.pkeys!;
  const workload: Workload = { binary, argv: [binary], breakAt: guest.symbols.resolve('pkeys:pkeys_checkpoint') };

  const { run: reference, output: expected } = await runUninterrupted(guest, workload, '/tmp/pkeys-reference.out');
  t.equal(reference.code, 0, `uninterrupted: ${expected.trim()}`);
  t.equal(expected.trim(), UNINTERRUPTED, 'uninterrupted: SEGV_PKUERR through key 1, the keys in smaps, PKRU, the gap handed out next');
  const scenario = SCENARIO;
  const native = await nativeReference(guest, workload);
  t.equal(`${endedAs(native)}\n${native.output}`, `${endedAs(reference)}\n${expected}`, 'the traced reference is the native run (no tracer)');

  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`kill-and-restore, restorer=${restorer}: keys allocated, pages tagged, PKRU in the xstate`, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const checkpointed = await checkpointAtHit(guest, workload, 1, `pkeys-${restorer}`, { disarm: true });
      t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at pkeys_checkpoint');
      const image = checkpointed.image!;
      t.same(image.pkeys.allocated, [1, 3], 'the image holds keys 1 and 3 allocated');
      t.same(image.pkeys.tagged.map((m) => m.pkey).sort(), [1, 3], 'two pages tagged, with keys 1 and 3');
      const r = await restoreAndFinish(guest, checkpointed.file, policy, `pkeys-${restorer}`, {});
      t.same(r.differences, [], 'read back: as requested');
      t.equal(r.output, expected, `the restored run is the uninterrupted run: ${r.output.trim()}`);
      t.equal(r.run.code, 0);
      recordRowOutcome(t, {
        case: CASE,
        scenario,
        policy: describePolicy(policy),
        control: false,
        expected: expected.trim(),
        observed: r.output.trim(),
        matchedUninterrupted: r.output === expected && r.run.code === 0,
      });
    });
  }

  await t.test('negative control omit=pkeys: the write goes through, the held key handed out again', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['pkeys'] };
    const checkpointed = await checkpointAtHit(guest, workload, 1, 'pkeys-omit', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, 'pkeys-omit', {});
    const line = r.output.trim();
    t.match(line, /^pkeys a-write=ok b-write=ok a-read=2 pkru-k1=2 smaps-keys=(?:0|-1),(?:0|-1) next-key=1$/, `caught: ${line}`);
    t.equal(r.run.code, 1, 'and exits 1');
    recordRowOutcome(t, {
      case: CASE,
      scenario,
      policy: describePolicy(policy),
      control: true,
      expected: expected.trim(),
      observed: line,
      matchedUninterrupted: r.output === expected,
    });
  });
});
