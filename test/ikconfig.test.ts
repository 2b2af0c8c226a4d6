// expect: the config embedded in a kernel (IKCONFIG) is read out of a bzImage whatever its payload compression, a
// kernel without it says so, an unreadable payload names why (format, tool), and the two Debian 6.1 kernels — lz4
// (cloud) and xz (generic) payloads — decompress to a vmlinux without IKCFG_ST, as their packaged configs say.
import t from 'tap';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { debianKernel } from '../harness/image/kernel.ts';
import {
  decompressPayload,
  detectCompression,
  extractIkconfig,
  extractIkconfigFile,
  readSetupHeader,
  type PayloadCompression,
} from '../harness/platform/ikconfig.ts';
import { configContradictions, configFilesBeside, guestKernelConfig, KernelConfigConflictError } from '../harness/platform/guest-kernel-config.ts';
import { optionState } from '../harness/platform/kernel-config.ts';
import { sha256 } from '../harness/util/hash.ts';
import { canCompress, compressPayload, syntheticBzImage, syntheticVmlinux, wrapInBzImage } from './support/synthetic-bzimage.ts';

const CONFIG = '#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_64BIT=y\nCONFIG_IKCONFIG=y\n# CONFIG_RSEQ is not set\nCONFIG_VIRTIO_NET=m\n';
const FORMATS: PayloadCompression[] = ['gzip', 'xz', 'lzma', 'bzip2', 'lz4', 'zstd', 'lzo'];

t.test('synthetic bzImages: the config comes back byte for byte from every payload format this host can write', async (t) => {
  for (const format of FORMATS) {
    const skip = (await canCompress(format)) ? false : `no ${format} compressor on this host`;
    await t.test(format, { skip }, async (t) => {
      const image = await syntheticBzImage(CONFIG, format);
      const header = readSetupHeader(image)!;
      t.equal(header.version, 0x020f);
      t.equal(detectCompression(image.subarray(header.payloadStart)), format, 'recognised by its magic');
      const result = await extractIkconfig(image);
      t.ok(result.found, result.how);
      if (result.found) t.equal(result.config, CONFIG, 'the config, past a decoy IKCFG_ST');
    });
  }
});

t.test('a kernel built without IKCONFIG, and payloads that cannot be read', async (t) => {
  const without = await extractIkconfig(await syntheticBzImage(undefined, 'gzip'));
  t.match(without, { found: false, why: 'absent' });
  t.match(without.how, /no IKCFG_ST marker in the decompressed kernel \(gzip payload, \d+ → \d+ bytes\): built without CONFIG_IKCONFIG/);

  const vmlinux = syntheticVmlinux(CONFIG);
  const lying = await compressPayload(vmlinux, 'xz');
  lying.writeUInt32LE(vmlinux.length + 1, lying.length - 4);
  const truncated = await extractIkconfig(wrapInBzImage(lying));
  t.match(truncated, { found: false, why: 'unreadable' });
  t.match(truncated.how, /declares \d+ bytes but decompressed to \d+/, 'the size kbuild appends is checked');

  const unknown = await extractIkconfig(wrapInBzImage(Buffer.from('not compressed at all')));
  t.match(unknown.how, /unknown compression \(starts 6e6f7420636f\)/);

  const lzo = wrapInBzImage(Buffer.concat([Buffer.from([0x89, 0x4c, 0x5a, 0x4f, 0, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(64)]));
  const lzoResult = await extractIkconfig(lzo);
  if (await canCompress('lzo')) t.match(lzoResult.how, /lzop failed on the lzo payload/);
  else t.match(lzoResult.how, /lzo-compressed and lzop is not installed \(Debian package lzop\)/, 'a missing tool is named');

  t.match(await extractIkconfig(Buffer.alloc(4096, 0x90)), { found: false, why: 'unreadable', how: /not a bzImage/ });
  t.match(await extractIkconfig(wrapInBzImage(Buffer.alloc(16), { version: 0x0206 })), { how: /boot protocol 2.06 predates payload_offset/ });
  const past = wrapInBzImage(Buffer.alloc(16));
  past.writeUInt32LE(1 << 20, 0x24c);
  t.match(await extractIkconfig(past), { how: /runs past the end of the file/ });

  // An uncompressed vmlinux (no setup header) is searched as it is.
  t.match(await extractIkconfig(vmlinux), { found: true, config: CONFIG });
});

t.test('the Debian 6.1 kernels: payload decompressed, no IKCONFIG, as their packaged config says', async (t) => {
  for (const [metapackage, format] of [
    ['linux-image-cloud-amd64', 'lz4'],
    ['linux-image-amd64', 'xz'],
  ] as const) {
    const kernel = await debianKernel(metapackage);
    const started = Date.now();
    const result = await extractIkconfigFile(kernel.bzImage);
    t.comment(`${kernel.release}: ${result.how} in ${Date.now() - started} ms`);
    t.match(result, { found: false, why: 'absent' }, `${kernel.release}: read to the end, no marker`);
    const sizes = new RegExp(`\\(${format} payload, (\\d+) → (\\d+) bytes\\)`).exec(result.how);
    t.ok(sizes && Number(sizes[2]) > 3 * Number(sizes[1]), `${kernel.release}: a ${format} payload decompressed to a whole kernel`);
    t.match(await readFile(kernel.config!, 'utf8'), /^# CONFIG_IKCONFIG is not set$/m, `${kernel.release}: its config-<release> agrees`);
    const header = readSetupHeader(await readFile(kernel.bzImage))!;
    const payload = (await readFile(kernel.bzImage)).subarray(header.payloadStart, header.payloadStart + header.payloadLength);
    t.match((await decompressPayload(payload, format)).toString('latin1'), /Linux version 6\.1\.\d+/, 'the decompressed payload is the kernel');
  }
});

t.test('where a guest kernel config comes from: given file, then IKCONFIG, then a file beside the bzImage', async (t) => {
  process.env.CRH_CACHE_DIR = await mkdtemp(path.join(tmpdir(), 'crh-ikconfig-cache-'));
  t.teardown(() => void delete process.env.CRH_CACHE_DIR);
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-ikconfig-'));
  const withIk = path.join(dir, 'vmlinuz-6.1.0-crh');
  const bytes = await syntheticBzImage(CONFIG, 'xz');
  await writeFile(withIk, bytes);
  // A given file that contradicts the kernel's own config is refused, naming every option it gets wrong.
  const given = path.join(dir, 'given.config');
  await writeFile(given, CONFIG.replace('# CONFIG_RSEQ is not set', 'CONFIG_RSEQ=y'));
  const conflict = await guestKernelConfig({ bzImage: withIk, config: given, sha256: sha256(bytes) }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.type(conflict, KernelConfigConflictError, 'a given file contradicting IKCONFIG is an error');
  t.same((conflict as KernelConfigConflictError).contradictions, [{ option: 'CONFIG_RSEQ', file: 'y', embedded: 'n' }], 'naming the option, both values');
  t.match(
    (conflict as Error).message,
    /given\.config contradicts the config embedded in the kernel \(IKCONFIG\) on 1 option\(s\): CONFIG_RSEQ \(.*: y, embedded: n\)/,
  );
  const agreeing = path.join(dir, 'agreeing.config');
  await writeFile(agreeing, CONFIG.replace('# Automatically generated file; DO NOT EDIT.\n', ''));
  const agreed = await guestKernelConfig({ bzImage: withIk, config: agreeing, sha256: sha256(bytes) });
  t.equal(optionState(agreed.config, 'CONFIG_VIRTIO_NET'), 'm', 'a given file that agrees (comments aside) is used');
  t.match(agreed.source, /agreeing\.config \(agrees with the embedded IKCONFIG\)/);
  t.equal(agreed.sha256, sha256(CONFIG.replace('# Automatically generated file; DO NOT EDIT.\n', '')), 'with the hash of the text used');
  t.same(
    configContradictions(
      new Map([
        ['CONFIG_A', 'y'],
        ['CONFIG_B', 'n'],
      ]),
      new Map([['CONFIG_C', 'm']]),
    ),
    [
      { option: 'CONFIG_A', file: 'y', embedded: 'n' },
      { option: 'CONFIG_C', file: 'n', embedded: 'm' },
    ],
    'an option one side lacks is "n" there; an unset one agrees with an absent one',
  );
  const embedded = await guestKernelConfig({ bzImage: withIk, sha256: sha256(bytes) });
  t.match(embedded.source, /^IKCONFIG embedded in the bzImage \(xz payload/);
  t.equal(optionState(embedded.config, 'CONFIG_RSEQ'), 'n');
  t.equal(optionState(embedded.config, 'CONFIG_VIRTIO_NET'), 'm');
  await writeFile(path.join(dir, 'config-6.1.0-crh'), 'CONFIG_RSEQ=y\n');
  t.equal(
    optionState((await guestKernelConfig({ bzImage: withIk, sha256: sha256(bytes) })).config, 'CONFIG_RSEQ'),
    'n',
    'IKCONFIG beats a file beside it (cached result)',
  );

  const tree = path.join(dir, 'linux', 'arch', 'x86', 'boot');
  const bare = path.join(tree, 'bzImage');
  const plain = await syntheticBzImage(undefined, 'gzip');
  await mkdir(tree, { recursive: true });
  await writeFile(bare, plain);
  const unknown = await guestKernelConfig({ bzImage: bare, sha256: sha256(plain) });
  t.equal(unknown.config, undefined);
  t.match(unknown.source, /^unknown: no --kernel-config; no IKCFG_ST marker .*; no config file beside /);
  const givenForBare = await guestKernelConfig({ bzImage: bare, config: given, sha256: sha256(plain) });
  t.equal(optionState(givenForBare.config, 'CONFIG_RSEQ'), 'y', 'without IKCONFIG a given file is the config, unchecked');
  await writeFile(path.join(dir, 'linux', '.config'), 'CONFIG_RSEQ=y\n');
  const beside = await guestKernelConfig({ bzImage: bare, sha256: sha256(plain) });
  t.equal(optionState(beside.config, 'CONFIG_RSEQ'), 'y');
  t.match(beside.source, /linux\/\.config \(found beside the bzImage; no IKCFG_ST marker/);
  t.same(configFilesBeside('/k/vmlinuz-6.1.0-1-amd64'), ['/k/config-6.1.0-1-amd64', '/k/.config', '/k/config']);
});
