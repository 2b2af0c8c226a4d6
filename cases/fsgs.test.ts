// expect: FS/GS bases written with WRFSBASE/WRGSBASE under non-zero selectors (0x2b in %fs and %gs, which only
// FSGSBASE lets disagree with their bases) survive a kill-and-restore taken at a breakpoint: both selectors, the TLS
// base in FS, a block of the workload's own in GS, a word read through %gs and a thread-local read through %fs — the
// uninterrupted output (ptrace and sigreturn). Conditioned on the profile's FSGSBASE (CPUID and the kernel's HWCAP2).
// Negative control: omit=tls (the fresh target's selectors and bases: the workload's TLS is gone).
import t, { type Test } from 'tap';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { runTable } from '../harness/scenarios/table.ts';

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
  // Provoke: the workload sets both selectors and bases, then stops at fsgs_checkpoint.
  const binary = guest.image.guestPaths.fsgs!;
  const scenario = await breakpointScenario(t, guest, {
    name: SCENARIO,
    workload: { binary, argv: [binary], breakAt: guest.symbols.resolve('fsgs:fsgs_checkpoint') },
  });
  t.equal(`${scenario.reference.ended}: ${scenario.expected}`, `exited 0: ${UNINTERRUPTED}`, 'the uninterrupted run');

  // Checkpoint: the image holds what only FSGSBASE makes possible.
  const selectorsAndBases = (t: Test, a: BreakpointAttempt): void => {
    const regs = a.checkpointed!.image!.regs;
    t.equal(regs.fs, USER_DS, 'the image holds fs = 0x2b');
    t.equal(regs.gs, USER_DS, 'and gs = 0x2b');
    t.not(regs.gs_base, 0n, 'and a gs_base the selector did not give');
  };
  // Restore and oracle: each row's policy, judged against the uninterrupted output.
  await runTable(t, CASE, scenario, [
    ...(['ptrace', 'sigreturn'] as const).map((restorer) => ({
      title: `kill-and-restore, restorer=${restorer}: selectors and bases exact`,
      policy: { ...DEFAULT_POLICY, restorer },
      tag: `fsgs-${restorer}`,
      expect: 'resumes' as const,
      check: selectorsAndBases,
    })),
    {
      title: "negative control omit=tls: the fresh target's selectors and bases",
      policy: { ...DEFAULT_POLICY, omit: ['tls'] },
      tag: 'fsgs-omit-tls',
      expect: 'differs',
      check: (t, a) => void t.not(a.restored?.run.code, 0, 'and it does not exit 0'),
    },
  ]);
});
