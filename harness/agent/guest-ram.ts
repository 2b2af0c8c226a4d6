/**
 * The guest's RAM as the host sees it. A page whose guest-physical frame the
 * agent named (PAGE_FRAMES) is read or written at frame × 4096 from the start
 * of RAM — a memory copy on the host, where the bulk port moves every byte
 * through the emulated guest. Two ways in, one per way QEMU maps its RAM
 * (qemu-args.ts guestRamArgs):
 *
 * - shared: the file QEMU maps MAP_SHARED (a cold-booted machine's RAM on
 *   /dev/shm) is the RAM; read and written at offset frame × 4096;
 * - private: a machine started from saved state maps the saved RAM file
 *   MAP_PRIVATE (copy on write: nothing copied at start, the file never
 *   written), so the file is only the RAM as saved. The RAM is QEMU's
 *   mapping: /proc/QEMU_PID/mem at the mapping's address (found in
 *   /proc/QEMU_PID/maps by the file's device and inode) + frame × 4096, which
 *   the kernel resolves to the private copy of a page the guest wrote and to
 *   the file's page of one it did not; a write there breaks the copy on
 *   write in QEMU, never in the file.
 *
 * The offset is the guest-physical address only below 4 GiB, where the PC
 * maps RAM linearly from 0: RAM is refused beyond PC_LINEAR_RAM_MAX_MIB, and
 * a frame outside it is an error, never a read of something else.
 *
 * Synchronous reads and writes on purpose: each call is a copy of memory,
 * and a run of contiguous frames is one call.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { AgentError } from '../errors.ts';
import { PC_LINEAR_RAM_MAX_MIB } from '../x86/pc-memory.ts';

export const GUEST_PAGE_BYTES = 4096;

/** Where a running machine's RAM is for the host (machine.ts guestRam). */
export type GuestRamSource =
  /** a file QEMU maps shared: the file is the RAM */
  | { kind: 'shared-file'; file: string; bytes: number }
  /** a file QEMU maps private (copy on write): the RAM is QEMU process `pid`'s mapping of it */
  | { kind: 'private-mapping'; pid: number; file: string; bytes: number };

/** What a log line says about where page data goes. */
export function describeGuestRam(source: GuestRamSource): string {
  return source.kind === 'shared-file' ? source.file : `QEMU ${source.pid}'s private mapping of ${source.file}`;
}

export class GuestRam {
  private fd: number | undefined;

  private constructor(
    /** what is read and written: the RAM file, or /proc/PID/mem */
    readonly file: string,
    readonly bytes: number,
    fd: number,
    /** where frame 0 is in `file` */
    private readonly base: number,
  ) {
    this.fd = fd;
  }

  /** Opens guest RAM wherever `source` says it is. */
  static of(source: GuestRamSource): GuestRam {
    return source.kind === 'shared-file' ? GuestRam.open(source.file, source.bytes) : GuestRam.openMapping(source.pid, source.file, source.bytes);
  }

  /** Opens the RAM file of a running machine (QEMU created it at `bytes`). */
  static open(file: string, bytes: number): GuestRam {
    refuseAbove4G(bytes);
    const fd = openSync(file, 'r+');
    try {
      const size = fstatSync(fd).size;
      if (size !== bytes) throw new AgentError(`guest RAM file ${file} holds ${size} bytes, the machine has ${bytes}`, 'guest-ram', undefined);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    return new GuestRam(file, bytes, fd, 0);
  }

  /**
   * Opens the RAM of process `pid` that maps `file` (from offset 0, `bytes`
   * long) privately: through /proc/PID/mem, at the mapping's address.
   */
  static openMapping(pid: number, file: string, bytes: number): GuestRam {
    refuseAbove4G(bytes);
    const { dev, ino } = statSync(file);
    const mapsFile = `/proc/${pid}/maps`;
    const base = mappingBase(readFileSync(mapsFile, 'utf8'), { major: deviceMajor(dev), minor: deviceMinor(dev), inode: ino }, bytes);
    if (base === undefined)
      throw new AgentError(`${mapsFile} maps no ${bytes} bytes of ${file} (inode ${ino}) from its offset 0 in one piece`, 'guest-ram', undefined);
    const mem = `/proc/${pid}/mem`;
    return new GuestRam(mem, bytes, openSync(mem, 'r+'), base);
  }

  /**
   * Copies page i of `frames` (frame 0: skipped) into `out` at
   * `outOffset + i × 4096`; returns the indexes it skipped.
   */
  readPages(frames: Uint32Array, out: Buffer, outOffset: number): number[] {
    return this.eachRun(frames, (frame, index, count) => {
      const length = count * GUEST_PAGE_BYTES;
      const got = readSync(this.openFd(), out, outOffset + index * GUEST_PAGE_BYTES, length, this.base + frame * GUEST_PAGE_BYTES);
      if (got !== length) throw new AgentError(`guest RAM ${this.file}: ${got} of ${length} bytes at frame 0x${frame.toString(16)}`, 'guest-ram', undefined);
    });
  }

  /** Writes page i of `data` (from `dataOffset + i × 4096`) to frame i (0: skipped); returns the indexes it skipped. */
  writePages(frames: Uint32Array, data: Uint8Array, dataOffset: number): number[] {
    return this.eachRun(frames, (frame, index, count) => {
      const length = count * GUEST_PAGE_BYTES;
      const put = writeSync(this.openFd(), data, dataOffset + index * GUEST_PAGE_BYTES, length, this.base + frame * GUEST_PAGE_BYTES);
      if (put !== length)
        throw new AgentError(`guest RAM ${this.file}: wrote ${put} of ${length} bytes at frame 0x${frame.toString(16)}`, 'guest-ram', undefined);
    });
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private openFd(): number {
    if (this.fd === undefined) throw new AgentError(`guest RAM ${this.file} is closed`, 'guest-ram', undefined);
    return this.fd;
  }

  /** Calls `move` once per run of consecutive pages in consecutive frames; returns the pages with frame 0. */
  private eachRun(frames: Uint32Array, move: (frame: number, index: number, count: number) => void): number[] {
    const skipped: number[] = [];
    const last = this.bytes / GUEST_PAGE_BYTES;
    for (let i = 0; i < frames.length;) {
      const frame = frames[i]!;
      if (frame === 0) {
        skipped.push(i++);
        continue;
      }
      let count = 1;
      while (i + count < frames.length && frames[i + count] === frame + count) count++;
      if (frame + count > last)
        throw new AgentError(
          `page frame 0x${(frame + count - 1).toString(16)} lies beyond guest RAM (${this.bytes} bytes in ${this.file})`,
          'guest-ram',
          undefined,
        );
      move(frame, i, count);
      i += count;
    }
    return skipped;
  }
}

function refuseAbove4G(bytes: number): void {
  if (bytes > PC_LINEAR_RAM_MAX_MIB * 1024 * 1024)
    throw new RangeError(`guest RAM of ${bytes} bytes reaches above 4 GiB: frame × 4096 is no longer its offset`);
}

/** A file's identity as /proc/PID/maps shows it. */
export interface MappedFileId {
  major: number;
  minor: number;
  inode: number;
}

/** Linux's dev_t split (the kernel's new_decode_dev, as glibc's major()/minor()). */
export function deviceMajor(dev: number): number {
  return Number(((BigInt(dev) >> 8n) & 0xfffn) | ((BigInt(dev) >> 32n) & ~0xfffn));
}

export function deviceMinor(dev: number): number {
  return Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & ~0xffn));
}

const MAPS_LINE = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)/;

/**
 * The address at which `maps` (a /proc/PID/maps text) has offset 0 of the
 * file `id`, when its mappings of that file cover offsets [0, bytes) without
 * a gap at one address — else undefined (not mapped, mapped in pieces at
 * different places, or shorter).
 */
export function mappingBase(maps: string, id: MappedFileId, bytes: number): number | undefined {
  const pieces: Array<{ start: bigint; end: bigint; offset: bigint }> = [];
  for (const line of maps.split('\n')) {
    const m = MAPS_LINE.exec(line);
    if (!m || Number(m[6]) !== id.inode || parseInt(m[4]!, 16) !== id.major || parseInt(m[5]!, 16) !== id.minor) continue;
    pieces.push({ start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`), offset: BigInt(`0x${m[3]}`) });
  }
  const bases = new Set(pieces.map((p) => p.start - p.offset));
  if (bases.size !== 1) return undefined;
  const [base] = bases;
  // Covered from offset 0 to `bytes`, piece after piece.
  let covered = 0n;
  for (const p of pieces.sort((a, b) => (a.offset < b.offset ? -1 : 1))) {
    if (p.offset > covered) return undefined;
    if (p.offset + (p.end - p.start) > covered) covered = p.offset + (p.end - p.start);
  }
  if (covered < BigInt(bytes) || base! > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
  return Number(base);
}
