/**
 * The release a bzImage carries, read from its x86 boot-protocol setup
 * header without booting it (Documentation/arch/x86/boot.rst): the header
 * sits at 0x1f1, "HdrS" at 0x202 marks protocol 2.00 or later (its version
 * at 0x206), and `kernel_version` at 0x20e, when non-zero, is an offset from
 * 0x200 to a NUL-terminated string inside the setup code — "6.1.0-56-cloud-
 * amd64 (debian-kernel@lists.debian.org) #1 SMP …", the release being its
 * first word, as `uname -r` gives it.
 *
 * Pure, and written for hostile input: a user's file need not be a kernel,
 * so every offset is checked against the bytes there are and against the
 * setup code's own size, and the string against a length bound and
 * printable characters.
 */

/** Where the header lives and what it holds. */
const SETUP_SECTS = 0x1f1;
const HEADER_MAGIC = 0x202;
const PROTOCOL_VERSION = 0x206;
const KERNEL_VERSION = 0x20e;
/** The longest version string taken: the kernel's own is UTS_RELEASE, the builder and the date, well under this. */
export const KERNEL_VERSION_MAX_BYTES = 512;
/** The setup code is at most (255 + 1) sectors: the bytes a reader needs from the front of the file. */
export const SETUP_MAX_BYTES = 256 * 512;

export interface BzImageHeader {
  /** boot protocol version, e.g. "2.15" */
  protocol: string;
  /** the whole kernel_version string */
  kernelVersion: string;
  /** its first word: the release `uname -r` prints */
  release: string;
}

/** Why a file yields no release: the field that did not hold. */
export type BzImageHeaderResult = { ok: true; header: BzImageHeader } | { ok: false; reason: string };

/** Parses the setup header at the front of `image` (the first SETUP_MAX_BYTES suffice). */
export function parseBzImageHeader(image: Uint8Array): BzImageHeaderResult {
  const bytes = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  if (bytes.length < KERNEL_VERSION + 2) return { ok: false, reason: `${bytes.length} bytes: too short for an x86 setup header (needs ${KERNEL_VERSION + 2})` };
  if (bytes.toString('latin1', HEADER_MAGIC, HEADER_MAGIC + 4) !== 'HdrS')
    return { ok: false, reason: 'no "HdrS" at 0x202: not a bzImage of boot protocol 2.00 or later' };
  const version = bytes.readUInt16LE(PROTOCOL_VERSION);
  const protocol = `${version >> 8}.${String(version & 0xff).padStart(2, '0')}`;
  if (version < 0x0200) return { ok: false, reason: `boot protocol ${protocol} at 0x206: kernel_version needs 2.00 or later` };
  const pointer = bytes.readUInt16LE(KERNEL_VERSION);
  if (pointer === 0) return { ok: false, reason: 'kernel_version at 0x20e is 0: the image names no version' };
  // setup_sects 0 means 4 (boot.rst); the setup code is those sectors plus the boot sector.
  const setupBytes = ((bytes[SETUP_SECTS] || 4) + 1) * 512;
  const start = pointer + 0x200;
  if (start >= setupBytes)
    return { ok: false, reason: `kernel_version at 0x20e points to 0x${start.toString(16)}, outside the setup code (0x${setupBytes.toString(16)} bytes)` };
  if (start >= bytes.length) return { ok: false, reason: `kernel_version at 0x20e points to 0x${start.toString(16)}, past the ${bytes.length} bytes given` };
  const end = bytes.indexOf(0, start);
  const limit = Math.min(setupBytes, bytes.length, start + KERNEL_VERSION_MAX_BYTES);
  if (end === -1 || end > limit) return { ok: false, reason: `kernel_version at 0x${start.toString(16)} has no NUL within ${limit - start} bytes` };
  const kernelVersion = bytes.toString('latin1', start, end);
  if (kernelVersion.length === 0) return { ok: false, reason: `kernel_version at 0x${start.toString(16)} is empty` };
  if (!/^[\x20-\x7e]+$/.test(kernelVersion)) return { ok: false, reason: `kernel_version at 0x${start.toString(16)} is not printable text` };
  const release = kernelVersion.split(' ')[0]!;
  if (!/^\d+\.\d+[\w.+~-]*$/.test(release)) return { ok: false, reason: `kernel_version "${kernelVersion.slice(0, 80)}" does not start with a release (N.N…)` };
  return { ok: true, header: { protocol, kernelVersion, release } };
}
