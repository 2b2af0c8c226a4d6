// expect: memory protection keys survive a kill-and-restore taken at a breakpoint: keys 1 and 3 allocated (2 freed),
// page A tagged with key 1 and page B with key 3, PKRU denying writes through key 1 — after restore smaps shows A with
// key 1 and B with key 3, B and a read of A go through, PKRU still denies, pkey_alloc hands out 2 (the gap), and the
// write to A does what it did uninterrupted: SIGSEGV with si_code SEGV_PKUERR (4) and si_pkey 1 on hardware; under
// QEMU 7.2 TCG the fault is never raised (the write faults forever; the workload's alarm reports HANG, exit 3: measured
// and conditioned on) — ptrace and sigreturn. Negative control: omit=pkeys (no key allocated, nothing tagged: the write
// to A goes through, smaps shows key 0, pkey_alloc returns 1).
import t from 'tap';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'pkeys';
const SCENARIO = 'pkeys 1 and 3 allocated (2 freed), two tagged pages, PKRU denying writes via key 1, checkpoint at a breakpoint';
const REST = 'b-write=ok a-read=1 pkru-k1=2 smaps-keys=1,3 next-key=2';
/** exit 0 where the platform raises the protection-key fault; exit 3 where the write faults forever (QEMU TCG) */
const UNINTERRUPTED = { 0: `pkeys a-write=SEGV/4/pkey1 ${REST}`, 3: `pkeys a-write=HANG ${REST}` } as const;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const pku = guest.platform['features.pku.ospke'];
  if (pku !== true) {
    t.comment(`the guest CPU or kernel has no PKU (profile features.pku.ospke = ${String(pku)}): nothing to restore`);
    return;
  }
  const binary = guest.image.guestPaths.pkeys!;
  const workload: Workload = { binary, argv: [binary], breakAt: guest.symbols.resolve('pkeys:pkeys_checkpoint') };

  const { run: reference, output: expected } = await runUninterrupted(guest, workload, '/tmp/pkeys-reference.out');
  const code = reference.code as 0 | 3;
  t.ok(code === 0 || code === 3, `uninterrupted: exit ${reference.code}: ${expected.trim()}`);
  t.equal(expected.trim(), UNINTERRUPTED[code], 'uninterrupted: the keys, PKRU and the gap handed out next');
  if (code === 3) t.comment('platform: the write PKRU denies never raises SEGV_PKUERR here (QEMU TCG: it faults again and again) — the restored run must do the same');
  const scenario = `${SCENARIO}; the denied write ${code === 0 ? 'raises SEGV_PKUERR' : 'never faults through (platform: TCG)'}`;
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
      t.equal(r.run.code, reference.code);
      recordRowOutcome(t, { case: CASE, scenario, policy: describePolicy(policy), control: false, expected: expected.trim(), observed: r.output.trim(), matchedUninterrupted: r.output === expected && r.run.code === reference.code });
    });
  }

  await t.test('negative control omit=pkeys: the write goes through, the held key handed out again', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['pkeys'] };
    const checkpointed = await checkpointAtHit(guest, workload, 1, 'pkeys-omit', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, 'pkeys-omit', {});
    const line = r.output.trim();
    t.match(line, /^pkeys a-write=ok b-write=ok a-read=2 pkru-k1=2 smaps-keys=0,0 next-key=1$/, `caught: ${line}`);
    t.equal(r.run.code, 1, 'and exits 1');
    recordRowOutcome(t, { case: CASE, scenario, policy: describePolicy(policy), control: true, expected: expected.trim(), observed: line, matchedUninterrupted: r.output === expected });
  });
});
