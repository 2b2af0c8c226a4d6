/**
 * The host end of the agent's bulk data port (docs/agent-protocol.md, "Bulk
 * data"): a byte stream — the unix socket of QEMU's virtio-serial chardev —
 * carrying page data as frames of a 16-byte header (magic "BULK", u32 tag,
 * u64 length) and the bytes. Requests and answers stay on the agent's SSH
 * channel; only their data moves here, once, unencrypted.
 *
 * The agent writes exactly one frame per READ_MEM_BULK it parses and
 * consumes exactly one per WRITE_MEM_BULK it sees, so frames are matched to
 * requests by order, and the tag checks it: a frame with an unexpected tag
 * or magic breaks the channel (every waiting and later read fails) rather
 * than hand one request's bytes to another.
 */
import net from 'node:net';
import { AgentError } from '../errors.ts';

export const BULK_MAGIC = 0x4b4c5542;
export const BULK_HEADER_BYTES = 16;
/** One frame's bound on the host: it is held in memory whole. */
export const BULK_FRAME_MAX_BYTES = 1024 * 1024 * 1024;
const CONNECT_MS = 5000;

interface ExpectedFrame {
  tag: number;
  resolve(data: Buffer): void;
  reject(error: Error): void;
}

export class BulkChannel {
  private readonly expected: ExpectedFrame[] = [];
  private header = Buffer.alloc(BULK_HEADER_BYTES);
  private headerFill = 0;
  private body: Buffer | undefined;
  private bodyFill = 0;
  private tagCounter = 0;
  private broken: Error | undefined;
  /** bytes moved, both ways (benchmarks report them) */
  bytesIn = 0;
  bytesOut = 0;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.fail(new AgentError(`bulk port: ${e.message}`, 'bulk', undefined)));
    socket.on('close', () => this.fail(new AgentError('bulk port closed', 'bulk', undefined)));
  }

  /** Connects to QEMU's end of the port (a chardev socket QEMU listens on). */
  static async connect(socketPath: string): Promise<BulkChannel> {
    const socket = net.connect(socketPath);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new AgentError(`bulk port ${socketPath}: no connection within ${CONNECT_MS} ms`, 'bulk', undefined)), CONNECT_MS);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(new AgentError(`bulk port ${socketPath}: ${e.message}`, 'bulk', undefined, {}, { cause: e }));
      });
    });
    return new BulkChannel(socket);
  }

  /** The reason the channel no longer carries frames, if it does not. */
  get failure(): Error | undefined {
    return this.broken;
  }

  /** A tag for the next request (u32, never 0). */
  nextTag(): number {
    this.tagCounter = (this.tagCounter % 0xffffffff) + 1;
    return this.tagCounter;
  }

  /** The data of the next frame the agent writes, which must carry `tag`. Register before sending the request. */
  expectFrame(tag: number): Promise<Buffer> {
    if (this.broken) return Promise.reject(this.broken);
    return new Promise<Buffer>((resolve, reject) => this.expected.push({ tag, resolve, reject }));
  }

  /** Withdraws the last expectation: the request was refused before its frame (ENOTCONN). */
  forgetFrame(tag: number): void {
    const last = this.expected.at(-1);
    if (last?.tag === tag) this.expected.pop()!.reject(new AgentError(`bulk frame ${tag} withdrawn`, 'bulk', undefined));
  }

  /** Puts one frame on the port for a WRITE_MEM_BULK tagged `tag`. */
  sendFrame(tag: number, parts: readonly Uint8Array[]): void {
    if (this.broken) throw this.broken;
    const length = parts.reduce((n, p) => n + p.length, 0);
    const header = Buffer.alloc(BULK_HEADER_BYTES);
    header.writeUInt32LE(BULK_MAGIC, 0);
    header.writeUInt32LE(tag, 4);
    header.writeBigUInt64LE(BigInt(length), 8);
    this.socket.write(header);
    for (const p of parts) this.socket.write(p);
    this.bytesOut += length;
  }

  /** Breaks the channel: waiting reads fail with `error`, and so does everything later. */
  fail(error: Error): void {
    this.broken ??= error;
    for (const e of this.expected.splice(0)) e.reject(this.broken);
  }

  close(): void {
    this.fail(new AgentError('bulk port closed by the host', 'bulk', undefined));
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && !this.broken) {
      if (this.body === undefined) {
        const take = Math.min(BULK_HEADER_BYTES - this.headerFill, chunk.length - at);
        chunk.copy(this.header, this.headerFill, at, at + take);
        this.headerFill += take;
        at += take;
        if (this.headerFill < BULK_HEADER_BYTES) return;
        this.headerFill = 0;
        this.startFrame();
        continue;
      }
      const take = Math.min(this.body.length - this.bodyFill, chunk.length - at);
      chunk.copy(this.body, this.bodyFill, at, at + take);
      this.bodyFill += take;
      at += take;
      if (this.bodyFill === this.body.length) this.endFrame();
    }
  }

  private startFrame(): void {
    const magic = this.header.readUInt32LE(0);
    const tag = this.header.readUInt32LE(4);
    const length = this.header.readBigUInt64LE(8);
    const want = this.expected[0];
    if (magic !== BULK_MAGIC) return this.fail(new AgentError(`bulk port: a frame header with magic 0x${magic.toString(16)}`, 'bulk', undefined));
    if (!want || want.tag !== tag)
      return this.fail(new AgentError(`bulk port: frame ${tag} arrived, ${want ? `frame ${want.tag}` : 'none'} was expected`, 'bulk', undefined));
    if (length > BigInt(BULK_FRAME_MAX_BYTES))
      return this.fail(new AgentError(`bulk port: frame ${tag} of ${length} bytes exceeds ${BULK_FRAME_MAX_BYTES}`, 'bulk', undefined));
    this.body = Buffer.allocUnsafe(Number(length));
    this.bodyFill = 0;
    if (this.body.length === 0) this.endFrame();
  }

  private endFrame(): void {
    const data = this.body!;
    this.body = undefined;
    this.bytesIn += data.length;
    this.expected.shift()!.resolve(data);
  }
}
