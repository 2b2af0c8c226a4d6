import t from 'tap';
import type { CheckpointImage, MemoryRegion } from '../harness/restore/image-model.ts';
import type { RseqRestored } from '../harness/scenarios/rseq-scenario.ts';
import { abortHandlerRan, abortsAtCheckpoint, laterAborts, longAborts, outcome, show, summary, withoutAborts } from '../harness/scenarios/rseq-scenario.ts';

const OUTPUT = ['rseqcs long spin=100000000 aborts=1', 'rseqcs later-aborts=2', 'rseqcs mode=glibc iterations=64 sum=64 aborts=3 reregister=EBUSY', ''].join(
  '\n',
);

t.test("rseqcs's output read as data", async (t) => {
  t.same(summary(OUTPUT), { sum: 64, aborts: 3, reregister: 'EBUSY' });
  t.equal(summary('rseqcs mode=own iterations=64 sum=63'), undefined, 'a truncated line is no summary');
  t.equal(longAborts(OUTPUT), 1);
  t.equal(laterAborts(OUTPUT), 2);
  t.equal(longAborts('nothing'), undefined);
  t.equal(show(summary(OUTPUT)), 'sum=64 aborts=3 reregister=EBUSY');
  t.equal(show(undefined), 'no summary line');
  t.same(withoutAborts(summary(OUTPUT)), { sum: 64, reregister: 'EBUSY' });
  t.equal(outcome({ outcome: 'killed', code: 11 }, summary(OUTPUT)), 'killed by signal 11');
  t.equal(outcome({ outcome: 'exited', code: 0 }, summary(OUTPUT)), 'exit 0, aborts=3');
});

t.test('the oracle speaks for the first increment only when no later one aborted', async (t) => {
  const run = (first: boolean, output: string) =>
    ({ observation: { first: first ? new Map() : undefined, debugTraps: [], stops: 0 }, output }) as unknown as RseqRestored;
  t.equal(abortHandlerRan(run(true, 'rseqcs later-aborts=0')), true);
  t.equal(abortHandlerRan(run(false, 'rseqcs later-aborts=0')), false);
  t.equal(abortHandlerRan(run(true, 'rseqcs later-aborts=1')), undefined, "a later increment's abort may be the one the oracle saw");
  t.equal(abortHandlerRan(run(false, 'rseqcs later-aborts=1')), false, 'no handler run at all speaks for every increment');
});

t.test("the first increment's aborts before the checkpoint, read from the image", async (t) => {
  const region: MemoryRegion = { start: 0x1000n, end: 0x2000n, perms: 'rw-p', name: '', file: null, offset: 0n, entry: 'mem/0' };
  const bytes = Buffer.alloc(0x1000);
  bytes.writeBigUInt64LE(2n, 0x10);
  const image = { regions: [region], memory: new Map([['mem/0', bytes]]) } as unknown as CheckpointImage;
  t.equal(abortsAtCheckpoint(image, 0x1010n), 2);
  t.throws(() => abortsAtCheckpoint(image, 0x1ffcn), /in no region the image stores/, 'a counter running past the region');
  t.throws(() => abortsAtCheckpoint(image, 0x3000n), /in no region the image stores/);
});
