// expect: an LDT the workload installed with modify_ldt survives a kill-and-restore taken at a breakpoint while %gs
// holds one of its selectors: %gs still holds it, reads through it and through a fresh load of it return the segment's
// words, and loading a not-present entry's selector raises #NP (SIGBUS, si_code SI_KERNEL) as uninterrupted — the
// 2008 OpenVZ restart report's LDT decoding. Negative control: omit=ldt (no entry installed: the kernel loads %gs as
// null, and both selectors raise #GP, SIGSEGV).
import t, { type Test } from 'tap';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { describeLdtEntry } from '../harness/restore/ldt.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { runTable } from '../harness/scenarios/table.ts';

const CASE = 'ldt';
const SCENARIO = 'LDT data segment in %gs and a not-present entry, checkpoint at a breakpoint';
/** index 3 << 3 | TI | RPL 3 */
const DATA_SELECTOR = 0x1fn;

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_MODIFY_LDT_SYSCALL']), async (t) => {
  const guest = await startGuest(t, CASE);
  // Provoke: the workload installs entries 3 and 5, loads entry 3 into %gs and stops at ldt_checkpoint.
  const binary = guest.image.guestPaths.ldt!;
  const scenario = await breakpointScenario(t, guest, {
    name: SCENARIO,
    workload: { binary, argv: [binary], breakAt: guest.symbols.resolve('ldt:ldt_checkpoint') },
  });
  t.equal(scenario.reference.ended, 'exited 0', `uninterrupted: ${scenario.expected}`);
  t.match(scenario.expected, /absent=SIGBUS\/128 /, 'uninterrupted: the not-present entry raises #NP, delivered as SIGBUS (SI_KERNEL)');

  // Checkpoint: the image holds both entries, and %gs names entry 3.
  const ldtInImage = (t: Test, a: BreakpointAttempt): void => {
    const image = a.checkpointed!.image!;
    t.same(
      image.ldt.map((e) => e.entry_number),
      [3, 5],
      `the image holds entries 3 and 5: ${image.ldt.map(describeLdtEntry).join('; ')}`,
    );
    t.equal(image.regs.gs, DATA_SELECTOR, "gs holds entry 3's selector at the checkpoint");
  };
  // Restore and oracle: the LDT installed before the registers, judged against the uninterrupted output.
  await runTable(t, CASE, scenario, [
    ...(['ptrace', 'sigreturn'] as const).map((restorer) => ({
      title: `kill-and-restore, restorer=${restorer}: the LDT installed before the registers`,
      policy: { ...DEFAULT_POLICY, restorer },
      tag: restorer,
      expect: 'resumes' as const,
      check: ldtInImage,
    })),
    {
      title: 'negative control omit=ldt: #GP where #NP was due',
      policy: { ...DEFAULT_POLICY, omit: ['ldt'] },
      tag: 'omit-ldt',
      expect: 'differs',
      check: (t, a) => {
        t.match(
          a.restored?.output.trim(),
          /^ldt mismatch gs=0x0 .*reload=SIGSEGV\/128 absent=SIGSEGV\/128 ldt-read=0 /,
          `caught: %gs loaded as null, both selectors #GP, no LDT: ${a.observed}`,
        );
        t.equal(a.restored?.run.code, 1, 'and exits 1');
      },
    },
  ]);
});
