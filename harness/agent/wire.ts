/**
 * Byte-level encoding of the agent protocol (docs/agent-protocol.md):
 * little-endian integers, u32-length-prefixed strings and byte strings,
 * u32-count-prefixed arrays, and the frame header.
 */

/** Largest frame either side accepts (the agent exits on larger ones). */
export const MAX_FRAME_BYTES = 256 * 1024 * 1024;
export const FRAME_HEADER_BYTES = 12;

export class WireError extends Error {
  override readonly name = 'WireError';
}

/** Appends protocol values; `finish()` returns the payload. */
export class PayloadWriter {
  private readonly chunks: Buffer[] = [];

  u16(value: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(value);
    this.chunks.push(b);
    return this;
  }

  u32(value: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value);
    this.chunks.push(b);
    return this;
  }

  u64(value: bigint | number): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(value)));
    this.chunks.push(b);
    return this;
  }

  bytes(value: Uint8Array): this {
    this.u32(value.length);
    this.chunks.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
    return this;
  }

  string(value: string): this {
    return this.bytes(Buffer.from(value, 'utf8'));
  }

  strings(values: readonly string[]): this {
    this.u32(values.length);
    for (const v of values) this.string(v);
    return this;
  }

  raw(value: Uint8Array): this {
    this.chunks.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
    return this;
  }

  finish(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** Reads protocol values with bounds checks; every overrun is a WireError naming the field. */
export class PayloadReader {
  private offset = 0;

  constructor(private readonly buf: Buffer) {}

  private take(n: number, field: string): Buffer {
    if (n < 0 || this.offset + n > this.buf.length) {
      throw new WireError(`truncated payload reading ${field}: need ${n} bytes at ${this.offset}, have ${this.buf.length - this.offset}`);
    }
    const out = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return out;
  }

  u16(field: string): number {
    return this.take(2, field).readUInt16LE();
  }

  u32(field: string): number {
    return this.take(4, field).readUInt32LE();
  }

  i32(field: string): number {
    return this.take(4, field).readInt32LE();
  }

  u64(field: string): bigint {
    return this.take(8, field).readBigUInt64LE();
  }

  i64(field: string): bigint {
    return this.take(8, field).readBigInt64LE();
  }

  bytes(field: string): Buffer {
    return this.take(this.u32(`${field}.length`), field);
  }

  string(field: string): string {
    return this.bytes(field).toString('utf8');
  }

  array<T>(field: string, readOne: (r: PayloadReader, index: number) => T): T[] {
    const count = this.u32(`${field}.count`);
    const out: T[] = [];
    for (let i = 0; i < count; i++) out.push(readOne(this, i));
    return out;
  }

  rest(): Buffer {
    return this.take(this.buf.length - this.offset, 'rest');
  }

  get remaining(): number {
    return this.buf.length - this.offset;
  }

  /** Fails when bytes are left over: a response longer than its op defines is a protocol error. */
  end(what: string): void {
    if (this.remaining !== 0) throw new WireError(`${this.remaining} unexpected trailing bytes after ${what}`);
  }
}

export interface Frame {
  id: number;
  op: number;
  /** flags in requests, status in responses */
  word: number;
  payload: Buffer;
}

export function encodeFrame(frame: Frame): Buffer {
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32LE(8 + frame.payload.length, 0);
  header.writeUInt32LE(frame.id >>> 0, 4);
  header.writeUInt16LE(frame.op, 8);
  header.writeUInt16LE(frame.word, 10);
  return Buffer.concat([header, frame.payload]);
}

/**
 * Reassembles frames from a byte stream whose chunks may split or join
 * frames anywhere. The chunks are kept in a list and each byte is copied at
 * most once, into the frame it belongs to: a 100 MiB frame arriving in 64 KiB
 * reads costs 100 MiB of copying, not the 80 GiB that re-concatenating the
 * pending bytes on every read would.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  /** index of the first chunk still holding unread bytes (consumed ones are dropped in batches) */
  private head = 0;
  private length = 0;
  /** the whole size (length field included) of the frame being assembled, once its length field is in */
  private expected: number | undefined;

  push(chunk: Buffer): Frame[] {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.length += chunk.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      if (this.expected === undefined) {
        if (this.length < 4) break;
        const length = this.peek(4).readUInt32LE(0);
        if (length < 8 || length > MAX_FRAME_BYTES) throw new WireError(`invalid frame length ${length} (the limit is ${MAX_FRAME_BYTES})`);
        this.expected = 4 + length;
      }
      if (this.length < this.expected) break;
      const bytes = this.take(this.expected);
      this.expected = undefined;
      frames.push({
        id: bytes.readUInt32LE(4),
        op: bytes.readUInt16LE(8),
        word: bytes.readUInt16LE(10),
        payload: bytes.subarray(FRAME_HEADER_BYTES),
      });
    }
    return frames;
  }

  /** Bytes received that do not yet form a whole frame. */
  get buffered(): number {
    return this.length;
  }

  /** The first `n` buffered bytes, without consuming them (copies only when they straddle chunks). */
  private peek(n: number): Buffer {
    const first = this.chunks[this.head]!;
    if (first.length >= n) return first;
    const parts: Buffer[] = [];
    for (let i = this.head, got = 0; got < n; i++) {
      parts.push(this.chunks[i]!);
      got += this.chunks[i]!.length;
    }
    return Buffer.concat(parts).subarray(0, n);
  }

  /** Removes and returns the first `n` buffered bytes: a view when one chunk holds them, else one copy. */
  private take(n: number): Buffer {
    const first = this.chunks[this.head]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.head++;
      else this.chunks[this.head] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[this.head]!;
        const used = Math.min(c.length, n - at);
        c.copy(out, at, 0, used);
        at += used;
        if (used === c.length) this.head++;
        else this.chunks[this.head] = c.subarray(used);
      }
    }
    this.length -= n;
    // Drop consumed chunks now and then rather than shifting the array on every frame.
    if (this.head > 1024 || this.head === this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
    return out;
  }
}
