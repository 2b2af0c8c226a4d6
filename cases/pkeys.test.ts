// expect: memory protection keys survive a kill-and-restore taken at a breakpoint: keys 1 and 3 allocated (2 freed),
// page A tagged with key 1 and page B with key 3, PKRU denying writes through key 1 — after restore smaps shows A with
// key 1 and B with key 3, B and a read of A go through, PKRU still denies, pkey_alloc hands out 2 (the gap), and the
// write to A raises SIGSEGV with si_code SEGV_PKUERR (4) and si_pkey 1 — the uninterrupted output (ptrace and
// sigreturn). Conditioned on the profile's PKU (CPUID, OSPKE). Negative control: omit=pkeys (no key allocated, nothing
// tagged: the write to A goes through, smaps shows A and B without their keys, pkey_alloc returns 1).
import t, { type Test } from 'tap';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { runTable } from '../harness/scenarios/table.ts';

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
  // Provoke: the workload allocates keys 1-3, frees 2, tags two pages, denies writes via key 1, stops at pkeys_checkpoint.
  const binary = guest.image.guestPaths.pkeys!;
  const scenario = await breakpointScenario(t, guest, {
    name: SCENARIO,
    workload: { binary, argv: [binary], breakAt: guest.symbols.resolve('pkeys:pkeys_checkpoint') },
  });
  t.equal(
    `${scenario.reference.ended}: ${scenario.expected}`,
    `exited 0: ${UNINTERRUPTED}`,
    'uninterrupted: SEGV_PKUERR through key 1, the keys in smaps, PKRU, the gap handed out next',
  );

  // Checkpoint: the image holds the allocation and the tags.
  const keysInImage = (t: Test, a: BreakpointAttempt): void => {
    const image = a.checkpointed!.image!;
    t.same(image.pkeys.allocated, [1, 3], 'the image holds keys 1 and 3 allocated');
    t.same(image.pkeys.tagged.map((m) => m.pkey).sort(), [1, 3], 'two pages tagged, with keys 1 and 3');
  };
  // Restore and oracle: keys allocated, pages tagged, PKRU in the xstate — judged against the uninterrupted output.
  await runTable(t, CASE, scenario, [
    ...(['ptrace', 'sigreturn'] as const).map((restorer) => ({
      title: `kill-and-restore, restorer=${restorer}: keys allocated, pages tagged, PKRU in the xstate`,
      policy: { ...DEFAULT_POLICY, restorer },
      tag: `pkeys-${restorer}`,
      expect: 'resumes' as const,
      check: keysInImage,
    })),
    {
      title: 'negative control omit=pkeys: the write goes through, the held key handed out again',
      policy: { ...DEFAULT_POLICY, omit: ['pkeys'] },
      tag: 'pkeys-omit',
      expect: 'differs',
      check: (t, a) => {
        t.match(a.restored?.output.trim(), /^pkeys a-write=ok b-write=ok a-read=2 pkru-k1=2 smaps-keys=(?:0|-1),(?:0|-1) next-key=1$/, `caught: ${a.observed}`);
        t.equal(a.restored?.run.code, 1, 'and exits 1');
      },
    },
  ]);
});
