/**
 * The guest's RAM as the host sees it: the file QEMU's memory backend maps
 * shared (qemu-args.ts guestRamArgs). A page whose guest-physical frame the
 * agent named (PAGE_FRAMES) is read or written here at offset frame × 4096 —
 * a memory copy on the host, where the bulk port moves every byte through
 * the emulated guest.
 *
 * The offset is the guest-physical address only below 4 GiB, where the PC
 * maps RAM linearly from 0: the file is refused beyond PC_LINEAR_RAM_MAX_MIB,
 * and a frame outside the file is an error, never a read of something else.
 *
 * Synchronous reads and writes on purpose: the file is on a tmpfs, each call
 * is a copy of memory, and a run of contiguous frames is one call.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { AgentError } from '../errors.ts';
import { PC_LINEAR_RAM_MAX_MIB } from '../x86/pc-memory.ts';

export const GUEST_PAGE_BYTES = 4096;

export class GuestRam {
  private fd: number | undefined;

  private constructor(
    readonly file: string,
    readonly bytes: number,
    fd: number,
  ) {
    this.fd = fd;
  }

  /** Opens the RAM file of a running machine (QEMU created it at `bytes`). */
  static open(file: string, bytes: number): GuestRam {
    if (bytes > PC_LINEAR_RAM_MAX_MIB * 1024 * 1024)
      throw new RangeError(`guest RAM of ${bytes} bytes reaches above 4 GiB: frame × 4096 is no longer its file offset`);
    const fd = openSync(file, 'r+');
    try {
      const size = fstatSync(fd).size;
      if (size !== bytes) throw new AgentError(`guest RAM file ${file} holds ${size} bytes, the machine has ${bytes}`, 'guest-ram', undefined);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    return new GuestRam(file, bytes, fd);
  }

  /**
   * Copies page i of `frames` (frame 0: skipped) into `out` at
   * `outOffset + i × 4096`; returns the indexes it skipped.
   */
  readPages(frames: Uint32Array, out: Buffer, outOffset: number): number[] {
    return this.eachRun(frames, (frame, index, count) => {
      const length = count * GUEST_PAGE_BYTES;
      const got = readSync(this.openFd(), out, outOffset + index * GUEST_PAGE_BYTES, length, frame * GUEST_PAGE_BYTES);
      if (got !== length)
        throw new AgentError(`guest RAM file ${this.file}: ${got} of ${length} bytes at frame 0x${frame.toString(16)}`, 'guest-ram', undefined);
    });
  }

  /** Writes page i of `data` (from `dataOffset + i × 4096`) to frame i (0: skipped); returns the indexes it skipped. */
  writePages(frames: Uint32Array, data: Uint8Array, dataOffset: number): number[] {
    return this.eachRun(frames, (frame, index, count) => {
      const length = count * GUEST_PAGE_BYTES;
      const put = writeSync(this.openFd(), data, dataOffset + index * GUEST_PAGE_BYTES, length, frame * GUEST_PAGE_BYTES);
      if (put !== length)
        throw new AgentError(`guest RAM file ${this.file}: wrote ${put} of ${length} bytes at frame 0x${frame.toString(16)}`, 'guest-ram', undefined);
    });
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private openFd(): number {
    if (this.fd === undefined) throw new AgentError(`guest RAM file ${this.file} is closed`, 'guest-ram', undefined);
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
