/**
 * The kernel's own .config, read out of its bzImage the way the kernel's
 * scripts/extract-ikconfig does: a kernel built with CONFIG_IKCONFIG carries
 * its config, gzip-compressed, between the markers "IKCFG_ST" and "IKCFG_ED"
 * inside vmlinux — and in a bzImage that vmlinux is itself the compressed
 * payload the x86 boot protocol's setup header points at.
 *
 * gzip is read with node:zlib; every other payload compression with the
 * host's own tool (xz, lz4, zstd, bzip2, lzop), and a missing tool is
 * reported by name rather than guessed around.
 */
import { readFile } from 'node:fs/promises';
import { inflateRawSync } from 'node:zlib';
import { execa } from 'execa';
import { CrhError } from '../errors.ts';

/** Payload compressions the x86 boot code supports (CONFIG_KERNEL_*), by the magic each starts with. */
export type PayloadCompression = 'gzip' | 'xz' | 'lzma' | 'bzip2' | 'lzo' | 'lz4' | 'zstd';

const MAGICS: ReadonlyArray<[PayloadCompression, readonly number[]]> = [
  ['gzip', [0x1f, 0x8b]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['lzo', [0x89, 0x4c, 0x5a, 0x4f]],
  ['lz4', [0x02, 0x21, 0x4c, 0x18]], // the legacy frame `lz4 -l` writes
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
  ['lzma', [0x5d, 0x00, 0x00]],
];

/** The host tool that decompresses each non-gzip format to stdout. */
const TOOLS: Readonly<Record<Exclude<PayloadCompression, 'gzip'>, { command: string; args: string[]; package: string }>> = {
  xz: { command: 'xz', args: ['-dc'], package: 'xz-utils' },
  lzma: { command: 'xz', args: ['--format=lzma', '-dc'], package: 'xz-utils' },
  bzip2: { command: 'bzip2', args: ['-dc'], package: 'bzip2' },
  lzo: { command: 'lzop', args: ['-dc'], package: 'lzop' },
  lz4: { command: 'lz4', args: ['-dc'], package: 'lz4' },
  zstd: { command: 'zstd', args: ['-dc'], package: 'zstd' },
};

export interface SetupHeader {
  /** boot protocol version, e.g. 0x020f */
  version: number;
  /** offset of the compressed payload in the file */
  payloadStart: number;
  payloadLength: number;
}

/**
 * The x86 boot protocol's setup header (Documentation/arch/x86/boot.rst):
 * "HdrS" at 0x202, the protocol version at 0x206, and from 2.08 on the
 * payload's offset (from the end of the setup code) and length at 0x248.
 * Undefined when `image` is no bzImage; throws when the header is too old
 * or points outside the file.
 */
export function readSetupHeader(image: Uint8Array): SetupHeader | undefined {
  const buf = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  if (buf.length < 0x250 || buf.toString('latin1', 0x202, 0x206) !== 'HdrS') return undefined;
  const version = buf.readUInt16LE(0x206);
  if (version < 0x0208) throw new RangeError(`boot protocol ${formatVersion(version)} predates payload_offset (2.08)`);
  // setup_sects = 0 means 4, for compatibility with ancient loaders.
  const setupSects = buf[0x1f1] || 4;
  const payloadStart = (setupSects + 1) * 512 + buf.readUInt32LE(0x248);
  const payloadLength = buf.readUInt32LE(0x24c);
  if (payloadStart + payloadLength > buf.length) {
    throw new RangeError(`payload at ${payloadStart}+${payloadLength} runs past the end of the file (${buf.length} bytes)`);
  }
  return { version, payloadStart, payloadLength };
}

export function detectCompression(data: Uint8Array): PayloadCompression | undefined {
  return MAGICS.find(([, magic]) => magic.every((b, i) => data[i] === b))?.[0];
}

/** Thrown when the payload cannot be decompressed here: unknown format, missing tool, corrupt data. */
export class PayloadError extends CrhError {
  override readonly name = 'PayloadError';
}

/**
 * The decompressed payload. Every format but gzip has its uncompressed size
 * appended as a little-endian u32 (kbuild's *_with_size rules); it is cut
 * off before the tool sees it and checked against what came out.
 */
export async function decompressPayload(payload: Uint8Array, format: PayloadCompression): Promise<Buffer> {
  if (format === 'gzip') return gunzipLenient(payload);
  const tool = TOOLS[format];
  const body = payload.subarray(0, payload.length - 4);
  const declared = Buffer.from(payload.buffer, payload.byteOffset + payload.length - 4, 4).readUInt32LE(0);
  const result = await execa(tool.command, tool.args, { input: body, encoding: 'buffer', reject: false, maxBuffer: 1 << 30 });
  if ((result as { code?: string }).code === 'ENOENT') {
    throw new PayloadError(`the payload is ${format}-compressed and ${tool.command} is not installed (Debian package ${tool.package})`);
  }
  if (result.exitCode !== 0) {
    const stderr = Buffer.from(result.stderr).toString('utf8').trim();
    throw new PayloadError(`${tool.command} failed on the ${format} payload: ${stderr.split('\n')[0]}`, {
      command: `${tool.command} ${tool.args.join(' ')}`,
      stderr,
    });
  }
  const out = Buffer.from(result.stdout);
  if (out.length !== declared) throw new PayloadError(`the ${format} payload declares ${declared} bytes but decompressed to ${out.length}`);
  return out;
}

/**
 * gzip without the trailing-garbage check node's gunzip makes: the header is
 * skipped by hand and the raw deflate stream inflated, which stops at its
 * own end (the kernel's markers and padding follow it).
 */
export function gunzipLenient(data: Uint8Array): Buffer {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length < 18 || buf[0] !== 0x1f || buf[1] !== 0x8b || buf[2] !== 8) throw new PayloadError('not a gzip (deflate) stream');
  const flags = buf[3]!;
  let at = 10;
  if (flags & 0x04) at += 2 + buf.readUInt16LE(at); // FEXTRA
  if (flags & 0x08) at = buf.indexOf(0, at) + 1; // FNAME
  if (flags & 0x10) at = buf.indexOf(0, at) + 1; // FCOMMENT
  if (flags & 0x02) at += 2; // FHCRC
  if (at <= 0 || at >= buf.length) throw new PayloadError('truncated gzip header');
  return inflateRawSync(buf.subarray(at));
}

const START = Buffer.from('IKCFG_ST', 'latin1');
const END = Buffer.from('IKCFG_ED', 'latin1');

/** The config text between IKCFG_ST and IKCFG_ED in a decompressed kernel, or undefined without the markers. */
export function findIkconfig(vmlinux: Uint8Array): string | undefined {
  const buf = Buffer.from(vmlinux.buffer, vmlinux.byteOffset, vmlinux.byteLength);
  // The marker string can appear elsewhere (extract-ikconfig itself tries
  // each): take the first occurrence followed by a config that inflates.
  for (let at = buf.indexOf(START); at >= 0; at = buf.indexOf(START, at + 1)) {
    const end = buf.indexOf(END, at + START.length);
    const gz = buf.subarray(at + START.length, end >= 0 ? end : undefined);
    try {
      const text = gunzipLenient(gz).toString('utf8');
      if (/^(# )?CONFIG_/m.test(text)) return text;
    } catch {
      // not this occurrence
    }
  }
  return undefined;
}

/** What reading a kernel's embedded config found. */
export type IkconfigResult =
  | { found: true; config: string; how: string }
  /** absent: the kernel was read and has no config in it; unreadable: it could not be read here (format, tool, file) */
  | { found: false; why: 'absent' | 'unreadable'; how: string };

/**
 * The config embedded in `image` (a bzImage, or an uncompressed vmlinux), or
 * why there is none: built without CONFIG_IKCONFIG, a payload format this
 * host cannot decompress, or a file that is no kernel.
 */
export async function extractIkconfig(image: Uint8Array): Promise<IkconfigResult> {
  let header: SetupHeader | undefined;
  try {
    header = readSetupHeader(image);
  } catch (error) {
    return { found: false, why: 'unreadable', how: `unreadable bzImage setup header: ${(error as Error).message}` };
  }
  if (!header) {
    const config = findIkconfig(image);
    return config
      ? { found: true, config, how: 'IKCONFIG in an uncompressed kernel image' }
      : { found: false, why: 'unreadable', how: 'not a bzImage (no "HdrS" setup header) and no IKCFG_ST marker in the file' };
  }
  const payload = image.subarray(header.payloadStart, header.payloadStart + header.payloadLength);
  const format = detectCompression(payload);
  if (!format) {
    const magic = Buffer.from(payload.subarray(0, 6)).toString('hex');
    return { found: false, why: 'unreadable', how: `bzImage payload in an unknown compression (starts ${magic})` };
  }
  let vmlinux: Buffer;
  try {
    vmlinux = await decompressPayload(payload, format);
  } catch (error) {
    return { found: false, why: 'unreadable', how: (error as Error).message };
  }
  const size = `${format} payload, ${header.payloadLength} → ${vmlinux.length} bytes`;
  const config = findIkconfig(vmlinux);
  return config
    ? { found: true, config, how: `IKCONFIG embedded in the bzImage (${size})` }
    : { found: false, why: 'absent', how: `no IKCFG_ST marker in the decompressed kernel (${size}): built without CONFIG_IKCONFIG` };
}

export async function extractIkconfigFile(file: string): Promise<IkconfigResult> {
  return extractIkconfig(await readFile(file));
}

function formatVersion(v: number): string {
  return `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`;
}
