// expect: the release a bzImage names in its x86 setup header (kernel_version at 0x20e), read from
// Debian's real kernel without booting it; every malformed header answers with the field at fault
// and never throws; a user kernel is identified by that release, its hash and the name given it.
import t from 'tap';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { kernelLabel, kernelRuns } from '../harness/cli/kernel-matrix.ts';
import { parseBzImageHeader, SETUP_MAX_BYTES } from '../harness/image/bzimage-header.ts';
import { resolveKernel, splitKernelSpec, userKernel } from '../harness/image/kernel.ts';
import { configurationFromUserEnvironment } from '../harness/flags/run-configuration.ts';
import { describeKernelIdentity, formatKernelMatrix } from '../harness/report/kernel-matrix.ts';
import { cacheDir } from '../harness/util/cache-dir.ts';
import { sha256 } from '../harness/util/hash.ts';
import { prng } from './support/prng.ts';

/** A setup area with a header of protocol `version` and `text` at kernel_version. */
function header(text: string | undefined, options: { version?: number; pointer?: number; setupSects?: number; length?: number } = {}): Buffer {
  const b = Buffer.alloc(options.length ?? 5 * 512);
  b[0x1f1] = options.setupSects ?? 4;
  b.write('HdrS', 0x202, 'latin1');
  b.writeUInt16LE(options.version ?? 0x020f, 0x206);
  const pointer = options.pointer ?? 0x300;
  b.writeUInt16LE(pointer, 0x20e);
  if (text !== undefined) b.write(`${text}\0`, pointer + 0x200, 'latin1');
  return b;
}

const reason = (image: Uint8Array): string => {
  const r = parseBzImageHeader(image);
  return r.ok ? `ok ${r.header.release}` : r.reason;
};

t.test("Debian's kernel names its release in the header", async (t) => {
  const root = cacheDir('kernels');
  const images = existsSync(root)
    ? readdirSync(root)
        .filter((d) => !d.includes('.partial-'))
        .flatMap((d) => {
          const boot = path.join(root, d, 'tree', 'boot');
          return existsSync(boot)
            ? readdirSync(boot)
                .filter((f) => f.startsWith('vmlinuz-'))
                .map((f) => path.join(boot, f))
            : [];
        })
    : [];
  if (images.length === 0) return void t.comment(`no Debian kernel in ${root} yet (crh image fetches one): nothing to read`);
  for (const file of images) {
    const release = path.basename(file).slice('vmlinuz-'.length);
    const parsed = parseBzImageHeader((await readFile(file)).subarray(0, SETUP_MAX_BYTES));
    t.ok(parsed.ok, `${file} parses`);
    if (!parsed.ok) continue;
    t.equal(parsed.header.release, release, `release ${release}, as the package names it`);
    t.match(
      parsed.header.kernelVersion,
      new RegExp(`^${release.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(.*\\) #1 SMP`),
      `the whole string: ${parsed.header.kernelVersion}`,
    );
    t.match(parsed.header.protocol, /^2\.\d\d$/);
    const kernel = await userKernel({ bzImage: file });
    t.equal(kernel.release, release, 'a user kernel at the same file gets that release, not its file name');
    t.equal(kernel.sha256, sha256(await readFile(file)), "and the image's SHA-256");
  }
});

t.test('hostile headers: the field at fault, never a throw', async (t) => {
  t.equal(reason(header('6.1.0-crh (me@host) #1 SMP')), 'ok 6.1.0-crh');
  t.equal(reason(header('6.12.0-rc1+ #3')), 'ok 6.12.0-rc1+');
  t.match(reason(Buffer.alloc(0)), /^0 bytes: too short/);
  t.match(reason(header('6.1.0').subarray(0, 0x20f)), /too short/);
  const noMagic = header('6.1.0');
  noMagic.write('HdrX', 0x202, 'latin1');
  t.match(reason(noMagic), /no "HdrS" at 0x202/);
  t.match(reason(header('6.1.0', { version: 0x01ff })), /boot protocol 1\.255/);
  t.match(reason(header(undefined, { pointer: 0 })), /kernel_version at 0x20e is 0/);
  t.match(reason(header('6.1.0', { setupSects: 1, pointer: 0x300 })), /outside the setup code \(0x400 bytes\)/, 'a pointer beyond setup_sects');
  t.match(reason(header(undefined, { pointer: 0xfff0, setupSects: 255 })), /outside the setup code|past the/, 'a pointer past the bytes there are');
  t.match(
    reason(header('6.1.0', { setupSects: 255, pointer: 0x600, length: 0x820 }).subarray(0, 0x803)),
    /has no NUL within 3 bytes/,
    'a string cut by the end of the bytes given',
  );
  const noNul = header(undefined);
  noNul.fill(0x41, 0x500);
  t.match(reason(noNul), /has no NUL within/);
  t.match(reason(header('6.1.0\x01\x02')), /not printable/);
  t.match(reason(header('x'.repeat(600))), /has no NUL within 512 bytes/, 'a string longer than any version');
  t.match(reason(header('linux 6.1')), /does not start with a release/);
  t.match(reason(header('')), /is empty/, 'an empty string');
  const random = prng(20261204);
  for (let i = 0; i < 2000; i++) {
    const b = header('6.1.0');
    const n = 1 + Math.floor(random() * 8);
    for (let j = 0; j < n; j++) b[0x1f0 + Math.floor(random() * 0x220)] = Math.floor(random() * 256);
    const cut = b.subarray(0, Math.floor(random() * b.length));
    const r = parseBzImageHeader(random() < 0.5 ? b : cut);
    if (r.ok && !/^\d+\.\d+/.test(r.header.release)) t.fail(`seed 20261204 round ${i}: accepted ${r.header.release}`);
  }
  t.pass('2000 mutated headers: no throw, no release that is not one');
});

t.test('--kernel NAME=PATH labels a kernel; identities tell builds at one path apart', async (t) => {
  t.same(splitKernelSpec('patched=/src/linux/arch/x86/boot/bzImage'), { label: 'patched', spec: '/src/linux/arch/x86/boot/bzImage' });
  t.same(splitKernelSpec('base=debian:linux-image-amd64'), { label: 'base', spec: 'debian:linux-image-amd64' });
  t.same(splitKernelSpec('/a/bzImage'), { spec: '/a/bzImage' });
  t.same(splitKernelSpec('../x=y/bzImage'), { spec: '../x=y/bzImage' }, 'a name is no path');
  t.equal(kernelLabel('patched=/src/linux/arch/x86/boot/bzImage'), 'patched');
  t.same(
    kernelRuns({ kernel: ['base=/k/bzImage', 'patched=/k/bzImage'] }).map((r) => r.label),
    ['base', 'patched'],
  );

  const dir = await mkdtemp(path.join(tmpdir(), 'crh-bzimage-'));
  const file = path.join(dir, 'bzImage');
  await writeFile(file, header('6.1.0-crh-patched (me@host) #2 SMP'));
  const kernel = await resolveKernel(configurationFromUserEnvironment({ CRH_KERNEL: `patched=${file}` }).kernel);
  t.equal(kernel?.label, 'patched');
  t.equal(kernel?.release, '6.1.0-crh-patched', 'release from the header, not "bzImage"');
  await writeFile(file, Buffer.alloc(4096));
  const unnamed = await userKernel({ bzImage: file });
  t.equal(unnamed.release, 'unknown');
  t.match(unnamed.kernelVersion, /^none: no "HdrS"/, 'and why');

  const identity = (sha: string) => ({ release: '6.1.0-crh', origin: `file:${file}`, sha256: sha.repeat(64), configSha256: 'c'.repeat(64) });
  t.equal(describeKernelIdentity(identity('a')), `6.1.0-crh sha256 aaaaaaaaaaaa config cccccccccccc (file:${file})`);
  const column = (label: string, sha: string) => ({ label, kernel: file, identity: identity(sha), verdicts: [], infra: [] });
  t.match(
    formatKernelMatrix([column('base', 'a'), column('patched', 'a')]),
    /note: patched and base are the same image \(sha256 aaaaaaaaaaaa\)/,
    'the same image twice is said',
  );
  t.notMatch(formatKernelMatrix([column('base', 'a'), column('patched', 'b')]), /same image/);
});
