// expect: every kind of mapping survives a kill-and-restore taken at a breakpoint: shared anonymous memory comes back
// shared with its contents, a private mapping of a file comes back mapped from the same file at the same offsets (its
// copy-on-write page from the image, a read-only tail as its own VMA), a shared mapping of a file comes back mapped
// from the file (its contents the file's, not written from the image), /proc/self/maps shows the same ranges, perms,
// offsets and names, a write through the shared file mapping reaches the file and one through the private mapping does
// not. Negative control: omit=mapping-kinds (every mapping private anonymous, as before this was restored).
import t, { type Test } from 'tap';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { runTable } from '../harness/scenarios/table.ts';
import { hex } from '../harness/x86/registers.ts';

const CASE = 'mappings';
const SCENARIO = 'shared anonymous, private file (COW page) and shared file mappings at a breakpoint';
const SHARED_ANON = 0x200000000n;
const PRIV_FILE = 0x200100000n;
const SHARED_FILE = 0x200200000n;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  // Provoke: the workload maps each kind at a fixed address (its files named by the run's prefix) and stops at mappings_checkpoint.
  const binary = guest.image.guestPaths.mappings!;
  const scenario = await breakpointScenario(t, guest, {
    name: SCENARIO,
    workload: (run) => ({ binary, argv: [binary, `/tmp/mappings-${run}`], breakAt: guest.symbols.resolve('mappings:mappings_checkpoint') }),
    // The native run has its own files; its output, which names them when it reports the maps, is compared with the
    // reference's prefix written in. Nothing else is masked.
    nativeAsReference: (output) => output.replaceAll('/tmp/mappings-native', '/tmp/mappings-reference'),
    // The last line is the workload's verdict, naming what it found lost.
    judge: (r, reference) => ({
      matched: r.output === reference.output && r.run.outcome === 'exited' && r.run.code === 0,
      observed: r.output.trim().split('\n').at(-1)!,
    }),
  });
  t.equal(scenario.reference.ended, 'exited 0', `uninterrupted: ${scenario.expected}`);

  // Checkpoint: what the image holds of each kind, and what it leaves to the file.
  const eachKindInImage = (t: Test, a: BreakpointAttempt): void => {
    const prefix = a.workload.argv[1];
    const at = (start: bigint) => a.checkpointed!.image!.regions.filter((g) => g.start >= start && g.start < start + 0x100000n);
    t.same(
      at(SHARED_ANON).map((g) => [g.perms, g.file, g.entry !== null]),
      [['rw-s', null, true]],
      `shared anonymous at ${hex(SHARED_ANON)}: dumped with its contents (${at(SHARED_ANON)[0]?.name})`,
    );
    t.same(
      at(PRIV_FILE).map((g) => [g.perms, g.file, hex(g.offset), g.entry !== null]),
      [
        ['rw-p', `${prefix}.priv`, '0x1000', true],
        ['r--p', `${prefix}.priv`, '0x3000', true],
      ],
      'private file mapping: two VMAs, their offsets, contents dumped',
    );
    t.same(
      at(SHARED_FILE).map((g) => [g.perms, g.file, hex(g.offset), g.entry]),
      [['rw-s', `${prefix}.shared`, '0x1000', null]],
      'shared file mapping: no contents in the image',
    );
  };
  // Restore and oracle: judged against the uninterrupted output.
  await runTable(t, CASE, scenario, [
    {
      title: 'kill-and-restore under the default policy: every mapping with its kind, file, offset and contents',
      policy: DEFAULT_POLICY,
      tag: 'default',
      expect: 'resumes',
      check: eachKindInImage,
    },
    {
      title: 'negative control omit=mapping-kinds: every mapping private anonymous',
      policy: { ...DEFAULT_POLICY, omit: ['mapping-kinds'] },
      tag: 'omit-mapping-kinds',
      expect: 'differs',
      check: (t, a) => {
        t.match(a.observed, /^mappings mismatch: shared-file-contents maps shared-write-not-in-file$/, `caught, naming what was lost: ${a.observed}`);
        t.equal(a.restored?.run.code, 1, 'and exits 1');
      },
    },
  ]);
});
