/**
 * GDB Remote Serial Protocol client, written against QEMU's gdbstub (7.2):
 * handshake (qSupported, no-ack mode when offered, the target description),
 * registers, memory, breakpoints and watchpoints, resume/step/interrupt, and
 * vCPUs as threads. It runs over a unix socket, loopback TCP, or any duplex
 * stream (tests replay recorded transcripts through one).
 *
 * RSP is one request at a time. While the target runs (after cont or step)
 * only interrupt() may be sent; other calls fail at once rather than wait. A
 * stop reply that arrives when nothing waits for one (QEMU sends one on
 * connect, and whenever the VM stops for another reason, e.g. QMP `stop`) is
 * queued for waitForStop(), and never taken for the reply to a command.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import {
  GdbError,
  PacketParser,
  decodeHex,
  encodeHex,
  encodePacket,
  errnoName,
  escapedSize,
  littleEndian,
  printable,
  toLittleEndian,
  type PacketEvent,
} from './packets.ts';
import { GDB_SIGNAL, describeStop, isStopReply, parseStopReply, type StopReply } from './stop-reply.ts';
import { readTargetDescription, type RegisterInfo, type RegisterTable, type TargetDescription } from './target-description.ts';

export { GdbError } from './packets.ts';
export type { StopReply } from './stop-reply.ts';

/** Where the gdbstub listens: a unix socket, or a port on loopback (never anything else). */
export type GdbEndpoint = { path: string } | { host: '127.0.0.1'; port: number };

export interface GdbClientOptions {
  /** one line per packet each way (long ones cut), and every retransmission, nack and stray byte */
  log?: (line: string) => void;
  /**
   * How long one request waits for its reply (default 10 s). A reply that
   * does not come leaves the protocol out of step, so the connection is
   * closed with the error.
   */
  timeoutMs?: number;
  /** console output the target sends while it runs (`O` packets) */
  onOutput?: (text: Buffer) => void;
}

/** A wait for a stop or a reply ran out. */
export class GdbTimeoutError extends GdbError {
  override readonly name = 'GdbTimeoutError';
}

export type BreakpointKind = 'software' | 'hardware' | 'write' | 'read' | 'access';
const Z_TYPE: Record<BreakpointKind, number> = { software: 0, hardware: 1, write: 2, read: 3, access: 4 };

export interface GdbStats {
  packetsSent: number;
  packetsReceived: number;
  /** our packets sent again because the stub answered `-` */
  retransmitted: number;
  /** the stub's packets we refused with `-` (bad checksum) */
  nacked: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;
/** When qSupported names no PacketSize: small enough for any stub. */
const DEFAULT_PACKET_SIZE = 0x400;
/** `$`, `#` and two checksum digits around every payload. */
const FRAMING_BYTES = 4;
/** Consecutive `-` (either way) before the link is declared broken. */
const MAX_RETRANSMITS = 5;
const RECENT_LINES = 24;
const FEATURES_WE_SUPPORT = 'qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+';

interface PendingRequest {
  payload: Buffer;
  resolve(reply: Buffer): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
  /** a reply with stop-reply grammar answers this request ('?') instead of being queued */
  acceptsStop: boolean;
}

interface StopWaiter {
  resolve(stop: StopReply): void;
  reject(error: Error): void;
}

/** Steps tried over one breakpoint before giving up (each must move the vCPU). */
const MAX_STEP_OVER_ATTEMPTS = 5;

export class GdbClient {
  private readonly parser = new PacketParser();
  private readonly log: (line: string) => void;
  private readonly recent: Array<string | { direction: '<' | '>'; payload: Buffer }> = [];
  private readonly timeoutMs: number;
  private serialTail: Promise<unknown> = Promise.resolve();
  private pending: PendingRequest | undefined;
  /** the last packet we sent, until the stub acks it (ack mode only) */
  private unacked: Buffer | undefined;
  private retransmitsInRow = 0;
  private nacksInRow = 0;
  private ackMode = true;
  /** the resume packet the target is running on, until its stop arrives */
  private running: string | undefined;
  /** whoever waits for the stop that ends the current run (cont, step, interrupt) */
  private readonly runWaiters: StopWaiter[] = [];
  /** waitForStop() callers, served in order with stops no run waiter took */
  private readonly stopWaiters: StopWaiter[] = [];
  private readonly stopQueue: StopReply[] = [];
  private closedReason: GdbError | undefined;
  private closing: Promise<void> | undefined;
  private binaryWrite: boolean | undefined;
  private lastThread: string | undefined;
  private lastStop: StopReply | undefined;
  /** execution breakpoints (Z0, Z1) this client inserted, by their Z arguments */
  private readonly executionBreakpoints = new Map<string, { type: number; addr: bigint; length: number }>();

  /** what the stub announced in reply to qSupported: `name+` → true, `name-` → false, `name=value` → value */
  readonly features = new Map<string, string | boolean>();
  /** the actions vCont? listed (c, C, s, S, t, r), empty when vCont is unsupported */
  readonly vContActions = new Set<string>();
  private maxPacket = DEFAULT_PACKET_SIZE;
  private attachStop: StopReply | undefined;
  private description: TargetDescription | undefined;
  readonly stats: GdbStats = { packetsSent: 0, packetsReceived: 0, retransmitted: 0, nacked: 0 };

  private constructor(
    private readonly stream: Duplex,
    private readonly options: GdbClientOptions,
  ) {
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.log = options.log ?? (() => {});
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('close', () => this.fail(new GdbError('gdbstub connection closed', {}, this.context())));
    stream.on('error', (error: Error) => this.fail(new GdbError(`gdbstub connection failed: ${error.message}`, {}, this.context(), { cause: error })));
  }

  /**
   * Connects to QEMU's gdbstub and completes the handshake. Any host other
   * than 127.0.0.1 is refused: the stub controls the whole VM. QEMU stops
   * the VM when a debugger connects.
   */
  static async connect(endpoint: GdbEndpoint, options: GdbClientOptions = {}): Promise<GdbClient> {
    if ('host' in endpoint && (endpoint.host as string) !== '127.0.0.1') {
      throw new GdbError(`refusing gdbstub at ${String(endpoint.host)}: only 127.0.0.1 or a unix socket`);
    }
    const where = 'path' in endpoint ? endpoint.path : `127.0.0.1:${endpoint.port}`;
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = 'path' in endpoint ? net.createConnection(endpoint.path) : net.createConnection({ host: '127.0.0.1', port: endpoint.port });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new GdbTimeoutError(`no connection to the gdbstub at ${where} within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(s);
      });
      s.once('error', (error) => {
        clearTimeout(timer);
        reject(new GdbError(`cannot connect to the gdbstub at ${where}: ${error.message}`, {}, {}, { cause: error }));
      });
    });
    socket.setNoDelay(true);
    return GdbClient.over(socket, options);
  }

  /** Completes the handshake over an already connected stream; closes it if the handshake fails. */
  static async over(stream: Duplex, options: GdbClientOptions = {}): Promise<GdbClient> {
    const client = new GdbClient(stream, options);
    try {
      await client.serial(() => client.handshake());
      return client;
    } catch (error) {
      client.fail(error instanceof GdbError ? error : new GdbError(`handshake failed: ${String(error)}`));
      stream.destroy();
      throw error;
    }
  }

  /** The largest packet the stub accepts (qSupported PacketSize). */
  get packetSize(): number {
    return this.maxPacket;
  }

  /** The reply to '?' during the handshake. QEMU answers T05 whatever stopped the VM (it stops it on connect). */
  get initialStop(): StopReply | undefined {
    return this.attachStop;
  }

  /** Whether packets are still acknowledged with `+`/`-` (false once QStartNoAckMode succeeded). */
  get acknowledging(): boolean {
    return this.ackMode;
  }

  /** The target description read during the handshake. */
  get targetDescription(): TargetDescription {
    if (!this.description) throw new GdbError('the stub offers no target description (qXfer:features:read)');
    return this.description;
  }

  get registers(): RegisterTable {
    return this.targetDescription.registers;
  }

  /** Bytes one 'm' request asks for: half the packet size, as each byte comes back as two hex digits. */
  get memoryReadChunk(): number {
    return Math.floor(this.packetSize / 2);
  }

  /** Whether a resume is outstanding (the target runs as far as this client knows). */
  get isRunning(): boolean {
    return this.running !== undefined;
  }

  /** Stop replies that arrived while nothing waited for one, oldest first. */
  pendingStops(): readonly StopReply[] {
    return this.stopQueue;
  }

  /** All registers from one 'g' request, by name; registers the reply leaves out are absent. */
  readRegisters(): Promise<Map<string, bigint>> {
    return this.serial(async () => {
      const table = this.registers;
      const reply = await this.command('g');
      if (!/^[0-9a-fA-Fx]*$/.test(reply) || reply.length % 2 !== 0) throw new GdbError('g: the reply is not hex', { packet: 'g', reply });
      return table.decodeG(reply);
    });
  }

  /** One register by name ('p'), little-endian as the target stores it. */
  readRegister(name: string): Promise<bigint> {
    return this.serial(() => this.readRegisterInTurn(this.registers.get(name)));
  }

  /** Writes one register by name ('P'); the value must fit its bitsize. */
  writeRegister(name: string, value: bigint): Promise<void> {
    return this.serial(async () => {
      const reg = this.registers.get(name);
      const bytes = toLittleEndian(value, reg.bitsize / 8);
      if (!bytes) throw new GdbError(`0x${value.toString(16)} does not fit ${name} (${reg.bitsize} bits, unsigned)`);
      await this.expectOk(`P${reg.regnum.toString(16)}=${encodeHex(bytes)}`, `register writes by number (${name})`);
    });
  }

  /**
   * Reads guest virtual memory as the selected ('Hg') vCPU sees it, in 'm'
   * requests of memoryReadChunk bytes (QEMU refuses more with E22).
   */
  readMemory(addr: bigint, length: number): Promise<Buffer> {
    return this.serial(async () => {
      checkRange(addr, length);
      const out = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const n = Math.min(this.memoryReadChunk, length - done);
        const packet = `m${(addr + BigInt(done)).toString(16)},${n.toString(16)}`;
        const reply = await this.command(packet);
        const bytes = decodeHex(reply);
        // The protocol lets a stub return fewer bytes than asked; none is an error.
        if (!bytes || bytes.length === 0 || bytes.length > n) {
          throw new GdbError(`${packet}: expected up to ${n} bytes of memory, got "${printable(reply, 80)}"`, { packet, reply });
        }
        bytes.copy(out, done);
        done += bytes.length;
      }
      return out;
    });
  }

  /**
   * Writes guest virtual memory: binary 'X' packets when the stub takes them
   * (probed once with a zero-length X), else hex 'M'; either way chunked so
   * no packet exceeds PacketSize (QEMU silently drops longer ones).
   */
  writeMemory(addr: bigint, data: Uint8Array): Promise<void> {
    return this.serial(async () => {
      checkRange(addr, data.length);
      if (data.length === 0) return;
      if (this.binaryWrite === undefined) {
        const probe = `X${addr.toString(16)},0:`;
        const reply = await this.transact(probe);
        this.binaryWrite = reply.length > 0;
        this.logLine(`X ${this.binaryWrite ? 'supported' : 'unsupported: writing memory with M'}`);
      }
      let done = 0;
      while (done < data.length) {
        const at = addr + BigInt(done);
        // Size the header for the largest length field it could carry.
        const budget = this.packetSize - FRAMING_BYTES - `X${at.toString(16)},${this.packetSize.toString(16)}:`.length;
        let n: number;
        let payload: Buffer;
        if (this.binaryWrite) {
          let escaped = 0;
          n = 0;
          while (done + n < data.length && escaped + escapedSize(data[done + n]!) <= budget) escaped += escapedSize(data[done + n++]!);
          const chunk = data.subarray(done, done + n);
          // encodePacket escapes the whole payload, binary bytes included.
          payload = Buffer.concat([Buffer.from(`X${at.toString(16)},${n.toString(16)}:`, 'latin1'), chunk]);
        } else {
          n = Math.min(Math.floor(budget / 2), data.length - done);
          payload = Buffer.from(`M${at.toString(16)},${n.toString(16)}:${encodeHex(data.subarray(done, done + n))}`, 'latin1');
        }
        if (n === 0) throw new GdbError(`PacketSize ${this.packetSize} leaves no room for memory data`);
        await this.expectOk(payload, 'memory writes');
        done += n;
      }
    });
  }

  /**
   * Z0..Z4. `length` is the breakpoint kind (1 on x86) or the watched byte
   * count. Under TCG QEMU implements Z0 like Z1, without patching memory.
   */
  insertBreakpoint(kind: BreakpointKind, addr: bigint, length: number): Promise<void> {
    const args = `${Z_TYPE[kind]},${addr.toString(16)},${length.toString(16)}`;
    return this.serial(async () => {
      await this.expectOk(`Z${args}`, `${kind} breakpoints`);
      if (kind === 'software' || kind === 'hardware') this.executionBreakpoints.set(args, { type: Z_TYPE[kind], addr, length });
    });
  }

  /** z0..z4, with the same arguments the breakpoint was inserted with. */
  removeBreakpoint(kind: BreakpointKind, addr: bigint, length: number): Promise<void> {
    const args = `${Z_TYPE[kind]},${addr.toString(16)},${length.toString(16)}`;
    return this.serial(async () => {
      await this.expectOk(`z${args}`, `${kind} breakpoints`);
      this.executionBreakpoints.delete(args);
    });
  }

  /**
   * Resumes every vCPU ('vCont;c', or 'c' without vCont) and resolves with
   * the stop that ends the run.
   *
   * Each execution of a breakpointed instruction stops once. QEMU would
   * report the breakpoint again on every continue from its address, without
   * executing the instruction; so when the last stop was a SIGTRAP on an
   * execution breakpoint of this client, that vCPU is first stepped over it
   * with the breakpoint lifted, as GDB does. If that step stops for another
   * reason (a watchpoint), that stop is returned. `stepOver: false` skips
   * this, for showing QEMU's own behaviour.
   *
   * Without timeoutMs it waits as long as the target runs; when timeoutMs
   * passes the target is left running and its stop goes to waitForStop().
   */
  cont(options: { timeoutMs?: number; stepOver?: boolean } = {}): Promise<StopReply> {
    return this.serial(async () => {
      const early = options.stepOver === false ? undefined : await this.stepOverBreakpoint();
      return { stop: early ? Promise.resolve(early) : this.startRun(this.vContActions.has('c') ? 'vCont;c' : 'c', options.timeoutMs) };
    }).then(({ stop }) => stop);
  }

  /**
   * Executes one instruction on one vCPU and resolves with the stop after it.
   * The vCPU is `thread`, else the one that reported the last stop; with
   * vCont only that vCPU runs ('vCont;s:thread'), with plain 's' QEMU lets
   * the others run until the step ends.
   */
  step(options: { thread?: string; timeoutMs?: number } = {}): Promise<StopReply> {
    return this.serial(async () => {
      // Read in turn: a cont() queued just before may still change the last stop.
      const thread = options.thread === undefined ? this.lastThread : checkThreadId(options.thread);
      const packet = this.vContActions.has('s') && thread !== undefined ? `vCont;s:${thread}` : 's';
      return { stop: this.startRun(packet, options.timeoutMs ?? this.timeoutMs) };
    }).then(({ stop }) => stop);
  }

  /**
   * Stops a running target (byte 0x03) and resolves with its stop reply, the
   * same one the pending cont() resolves with. When this client did not
   * resume the target (QMP may have) the interrupt is sent anyway; a target
   * that was already stopped sends nothing, which ends in GdbTimeoutError.
   */
  interrupt(timeoutMs = this.timeoutMs): Promise<StopReply> {
    // In turn, so that a cont() called just before has sent its resume first.
    return this.serial(async () => ({ stop: this.sendInterrupt(timeoutMs) })).then(({ stop }) => stop);
  }

  /** The oldest queued stop reply, or the next one to arrive that no cont/step/interrupt takes. */
  waitForStop(timeoutMs: number): Promise<StopReply> {
    if (this.closedReason) return Promise.reject(this.closedReason);
    const queued = this.stopQueue.shift();
    if (queued) return Promise.resolve(queued);
    return this.waitFor(this.stopWaiters, timeoutMs, '');
  }

  /** Thread ids as the stub spells them (QEMU: one per vCPU, "p01.01", "p01.02", ... with multiprocess). */
  threads(): Promise<string[]> {
    return this.serial(async () => {
      const ids: string[] = [];
      for (let packet = 'qfThreadInfo'; ; packet = 'qsThreadInfo') {
        const reply = await this.command(packet, { unsupported: 'thread lists' });
        if (reply === 'l') return ids;
        if (!reply.startsWith('m')) throw new GdbError(`${packet}: expected m... or l`, { packet, reply });
        for (const id of reply.slice(1).split(',')) ids.push(checkThreadId(id));
        if (ids.length > 65_536) throw new GdbError('the thread list does not end', { packet, reply });
      }
    });
  }

  /** 'Hg' picks the vCPU that register and memory requests read; 'Hc' the one 'c'/'s' act on. */
  selectThread(op: 'g' | 'c', id: string): Promise<void> {
    return this.serial(() => this.expectOk(`H${op}${checkThreadId(id)}`, 'thread selection'));
  }

  /**
   * 'qC': the stub's current thread. QEMU 7.2 always answers with the first
   * vCPU of the process, whatever Hg or Hc selected; a stop reply's thread
   * is the way to learn which vCPU stopped.
   */
  currentThread(): Promise<string> {
    return this.serial(async () => {
      const reply = await this.command('qC', { unsupported: 'qC' });
      if (!reply.startsWith('QC')) throw new GdbError('qC: expected QC<thread>', { packet: 'qC', reply });
      return checkThreadId(reply.slice(2));
    });
  }

  /**
   * Sends any packet and resolves with its raw reply (an `E NN` included),
   * for requests without a method of their own. Runs in turn with the rest.
   * Not for resuming: a stop reply is never taken for the reply here.
   */
  request(payload: string | Uint8Array, options: { timeoutMs?: number } = {}): Promise<Buffer> {
    return this.serial(() => this.transact(payload, options));
  }

  /**
   * Ends the debugging session: QEMU removes every breakpoint and watchpoint
   * and resumes the VM. A running target is interrupted first. Every later
   * request fails; close() then only drops the connection.
   */
  detach(): Promise<void> {
    return this.serial(async () => {
      if (this.running !== undefined) await this.sendInterrupt(this.timeoutMs);
      const pid = /^p([0-9a-fA-F]+)\./.exec(this.lastThread ?? '')?.[1];
      // With multiprocess QEMU refuses a bare D (E22): it wants the process.
      const packet = this.features.get('multiprocess') === true ? `D;${pid ?? '1'}` : 'D';
      await this.expectOk(packet, 'detach');
      this.fail(new GdbError('detached from the target: the session is over', { packet }));
    });
  }

  /**
   * Detaches unless already detached (so the VM runs on without breakpoints)
   * and closes the connection. Problems on the way are logged, not thrown.
   * Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.closedReason) {
        try {
          await this.detach();
        } catch (error) {
          this.logLine(`close: detach failed: ${(error as Error).message}`);
        }
      }
      this.fail(new GdbError('GDB client closed'));
      this.stream.destroy();
    })();
    return this.closing;
  }

  private async handshake(): Promise<void> {
    const supported = await this.command(FEATURES_WE_SUPPORT);
    for (const item of supported.split(';')) {
      if (item === '') continue;
      const eq = item.indexOf('=');
      if (eq > 0) this.features.set(item.slice(0, eq), item.slice(eq + 1));
      else if (item.endsWith('+') || item.endsWith('-')) this.features.set(item.slice(0, -1), item.endsWith('+'));
      else this.features.set(item.replace(/\?$/, ''), true);
    }
    const size = this.features.get('PacketSize');
    if (typeof size === 'string') {
      const parsed = parseInt(size, 16);
      // Too small a packet cannot carry a register or a memory header.
      if (!/^[0-9a-fA-F]+$/.test(size) || parsed < 64) throw new GdbError(`unusable PacketSize=${size}`, { packet: FEATURES_WE_SUPPORT, reply: supported });
      this.maxPacket = parsed;
    }
    if (this.features.get('QStartNoAckMode') === true) {
      await this.expectOk('QStartNoAckMode', 'no-ack mode');
      // Our '+' for that OK was the last ack either side sends.
      this.ackMode = false;
      this.unacked = undefined;
    }
    // Stubs without vCont answer vCont? with an empty reply; then cont and step use 'c' and 's'.
    const actions = (await this.transact('vCont?')).toString('latin1');
    if (actions.startsWith('vCont')) for (const action of actions.slice(5).split(';')) if (action) this.vContActions.add(action);
    if (this.features.get('qXfer:features:read') === true) {
      // QEMU answers 'p' and 'P' with an empty (unsupported) reply until this has been read.
      this.description = await readTargetDescription((annex) => this.readXfer('features', annex));
    }
    // '?' also makes QEMU drop every breakpoint a previous session left behind.
    this.attachStop = parseStopReply(await this.transact('?', { acceptsStop: true }));
    // Not noted as the last stop: QEMU answers '?' with T05 whether or not anything trapped.
    if (this.attachStop.kind === 'signal' && this.attachStop.thread !== undefined) this.lastThread = this.attachStop.thread;
    // The stop QEMU sends on connect describes the same halt: drop it so waitForStop() sees only new ones.
    for (const stale of this.stopQueue.splice(0)) this.logLine(`handshake: dropped the attach-time stop (${describeStop(stale)})`);
  }

  private async readXfer(object: string, annex: string): Promise<string> {
    const parts: Buffer[] = [];
    let offset = 0;
    // Room for the 'm'/'l' prefix, framing, and escapes QEMU adds to binary replies.
    const length = Math.max(64, Math.floor((this.packetSize - FRAMING_BYTES - 1) / 2));
    for (;;) {
      const packet = `qXfer:${object}:read:${annex}:${offset.toString(16)},${length.toString(16)}`;
      const reply = await this.transact(packet);
      const kind = reply.toString('latin1', 0, 1);
      if (kind !== 'm' && kind !== 'l') throw this.replyError(packet, reply, `reading ${object} ${annex}`);
      parts.push(reply.subarray(1));
      offset += reply.length - 1;
      if (kind === 'l') return Buffer.concat(parts).toString('utf8');
      if (reply.length === 1) throw new GdbError(`${packet}: an empty 'm' reply would never end`, { packet, reply });
    }
  }

  private async readRegisterInTurn(reg: RegisterInfo): Promise<bigint> {
    const packet = `p${reg.regnum.toString(16)}`;
    const reply = await this.command(packet, { unsupported: `register reads by number (${reg.name})` });
    const bytes = decodeHex(reply);
    if (!bytes || bytes.length !== reg.bitsize / 8) {
      throw new GdbError(`${packet}: expected ${reg.bitsize / 8} bytes of ${reg.name}, got "${printable(reply, 80)}"`, { packet, reply });
    }
    return littleEndian(bytes);
  }

  /** Sends 0x03; the promise is the stop it causes. Callers hold the serial turn. */
  private sendInterrupt(timeoutMs: number): Promise<StopReply> {
    if (this.closedReason) return Promise.reject(this.closedReason);
    const stop =
      this.running !== undefined
        ? this.waitFor(this.runWaiters, timeoutMs, 'after the interrupt')
        : this.waitFor(this.stopWaiters, timeoutMs, 'after the interrupt (was the target running?)');
    this.logLine('> \\x03 (interrupt)');
    this.stream.write(Buffer.from([0x03]));
    return stop;
  }

  /** Sends a resume packet; the promise is the stop that ends the run. Callers hold the serial turn. */
  private startRun(packet: string, timeoutMs: number | undefined): Promise<StopReply> {
    this.checkUsable(packet);
    const stop = this.waitFor(this.runWaiters, timeoutMs ?? Infinity, `after ${packet} (the target is still running)`);
    this.running = packet;
    this.sendPacket(Buffer.from(packet, 'latin1'));
    return stop;
  }

  /**
   * When the vCPU that reported the last stop, a SIGTRAP, sits on execution
   * breakpoints of ours: lifts them, steps that vCPU alone, and puts them
   * back. Returns the step's stop if it was anything but the step finishing
   * there. An interrupt stop (SIGINT) on a breakpoint address is left alone:
   * the instruction has not run, and the breakpoint should report it.
   */
  private async stepOverBreakpoint(): Promise<StopReply | undefined> {
    const last = this.lastStop;
    if (this.executionBreakpoints.size === 0 || last?.kind !== 'signal' || last.signal !== GDB_SIGNAL.TRAP || last.thread === undefined) return undefined;
    const pcRegister = this.description?.registers.find('rip') ?? this.description?.registers.find('pc');
    if (!pcRegister) return undefined;
    this.checkUsable('vCont;c');
    // QEMU points Hg at the stopping vCPU, but the caller may have moved it since.
    await this.expectOk(`Hg${last.thread}`, 'thread selection');
    const pc = await this.readRegisterInTurn(pcRegister);
    const here = [...this.executionBreakpoints.values()].filter((b) => b.addr === pc);
    if (here.length === 0) return undefined;
    const args = (b: (typeof here)[number]): string => `${b.type},${b.addr.toString(16)},${b.length.toString(16)}`;
    for (const b of here) await this.expectOk(`z${args(b)}`, 'breakpoints');
    let early: StopReply | undefined;
    try {
      // A step can end without having run the instruction (the vCPU still at
      // pc); putting the breakpoint back then would report this execution a
      // second time. Step until pc moves, a few times at most.
      for (let attempt = 1; ; attempt++) {
        const step = await this.startRun(this.vContActions.has('s') ? `vCont;s:${last.thread}` : 's', this.timeoutMs);
        if (!(step.kind === 'signal' && step.signal === GDB_SIGNAL.TRAP && step.reason === undefined)) {
          early = step;
          break;
        }
        if ((await this.readRegisterInTurn(pcRegister)) !== pc) break;
        this.logLine(`step ${attempt} over the breakpoint at 0x${pc.toString(16)} left the vCPU there`);
        if (attempt === MAX_STEP_OVER_ATTEMPTS)
          throw new GdbError(`${MAX_STEP_OVER_ATTEMPTS} steps did not move the vCPU off 0x${pc.toString(16)}`, {}, this.context());
      }
    } catch (error) {
      // Still running or disconnected: they cannot go back in, so stop claiming them.
      for (const b of here) this.executionBreakpoints.delete(args(b));
      this.logLine(`breakpoints at 0x${pc.toString(16)} stay lifted: the step over them did not finish`);
      throw error;
    }
    for (const b of here) await this.expectOk(`Z${args(b)}`, 'breakpoints');
    return early;
  }

  private waitFor(list: StopWaiter[], timeoutMs: number, what: string): Promise<StopReply> {
    return new Promise<StopReply>((resolve, reject) => {
      const waiter: StopWaiter = {
        resolve: (stop) => {
          clearTimeout(timer);
          resolve(stop);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = Number.isFinite(timeoutMs)
        ? setTimeout(() => {
            const index = list.indexOf(waiter);
            if (index >= 0) list.splice(index, 1);
            reject(new GdbTimeoutError(`no stop reply within ${timeoutMs} ms${what ? ` ${what}` : ''}`, {}, this.context()));
          }, timeoutMs)
        : undefined;
      list.push(waiter);
    });
  }

  /** A request whose `E NN` and empty replies become errors; the reply as latin1 text. */
  private async command(payload: string | Buffer, options: { unsupported?: string } = {}): Promise<string> {
    const reply = await this.transact(payload);
    const text = reply.toString('latin1');
    if (/^E[0-9a-fA-F]{2}$|^E\./.test(text) || (text === '' && options.unsupported)) throw this.replyError(payload, reply, options.unsupported);
    return text;
  }

  private async expectOk(payload: string | Buffer, feature: string): Promise<void> {
    const reply = await this.transact(payload);
    if (reply.toString('latin1') !== 'OK') throw this.replyError(payload, reply, feature);
  }

  private replyError(payload: string | Buffer, reply: Buffer, feature: string | undefined): GdbError {
    const packet = printable(payload, 60);
    const text = reply.toString('latin1');
    const errno = /^E([0-9a-fA-F]{2})$/.exec(text)?.[1];
    if (errno !== undefined) {
      const code = /^\d\d$/.test(errno) ? Number(errno) : parseInt(errno, 16);
      return new GdbError(`${packet}: the stub replied ${text} (${errnoName(code)})`, { packet: payload, reply, errno: code }, this.context());
    }
    if (text.startsWith('E.')) return new GdbError(`${packet}: the stub replied: ${printable(text.slice(2))}`, { packet: payload, reply }, this.context());
    if (text === '')
      return new GdbError(`${packet}: the stub does not support ${feature ?? 'this request'} (empty reply)`, { packet: payload, reply }, this.context());
    return new GdbError(`${packet}: unexpected reply "${printable(text, 80)}"`, { packet: payload, reply }, this.context());
  }

  /** One packet and its reply. Callers hold the serial turn. */
  private transact(payload: string | Uint8Array, options: { acceptsStop?: boolean; timeoutMs?: number } = {}): Promise<Buffer> {
    const bytes = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : Buffer.from(payload);
    try {
      this.checkUsable(bytes);
    } catch (error) {
      return Promise.reject(error);
    }
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        // A late reply would be taken for the next request's: stop here.
        this.breakOn(new GdbTimeoutError(`${printable(bytes, 60)}: no reply within ${timeoutMs} ms`, { packet: bytes }, this.context()));
      }, timeoutMs);
      this.pending = { payload: bytes, resolve, reject, timer, acceptsStop: options.acceptsStop ?? false };
      this.sendPacket(bytes);
    });
  }

  private checkUsable(payload: string | Buffer): void {
    if (this.closedReason) throw this.closedReason;
    if (this.running !== undefined) {
      throw new GdbError(`${printable(payload, 60)}: the target is running (${this.running}); interrupt() or wait for its stop first`, { packet: payload });
    }
  }

  private sendPacket(payload: Buffer): void {
    const frame = encodePacket(payload);
    this.stats.packetsSent++;
    this.logPacket('>', payload);
    if (this.ackMode) {
      this.unacked = frame;
      this.retransmitsInRow = 0;
    }
    this.stream.write(frame);
  }

  private onData(chunk: Buffer): void {
    let events: PacketEvent[];
    try {
      events = this.parser.push(chunk);
    } catch (error) {
      this.breakOn(error instanceof GdbError ? error : new GdbError(String(error)));
      return;
    }
    for (const event of events) {
      if (this.closedReason) return;
      this.onEvent(event);
    }
  }

  private onEvent(event: PacketEvent): void {
    switch (event.type) {
      case 'ack':
        this.unacked = undefined;
        return;
      case 'nack':
        if (!this.unacked) {
          this.logLine('< - (nothing to resend)');
          return;
        }
        if (++this.retransmitsInRow > MAX_RETRANSMITS) {
          this.breakOn(new GdbError(`the stub refused our packet ${MAX_RETRANSMITS} times`, { packet: this.unacked }, this.context()));
          return;
        }
        this.stats.retransmitted++;
        this.logLine(`< - (resending ${printable(this.unacked, 60)})`);
        this.stream.write(this.unacked);
        return;
      case 'junk':
        this.logLine(`< stray bytes ${printable(event.bytes, 60)}`);
        return;
      case 'bad-checksum':
        if (!this.ackMode) {
          this.breakOn(new GdbError(`${event.kind} with a bad checksum in no-ack mode (no retransmission to ask for)`, { reply: event.raw }, this.context()));
          return;
        }
        if (++this.nacksInRow > MAX_RETRANSMITS) {
          this.breakOn(new GdbError(`${MAX_RETRANSMITS} packets in a row with bad checksums`, { reply: event.raw }, this.context()));
          return;
        }
        this.stats.nacked++;
        this.logLine(
          `< ${printable(event.raw, 60)} bad checksum (0x${event.actual.toString(16)}, says ${event.expected < 0 ? 'garbage' : `0x${event.expected.toString(16)}`}): sent -`,
        );
        this.stream.write('-');
        return;
      case 'notification': {
        // Notifications are never acked. Only non-stop mode sends them, and only %Stop matters here.
        const text = event.payload.toString('latin1');
        this.logLine(`< %${printable(text)}`);
        if (text.startsWith('Stop:') && isStopReply(text.slice(5))) this.onStop(parseStopReply(text.slice(5)));
        return;
      }
      case 'packet':
        this.nacksInRow = 0;
        if (this.ackMode) this.stream.write('+');
        this.stats.packetsReceived++;
        this.logPacket('<', event.payload);
        this.onPacket(event.payload);
    }
  }

  private onPacket(payload: Buffer): void {
    const stopShaped = isStopReply(payload);
    let stop: StopReply | undefined;
    try {
      stop = stopShaped ? parseStopReply(payload) : undefined;
    } catch (error) {
      this.breakOn(error as GdbError);
      return;
    }
    if (stop?.kind === 'output') {
      this.options.onOutput?.(stop.output);
      return;
    }
    const pending = this.pending;
    if (pending && (!stop || pending.acceptsStop)) {
      this.pending = undefined;
      this.unacked = undefined;
      clearTimeout(pending.timer);
      pending.resolve(payload);
      return;
    }
    if (stop) {
      this.onStop(stop);
      return;
    }
    if (this.running !== undefined) {
      // The stub refused the resume itself (E NN, or empty for an unsupported vCont action).
      const packet = this.running;
      this.running = undefined;
      this.unacked = undefined;
      const error = this.replyError(packet, payload, packet);
      for (const waiter of this.runWaiters.splice(0)) waiter.reject(error);
      return;
    }
    this.breakOn(new GdbError('a reply arrived with no request outstanding', { reply: payload }, this.context()));
  }

  private onStop(stop: StopReply): void {
    this.noteStop(stop);
    const endsRun = this.running !== undefined;
    this.running = undefined;
    this.unacked = undefined;
    if (endsRun && this.runWaiters.length > 0) {
      for (const waiter of this.runWaiters.splice(0)) waiter.resolve(stop);
      return;
    }
    const waiter = this.stopWaiters.shift();
    if (waiter) waiter.resolve(stop);
    else {
      this.logLine(`queued stop: ${describeStop(stop)}`);
      this.stopQueue.push(stop);
    }
  }

  private noteStop(stop: StopReply): void {
    this.lastStop = stop;
    if (stop.kind === 'signal' && stop.thread !== undefined) this.lastThread = stop.thread;
  }

  /** Runs `fn` after every earlier request has finished: RSP has one request in flight. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serialTail.then(fn, fn);
    this.serialTail = run.catch(() => {});
    return run;
  }

  /** The protocol is out of step: fail everything and drop the connection. */
  private breakOn(error: GdbError): void {
    this.logLine(`connection broken: ${error.message}`);
    this.fail(error);
    this.stream.destroy();
  }

  private fail(error: GdbError): void {
    if (this.closedReason) return;
    this.closedReason = error;
    const pending = this.pending;
    this.pending = undefined;
    if (pending) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    for (const waiter of [...this.runWaiters.splice(0), ...this.stopWaiters.splice(0)]) waiter.reject(error);
  }

  private logLine(line: string): void {
    this.recent.push(line);
    if (this.recent.length > RECENT_LINES) this.recent.shift();
    this.log(line);
  }

  /**
   * Packets are the hot path (a 1 MiB read is 512 of them): without a log
   * callback they are kept raw and only made printable if an error needs them.
   */
  private logPacket(direction: '<' | '>', payload: Buffer): void {
    if (this.options.log) {
      this.logLine(`${direction} ${printable(payload)}`);
      return;
    }
    this.recent.push({ direction, payload });
    if (this.recent.length > RECENT_LINES) this.recent.shift();
  }

  private context(): Record<string, string> {
    const lines = this.recent.map((r) => (typeof r === 'string' ? r : `${r.direction} ${printable(r.payload)}`));
    return { 'recent packets': lines.join('\n') };
  }
}

function checkRange(addr: bigint, length: number): void {
  if (!Number.isSafeInteger(length) || length < 0) throw new GdbError(`invalid memory length ${length}`);
  if (addr < 0n || addr + BigInt(length) > 1n << 64n) throw new GdbError(`memory range 0x${addr.toString(16)}+${length} leaves the 64-bit address space`);
}

/** A thread id goes into packets verbatim: allow only the protocol's syntax. */
function checkThreadId(id: string): string {
  if (!/^(p-?[0-9a-fA-F]+\.)?-?[0-9a-fA-F]+$/.test(id)) throw new GdbError(`invalid thread id "${id}"`);
  return id;
}

export type { RegisterInfo, RegisterTable, TargetDescription };
