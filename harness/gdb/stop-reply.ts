/**
 * Stop replies: what a stub sends when the target stops (`S`, `T`), ends
 * (`W`, `X`), or prints while running (`O`). Parsing only; the client
 * decides what a stop means.
 */
import { GdbError, decodeHex, littleEndian } from './packets.ts';

/** GDB's own signal numbers (not the host's): QEMU stops with TRAP for breakpoints and steps, INT for an interrupt. */
export const GDB_SIGNAL = { INT: 2, TRAP: 5 } as const;

/** Why the target stopped, when the stub says (the `reason:value` pairs of a T reply). */
export type StopReason = { kind: 'watch' | 'rwatch' | 'awatch'; address: bigint } | { kind: 'swbreak' | 'hwbreak' };

export type StopReply =
  | {
      kind: 'signal';
      /** GDB signal number */
      signal: number;
      /** thread that stopped, in the stub's syntax ("p01.02" with multiprocess, "02" without) */
      thread?: string;
      core?: number;
      reason?: StopReason;
      /** registers the stub sent with the stop, by number, decoded little-endian; unavailable ones ("xx") left out */
      registers: Map<number, bigint>;
      /** every other `name:value` pair, verbatim (fork, exec, library, create, ...) */
      extra: Map<string, string>;
      raw: string;
    }
  | { kind: 'exited'; status: number; process?: number; raw: string }
  | { kind: 'terminated'; signal: number; process?: number; raw: string }
  /** `O` + hex: console output from the target while it runs, not a stop */
  | { kind: 'output'; output: Buffer; raw: string };

const HEX_BYTE = /^[0-9a-fA-F]{2}$/;

/**
 * Whether a payload has the exact grammar of a stop reply. No other reply the
 * client asks for can match it (they are hex, OK, E NN, or start with a
 * lowercase or other letter), which is what lets the client tell a stop that
 * arrives unasked from the reply to the command it is waiting on.
 */
export function isStopReply(payload: string | Buffer): boolean {
  const text = typeof payload === 'string' ? payload : payload.toString('latin1');
  return /^S[0-9a-fA-F]{2}$|^T[0-9a-fA-F]{2}([^;:]+:[^;]*;)*([^;:]+:[^;]*)?$|^[WX][0-9a-fA-F]{2}(;process:[0-9a-fA-F]+)?$|^O([0-9a-fA-F]{2})+$/.test(text);
}

/** Parses one stop reply; anything else throws GdbError with the payload. */
export function parseStopReply(payload: string | Buffer): StopReply {
  const raw = typeof payload === 'string' ? payload : payload.toString('latin1');
  const fail = (why: string): never => {
    throw new GdbError(`malformed stop reply: ${why}`, { reply: raw });
  };
  const code = raw.slice(1, 3);
  switch (raw[0]) {
    case 'S':
      if (raw.length !== 3 || !HEX_BYTE.test(code)) fail('S takes exactly one hex byte');
      return { kind: 'signal', signal: parseInt(code, 16), registers: new Map(), extra: new Map(), raw };
    case 'T':
      if (!HEX_BYTE.test(code)) fail('T must start with a hex signal number');
      return parseT(raw, parseInt(code, 16), fail);
    case 'W':
    case 'X': {
      const match = /^[WX]([0-9a-fA-F]{2})(?:;process:([0-9a-fA-F]+))?$/.exec(raw) ?? fail(`${raw[0]} takes a hex byte and an optional ;process:PID`);
      const value = parseInt(match[1]!, 16);
      const process = match[2] === undefined ? undefined : parseInt(match[2], 16);
      const base = { raw, ...(process !== undefined ? { process } : {}) };
      return raw[0] === 'W' ? { kind: 'exited', status: value, ...base } : { kind: 'terminated', signal: value, ...base };
    }
    case 'O': {
      const output = decodeHex(raw.slice(1));
      if (output === undefined || output.length === 0) fail('O must carry hex-encoded output');
      return { kind: 'output', output: output!, raw };
    }
    default:
      return fail('not S, T, W, X or O');
  }
}

function parseT(raw: string, signal: number, fail: (why: string) => never): StopReply {
  const reply: Extract<StopReply, { kind: 'signal' }> = { kind: 'signal', signal, registers: new Map(), extra: new Map(), raw };
  for (const pair of raw.slice(3).split(';')) {
    if (pair === '') continue; // the reply ends with ';'
    const colon = pair.indexOf(':');
    if (colon <= 0) fail(`"${pair}" is not name:value`);
    const name = pair.slice(0, colon);
    const value = pair.slice(colon + 1);
    // The protocol: a name that is a hex number is a register number.
    if (/^[0-9a-fA-F]+$/.test(name)) {
      if (/^(xx)+$/i.test(value)) continue;
      const bytes = decodeHex(value) ?? fail(`register ${name} has a non-hex value "${value}"`);
      reply.registers.set(parseInt(name, 16), littleEndian(bytes));
      continue;
    }
    switch (name) {
      case 'thread':
        if (!/^(p-?[0-9a-fA-F]+\.)?-?[0-9a-fA-F]+$/.test(value)) fail(`bad thread id "${value}"`);
        reply.thread = value;
        break;
      case 'core':
        if (!/^[0-9a-fA-F]+$/.test(value)) fail(`bad core "${value}"`);
        reply.core = parseInt(value, 16);
        break;
      case 'watch':
      case 'rwatch':
      case 'awatch':
        if (!/^[0-9a-fA-F]{1,16}$/.test(value)) fail(`bad ${name} address "${value}"`);
        reply.reason = { kind: name, address: BigInt(`0x${value}`) };
        break;
      case 'swbreak':
      case 'hwbreak':
        reply.reason = { kind: name };
        break;
      default:
        reply.extra.set(name, value);
    }
  }
  return reply;
}

/** A stop reply as one line for logs and error messages. */
export function describeStop(stop: StopReply): string {
  switch (stop.kind) {
    case 'signal': {
      const parts = [`signal ${stop.signal}`];
      if (stop.thread !== undefined) parts.push(`thread ${stop.thread}`);
      if (stop.reason) parts.push('address' in stop.reason ? `${stop.reason.kind} 0x${stop.reason.address.toString(16)}` : stop.reason.kind);
      return parts.join(', ');
    }
    case 'exited':
      return `exited with status ${stop.status}`;
    case 'terminated':
      return `terminated by signal ${stop.signal}`;
    case 'output':
      return `output ${JSON.stringify(stop.output.toString('latin1'))}`;
  }
}
