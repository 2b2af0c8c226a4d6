// expect: every kind of mapping survives a kill-and-restore taken at a breakpoint: shared anonymous memory comes back
// shared with its contents, a private mapping of a file comes back mapped from the same file at the same offsets (its
// copy-on-write page from the image, a read-only tail as its own VMA), a shared mapping of a file comes back mapped
// from the file (its contents the file's, not written from the image), /proc/self/maps shows the same ranges, perms,
// offsets and names, a write through the shared file mapping reaches the file and one through the private mapping does
// not. Negative control: omit=mapping-kinds (every mapping private anonymous, as before this was restored).
// And mapping attributes (VmFlags): private anonymous mappings given MADV_DONTFORK, _SEQUENTIAL, _DONTDUMP,
// _MERGEABLE, _RANDOM, _WIPEONFORK, one mapped MAP_NORESERVE and one locked with mlock, and a shared
// file mapping read-only now but mapped from a descriptor open for writing (VmFlags mw without w), checkpointed at a
// breakpoint: the image records each one's flags, and after the restore each VmFlags line is the one before, the
// contents are there, and mprotect(PROT_WRITE) on the shared file mapping succeeds and the write reaches the file — the
// uninterrupted run's line. Negative control: omit=vma-flags (no advice, no lock, no MAP_NORESERVE, a read-only open)
// is caught by the program, naming every mapping.
import t, { type Test } from 'tap';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest, type Guest } from '../harness/testing/guest-fixture.ts';
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
  await vmflagsTable(t, guest);
});

const VMFLAGS_SCENARIO = 'mappings with madvise advice, mlock, MAP_NORESERVE and a read-only shared file mapping writable later, at a breakpoint';
/** Where the workload maps its regions (guests/workloads/vmflags-zombies.c BASE and STRIDE). */
const VMFLAGS_BASE = 0x210000000n;
const VMFLAGS_STRIDE = 0x10000n;

/** The VmFlags table, in the same guest. */
async function vmflagsTable(t: Test, guest: Guest): Promise<void> {
  const binary = guest.image.guestPaths['vmflags-zombies']!;
  const scenario = await breakpointScenario(t, guest, {
    name: VMFLAGS_SCENARIO,
    workload: (run) => ({ binary, argv: [binary, 'vmflags', `/tmp/vmflags-${run}`], breakAt: guest.symbols.resolve('vmflags-zombies:vmflags_checkpoint') }),
    judge: (r, reference) => ({
      matched: r.output === reference.output && r.run.outcome === 'exited' && r.run.code === 0,
      observed: r.output.trim().split('\n').at(-1)!,
    }),
  });
  t.equal(scenario.reference.ended, 'exited 0', `uninterrupted: ${scenario.expected}`);
  const flagsInImage = (t: Test, a: BreakpointAttempt): void => {
    const at = (i: number) => a.checkpointed!.image!.regions.find((g) => g.start === VMFLAGS_BASE + BigInt(i) * VMFLAGS_STRIDE);
    t.same(
      [0, 1, 2, 3, 4, 5, 6, 7, 8].map((i) => at(i)?.vmFlags ?? []),
      [['dc'], ['sr'], ['dd'], ['mg'], ['rr'], ['wf'], ['nr'], ['lo'], ['mw']],
      'the image records the given-back VmFlags of each mapping (mw for the shared file mapping)',
    );
  };
  await runTable(t, CASE, scenario, [
    {
      title: 'kill-and-restore under the default policy: every mapping with its VmFlags, the shared file mapping writable later',
      policy: DEFAULT_POLICY,
      tag: 'vmflags-default',
      expect: 'resumes',
      check: flagsInImage,
    },
    {
      title: 'negative control omit=vma-flags: the mappings come back without their advice, lock and reserve, the file opened read-only',
      policy: { ...DEFAULT_POLICY, omit: ['vma-flags'] },
      tag: 'omit-vma-flags',
      expect: 'differs',
      check: (t, a) => {
        t.match(
          a.observed,
          /^vmflags mismatch: dontfork sequential dontdump mergeable random wipeonfork noreserve locked shared-file-flags shared-file-mprotect-write$/,
          `caught, naming what was lost: ${a.observed}`,
        );
        t.equal(a.restored?.run.code, 1, 'and exits 1');
      },
    },
  ]);
}
