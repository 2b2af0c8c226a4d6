/**
 * A bzImage-shaped file built from parts the test controls: an x86 setup
 * header ("HdrS", boot protocol 2.15, payload_offset/payload_length) and a
 * payload compressed the way kbuild compresses vmlinux.bin — gzip with
 * node:zlib, everything else with the host's tool, with the uncompressed
 * size appended as kbuild's *_with_size rules do.
 */
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import type { PayloadCompression } from '../../harness/platform/ikconfig.ts';

/** The compressor command that writes what the kernel's build would. */
export const COMPRESSORS: Readonly<Record<Exclude<PayloadCompression, 'gzip'>, string[]>> = {
  xz: ['xz', '--check=crc32', '-c'],
  lzma: ['xz', '--format=lzma', '-c'],
  bzip2: ['bzip2', '-9', '-c'],
  lzo: ['lzop', '-9', '-c'],
  lz4: ['lz4', '-l', '-9', '-c'],
  zstd: ['zstd', '-19', '-c'],
};

/** Whether the host has the tool that writes `format`. */
export async function canCompress(format: PayloadCompression): Promise<boolean> {
  if (format === 'gzip') return true;
  const [command] = COMPRESSORS[format];
  return (await execa('sh', ['-c', `command -v ${command}`], { reject: false })).exitCode === 0;
}

/** A decompressed "kernel": filler, a decoy marker with no config after it, then the config between IKCFG_ST and IKCFG_ED. */
export function syntheticVmlinux(config: string | undefined, fillerBytes = 200_000): Buffer {
  // Deterministic filler that compresses poorly enough to be a real payload.
  const filler = Buffer.alloc(fillerBytes);
  let x = 0x12345678;
  for (let i = 0; i < filler.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    filler[i] = x >>> 24;
  }
  const parts = [filler.subarray(0, fillerBytes / 2), Buffer.from('IKCFG_ST not a gzip stream here', 'latin1'), filler.subarray(fillerBytes / 2)];
  if (config !== undefined) parts.push(Buffer.from('IKCFG_ST', 'latin1'), gzipSync(config), Buffer.from('IKCFG_ED', 'latin1'));
  parts.push(Buffer.from('Linux version 6.1.0-crh (synthetic)\0', 'latin1'));
  return Buffer.concat(parts);
}

export async function compressPayload(vmlinux: Buffer, format: PayloadCompression): Promise<Buffer> {
  if (format === 'gzip') return gzipSync(vmlinux);
  const [command, ...args] = COMPRESSORS[format];
  const out = await execa(command!, args, { input: vmlinux, encoding: 'buffer' });
  const size = Buffer.alloc(4);
  size.writeUInt32LE(vmlinux.length);
  return Buffer.concat([Buffer.from(out.stdout), size]);
}

/** Setup code (2 sectors, setup_sects = 1) with the header, padding, then the payload and some trailing bytes. */
export function wrapInBzImage(payload: Buffer, options: { version?: number; payloadOffset?: number } = {}): Buffer {
  const setup = Buffer.alloc(2 * 512);
  setup[0x1f1] = 1;
  setup.write('HdrS', 0x202, 'latin1');
  setup.writeUInt16LE(options.version ?? 0x020f, 0x206);
  const payloadOffset = options.payloadOffset ?? 0x3c0;
  setup.writeUInt32LE(payloadOffset, 0x248);
  setup.writeUInt32LE(payload.length, 0x24c);
  return Buffer.concat([setup, Buffer.alloc(payloadOffset, 0xcc), payload, Buffer.alloc(512, 0)]);
}

export async function syntheticBzImage(config: string | undefined, format: PayloadCompression): Promise<Buffer> {
  return wrapInBzImage(await compressPayload(syntheticVmlinux(config), format));
}
