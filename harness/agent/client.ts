/**
 * Client of the in-guest agent (docs/agent-protocol.md). It runs over any
 * pair of byte streams — an SSH exec channel to the guest, or a local child
 * process in tests — and correlates responses to requests by id.
 */
import type { Readable, Writable } from 'node:stream';
import { AgentError, CrhError, TimeoutError } from '../errors.ts';
import { FrameDecoder, MAX_FRAME_BYTES, PayloadReader, PayloadWriter, encodeFrame, type Frame } from './wire.ts';
import { OPCODES, decodeResult, describeOp, encodeOp, type AgentOp, type HelloResult, type MemoryRange, type ResultOf } from './ops.ts';
import { errnoName } from './errno.ts';
import type { BulkChannel } from './bulk-channel.ts';
import type { GuestRam } from './guest-ram.ts';
import { batchThroughRam, pageAligned, readThroughRam, type RamAgent, type RamStats } from './ram-transfer.ts';
import { constants } from 'node:os';

/**
 * A WRITE_MEM at least this large goes over the bulk port when one is
 * attached; below it the extra frame costs more than the SSH bytes.
 */
export const BULK_MIN_BYTES = 16 * 1024;
/** READ_MEM's per-request slice when there is no bulk port. */
const SSH_READ_CHUNK_BYTES = 1024 * 1024;
/** One READ_MEM_BULK's bound (its frame is held in host memory whole). */
const BULK_READ_MAX_BYTES = 256 * 1024 * 1024;

export const PROTOCOL_VERSION = 1;

/** The agent's two ends as streams, plus how to close the channel. */
export interface AgentTransport {
  /** the agent's stdin */
  input: Writable;
  /** the agent's stdout */
  output: Readable;
  /** the agent's stderr, kept as a tail for error messages */
  stderr?: Readable;
  close(): Promise<void>;
}

interface Pending {
  op: string;
  resolve(frame: Frame): void;
  reject(error: Error): void;
}

/** Outcome of one sub-operation of a BATCH. */
export type BatchStep<O extends AgentOp = AgentOp> = { ok: true; op: O; result: ResultOf<O> } | { ok: false; op: O; errno: number; message: string };

const STDERR_TAIL_BYTES = 8192;
/**
 * How long a closed channel waits for the machine to say why. QEMU dying (or
 * the guest kernel panicking) closes the SSH channel first; the machine's
 * failure follows within milliseconds (its exit event, a panic line). Failing
 * at the EOF would report "agent closed its output" — a FAIL — for what is a
 * lost guest, infrastructure.
 */
export const GUEST_LOSS_GRACE_MS = 2000;

/** What a frame's u32 length counts besides the payload: id, op, flags/status. */
const FRAME_LENGTH_FIELD_BYTES = 8;

/**
 * How many consecutive sub-requests go in each BATCH frame so that every
 * frame stays within `maxFrameBytes` (the u32 length field: id, op, flags,
 * then the count and each sub-request with its u32 length). One sub-request
 * that alone exceeds the limit is refused, naming its size and the limit.
 */
export function batchSizes(subs: readonly Buffer[], maxFrameBytes: number): number[] {
  const budget = maxFrameBytes - FRAME_LENGTH_FIELD_BYTES - 4;
  const sizes: number[] = [];
  let count = 0;
  let bytes = 0;
  subs.forEach((sub, i) => {
    const cost = 4 + sub.length;
    if (cost > budget)
      throw new AgentError(
        `BATCH: sub-request ${i} is ${sub.length} bytes, more than fits the agent's frame limit of ${maxFrameBytes} bytes`,
        'BATCH',
        undefined,
      );
    if (bytes + cost > budget) {
      sizes.push(count);
      count = 0;
      bytes = 0;
    }
    count++;
    bytes += cost;
  });
  if (count > 0) sizes.push(count);
  return sizes;
}

/** Consecutive ranges in groups of at most `max` bytes (a longer range alone is split). */
function groupRanges(ranges: readonly MemoryRange[], max: number): MemoryRange[][] {
  const groups: MemoryRange[][] = [];
  let group: MemoryRange[] = [];
  let bytes = 0;
  for (const r of ranges) {
    for (let off = 0; off < r.length;) {
      const length = Math.min(r.length - off, max - bytes);
      group.push({ address: r.address + BigInt(off), length });
      bytes += length;
      off += length;
      if (bytes === max) {
        groups.push(group);
        group = [];
        bytes = 0;
      }
    }
  }
  if (group.length > 0) groups.push(group);
  return groups;
}

export class AgentClient {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stderrTail = '';
  private closedReason: Error | undefined;
  /** the machine's failure promise (failWhen), consulted when the channel closes */
  private guestFailure: Promise<never> | undefined;
  /** Requests sent so far (a BATCH counts once). Cases use it to prove nothing reached the guest. */
  requestsSent = 0;
  /** Host-side bound on one request; RUN gets its own guest-side timeout on top. */
  requestTimeoutMs = 120_000;
  /** The agent's frame limit (guests/agent/agent.h MAX_FRAME); a BATCH larger than it is sent as several. Tests lower it. */
  maxFrameBytes = MAX_FRAME_BYTES;
  /** Called when a request times out; its text (e.g. where each vCPU is) goes into the error. */
  diagnose: (() => Promise<string>) | undefined;
  /** the bulk data port page data crosses, once attachBulk() succeeded */
  private bulk: BulkChannel | undefined;
  /** why there is no bulk port (attachBulk's refusal), for reports */
  bulkUnavailable: string | undefined = 'not attached';

  private constructor(private readonly transport: AgentTransport) {
    transport.output.on('data', (chunk: Buffer) => this.onData(chunk));
    transport.output.on('end', () => this.channelClosed(new AgentError('agent closed its output', 'transport', undefined, this.context())));
    transport.output.on('error', (e: Error) =>
      this.channelClosed(new AgentError(`agent output failed: ${e.message}`, 'transport', undefined, this.context(), { cause: e })),
    );
    transport.input.on('error', (e: Error) =>
      this.channelClosed(new AgentError(`agent input failed: ${e.message}`, 'transport', undefined, this.context(), { cause: e })),
    );
    transport.stderr?.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES);
    });
  }

  /** Wraps a transport and checks the agent speaks our protocol version. */
  static async open(transport: AgentTransport): Promise<{ client: AgentClient; hello: HelloResult }> {
    const client = new AgentClient(transport);
    try {
      const hello = await client.call({ op: 'HELLO' });
      if (hello.protocolVersion !== PROTOCOL_VERSION) {
        throw new AgentError(`agent speaks protocol ${hello.protocolVersion}, host speaks ${PROTOCOL_VERSION}`, 'HELLO', undefined);
      }
      return { client, hello };
    } catch (error) {
      await client.close();
      throw error;
    }
  }

  /** Sends one operation and decodes its result; an agent-side failure throws AgentError with the errno. */
  async call<O extends AgentOp>(op: O): Promise<ResultOf<O>> {
    const { opcode, payload } = encodeOp(op);
    const timeoutMs = this.requestTimeoutMs + (op.op === 'RUN' || op.op === 'STEP' ? op.timeoutMs : 0);
    const frame = await this.roundTrip(opcode, payload, op.op, timeoutMs);
    if (frame.word !== 0) throw this.errorFrom(op, frame.payload);
    return decodeResult(op, frame.payload);
  }

  /**
   * Moves page data over `channel` from now on: the agent opens its end, the
   * virtio-serial port named `portName`. False (with bulkUnavailable saying
   * why) when the guest has no such port — a kernel without virtio_console,
   * a machine without the device, another agent holding the port (EBUSY):
   * page data then keeps to the SSH channel.
   */
  async attachBulk(channel: BulkChannel, portName: string): Promise<boolean> {
    try {
      await this.call({ op: 'BULK_OPEN', name: portName });
    } catch (error) {
      if (!(error instanceof AgentError) || error.errno === undefined) throw error;
      this.bulkUnavailable = error.message;
      return false;
    }
    this.bulk = channel;
    this.bulkUnavailable = undefined;
    return true;
  }

  /** Keeps page data on SSH although a bulk port is attached (benchmarks compare the two in one session). */
  bulkSuspended = false;

  /** Whether page data goes over the bulk port. */
  get hasBulk(): boolean {
    return this.bulk !== undefined && this.bulk.failure === undefined && !this.bulkSuspended;
  }

  /** guest RAM as a file on the host, once attachGuestRam() was called */
  private ram: GuestRam | undefined;
  /** why page data does not go straight through guest RAM, for reports */
  guestRamUnavailable: string | undefined = 'not attached';
  /** Keeps page data off guest RAM although it is attached (benchmarks compare the paths in one session). */
  guestRamSuspended = false;
  /** pages moved in guest RAM, and pages handed back to the agent (no frame, or a frame that moved) */
  readonly ramStats: RamStats = { pagesRead: 0, pagesWritten: 0, pagesThroughAgent: 0 };

  /**
   * Moves whole pages of page data through `ram`, the machine's guest RAM
   * file (ram-transfer.ts): the agent names the frames, the host copies.
   */
  attachGuestRam(ram: GuestRam): void {
    this.ram = ram;
    this.guestRamUnavailable = undefined;
  }

  /** Whether whole pages go straight through guest RAM. */
  get hasGuestRam(): boolean {
    return this.ram !== undefined && !this.guestRamSuspended;
  }

  /** The path page data takes now (reports and benchmarks print it). */
  get dataPath(): 'guest-ram' | 'bulk' | 'ssh' {
    return this.hasGuestRam ? 'guest-ram' : this.hasBulk ? 'bulk' : 'ssh';
  }

  private get ramAgent(): RamAgent {
    return {
      frames: (op) => this.call(op),
      readThroughAgent: (pid, ranges) => this.readThroughAgent(pid, ranges),
      batchThroughAgent: (ops) => this.batchThroughAgent(ops),
    };
  }

  /**
   * The bytes of `ranges` of a stopped tracee's memory, concatenated: whole
   * pages straight from guest RAM when it is attached, else one
   * READ_MEM_BULK per 256 MiB over the bulk port, else READ_MEM slices over SSH.
   */
  async readMemory(pid: number, ranges: readonly MemoryRange[]): Promise<Buffer> {
    if (this.hasGuestRam && ranges.every(pageAligned)) return readThroughRam(this.ramAgent, this.ram!, this.ramStats, pid, ranges);
    return this.readThroughAgent(pid, ranges);
  }

  /** readMemory through the agent: the bulk port, else SSH. */
  private async readThroughAgent(pid: number, ranges: readonly MemoryRange[]): Promise<Buffer> {
    const total = ranges.reduce((n, r) => n + r.length, 0);
    const out = Buffer.allocUnsafe(total);
    let at = 0;
    const bulk = this.hasBulk ? this.bulk! : undefined;
    if (!bulk) {
      for (const r of ranges) {
        for (let off = 0; off < r.length; off += SSH_READ_CHUNK_BYTES) {
          const length = Math.min(SSH_READ_CHUNK_BYTES, r.length - off);
          (await this.call({ op: 'READ_MEM', pid, address: r.address + BigInt(off), length })).copy(out, at);
          at += length;
        }
      }
      return out;
    }
    for (const group of groupRanges(ranges, BULK_READ_MAX_BYTES)) {
      const tag = bulk.nextTag();
      const frame = bulk.expectFrame(tag);
      frame.catch(() => {});
      try {
        await this.call({ op: 'READ_MEM_BULK', pid, tag, ranges: group });
      } catch (error) {
        // ENOTCONN: refused before any frame; anything else wrote its frame (zeros where unreadable) first.
        if (error instanceof AgentError && error.errno === constants.errno.ENOTCONN) bulk.forgetFrame(tag);
        else await frame.catch(() => {});
        throw error;
      }
      const data = await frame;
      data.copy(out, at);
      at += data.length;
    }
    if (at !== total) throw new AgentError(`READ_MEM_BULK pid ${pid}: ${at} bytes arrived for ${total} requested`, 'READ_MEM_BULK', undefined);
    return out;
  }

  /**
   * Runs operations in one BATCH request: the agent stops at the first
   * failure. Returns one step per executed op, the failing one last.
   * With a bulk port attached, a WRITE_MEM of BULK_MIN_BYTES or more is
   * sent as WRITE_MEM_BULK, its data on the port (the step still names the
   * WRITE_MEM): the plan says what is written, the client how. With guest
   * RAM attached, a WRITE_MEM of whole pages goes straight into guest RAM
   * (ram-transfer.ts batchThroughRam) instead.
   */
  async batch(ops: readonly AgentOp[]): Promise<BatchStep[]> {
    if (this.hasGuestRam) return (await batchThroughRam(this.ramAgent, this.ram!, this.ramStats, ops)) as BatchStep[];
    return this.batchThroughAgent(ops);
  }

  /** batch() through the agent: large writes on the bulk port, the rest on SSH. */
  private async batchThroughAgent(ops: readonly AgentOp[]): Promise<BatchStep[]> {
    if (ops.length === 0) return [];
    const bulk = this.hasBulk ? this.bulk! : undefined;
    const frames = new Map<number, { tag: number; data: Uint8Array }>();
    const subs = ops.map((op, i) => {
      let wire: AgentOp = op;
      if (bulk && op.op === 'WRITE_MEM' && op.data.length >= BULK_MIN_BYTES) {
        const tag = bulk.nextTag();
        frames.set(i, { tag, data: op.data });
        wire = { op: 'WRITE_MEM_BULK', pid: op.pid, tag, ranges: [{ address: op.address, length: op.data.length }] };
      }
      const { opcode, payload } = encodeOp(wire);
      return new PayloadWriter().u16(opcode).raw(payload).finish();
    });
    // A plan whose data outgrows one frame (a large image's memory) goes as
    // consecutive BATCHes, each within the limit. Stopping after the first
    // one that stops keeps BATCH's meaning: in order, up to the first failure.
    const steps: BatchStep[] = [];
    let from = 0;
    for (const count of batchSizes(subs, this.maxFrameBytes)) {
      const sent = this.batchFrame(ops.slice(from, from + count), subs.slice(from, from + count));
      // The request is on its way: its frames follow, in order (the agent consumes each, run or not).
      for (let i = from; i < from + count; i++) {
        const frame = frames.get(i);
        if (frame) bulk!.sendFrame(frame.tag, [frame.data]);
      }
      const part = await sent;
      steps.push(...part);
      if (part.length < count || part.at(-1)?.ok === false) break;
      from += count;
    }
    return steps;
  }

  /** One BATCH frame; its sub-requests are already encoded. */
  private async batchFrame(ops: readonly AgentOp[], requests: readonly Buffer[]): Promise<BatchStep[]> {
    const w = new PayloadWriter().u32(requests.length);
    for (const request of requests) w.bytes(request);
    const frame = await this.roundTrip(OPCODES.BATCH, w.finish(), 'BATCH', this.requestTimeoutMs);
    if (frame.word !== 0) throw this.errorFrom({ op: 'BATCH' }, frame.payload);
    const r = new PayloadReader(frame.payload);
    const completed = r.u32('completed');
    const subs = r.array('responses', (s) => s.bytes('sub_response'));
    r.end('BATCH response');
    if (subs.length > ops.length || completed > subs.length || completed < subs.length - 1) {
      throw new AgentError(`BATCH answered ${subs.length} responses (${completed} completed) for ${ops.length} ops`, 'BATCH', undefined);
    }
    return subs.map((sub, i): BatchStep => {
      const op = ops[i]!;
      const sr = new PayloadReader(sub);
      const status = sr.u16('status');
      const body = sr.rest();
      if (status === 0) return { ok: true, op, result: decodeResult(op, body) };
      const er = new PayloadReader(body);
      return { ok: false, op, errno: er.i32('errno'), message: er.string('message') };
    });
  }

  /**
   * Fails every pending and future request when `failure` rejects — the
   * machine's failure promise, so a dead guest ends a request at once. The
   * requests fail with an AgentError whose cause is the machine's error (a
   * BootError "guest lost"), so isInfraFailure counts them as infrastructure.
   */
  failWhen(failure: Promise<never>): void {
    this.guestFailure = failure;
    failure.catch((error: unknown) => this.fail(error instanceof Error ? error : new Error(String(error))));
  }

  /** Stderr the agent has written recently. */
  get stderr(): string {
    return this.stderrTail;
  }

  /** Ends the session: the agent kills what it spawned when its stdin closes. Idempotent. */
  async close(): Promise<void> {
    this.fail(new AgentError('agent client closed', 'transport', undefined));
    await this.transport.close();
  }

  private roundTrip(opcode: number, payload: Buffer, opName: string, timeoutMs: number): Promise<Frame> {
    if (this.closedReason) return Promise.reject(this.closedReason);
    // The agent exits on a frame over its limit: refuse it here, with the numbers, and keep the session.
    if (FRAME_LENGTH_FIELD_BYTES + payload.length > this.maxFrameBytes) {
      return Promise.reject(
        new AgentError(
          `${opName}: a request of ${payload.length} bytes does not fit the agent's frame limit of ${this.maxFrameBytes} bytes`,
          opName,
          undefined,
        ),
      );
    }
    const id = this.nextId++;
    this.requestsSent++;
    return new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.pending.delete(id)) return;
        void this.timedOut(opName, timeoutMs).then(reject);
      }, timeoutMs);
      this.pending.set(id, {
        op: opName,
        resolve: (frame) => {
          clearTimeout(timer);
          resolve(frame);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.transport.input.write(encodeFrame({ id, op: opcode, word: 0, payload }));
    });
  }

  private async timedOut(opName: string, timeoutMs: number): Promise<Error> {
    let diagnosis = '';
    try {
      diagnosis = (await this.diagnose?.()) ?? '';
    } catch (error) {
      diagnosis = `diagnosis failed: ${(error as Error).message}`;
    }
    // The agent may still answer later; the session is no longer trustworthy.
    const error = new TimeoutError(`${opName}: no answer from the agent within ${timeoutMs} ms`, { ...this.context(), diagnosis });
    this.fail(error);
    return error;
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.fail(new AgentError(`protocol violation: ${(e as Error).message}`, 'transport', undefined, this.context()));
      return;
    }
    for (const frame of frames) {
      const waiter = this.pending.get(frame.id);
      if (!waiter) {
        this.fail(new AgentError(`response for unknown request id ${frame.id}`, 'transport', undefined, this.context()));
        return;
      }
      this.pending.delete(frame.id);
      waiter.resolve(frame);
    }
  }

  private errorFrom(op: AgentOp | { op: 'BATCH' }, payload: Buffer): AgentError {
    const r = new PayloadReader(payload);
    const errno = r.i32('errno');
    const message = r.string('message');
    const what = op.op === 'BATCH' ? 'BATCH' : describeOp(op);
    return new AgentError(`${what}: ${message} (${errnoName(errno)})`, op.op, errno, this.context());
  }

  /**
   * The channel to the agent ended. With a machine to ask (failWhen), wait a
   * moment for it to report a lost guest, which then fails the requests with
   * its own error; the channel's error stands only if the guest is still there.
   */
  private channelClosed(error: AgentError): void {
    if (this.closedReason || !this.guestFailure) return this.fail(error);
    const timer = setTimeout(() => this.fail(error), GUEST_LOSS_GRACE_MS);
    this.guestFailure.catch(() => clearTimeout(timer));
  }

  private fail(error: Error): void {
    this.closedReason ??= error;
    const details = error instanceof CrhError ? error.details : {};
    for (const [id, waiter] of this.pending) {
      this.pending.delete(id);
      // The cause keeps the error's class: a lost guest stays infrastructure through the agent.
      waiter.reject(new AgentError(`${waiter.op}: ${error.message}`, waiter.op, undefined, { ...details, ...this.context() }, { cause: error }));
    }
  }

  private context(): Record<string, string> {
    return { 'agent stderr': this.stderrTail };
  }
}
