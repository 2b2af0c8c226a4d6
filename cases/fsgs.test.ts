// expect: FS/GS bases written with WRFSBASE/WRGSBASE under non-zero selectors (0x2b in %fs and %gs, which only
// FSGSBASE lets disagree with their bases) survive a kill-and-restore taken at a breakpoint: both selectors, the TLS
// base in FS, a block of the workload's own in GS, a word read through %gs and a thread-local read through %fs — the
// uninterrupted output (ptrace and sigreturn). Conditioned on the profile's FSGSBASE (CPUID and the kernel's HWCAP2).
// Negative control: omit=tls (the fresh target's selectors and bases: the workload's TLS is gone).
import t from 'tap';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'fsgs';
const SCENARIO = 'WRFSBASE/WRGSBASE bases under selector 0x2b in %fs and %gs, checkpoint at a breakpoint';
const UNINTERRUPTED = 'fsgs fs=0x2b gs=0x2b fsbase=tls gsbase=block gs:8=0x5eed5eed5eed5eed tls=7';
const USER_DS = 0x2bn;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const fsgsbase = guest.platform['features.fsgsbase.hwcap2'];
  if (fsgsbase !== true) {
    t.comment(`the guest kernel does not let user mode run WRFSBASE (profile features.fsgsbase.hwcap2 = ${String(fsgsbase)}): nothing to restore`);
    return;
  }
  const binary = guest.image.guestPaths.fsgs!;
  const workload: Workload = { binary, argv: [binary], breakAt: guest.symbols.resolve('fsgs:fsgs_checkpoint') };

  const { run: reference, output: expected } = await runUninterrupted(guest, workload, '/tmp/fsgs-reference.out');
  t.equal(reference.code, 0, `uninterrupted: ${expected.trim()}`);
  t.equal(expected.trim(), UNINTERRUPTED);
  const native = await nativeReference(guest, workload);
  t.equal(`${endedAs(native)}\n${native.output}`, `${endedAs(reference)}\n${expected}`, 'the traced reference is the native run (no tracer)');

  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`kill-and-restore, restorer=${restorer}: selectors and bases exact`, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const checkpointed = await checkpointAtHit(guest, workload, 1, `fsgs-${restorer}`, { disarm: true });
      t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at fsgs_checkpoint');
      const regs = checkpointed.image!.regs;
      t.equal(regs.fs, USER_DS, 'the image holds fs = 0x2b');
      t.equal(regs.gs, USER_DS, 'and gs = 0x2b');
      t.not(regs.gs_base, 0n, 'and a gs_base the selector did not give');
      const r = await restoreAndFinish(guest, checkpointed.file, policy, `fsgs-${restorer}`, {});
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

  await t.test("negative control omit=tls: the fresh target's selectors and bases", async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['tls'] };
    const checkpointed = await checkpointAtHit(guest, workload, 1, 'fsgs-omit-tls', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, 'fsgs-omit-tls', {});
    const observed = `${endedAs(r.run)}: ${r.output.trim()}`;
    t.not(r.output, expected, `caught: ${observed}`);
    t.not(r.run.code, 0, 'and it does not exit 0');
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(policy),
      control: true,
      expected: expected.trim(),
      observed,
      matchedUninterrupted: r.output === expected && r.run.code === 0,
    });
  });
});
