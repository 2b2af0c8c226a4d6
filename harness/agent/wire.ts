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
 * frames anywhere.
 */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const frames: Frame[] = [];
    for (;;) {
      if (this.pending.length < 4) break;
      const length = this.pending.readUInt32LE(0);
      if (length < 8 || length > MAX_FRAME_BYTES) throw new WireError(`invalid frame length ${length}`);
      if (this.pending.length < 4 + length) break;
      frames.push({
        id: this.pending.readUInt32LE(4),
        op: this.pending.readUInt16LE(8),
        word: this.pending.readUInt16LE(10),
        payload: this.pending.subarray(FRAME_HEADER_BYTES, 4 + length),
      });
      this.pending = this.pending.subarray(4 + length);
    }
    return frames;
  }

  /** Bytes received that do not yet form a whole frame. */
  get buffered(): number {
    return this.pending.length;
  }
}
