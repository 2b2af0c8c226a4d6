// expect: an image's xstate regset fitted to the target's XSAVE size keeps every byte at its offset (standard format),
// pads with zeros or cuts at the target's end, and carries the target's XCR0 in the sw_reserved word; an image of the
// target's size is returned as it is, with no note; every thread's regset is fitted alike.
import t from 'tap';
import { fitXstate, withFittedXstate } from '../harness/restore/xstate-fit.ts';
import { syntheticImage, syntheticXstate } from './support/synthetic-image.ts';

t.test('fitXstate', async (t) => {
  const small = Buffer.alloc(832, 0xab);
  small.writeBigUInt64LE(0x7n, 464);
  const grown = fitXstate(small, 2696, 0x21fn);
  t.equal(grown.length, 2696);
  t.same(grown.subarray(0, 464), small.subarray(0, 464), 'the legacy area in place');
  t.equal(grown.readBigUInt64LE(464), 0x21fn, "the target's XCR0 word");
  t.same(grown.subarray(472, 832), small.subarray(472, 832), 'header and YMM in place');
  t.ok(
    grown.subarray(832).every((b) => b === 0),
    "zeros past the image's end",
  );
  const cut = fitXstate(grown, 832, 0x7n);
  t.equal(cut.length, 832);
  t.equal(cut.readBigUInt64LE(464), 0x7n);
  t.equal(fitXstate(small, 832, 0x21fn), small, 'the same size: the very buffer');
});

t.test('withFittedXstate', async (t) => {
  const image = syntheticImage();
  const same = withFittedXstate(image, image.xstate.length, null);
  t.equal(same.image, image, 'nothing to fit: the same image');
  t.equal(same.note, undefined);
  const bigger = image.xstate.length + 64;
  const fitted = withFittedXstate({ ...image, threads: image.threads.map((th) => ({ ...th, xstate: syntheticXstate() })) }, bigger, 0x7n);
  t.equal(fitted.image.xstate.length, bigger);
  t.ok(
    fitted.image.threads.every((th) => th.xstate.length === bigger),
    "the threads' too",
  );
  t.match(fitted.note, new RegExp(`${image.xstate.length} → ${bigger} bytes`));
});
