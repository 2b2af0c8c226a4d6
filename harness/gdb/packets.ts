/**
 * Framing of the GDB Remote Serial Protocol: packets `$payload#cc`, acks `+`
 * and `-`, notifications `%payload#cc`. Pure and binary-safe: payloads are
 * Buffers (latin1 where they are text), because X packets and qXfer replies
 * carry raw bytes.
 *
 * Also home of GdbError, the one error type every gdb/ module throws, so the
 * parsers below the client need not import the client.
 */
import { constants } from 'node:os';
import { CrhError } from '../errors.ts';

/** The characters a payload may not carry literally; each is sent as `}` + (byte ^ 0x20). */
const ESCAPED = new Set([0x23 /* # */, 0x24 /* $ */, 0x7d /* } */, 0x2a /* * */]);
const ESCAPE = 0x7d;
const RUN_LENGTH = 0x2a;
/** Beyond this a peer is not speaking RSP (QEMU's own limit is 4 KiB); stop buffering. */
export const MAX_PACKET_BYTES = 16 * 1024 * 1024;

/** An error from the gdbstub or the protocol, with the packet sent and the reply that refused it. */
export class GdbError extends CrhError {
  override readonly name: string = 'GdbError';
  /** the packet sent, as printable text (truncated when long) */
  readonly packet: string | undefined;
  /** the reply, as printable text (truncated when long) */
  readonly reply: string | undefined;
  /** for an `E NN` reply: NN, read as a decimal errno the way QEMU writes it */
  readonly errno: number | undefined;

  constructor(
    message: string,
    context: { packet?: string | Buffer; reply?: string | Buffer; errno?: number } = {},
    details: Record<string, string> = {},
    options?: { cause?: unknown },
  ) {
    const packet = context.packet === undefined ? undefined : printable(context.packet);
    const reply = context.reply === undefined ? undefined : printable(context.reply);
    super(message, { ...(packet !== undefined ? { packet } : {}), ...(reply !== undefined ? { reply } : {}), ...details }, options);
    this.packet = packet;
    this.reply = reply;
    this.errno = context.errno;
  }
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, num]) => [num, name]));

/**
 * "EINVAL" for the NN of an `E NN` reply. The protocol calls NN hex, but
 * QEMU writes errno values in decimal ("E22" for EINVAL, "E14" for EFAULT),
 * so it is named as decimal.
 */
export function errnoName(code: number): string {
  return ERRNO_NAMES.get(code) ?? `errno ${code}`;
}

/** Sum of the bytes mod 256: the two hex digits after `#`. */
export function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) sum += bytes[i]!;
  return sum & 0xff;
}

/** Escapes the four bytes a payload may not carry literally. */
export function escapePayload(payload: Uint8Array): Buffer {
  let extra = 0;
  for (const b of payload) if (ESCAPED.has(b)) extra++;
  if (extra === 0) return Buffer.from(payload);
  const out = Buffer.alloc(payload.length + extra);
  let at = 0;
  for (const b of payload) {
    if (ESCAPED.has(b)) {
      out[at++] = ESCAPE;
      out[at++] = b ^ 0x20;
    } else {
      out[at++] = b;
    }
  }
  return out;
}

/** How many bytes `escapePayload` makes of one byte. */
export function escapedSize(byte: number): 1 | 2 {
  return ESCAPED.has(byte) ? 2 : 1;
}

/** `$` + escaped payload + `#` + checksum of the escaped bytes. Strings are taken as latin1. */
export function encodePacket(payload: string | Uint8Array): Buffer {
  const body = escapePayload(typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload);
  return Buffer.concat([Buffer.from('$', 'latin1'), body, Buffer.from(`#${hex2(checksum(body))}`, 'latin1')]);
}

/**
 * Undoes escapes and run-length encoding, in one pass as GDB's read_frame
 * does: `}` x is x ^ 0x20; `*` n repeats the byte before it n - 29 more times
 * (the count byte itself is never escaped).
 */
export function decodePayload(body: Uint8Array): Buffer {
  const bytes = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  // Most replies (hex memory, registers) carry neither: copy them as they are.
  if (bytes.indexOf(ESCAPE) < 0 && bytes.indexOf(RUN_LENGTH) < 0) return bytes;
  let out = Buffer.alloc(body.length * 2);
  let at = 0;
  const put = (b: number): void => {
    if (at === out.length) {
      const grown = Buffer.alloc(out.length * 2);
      out.copy(grown);
      out = grown;
    }
    out[at++] = b;
  };
  for (let i = 0; i < body.length; i++) {
    const b = body[i]!;
    if (b === ESCAPE) {
      const next = body[++i];
      if (next === undefined) throw new GdbError('packet ends inside an escape', { reply: Buffer.from(body) });
      put(next ^ 0x20);
    } else if (b === RUN_LENGTH) {
      const count = body[++i];
      if (count === undefined || at === 0 || count < 29) {
        throw new GdbError('malformed run-length encoding', { reply: Buffer.from(body) });
      }
      const last = out[at - 1]!;
      for (let n = 0; n < count - 29; n++) put(last);
    } else {
      put(b);
    }
  }
  return Buffer.from(out.subarray(0, at));
}

export type PacketEvent =
  | { type: 'ack' }
  | { type: 'nack' }
  /** a packet whose checksum matched; `payload` is unescaped and run-length decoded */
  | { type: 'packet'; payload: Buffer; raw: Buffer }
  /** `%name:...#cc` (non-stop mode's asynchronous notifications), never acknowledged */
  | { type: 'notification'; payload: Buffer; raw: Buffer }
  /** a packet or notification whose checksum did not match: in ack mode the receiver answers `-` */
  | { type: 'bad-checksum'; kind: 'packet' | 'notification'; raw: Buffer; expected: number; actual: number }
  /** bytes outside any packet that are not `+` or `-` */
  | { type: 'junk'; bytes: Buffer };

type State =
  | { at: 'idle' }
  | { at: 'body'; kind: 'packet' | 'notification'; start: number }
  | { at: 'checksum'; kind: 'packet' | 'notification'; start: number; hash: number };

/**
 * A streaming parser: push chunks split anywhere, get whole events back in
 * order. It keeps no more than one partial packet.
 */
export class PacketParser {
  private buffer: Buffer = Buffer.alloc(0);
  private state: State = { at: 'idle' };
  /** where scanning resumes in `buffer` */
  private scan = 0;

  constructor(private readonly maxPacketBytes = MAX_PACKET_BYTES) {}

  push(chunk: Uint8Array): PacketEvent[] {
    // Chunks are views, never copied: the parser only slices, and socket chunks are not reused.
    this.buffer = this.buffer.length === 0 ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength) : Buffer.concat([this.buffer, chunk]);
    const events: PacketEvent[] = [];
    let junkStart = -1;
    const flushJunk = (end: number): void => {
      if (junkStart >= 0) events.push({ type: 'junk', bytes: Buffer.from(this.buffer.subarray(junkStart, end)) });
      junkStart = -1;
    };
    let consumed = 0;
    for (let i = this.scan; i < this.buffer.length; i++) {
      const b = this.buffer[i]!;
      const state = this.state;
      if (state.at === 'idle') {
        if (b === 0x2b /* + */ || b === 0x2d /* - */ || b === 0x24 /* $ */ || b === 0x25 /* % */) flushJunk(i);
        if (b === 0x2b) events.push({ type: 'ack' });
        else if (b === 0x2d) events.push({ type: 'nack' });
        else if (b === 0x24) this.state = { at: 'body', kind: 'packet', start: i };
        else if (b === 0x25) this.state = { at: 'body', kind: 'notification', start: i };
        else if (junkStart < 0) junkStart = i;
        if (this.state.at === 'idle') consumed = i + 1;
      } else if (state.at === 'body') {
        // Jump to the '#' rather than stepping through the body byte by byte.
        const hash = this.buffer.indexOf(0x23 /* # */, i);
        const end = hash < 0 ? this.buffer.length : hash;
        if (end - state.start > this.maxPacketBytes) {
          throw new GdbError(`packet longer than ${this.maxPacketBytes} bytes without an end`, { reply: this.buffer.subarray(state.start, state.start + 200) });
        }
        if (hash < 0) i = this.buffer.length - 1;
        else {
          this.state = { at: 'checksum', kind: state.kind, start: state.start, hash };
          i = hash;
        }
      } else if (i === state.hash + 2) {
        const raw = this.buffer.subarray(state.start, i + 1);
        events.push(this.finish(state.kind, raw));
        this.state = { at: 'idle' };
        consumed = i + 1;
      }
    }
    flushJunk(this.buffer.length);
    if (this.state.at === 'idle') consumed = this.buffer.length;
    this.buffer = this.buffer.subarray(consumed);
    this.scan = this.buffer.length;
    if (this.state.at !== 'idle') {
      // Rebase the partial packet's positions onto the trimmed buffer.
      const shift = consumed;
      this.state =
        this.state.at === 'body'
          ? { ...this.state, start: this.state.start - shift }
          : { ...this.state, start: this.state.start - shift, hash: this.state.hash - shift };
    }
    return events;
  }

  private finish(kind: 'packet' | 'notification', raw: Buffer): PacketEvent {
    const body = raw.subarray(1, raw.length - 3);
    const digits = raw.toString('latin1', raw.length - 2);
    const expected = /^[0-9a-fA-F]{2}$/.test(digits) ? parseInt(digits, 16) : -1;
    const actual = checksum(body);
    if (expected !== actual) return { type: 'bad-checksum', kind, raw, expected, actual };
    return { type: kind, payload: decodePayload(body), raw };
  }
}

/** Two lowercase hex digits. */
export function hex2(byte: number): string {
  return byte.toString(16).padStart(2, '0');
}

const PRINTABLE_LIMIT = 300;

/**
 * A payload as a log line: printable ASCII kept, other bytes as \xNN, and
 * long payloads cut with their length.
 */
export function printable(data: string | Uint8Array, limit = PRINTABLE_LIMIT): string {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'latin1') : Buffer.from(data);
  const shown = bytes.subarray(0, limit);
  let text = '';
  for (const b of shown) text += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${hex2(b)}`;
  return bytes.length > limit ? `${text}... (${bytes.length} bytes)` : text;
}

/** Bytes from hex digits (either case); undefined when the text is not whole hex bytes. */
export function decodeHex(text: string): Buffer | undefined {
  if (text.length % 2 !== 0) return undefined;
  // Buffer stops at the first pair that is not hex: a short result means bad input.
  const bytes = Buffer.from(text, 'hex');
  return bytes.length * 2 === text.length ? bytes : undefined;
}

/** Lowercase hex digits of bytes. */
export function encodeHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/** A little-endian unsigned value (RSP sends registers in target byte order; x86 is little-endian). */
export function littleEndian(bytes: Uint8Array): bigint {
  let value = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[i]!);
  return value;
}

/** `value` as `size` little-endian bytes; undefined when it does not fit. */
export function toLittleEndian(value: bigint, size: number): Buffer | undefined {
  if (value < 0n || value >> BigInt(size * 8) !== 0n) return undefined;
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i++) out[i] = Number((value >> BigInt(i * 8)) & 0xffn);
  return out;
}
