// expect: clocks.json (format 11) round-trips and is untrusted (each field named when wrong); a version 10 image reads
// with no clocks. The decision: nothing in the same boot; in another boot offsets = clock at checkpoint − clock now (a
// note saying so), a note under omit=timens, the missing feature "time namespaces" when the target kernel has none, a
// note when the image recorded no clocks. The plan steps: unshare(CLONE_NEWTIME), the offsets written to
// /proc/self/timens_offsets as the kernel parses them (nanoseconds 0..999999999, the sign on the seconds), setns into
// time_for_children, through the lowest free descriptor, in scratch pages unmapped again.
import t from 'tap';
import { IMAGE_VERSION, imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import {
  clockDecision,
  clocksJson,
  offsetLine,
  parseClocks,
  timeNamespaceSteps,
  type ProcessClocks,
  type TargetClocks,
} from '../harness/restore/time-namespace.ts';
import type { Test } from 'tap';
import { rejects as rejectsEntry } from './support/rejects.ts';
import { reseal, syntheticImage } from './support/synthetic-image.ts';

const BOOT_A = '0b6d3c1e-1111-4a2b-9c3d-aaaaaaaaaaaa';
const BOOT_B = '0b6d3c1e-2222-4a2b-9c3d-bbbbbbbbbbbb';
const S = 1_000_000_000n;
const AT_CHECKPOINT: ProcessClocks = { monotonicNs: 300n * S + 5n, boottimeNs: 301n * S + 7n, bootId: BOOT_A };
const FRESH_B: TargetClocks = { monotonicNs: 20n * S + 10n, boottimeNs: 20n * S + 10n, bootId: BOOT_B, timeNamespace: true };

const rejects = (t: Test, f: () => unknown, field: string): void => rejectsEntry(t, f, 'clocks.json', field);

t.test('clocks.json round-trips, is untrusted, and is absent before version 11', async (t) => {
  t.equal(IMAGE_VERSION, 11);
  const image = syntheticImage({ clocks: AT_CHECKPOINT });
  t.same(parseImageEntries(imageEntries(image)).clocks, AT_CHECKPOINT);
  t.equal(parseImageEntries(imageEntries(syntheticImage())).clocks, undefined, 'null: nothing recorded');
  const v10entries = new Map(imageEntries(image));
  v10entries.delete('clocks.json');
  const v10 = reseal(v10entries, {}, (m) => {
    m.version = 10;
    delete (m.entries as Record<string, unknown>)['clocks.json'];
  });
  t.equal(parseImageEntries(v10).clocks, undefined, 'version 10: read, no clocks');
  const v11missing = reseal(v10entries, {}, (m) => delete (m.entries as Record<string, unknown>)['clocks.json']);
  t.throws(() => parseImageEntries(v11missing), /clocks\.json/, 'version 11 without clocks.json: rejected');

  const good = clocksJson(AT_CHECKPOINT) as Record<string, unknown>;
  rejects(t, () => parseClocks({ ...good, monotonicNs: 5 }), 'monotonicNs');
  rejects(t, () => parseClocks({ ...good, boottimeNs: '0x' + 'f'.repeat(16) }), 'boottimeNs');
  rejects(t, () => parseClocks({ ...good, bootId: '../../x' }), 'bootId');
  rejects(t, () => parseClocks([1]), '(entry)');
});

t.test('the decision', async (t) => {
  t.same(clockDecision(AT_CHECKPOINT, { ...FRESH_B, bootId: BOOT_A }, false), {}, 'same boot: nothing to do');
  t.same(clockDecision(AT_CHECKPOINT, undefined, false), {}, 'no target clocks read: nothing');
  const moved = clockDecision(AT_CHECKPOINT, FRESH_B, false);
  t.same(moved.offsets, { monotonicNs: 280n * S - 5n, boottimeNs: 281n * S - 3n }, 'offsets = checkpoint − now');
  t.match(moved.note, /time namespace: checkpointed in boot 0b6d3c1e-1111.*offsets CLOCK_MONOTONIC \+280\.000 s/);
  const omitted = clockDecision(AT_CHECKPOINT, FRESH_B, true);
  t.equal(omitted.offsets, undefined);
  t.match(omitted.note, /^omit=timens: .*CLOCK_MONOTONIC moves by -280\.000 s/, 'omit=timens: the note says the clock goes backwards');
  const lacking = clockDecision(AT_CHECKPOINT, { ...FRESH_B, timeNamespace: false }, false);
  t.equal(lacking.missing?.feature, 'time namespaces', 'no CONFIG_TIME_NS: the missing feature named');
  t.equal(lacking.offsets, undefined);
  t.match(clockDecision(undefined, FRESH_B, false).note, /records no clocks \(format 10 or earlier\)/);
});

t.test('offsets as /proc/PID/timens_offsets parses them', async (t) => {
  t.equal(offsetLine(1n, 280n * S - 5n), '1 279 999999995\n');
  t.equal(offsetLine(1n, -(280n * S) - 5n), '1 -281 999999995\n', 'negative: the seconds carry the sign, nanoseconds stay in 0..999999999');
  t.equal(offsetLine(7n, -3n * S), '7 -3 0\n');
  t.equal(offsetLine(7n, 0n), '7 0 0\n');
});

t.test('the plan steps', async (t) => {
  const steps = timeNamespaceSteps(42, { monotonicNs: -280n * S, boottimeNs: 1n }, [0, 1, 2, 4], 0x7f00_0000_0000n);
  const calls = steps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? `${s.op.nr}:${s.expect}` : s.op.op));
  t.same(
    calls,
    ['9:139637976727552', 'WRITE_MEM', '272:0', '257:3', '1:15', '3:0', '257:3', '308:0', '3:0', '11:0'],
    'mmap, write, unshare, open fd 3 (the lowest free), write the offsets, close, open, setns, close, munmap',
  );
  const written = steps[1]!.op.op === 'WRITE_MEM' ? Buffer.from(steps[1]!.op.data).toString('latin1') : '';
  t.ok(written.includes('/proc/self/timens_offsets\0'), 'the offsets file');
  t.ok(written.includes('1 -280 0\n7 0 1\n'), 'the offsets, monotonic then boottime');
  t.ok(written.includes('/proc/self/ns/time_for_children\0'), 'the namespace the target enters');
  const setns = steps.find((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 308)!;
  t.same(setns.op.op === 'INJECT_SYSCALL' && setns.op.args, [3n, 0x80n], 'setns(fd, CLONE_NEWTIME)');
});
