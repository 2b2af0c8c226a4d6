/**
 * The agent over its virtio-serial port (docs/agent-protocol.md,
 * "Transports"): a unix socket QEMU listens on, whose guest end the guest's
 * init serves (`crh-agent --port`). No SSH handshake, no cipher: a connect,
 * then the agent's own frames.
 *
 * The guest's supervisor adds two frames of its own, both with id 0 (no
 * request has it): a session's start (op 1, `u32 pid`), before which the host
 * sends nothing, and its end (op 0, `i32 exit_code | i32 signal`) when the
 * session ends under a connected host. This module consumes both: the client
 * sees the agent's answers only, the output ends at the session's end, and
 * `exit` says how it ended — as an SSH exec channel's exit does.
 */
import net from 'node:net';
import { constants } from 'node:os';
import { PassThrough } from 'node:stream';
import { AgentError, InfraError } from '../errors.ts';
import type { AgentTransport } from './client.ts';

/** Request ids start at 1: a frame of id 0 is the supervisor's notice. */
export const NOTICE_ID = 0;
export const SESSION_END_OP = 0;
export const SESSION_START_OP = 1;
/** u32 length, u32 id, u16 op, u16 status */
const HEADER_BYTES = 12;
/** A notice's payload is a few words; anything longer is not one. */
const NOTICE_MAX_PAYLOAD = 64;

/** How a session ended, in the shape of an SSH channel's exit (the signal by name, e.g. SIGKILL). */
export interface SessionExit {
  code: number | null;
  signal?: string;
}

export interface PortTransport extends AgentTransport {
  /** the session's agent process in the guest (the start notice) */
  pid: number;
  /** resolves when the supervisor reports the session's end; never when the host ended it */
  exit: Promise<SessionExit>;
  /** rejects with InfraError when the socket to QEMU drops without close(); never resolves */
  lost: Promise<never>;
  /** Destroys the socket as a lost link would (fault injection): `lost` rejects. */
  drop(): void;
}

export interface PortConnectOptions {
  /** how long to wait for the session's start notice (a guest without the port never sends it) */
  startTimeoutMs: number;
  /** a reason to stop waiting early: resolves with why (the guest said it has no agent port) */
  giveUp?: Promise<string>;
}

function signalName(signo: number): string {
  const entry = Object.entries(constants.signals).find(([, n]) => n === signo);
  return entry ? entry[0] : `signal ${signo}`;
}

/**
 * Splits the socket's bytes into frames: the agent's pass through to
 * `output` unchanged (the client decodes them), the supervisor's notices are
 * taken out. Frames are passed on in pieces as they arrive; only a notice is
 * held until whole.
 */
class NoticeSplitter {
  private header = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  /** bytes of the current frame's payload still to come */
  private remaining = 0;
  /** the current frame is a notice: its payload is collected here */
  private notice: { op: number; parts: Buffer[] } | undefined;
  constructor(
    private readonly output: PassThrough,
    private readonly onStart: (pid: number) => void,
    private readonly onEnd: (exit: SessionExit) => void,
    private readonly onViolation: (why: string) => void,
    /** the session's start was read by an earlier connection (resumeAgentPort): none comes on this one */
    private started = false,
  ) {}

  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.remaining === 0 && this.headerFill < HEADER_BYTES) {
        const take = Math.min(HEADER_BYTES - this.headerFill, chunk.length - at);
        chunk.copy(this.header, this.headerFill, at, at + take);
        this.headerFill += take;
        at += take;
        if (this.headerFill < HEADER_BYTES) return;
        if (!this.beginFrame()) return;
        continue;
      }
      const take = Math.min(this.remaining, chunk.length - at);
      const piece = chunk.subarray(at, at + take);
      at += take;
      this.remaining -= take;
      if (this.notice) this.notice.parts.push(Buffer.from(piece));
      else this.output.write(piece);
      if (this.remaining === 0) this.endFrame();
    }
  }

  /** False when the stream can no longer be read as frames. */
  private beginFrame(): boolean {
    const length = this.header.readUInt32LE(0);
    const id = this.header.readUInt32LE(4);
    const op = this.header.readUInt16LE(8);
    if (length < 8) {
      this.onViolation(`a frame of length ${length}`);
      return false;
    }
    this.remaining = length - 8;
    if (id === NOTICE_ID) {
      if (this.remaining > NOTICE_MAX_PAYLOAD) {
        this.onViolation(`a notice (id 0) of ${this.remaining} bytes`);
        return false;
      }
      this.notice = { op, parts: [] };
    } else if (!this.started) {
      this.onViolation(`a frame (id ${id}) before the session's start`);
      return false;
    } else {
      this.output.write(Buffer.from(this.header));
    }
    if (this.remaining === 0) this.endFrame();
    return true;
  }

  private endFrame(): void {
    this.headerFill = 0;
    const notice = this.notice;
    this.notice = undefined;
    if (!notice) return;
    const payload = Buffer.concat(notice.parts);
    if (notice.op === SESSION_START_OP && !this.started && payload.length >= 4) {
      this.started = true;
      this.onStart(payload.readUInt32LE(0));
    } else if (notice.op === SESSION_END_OP && this.started && payload.length >= 8) {
      const code = payload.readInt32LE(0);
      const signo = payload.readInt32LE(4);
      this.onEnd(signo !== 0 ? { code: null, signal: signalName(signo) } : { code });
    }
    // An end before our start is the end of an earlier connection's session: not ours.
  }
}

/**
 * Connects to the agent port at `socketPath` and waits for a session to
 * start. Rejects (InfraError) when the socket does not connect, or no
 * session starts within the bound, or `giveUp` names a reason first.
 */
export async function connectAgentPort(socketPath: string, options: PortConnectOptions): Promise<PortTransport> {
  const socket = net.connect(socketPath);
  const session = portSession(socket, socketPath, undefined);
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new InfraError(`agent port ${socketPath}: no agent session started within ${options.startTimeoutMs} ms`)),
      options.startTimeoutMs,
    );
  });
  const gaveUp = options.giveUp?.then((why) => Promise.reject(new InfraError(`agent port ${socketPath}: ${why}`)));
  try {
    return session.transport(await Promise.race([session.start, bound, ...(gaveUp ? [gaveUp] : [])]));
  } catch (error) {
    session.abandon();
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The session `pid` that waits in a guest started from saved state, on
 * `socket`, a connection to the agent port made before the state was loaded:
 * its start notice was read by the connection of the machine that saved the
 * state, so none comes, and requests may be sent at once
 * (machine/agent-session.ts).
 */
export function resumeAgentPort(socket: net.Socket, socketPath: string, pid: number): PortTransport {
  return portSession(socket, socketPath, pid).transport(pid);
}

/** The transport over `socket` once its session started (`startedPid`: already, on an earlier connection). */
function portSession(
  socket: net.Socket,
  socketPath: string,
  startedPid: number | undefined,
): { start: Promise<number>; transport: (pid: number) => PortTransport; abandon: () => void } {
  const output = new PassThrough();
  let closing = false;
  let resolveExit!: (exit: SessionExit) => void;
  const exit = new Promise<SessionExit>((resolve) => (resolveExit = resolve));
  let rejectLost!: (error: Error) => void;
  const lost = new Promise<never>((_, reject) => (rejectLost = reject));
  lost.catch(() => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));

  let sessionStarted = startedPid !== undefined;
  let started!: (pid: number) => void;
  let refused!: (error: Error) => void;
  const start = new Promise<number>((resolve, reject) => {
    started = resolve;
    refused = reject;
  });
  start.catch(() => {});
  if (startedPid !== undefined) started(startedPid);
  const splitter = new NoticeSplitter(
    output,
    (pid) => {
      sessionStarted = true;
      started(pid);
    },
    (how) => {
      resolveExit(how);
      output.end();
    },
    (why) => {
      const error = new AgentError(`agent port ${socketPath}: protocol violation: ${why}`, 'transport', undefined);
      refused(error);
      // Before the start nobody reads the output yet: the refusal above is the error.
      if (sessionStarted) output.destroy(error);
      else output.end();
      socket.destroy();
    },
    sessionStarted,
  );
  socket.on('data', (chunk: Buffer) => splitter.push(chunk));
  socket.on('error', (e) => refused(new InfraError(`agent port ${socketPath}: ${e.message}`, {}, { cause: e })));
  socket.once('close', () => {
    refused(new InfraError(`agent port ${socketPath}: closed before a session started`));
    if (closing) return;
    rejectLost(new InfraError('the agent port connection to the guest was lost'));
    // The client hears of it as an end of output; the loss above says why.
    output.end();
  });
  return {
    start,
    abandon: () => {
      closing = true;
      socket.destroy();
    },
    transport: (pid) => ({
      pid,
      exit,
      lost,
      input: socket,
      output,
      drop: () => void socket.destroy(),
      close: async () => {
        if (closing) return;
        closing = true;
        // The guest's session reads end of input when the host end disconnects, and ends as over SSH.
        socket.end();
        await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
        socket.destroy();
      },
    }),
  };
}
