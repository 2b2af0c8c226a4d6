// expect: every kind of mapping survives a kill-and-restore taken at a breakpoint: shared anonymous memory comes back
// shared with its contents, a private mapping of a file comes back mapped from the same file at the same offsets (its
// copy-on-write page from the image, a read-only tail as its own VMA), a shared mapping of a file comes back mapped
// from the file (its contents the file's, not written from the image), /proc/self/maps shows the same ranges, perms,
// offsets and names, a write through the shared file mapping reaches the file and one through the private mapping does
// not. Negative control: omit=mapping-kinds (every mapping private anonymous, as before this was restored).
import t from 'tap';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { hex } from '../harness/x86/registers.ts';

const CASE = 'mappings';
const SCENARIO = 'shared anonymous, private file (COW page) and shared file mappings at a breakpoint';
const SHARED_ANON = 0x200000000n;
const PRIV_FILE = 0x200100000n;
const SHARED_FILE = 0x200200000n;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.mappings!;
  const workload = (prefix: string): Workload => ({ binary, argv: [binary, prefix], breakAt: guest.symbols.resolve('mappings:mappings_checkpoint') });

  const reference = await (async () => {
    const { run, output } = await runUninterrupted(guest, { binary, argv: [binary, '/tmp/mappings-reference'] }, '/tmp/mappings-reference.out');
    t.equal(run.code, 0, `uninterrupted: ${output.trim()}`);
    // The reference is a traced run: it must be what the program does with no tracer at all. The native run gets its
    // own path prefix (the workload creates <prefix>.priv and <prefix>.shared), so its output — which names those files
    // when it reports the maps — is compared with that prefix written as the reference's; nothing else is masked.
    const native = await nativeReference(guest, { binary, argv: [binary, '/tmp/mappings-native'] });
    const asReference = native.output.replaceAll('/tmp/mappings-native', '/tmp/mappings-reference');
    t.equal(`${endedAs(run)}\n${output}`, `${endedAs(native)}\n${asReference}`, 'the traced reference is the native run (no tracer)');
    return output;
  })();

  await t.test('kill-and-restore under the default policy: every mapping with its kind, file, offset and contents', async (t) => {
    const prefix = '/tmp/mappings-default';
    const checkpointed = await checkpointAtHit(guest, workload(prefix), 1, 'default', { disarm: true });
    t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at mappings_checkpoint');
    const r = await restoreAndFinish(guest, checkpointed.file, DEFAULT_POLICY, 'default', {});
    const at = (start: bigint) => r.image.regions.filter((g) => g.start >= start && g.start < start + 0x100000n);
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
    t.same(r.differences, [], 'read back: as requested');
    t.equal(r.output, reference, `the restored run is the uninterrupted run: ${r.output.trim()}`);
    t.equal(r.run.code, 0);
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: reference.trim(),
      observed: r.output.trim(),
      matchedUninterrupted: r.output === reference && r.run.code === 0,
    });
  });

  await t.test('negative control omit=mapping-kinds: every mapping private anonymous', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['mapping-kinds'] };
    const checkpointed = await checkpointAtHit(guest, workload('/tmp/mappings-control'), 1, 'omit-mapping-kinds', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, 'omit-mapping-kinds', {});
    const verdict = r.output.trim().split('\n').at(-1)!;
    t.match(verdict, /^mappings mismatch: shared-file-contents maps shared-write-not-in-file$/, `caught, naming what was lost: ${verdict}`);
    t.equal(r.run.code, 1, 'and exits 1');
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(policy),
      control: true,
      expected: reference.trim(),
      observed: verdict,
      matchedUninterrupted: r.output === reference,
    });
  });
});
