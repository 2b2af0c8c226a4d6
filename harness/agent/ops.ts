/**
 * The agent's primitive operations as plain data (docs/agent-protocol.md).
 * A restore plan is an array of these; each knows its wire encoding and how
 * to decode its result, so single requests and BATCH share one codec.
 */
import { PayloadReader, PayloadWriter } from './wire.ts';
import { decodeUserRegs, encodeUserRegs, type UserRegs } from '../x86/registers.ts';

/** The opcodes as guests/agent/opcodes.h defines them (test/agent-opcodes.test.ts holds the two together). */
export const OPCODES = {
  HELLO: 0x01,
  SPAWN: 0x02,
  RUN: 0x03,
  GETREGS: 0x04,
  SETREGS: 0x05,
  GETREGSET: 0x06,
  SETREGSET: 0x07,
  PEEKUSER: 0x08,
  POKEUSER: 0x09,
  READ_FILE: 0x0a,
  READ_MEM: 0x0b,
  WRITE_MEM: 0x0c,
  INJECT_SYSCALL: 0x0d,
  KILL: 0x0e,
  BATCH: 0x0f,
  RSEQ_CONFIG: 0x10,
  SIGNAL: 0x11,
  PEEKSIGINFO: 0x18,
  GETSIGMASK: 0x19,
  SETSIGMASK: 0x1a,
  READLINK: 0x1b,
  LISTDIR: 0x1c,
  STEP: 0x1d,
  DETACH: 0x1e,
  REAP: 0x1f,
  ATTACH: 0x20,
  BULK_OPEN: 0x21,
  READ_MEM_BULK: 0x22,
  WRITE_MEM_BULK: 0x23,
  PAGEMAP: 0x24,
  PAGE_FRAMES: 0x25,
  CHDIR: 0x26,
  RESEED: 0x27,
  TRACE_FORKS: 0x28,
  RELEASE: 0x29,
  REAP_ORPHANS: 0x2a,
  KMSG: 0x2b,
} as const;

/** A range of a target's memory a bulk request moves. */
export interface MemoryRange {
  address: bigint;
  length: number;
}

/** PAGEMAP's byte per page: the page is present in RAM / swapped out (neither: never touched, or dropped). */
export const PAGE_PRESENT = 1;
export const PAGE_SWAPPED = 2;
/** the page is the file's own (a private file mapping's page not yet copied on write) or shared anonymous memory */
export const PAGE_FILE = 4;

export type OpName = keyof typeof OPCODES;

/** PAGE_FRAMES modes (guests/agent/frames.c FRAMES_CHECK, _READ, _WRITE). */
export const FRAMES_MODES = { check: 0, read: 1, write: 2 } as const;
export type FramesMode = keyof typeof FRAMES_MODES;

/** RUN flag 1: hits handled as before breakpoints were made invisible. */
const RUN_LEGACY_TRAPS = 1;

export const SPAWN_NO_ASLR = 1;
/** SPAWN carries a u32 pid after stdout_path: the child gets exactly that pid (clone3 set_tid). */
export const SPAWN_EXACT_PID = 2;

export type AgentOp =
  | { op: 'HELLO' }
  | {
      op: 'SPAWN';
      path: string;
      argv: string[];
      envp: string[];
      stdoutPath: string;
      noAslr: boolean;
      /** exactly this pid, or fail (EEXIST when taken) */ pid?: number;
    }
  | {
      op: 'RUN';
      pid: number;
      stopAfterHits: number;
      timeoutMs: number;
      /**
       * The agent before breakpoints were made invisible (docs/agent-protocol.md, RUN flag 1): every hit's SIGTRAP
       * suppressed whole, a handler the hit's forced SIGTRAP reset left reset. For negative controls only.
       */
      legacyTraps?: boolean;
    }
  | { op: 'GETREGS'; pid: number }
  | { op: 'SETREGS'; pid: number; regs: UserRegs }
  | { op: 'GETREGSET'; pid: number; noteType: number; maxSize: number }
  | { op: 'SETREGSET'; pid: number; noteType: number; data: Uint8Array }
  | { op: 'PEEKUSER'; pid: number; offset: number }
  | { op: 'POKEUSER'; pid: number; offset: number; value: bigint }
  | { op: 'READ_FILE'; path: string; maxSize: number }
  | { op: 'READ_MEM'; pid: number; address: bigint; length: number }
  | { op: 'WRITE_MEM'; pid: number; address: bigint; data: Uint8Array }
  | { op: 'INJECT_SYSCALL'; pid: number; nr: number; args: readonly bigint[] }
  | { op: 'KILL'; pid: number }
  | { op: 'RSEQ_CONFIG'; pid: number }
  | { op: 'PEEKSIGINFO'; pid: number; shared: boolean }
  | { op: 'GETSIGMASK'; pid: number }
  | { op: 'SETSIGMASK'; pid: number; mask: bigint }
  | { op: 'READLINK'; path: string }
  | { op: 'LISTDIR'; path: string }
  | { op: 'SIGNAL'; pid: number; signo: number }
  /** open the virtio-serial port of that name (qemu-args.ts BULK_PORT_NAME) for the bulk ops */
  | { op: 'BULK_OPEN'; name: string }
  /** the ranges' bytes, concatenated, as one frame on the bulk port tagged `tag` (client.ts sends and reads it) */
  | { op: 'READ_MEM_BULK'; pid: number; tag: number; ranges: readonly MemoryRange[] }
  /** writes the ranges from the frame tagged `tag` the host puts on the bulk port */
  | { op: 'WRITE_MEM_BULK'; pid: number; tag: number; ranges: readonly MemoryRange[] }
  /** one byte per page from /proc/PID/pagemap: PAGE_PRESENT | PAGE_SWAPPED | PAGE_FILE */
  | { op: 'PAGEMAP'; pid: number; start: bigint; pages: number }
  /**
   * the guest-physical frame of every page of the page-aligned ranges, 0 where
   * `mode` cannot use it (guests/agent/frames.c): 'check' only looks, 'read'
   * faults absent pages in first, 'write' makes each an exclusive anonymous page first
   */
  | { op: 'PAGE_FRAMES'; pid: number; mode: FramesMode; ranges: readonly MemoryRange[] }
  /** makes the directory (mkdir -p) and makes it the agent's working directory, which the programs it spawns inherit */
  | { op: 'CHDIR'; path: string }
  /** sets the guest's CLOCK_REALTIME and writes `entropy` into /dev/urandom (mixed in, not credited): a guest from saved state */
  | { op: 'RESEED'; seconds: bigint; nanoseconds: number; entropy: Uint8Array }
  | { op: 'KMSG'; record: string }
  /** PTRACE_SINGLESTEP one stopped thread `count` times; `signo` (0 or absent: none) is delivered with the first step */
  | { op: 'STEP'; pid: number; count: number; signo?: number; timeoutMs: number }
  /** hands a stopped process to another tracer: left in a job-control stop (SIGSTOP), untraced, still the agent's child */
  | { op: 'DETACH'; pid: number }
  /** collects a detached child once it ended (another checkpointer killed it), freeing its pid; 0 ms: no limit */
  | { op: 'REAP'; pid: number; timeoutMs: number }
  /** seizes a process the agent did not spawn (a restored one), every thread brought into a ptrace stop */
  | { op: 'ATTACH'; pid: number }
  /** PTRACE_O_TRACEFORK/TRACEVFORK on or off for every thread of the process: a restore's injected clone3 of a child (exit signal SIGCHLD) is then traced */
  | { op: 'TRACE_FORKS'; pid: number; on: boolean }
  /** detach every thread of the process (no signal) and forget it: it runs on untraced */
  | { op: 'RELEASE'; pid: number }
  /** reaps every ended child the agent neither traces nor detached, until none of `pids` exists (ETIMEDOUT after timeoutMs) */
  | { op: 'REAP_ORPHANS'; pids: readonly number[]; timeoutMs: number };

export interface HelloResult {
  protocolVersion: number;
  release: string;
  machine: string;
  pageSize: number;
  agentPid: number;
}

export interface BreakpointHit {
  rip: bigint;
  eflags: bigint;
  dr6: bigint;
  /** the thread that hit */
  tid: number;
}

export interface RunResult {
  outcome: 'hit-limit' | 'exited' | 'killed';
  /** exit code when exited, signal number when killed */
  code: number;
  /** in the order seen, every thread's; may exceed the limit by hits seen while the other threads were stopped */
  hits: BreakpointHit[];
  signals: { signo: number; rip: bigint; tid: number }[];
  /** hit-limit: the thread whose hit reached the limit, left in that SIGTRAP stop; 0 otherwise */
  stoppedTid: number;
  /** hit-limit: every thread of the process, ascending, each left in a ptrace stop; empty otherwise */
  threads: number[];
}

/** One SIGTRAP stop of STEP. */
export interface SingleStep {
  rip: bigint;
  /** as PTRACE_GETREGS reads it: a TF the kernel set for the step (TIF_FORCED_TF) is hidden, one the program set shows */
  eflags: bigint;
  /** DR6 before the agent cleared it: BS (bit 14) for a step trap, B0-B3 for a breakpoint, 0 for a SIGTRAP that was no #DB */
  dr6: bigint;
}

export interface StepResult {
  /**
   * stepped: `count` steps, the thread left in the last one's SIGTRAP stop;
   * signal: another signal stopped it, left in that signal-delivery stop (not delivered);
   * exited / killed: the thread ended
   */
  outcome: 'stepped' | 'signal' | 'exited' | 'killed';
  /** signal number (signal, killed), exit code (exited), 0 otherwise */
  code: number;
  /** every step, in order */
  steps: SingleStep[];
  /** where the thread is stopped now (stepped, signal); 0 when it ended */
  rip: bigint;
}

/**
 * A task's rseq registration as PTRACE_GET_RSEQ_CONFIGURATION reports it;
 * area 0 means none. flags are the registration's (not an rseq_cs's).
 */
export interface RseqConfig {
  area: bigint;
  size: number;
  signature: number;
  flags: number;
}

/** What each op's response decodes to. */
export interface OpResults {
  HELLO: HelloResult;
  SPAWN: { pid: number };
  RUN: RunResult;
  GETREGS: UserRegs;
  SETREGS: void;
  GETREGSET: Buffer;
  SETREGSET: void;
  PEEKUSER: bigint;
  POKEUSER: void;
  READ_FILE: Buffer;
  READ_MEM: Buffer;
  WRITE_MEM: void;
  INJECT_SYSCALL: bigint;
  KILL: { waitStatus: number };
  RSEQ_CONFIG: RseqConfig;
  PEEKSIGINFO: Buffer[];
  GETSIGMASK: bigint;
  SETSIGMASK: void;
  READLINK: string;
  LISTDIR: string[];
  SIGNAL: void;
  STEP: StepResult;
  DETACH: void;
  REAP: { waitStatus: number };
  /** every thread of the process, ascending, each in a ptrace stop */
  ATTACH: { threads: number[] };
  TRACE_FORKS: void;
  RELEASE: void;
  REAP_ORPHANS: { reaped: Array<{ pid: number; waitStatus: number }> };
  BULK_OPEN: void;
  /** bytes the frame held */
  READ_MEM_BULK: bigint;
  WRITE_MEM_BULK: void;
  PAGEMAP: Buffer;
  /** one frame number per page, in the ranges' order; 0: none usable */
  PAGE_FRAMES: Uint32Array;
  CHDIR: void;
  RESEED: void;
  KMSG: void;
}

export type ResultOf<O extends AgentOp> = OpResults[O['op']];

export function encodeOp(op: AgentOp): { opcode: number; payload: Buffer } {
  const w = new PayloadWriter();
  switch (op.op) {
    case 'HELLO':
      break;
    case 'SPAWN':
      w.u32((op.noAslr ? SPAWN_NO_ASLR : 0) | (op.pid !== undefined ? SPAWN_EXACT_PID : 0))
        .string(op.path)
        .strings(op.argv)
        .strings(op.envp)
        .string(op.stdoutPath);
      if (op.pid !== undefined) w.u32(op.pid);
      break;
    case 'RUN':
      w.u32(op.pid).u32(op.stopAfterHits).u32(op.timeoutMs);
      if (op.legacyTraps) w.u32(RUN_LEGACY_TRAPS);
      break;
    case 'GETREGS':
      w.u32(op.pid);
      break;
    case 'SETREGS':
      w.u32(op.pid).bytes(encodeUserRegs(op.regs));
      break;
    case 'GETREGSET':
      w.u32(op.pid).u32(op.noteType).u32(op.maxSize);
      break;
    case 'SETREGSET':
      w.u32(op.pid).u32(op.noteType).bytes(op.data);
      break;
    case 'PEEKUSER':
      w.u32(op.pid).u64(op.offset);
      break;
    case 'POKEUSER':
      w.u32(op.pid).u64(op.offset).u64(op.value);
      break;
    case 'READ_FILE':
      w.string(op.path).u64(op.maxSize);
      break;
    case 'READ_MEM':
      w.u32(op.pid).u64(op.address).u64(op.length);
      break;
    case 'WRITE_MEM':
      w.u32(op.pid).u64(op.address).bytes(op.data);
      break;
    case 'INJECT_SYSCALL': {
      if (op.args.length > 6) throw new RangeError('a system call takes at most 6 arguments');
      w.u32(op.pid).u64(op.nr);
      for (let i = 0; i < 6; i++) w.u64(op.args[i] ?? 0n);
      break;
    }
    case 'KILL':
    case 'RSEQ_CONFIG':
    case 'DETACH':
    case 'ATTACH':
    case 'RELEASE':
      w.u32(op.pid);
      break;
    case 'TRACE_FORKS':
      w.u32(op.pid).u32(op.on ? 1 : 0);
      break;
    case 'REAP':
      w.u32(op.pid).u32(op.timeoutMs);
      break;
    case 'REAP_ORPHANS':
      w.u32(op.timeoutMs).u32(op.pids.length);
      for (const pid of op.pids) w.u32(pid);
      break;
    case 'PEEKSIGINFO':
      w.u32(op.pid).u32(op.shared ? 1 : 0);
      break;
    case 'GETSIGMASK':
      w.u32(op.pid);
      break;
    case 'SETSIGMASK':
      w.u32(op.pid).u64(op.mask);
      break;
    case 'READLINK':
    case 'LISTDIR':
      w.string(op.path);
      break;
    case 'SIGNAL':
      w.u32(op.pid).u32(op.signo);
      break;
    case 'STEP':
      w.u32(op.pid)
        .u32(op.count)
        .u32(op.signo ?? 0)
        .u32(op.timeoutMs);
      break;
    case 'BULK_OPEN':
      w.string(op.name);
      break;
    case 'READ_MEM_BULK':
    case 'WRITE_MEM_BULK':
      w.u32(op.pid).u32(op.tag).u32(op.ranges.length);
      for (const r of op.ranges) w.u64(r.address).u64(r.length);
      break;
    case 'PAGEMAP':
      w.u32(op.pid).u64(op.start).u32(op.pages);
      break;
    case 'PAGE_FRAMES':
      w.u32(op.pid).u32(FRAMES_MODES[op.mode]).u32(op.ranges.length);
      for (const r of op.ranges) w.u64(r.address).u64(r.length);
      break;
    case 'CHDIR':
      w.string(op.path);
      break;
    case 'RESEED':
      w.u64(op.seconds).u32(op.nanoseconds).bytes(op.entropy);
      break;
    case 'KMSG':
      w.string(op.record);
      break;
  }
  return { opcode: OPCODES[op.op], payload: w.finish() };
}

const RUN_OUTCOMES = { 1: 'hit-limit', 2: 'exited', 3: 'killed' } as const;
const STEP_OUTCOMES = { 1: 'stepped', 2: 'signal', 3: 'exited', 4: 'killed' } as const;

export function decodeResult<O extends AgentOp>(op: O, payload: Buffer): ResultOf<O> {
  const r = new PayloadReader(payload);
  const result = decodeByOp(op.op, r);
  r.end(`${op.op} response`);
  return result as ResultOf<O>;
}

function decodeByOp(name: OpName, r: PayloadReader): unknown {
  switch (name) {
    case 'HELLO':
      return {
        protocolVersion: r.u32('protocol_version'),
        release: r.string('release'),
        machine: r.string('machine'),
        pageSize: r.u32('page_size'),
        agentPid: r.u32('agent_pid'),
      } satisfies HelloResult;
    case 'SPAWN':
      return { pid: r.u32('pid') };
    case 'RUN': {
      const outcomeCode = r.u32('outcome');
      const outcome = RUN_OUTCOMES[outcomeCode as keyof typeof RUN_OUTCOMES];
      if (!outcome) throw new RangeError(`RUN: unknown outcome ${outcomeCode}`);
      return {
        outcome,
        code: r.i32('code'),
        hits: r.array('hits', (h) => ({ rip: h.u64('rip'), eflags: h.u64('eflags'), dr6: h.u64('dr6'), tid: h.u32('tid') })),
        signals: r.array('signals', (s) => ({ signo: s.u32('signo'), rip: s.u64('rip'), tid: s.u32('tid') })),
        stoppedTid: r.u32('stop_tid'),
        threads: r.array('threads', (e) => e.u32('tid')),
      } satisfies RunResult;
    }
    case 'STEP': {
      const outcomeCode = r.u32('outcome');
      const outcome = STEP_OUTCOMES[outcomeCode as keyof typeof STEP_OUTCOMES];
      if (!outcome) throw new RangeError(`STEP: unknown outcome ${outcomeCode}`);
      return {
        outcome,
        code: r.i32('code'),
        steps: r.array('steps', (s) => ({ rip: s.u64('rip'), eflags: s.u64('eflags'), dr6: s.u64('dr6') })),
        rip: r.u64('rip'),
      } satisfies StepResult;
    }
    case 'GETREGS':
      return decodeUserRegs(r.bytes('user_regs_struct'));
    case 'GETREGSET':
    case 'READ_FILE':
    case 'READ_MEM':
      return Buffer.from(r.bytes('data'));
    case 'PAGEMAP':
      return Buffer.from(r.bytes('pages'));
    case 'PAGE_FRAMES': {
      const bytes = r.bytes('frames');
      if (bytes.length % 4 !== 0) throw new RangeError(`PAGE_FRAMES: ${bytes.length} bytes of frames is not a whole number of u32`);
      const frames = new Uint32Array(bytes.length / 4);
      for (let i = 0; i < frames.length; i++) frames[i] = bytes.readUInt32LE(i * 4);
      return frames;
    }
    case 'READ_MEM_BULK':
      return r.u64('bytes');
    case 'PEEKUSER':
      return r.u64('value');
    case 'INJECT_SYSCALL':
      return r.i64('result');
    case 'KILL':
    case 'REAP':
      return { waitStatus: r.i32('wait_status') };
    case 'ATTACH':
      return { threads: r.array('threads', (e) => e.u32('tid')) };
    case 'REAP_ORPHANS':
      return { reaped: r.array('reaped', (e) => ({ pid: e.u32('pid'), waitStatus: e.i32('wait_status') })) };
    case 'PEEKSIGINFO':
      return r.array('siginfo', (e) => Buffer.from(e.bytes('siginfo')));
    case 'GETSIGMASK':
      return r.u64('mask');
    case 'READLINK':
      return r.string('target');
    case 'LISTDIR':
      return r.array('names', (e) => e.string('name'));
    case 'RSEQ_CONFIG':
      return { area: r.u64('rseq_abi_pointer'), size: r.u32('rseq_abi_size'), signature: r.u32('signature'), flags: r.u32('flags') } satisfies RseqConfig;
    case 'SETREGS':
    case 'SETREGSET':
    case 'POKEUSER':
    case 'WRITE_MEM':
    case 'SIGNAL':
    case 'SETSIGMASK':
    case 'DETACH':
    case 'BULK_OPEN':
    case 'WRITE_MEM_BULK':
    case 'TRACE_FORKS':
    case 'RELEASE':
    case 'CHDIR':
    case 'RESEED':
    case 'KMSG':
      return undefined;
    case 'BATCH':
      throw new RangeError('BATCH is not decoded as a single op');
  }
}

/** A short human description of an op for logs, plans and errors (no bulk data). */
export function describeOp(op: AgentOp): string {
  switch (op.op) {
    case 'HELLO':
      return 'HELLO';
    case 'SPAWN':
      return `SPAWN ${[op.path, ...op.argv.slice(1)].join(' ')}${op.noAslr ? ' (ASLR off)' : ''}${op.pid !== undefined ? ` as pid ${op.pid}` : ''}`;
    case 'RUN':
      return `RUN pid ${op.pid} until ${op.stopAfterHits > 0 ? `${op.stopAfterHits} hits` : 'exit'}`;
    case 'GETREGS':
    case 'KILL':
    case 'RSEQ_CONFIG':
    case 'DETACH':
    case 'ATTACH':
    case 'RELEASE':
      return `${op.op} pid ${op.pid}`;
    case 'TRACE_FORKS':
      return `TRACE_FORKS pid ${op.pid} ${op.on ? 'on' : 'off'}`;
    case 'REAP':
      return `REAP pid ${op.pid}${op.timeoutMs ? ` within ${op.timeoutMs} ms` : ''}`;
    case 'REAP_ORPHANS':
      return `REAP_ORPHANS until ${op.pids.length ? `pid ${op.pids.join(', ')} gone` : 'none is left'} within ${op.timeoutMs} ms`;
    case 'PEEKSIGINFO':
      return `PEEKSIGINFO pid ${op.pid} ${op.shared ? 'shared' : 'thread'} queue`;
    case 'GETSIGMASK':
      return `GETSIGMASK pid ${op.pid}`;
    case 'SETSIGMASK':
      return `SETSIGMASK pid ${op.pid} = 0x${op.mask.toString(16)}`;
    case 'READLINK':
    case 'LISTDIR':
      return `${op.op} ${op.path}`;
    case 'SIGNAL':
      return `SIGNAL pid ${op.pid} signal ${op.signo}`;
    case 'STEP':
      return `STEP pid ${op.pid} ${op.count} step${op.count === 1 ? '' : 's'}${op.signo ? ` delivering signal ${op.signo}` : ''}`;
    case 'SETREGS':
      return `SETREGS pid ${op.pid} rip=0x${op.regs.rip.toString(16)} eflags=0x${op.regs.eflags.toString(16)}`;
    case 'GETREGSET':
      return `GETREGSET pid ${op.pid} note 0x${op.noteType.toString(16)}`;
    case 'SETREGSET':
      return `SETREGSET pid ${op.pid} note 0x${op.noteType.toString(16)} (${op.data.length} bytes)`;
    case 'PEEKUSER':
      return `PEEKUSER pid ${op.pid} offset ${op.offset}`;
    case 'POKEUSER':
      return `POKEUSER pid ${op.pid} offset ${op.offset} = 0x${op.value.toString(16)}`;
    case 'READ_FILE':
      return `READ_FILE ${op.path}`;
    case 'READ_MEM':
      return `READ_MEM pid ${op.pid} 0x${op.address.toString(16)} +${op.length}`;
    case 'WRITE_MEM':
      return `WRITE_MEM pid ${op.pid} 0x${op.address.toString(16)} +${op.data.length}`;
    case 'BULK_OPEN':
      return `BULK_OPEN ${op.name}`;
    case 'CHDIR':
      return `CHDIR ${op.path}`;
    case 'RESEED':
      return `RESEED ${op.seconds}.${String(op.nanoseconds).padStart(9, '0')} with ${op.entropy.length} bytes`;
    case 'KMSG':
      return `KMSG ${op.record}`;
    case 'READ_MEM_BULK':
    case 'WRITE_MEM_BULK':
      return `${op.op} pid ${op.pid} ${op.ranges.length} range${op.ranges.length === 1 ? '' : 's'}, ${op.ranges.reduce((n, r) => n + r.length, 0)} bytes (frame ${op.tag})`;
    case 'PAGEMAP':
      return `PAGEMAP pid ${op.pid} 0x${op.start.toString(16)} ${op.pages} pages`;
    case 'PAGE_FRAMES':
      return `PAGE_FRAMES pid ${op.pid} ${op.mode} ${op.ranges.length} range${op.ranges.length === 1 ? '' : 's'}, ${op.ranges.reduce((n, r) => n + r.length, 0) / 4096} pages`;
    case 'INJECT_SYSCALL':
      return `INJECT_SYSCALL pid ${op.pid} nr ${op.nr} (${op.args.map((a) => `0x${a.toString(16)}`).join(', ')})`;
  }
}
