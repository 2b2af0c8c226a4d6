// expect: every guest program is linked at its own text address, so an address names one program.
import t from 'tap';
import { readGuestManifest } from '../harness/image/guest-binaries.ts';

t.test('text segments are unique, below 2 GiB, and far enough apart', async (t) => {
  const { binaries, cflags } = await readGuestManifest();
  t.ok(cflags.includes('-static') && cflags.includes('-Werror') && cflags.includes('-O2'), 'static, -O2, warnings are errors');
  const addresses = binaries.map((b) => ({ name: b.name, at: BigInt(b.textSegment) }));
  for (const a of addresses) {
    t.ok(a.at < 0x8000_0000n, `${a.name} at 0x${a.at.toString(16)} is below 2 GiB (static non-PIE code model)`);
    t.equal(a.at % 0x1000n, 0n, `${a.name} is page aligned`);
  }
  const sorted = [...addresses].sort((x, y) => (x.at < y.at ? -1 : 1));
  for (let i = 1; i < sorted.length; i++) {
    t.ok(sorted[i]!.at - sorted[i - 1]!.at >= 0x100_0000n, `${sorted[i - 1]!.name} and ${sorted[i]!.name} are at least 16 MiB apart`);
  }
  t.equal(new Set(binaries.map((b) => b.name)).size, binaries.length, 'names are unique');
});
