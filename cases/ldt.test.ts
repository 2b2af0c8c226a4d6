// expect: an LDT the workload installed with modify_ldt survives a kill-and-restore taken at a breakpoint while %gs
// holds one of its selectors: %gs still holds it, reads through it and through a fresh load of it return the segment's
// words, and loading a not-present entry's selector raises #NP (SIGBUS, si_code SI_KERNEL) as uninterrupted — the
// 2008 OpenVZ restart report's LDT decoding. Negative control: omit=ldt (no entry installed: the kernel loads %gs as
// null, and both selectors raise #GP, SIGSEGV).
import t from 'tap';
import { recordOutcome } from '../harness/report/verdicts.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { describeLdtEntry } from '../harness/restore/ldt.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'ldt';
const SCENARIO = 'LDT data segment in %gs and a not-present entry, checkpoint at a breakpoint';
/** index 3 << 3 | TI | RPL 3 */
const DATA_SELECTOR = 0x1fn;

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_MODIFY_LDT_SYSCALL']), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.ldt!;
  const workload: Workload = { binary, argv: [binary], breakAt: guest.symbols.resolve('ldt:ldt_checkpoint') };

  const { run: reference, output: expected } = await runUninterrupted(guest, workload, '/tmp/ldt-reference.out');
  t.equal(reference.code, 0, `uninterrupted: ${expected.trim()}`);
  // The reference is a traced run: it must be what the program does with no tracer at all.
  const native = await nativeReference(guest, workload);
  t.equal(`${endedAs(reference)}\n${expected}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');
  t.match(expected, /absent=SIGBUS\/128 /, 'uninterrupted: the not-present entry raises #NP, delivered as SIGBUS (SI_KERNEL)');

  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`kill-and-restore, restorer=${restorer}: the LDT installed before the registers`, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const checkpointed = await checkpointAtHit(guest, workload, 1, restorer, { disarm: true });
      t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at ldt_checkpoint');
      const image = checkpointed.image!;
      t.same(
        image.ldt.map((e) => e.entry_number),
        [3, 5],
        `the image holds entries 3 and 5: ${image.ldt.map(describeLdtEntry).join('; ')}`,
      );
      t.equal(image.regs.gs, DATA_SELECTOR, "gs holds entry 3's selector at the checkpoint");
      const r = await restoreAndFinish(guest, checkpointed.file, policy, restorer, {});
      t.same(r.differences, [], 'read back: as requested');
      t.equal(r.output, expected, `the restored run is the uninterrupted run: ${r.output.trim()}`);
      t.equal(r.run.code, 0);
      recordOutcome({
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

  await t.test('negative control omit=ldt: #GP where #NP was due', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['ldt'] };
    const checkpointed = await checkpointAtHit(guest, workload, 1, 'omit-ldt', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, 'omit-ldt', {});
    const line = r.output.trim();
    t.match(
      line,
      /^ldt mismatch gs=0x0 .*reload=SIGSEGV\/128 absent=SIGSEGV\/128 ldt-read=0 /,
      `caught: %gs loaded as null, both selectors #GP, no LDT: ${line}`,
    );
    t.equal(r.run.code, 1, 'and exits 1');
    recordOutcome({
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(policy),
      control: true,
      expected: expected.trim(),
      observed: line,
      matchedUninterrupted: r.output === expected,
    });
  });
});
