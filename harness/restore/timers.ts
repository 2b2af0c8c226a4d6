/**
 * Timers across a checkpoint: the three interval timers (setitimer/alarm:
 * ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF), POSIX timers (timer_create)
 * with their ids, and timerfds at their descriptor numbers — each with its
 * remaining time and interval.
 *
 * Capture, with every signal of the process blocked (checkpoint.ts), so a
 * timer that fires meanwhile leaves its signal pending, in the image:
 * - interval timers: getitimer injected three times, into a scratch page;
 * - POSIX timers: /proc/PID/timers lists each with its id, signal and
 *   sigev_value, notify kind and target, and clock; timer_gettime and
 *   timer_getoverrun injected per id;
 * - timerfds: /proc/PID/fdinfo/N has the clock, the unread expirations
 *   (ticks), the settime flags, the remaining time and the interval.
 *
 * Restore, after the threads exist (a SIGEV_THREAD_ID timer names one) and
 * with every signal blocked: timer_create hands out ids sequentially per
 * process (kernel/time/posix-timers.c, a counter in signal_struct that only
 * grows), and a fresh exec has made none, so the timers are created in id
 * order and a gap is filled by a placeholder created and deleted again.
 * Times are relative: the remaining time as timer_gettime/getitimer/fdinfo
 * report it. A periodic interval timer or timerfd whose period ended while
 * the process was stopped reads 0 remaining (the kernel re-arms it only
 * when the signal is dequeued, or the timerfd read); it is armed again
 * with one interval, its signal being pending in the image already.
 *
 * Not kept: the overrun count of a POSIX timer (timer_getoverrun) is the
 * kernel's count for the signal last delivered and has no setter; it is
 * recorded in the image and reads 0 after a restore until the next
 * expiry. SIGEV_THREAD (notify "thread" in /proc/PID/timers), clocks other
 * than those below (another process's CPU clock, the alarm clocks) and a
 * timerfd set with TFD_TIMER_CANCEL_ON_SET are refused at checkpoint time
 * by name (uncapturable.ts).
 */
import type { AgentClient } from '../agent/client.ts';
import type { AgentOp } from '../agent/ops.ts';
import { AgentError, CheckpointError } from '../errors.ts';
import { hex } from '../x86/registers.ts';
import {
  ITIMERS,
  POSIX_NOTIFY,
  type IntervalTimer,
  type ItimerWhich,
  type PosixNotify,
  type PosixTimer,
  type TimerfdState,
  type TimerSetting,
  type TimerState,
} from './image-model.ts';
import { DescriptorTable } from './descriptors.ts';
import type { PlanStep } from './plan-step.ts';
import { ScratchLayout, withScratchPage } from './scratch.ts';

const NR = {
  close: 3,
  ioctl: 16,
  getitimer: 36,
  setitimer: 38,
  timer_create: 222,
  timer_settime: 223,
  timer_gettime: 224,
  timer_getoverrun: 225,
  timer_delete: 226,
  timerfd_create: 283,
  timerfd_settime: 286,
} as const;

/** The signal each interval timer sends. */
export const ITIMER_SIGNAL: Record<ItimerWhich, number> = { real: 14, virtual: 26, prof: 27 };

/** Clocks a restored timer can be created on again: REALTIME, MONOTONIC, PROCESS_CPUTIME_ID, BOOTTIME, TAI. */
export const RESTORABLE_CLOCKS: ReadonlyMap<number, string> = new Map([
  [0, 'CLOCK_REALTIME'],
  [1, 'CLOCK_MONOTONIC'],
  [2, 'CLOCK_PROCESS_CPUTIME_ID'],
  [7, 'CLOCK_BOOTTIME'],
  [11, 'CLOCK_TAI'],
]);
/** Clocks a timerfd accepts (timerfd_create): REALTIME, MONOTONIC, BOOTTIME. */
export const TIMERFD_CLOCKS = [0, 1, 7] as const;

const SIGEV_SIGNAL = 0;
const SIGEV_NONE = 1;
const SIGEV_THREAD_ID = 4;

/** Bounds that keep a hostile image's plan small: ids past this would need that many placeholders. */
export const MAX_TIMER_ID = 4096;
export const MAX_POSIX_TIMERS = 256;
/** 2^62 ns is 146 years: far beyond any timer here, well inside a time_t. */
export const MAX_TIMER_NS = 1n << 62n;

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
/** The open flags a timerfd keeps (TFD_NONBLOCK, TFD_CLOEXEC). */
export const TIMERFD_FLAGS = O_NONBLOCK | O_CLOEXEC;
/** TFD_TIMER_ABSTIME; TFD_TIMER_CANCEL_ON_SET (2) is refused. */
export const TFD_TIMER_ABSTIME = 1;
/** TFD_IOC_SET_TICKS = _IOW('T', 0, __u64): the unread expirations (CONFIG_CHECKPOINT_RESTORE). */
const TFD_IOC_SET_TICKS = 0x40085400n;
export const TIMERFD_LINK = 'anon_inode:[timerfd]';

export const NO_TIMERS: TimerState = { itimers: [], posix: [], timerfds: [] };

/** One /proc/PID/timers record as the kernel prints it (fs/proc/base.c show_timer). */
export interface ProcTimer {
  id: number;
  signo: number;
  sival: bigint;
  /** "signal", "none", "thread" (SIGEV_THREAD) */
  notify: string;
  /** "pid" or "tid" (SIGEV_THREAD_ID) */
  target: 'pid' | 'tid';
  targetId: number;
  clock: number;
}

/** Parses /proc/PID/timers: "ID: n", "signal: s/ptr", "notify: kind/pid.n", "ClockID: c" per timer. */
export function parseProcTimers(text: string): ProcTimer[] {
  const timers: ProcTimer[] = [];
  for (const block of text.split(/^(?=ID:)/m).filter((b) => b.trim() !== '')) {
    const id = /^ID:\s*(\d+)$/m.exec(block);
    const signal = /^signal:\s*(\d+)\/(?:0x)?([0-9a-f]+)$/m.exec(block);
    const notify = /^notify:\s*(\w+)\/(pid|tid)\.(\d+)$/m.exec(block);
    const clock = /^ClockID:\s*(-?\d+)$/m.exec(block);
    if (!id || !signal || !notify || !clock) throw new CheckpointError(`unreadable /proc/PID/timers record: ${JSON.stringify(block.slice(0, 160))}`);
    timers.push({
      id: Number(id[1]),
      signo: Number(signal[1]),
      sival: BigInt(`0x${signal[2]}`),
      notify: notify[1]!,
      target: notify[2] as 'pid' | 'tid',
      targetId: Number(notify[3]),
      clock: Number(clock[1]),
    });
  }
  return timers.sort((a, b) => a.id - b.id);
}

/** Why a /proc/PID/timers record cannot be restored, or undefined. */
export function procTimerProblem(t: ProcTimer): string | undefined {
  if (t.notify === 'thread') return 'notify SIGEV_THREAD (a thread started by the C library per expiry)';
  if (t.notify !== 'signal' && t.notify !== 'none') return `notify ${t.notify}`;
  if (!RESTORABLE_CLOCKS.has(t.clock)) return `clock ${t.clock} (only ${[...RESTORABLE_CLOCKS.values()].join(', ')} can be created again)`;
  if (t.id > MAX_TIMER_ID) return `id ${t.id} (ids are recreated in order with placeholders; this harness goes up to ${MAX_TIMER_ID})`;
  return undefined;
}

/** clockid, ticks, settime flags, it_value and it_interval of a timerfd's fdinfo. */
export function parseTimerfdFdinfo(text: string): { clock: number; ticks: bigint; settimeFlags: number; valueNs: bigint; intervalNs: bigint; flags: number } {
  const clock = /^clockid:\s*(\d+)$/m.exec(text)?.[1];
  const ticks = /^ticks:\s*(\d+)$/m.exec(text)?.[1];
  const settime = /^settime flags:\s*([0-7]+)$/m.exec(text)?.[1];
  const value = /^it_value:\s*\((\d+),\s*(\d+)\)$/m.exec(text);
  const interval = /^it_interval:\s*\((\d+),\s*(\d+)\)$/m.exec(text);
  const flags = /^flags:\s+([0-7]+)$/m.exec(text)?.[1];
  if (clock === undefined || ticks === undefined || settime === undefined || !value || !interval || flags === undefined)
    throw new CheckpointError(`unreadable timerfd fdinfo: ${JSON.stringify(text.slice(0, 200))}`);
  const ns = (m: RegExpExecArray): bigint => BigInt(m[1]!) * 1_000_000_000n + BigInt(m[2]!);
  return {
    clock: Number(clock),
    ticks: BigInt(ticks),
    settimeFlags: parseInt(settime, 8),
    valueNs: ns(value),
    intervalNs: ns(interval),
    flags: parseInt(flags, 8),
  };
}

/** Why a timerfd (its fdinfo) cannot be restored, or undefined. */
export function timerfdProblem(info: ReturnType<typeof parseTimerfdFdinfo>): string | undefined {
  if (!(TIMERFD_CLOCKS as readonly number[]).includes(info.clock)) return `clock ${info.clock}`;
  if ((info.settimeFlags & ~TFD_TIMER_ABSTIME) !== 0)
    return `settime flags 0${info.settimeFlags.toString(8)} (TFD_TIMER_CANCEL_ON_SET: a clock change would have to reach it)`;
  return undefined;
}

const timespecNs = (b: Buffer, at: number): bigint => b.readBigInt64LE(at) * 1_000_000_000n + b.readBigInt64LE(at + 8);
const timevalNs = (b: Buffer, at: number): bigint => b.readBigInt64LE(at) * 1_000_000_000n + b.readBigInt64LE(at + 8) * 1000n;

/** struct itimerspec (interval first, then value), as timer_settime/timerfd_settime read it. */
export function encodeItimerspec(s: TimerSetting): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigInt64LE(s.intervalNs / 1_000_000_000n, 0);
  b.writeBigInt64LE(s.intervalNs % 1_000_000_000n, 8);
  b.writeBigInt64LE(s.valueNs / 1_000_000_000n, 16);
  b.writeBigInt64LE(s.valueNs % 1_000_000_000n, 24);
  return b;
}

/** struct itimerval (interval first, then value; microseconds, rounded up: never 0 for a timer that is armed). */
export function encodeItimerval(s: TimerSetting): Buffer {
  const us = (ns: bigint): bigint => (ns + 999n) / 1000n;
  const b = Buffer.alloc(32);
  b.writeBigInt64LE(us(s.intervalNs) / 1_000_000n, 0);
  b.writeBigInt64LE(us(s.intervalNs) % 1_000_000n, 8);
  b.writeBigInt64LE(us(s.valueNs) / 1_000_000n, 16);
  b.writeBigInt64LE(us(s.valueNs) % 1_000_000n, 24);
  return b;
}

/** struct sigevent (64 bytes): sigev_value, sigev_signo, sigev_notify, then _tid. */
export function encodeSigevent(t: Pick<PosixTimer, 'signo' | 'sival' | 'notify' | 'tid'>, tid: number): Buffer {
  const b = Buffer.alloc(64);
  b.writeBigUInt64LE(t.sival, 0);
  b.writeInt32LE(t.notify === 'none' ? 0 : t.signo, 8);
  b.writeInt32LE(t.notify === 'none' ? SIGEV_NONE : t.notify === 'thread-id' ? SIGEV_SIGNAL | SIGEV_THREAD_ID : SIGEV_SIGNAL, 12);
  b.writeInt32LE(t.notify === 'thread-id' ? tid : 0, 16);
  return b;
}

/**
 * The value a timer is armed with on restore: the remaining time, or one
 * period for a periodic timer that reads 0 (expired, its signal pending,
 * re-armed by the kernel only at dequeue — which the restored signal no
 * longer triggers). undefined: not armed.
 */
export function armingValue(s: TimerSetting): bigint | undefined {
  if (s.valueNs > 0n) return s.valueNs;
  return s.intervalNs > 0n ? s.intervalNs : undefined;
}

/**
 * Reads a stopped process's timers. Injects calls into `pid` (its main
 * thread): the caller blocks its signals first. `timerfdFds` are the
 * process's timerfd descriptors (their fdinfo is read here).
 */
export async function captureTimers(agent: AgentClient, pid: number, timerfdFds: readonly number[]): Promise<TimerState> {
  const procText = await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/timers`, maxSize: 1 << 20 }).then(
    (b) => b.toString('utf8'),
    (error: unknown) => {
      // No CONFIG_CHECKPOINT_RESTORE: no /proc/PID/timers, and no way to see a POSIX timer.
      if (error instanceof AgentError && error.errno === 2) return undefined;
      throw error;
    },
  );
  const listed = procText === undefined ? [] : parseProcTimers(procText);
  for (const t of listed) {
    const problem = procTimerProblem(t);
    if (problem)
      throw new CheckpointError(`POSIX timer ${t.id} of pid ${pid} cannot be restored: ${problem}`, {
        state: 'POSIX timer',
        where: `/proc/${pid}/timers id ${t.id}`,
      });
  }
  const { itimers, posix } = await withScratchPage(agent, pid, async (scratch) => {
    const ops: AgentOp[] = ITIMERS.flatMap((_, which): AgentOp[] => [
      { op: 'INJECT_SYSCALL', pid, nr: NR.getitimer, args: [BigInt(which), scratch] },
      { op: 'READ_MEM', pid, address: scratch, length: 32 },
    ]);
    for (const t of listed) {
      ops.push(
        { op: 'INJECT_SYSCALL', pid, nr: NR.timer_gettime, args: [BigInt(t.id), scratch] },
        { op: 'READ_MEM', pid, address: scratch, length: 32 },
        { op: 'INJECT_SYSCALL', pid, nr: NR.timer_getoverrun, args: [BigInt(t.id)] },
      );
    }
    const results = (await agent.batch(ops)).map((s, i) => {
      if (!s.ok) throw new AgentError(`reading the timers of pid ${pid}: step ${i} failed: ${s.message}`, s.op.op, s.errno);
      return s.result;
    });
    const call = (i: number, what: string): bigint => {
      const r = results[i] as bigint;
      if (r < 0n) throw new AgentError(`reading the timers of pid ${pid}: ${what} returned ${r}`, 'INJECT_SYSCALL', Number(-r));
      return r;
    };
    const itimers: IntervalTimer[] = [];
    ITIMERS.forEach((which, i) => {
      call(i * 2, `getitimer(${which})`);
      const b = results[i * 2 + 1] as Buffer;
      const setting = { intervalNs: timevalNs(b, 0), valueNs: timevalNs(b, 16) };
      if (armingValue(setting) !== undefined) itimers.push({ which, ...setting });
    });
    const posix = listed.map((t, k): PosixTimer => {
      const at = ITIMERS.length * 2 + k * 3;
      call(at, `timer_gettime(${t.id})`);
      const b = results[at + 1] as Buffer;
      const overrun = Number(call(at + 2, `timer_getoverrun(${t.id})`));
      const notify: PosixNotify = t.notify === 'none' ? 'none' : t.target === 'tid' ? 'thread-id' : 'signal';
      return {
        id: t.id,
        clock: t.clock,
        signo: t.notify === 'none' ? 0 : t.signo,
        sival: t.sival,
        notify,
        tid: notify === 'thread-id' ? t.targetId : 0,
        overrun,
        intervalNs: timespecNs(b, 0),
        valueNs: timespecNs(b, 16),
      };
    });
    return { itimers, posix };
  });
  const timerfds: TimerfdState[] = [];
  for (const fd of [...timerfdFds].sort((a, b) => a - b)) {
    const info = parseTimerfdFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 65536 })).toString('utf8'));
    const problem = timerfdProblem(info);
    if (problem) throw new CheckpointError(`timerfd fd ${fd} of pid ${pid} cannot be restored: ${problem}`, { state: 'timerfd', where: `fd ${fd}` });
    timerfds.push({ fd, clock: info.clock, flags: info.flags & TIMERFD_FLAGS, ticks: info.ticks, valueNs: info.valueNs, intervalNs: info.intervalNs });
  }
  return { itimers, posix, timerfds };
}

/**
 * The plan steps that give a fresh target (no POSIX timer made yet, every
 * signal blocked, its threads created) the image's timers. `pid` is the
 * target, `imagePid` the checkpointed one (a thread-id timer aimed at the
 * main thread follows it to a new pid); `openFds` what the target has open
 * when these run; `scratch` a free page address.
 */
export function timerSteps(pid: number, imagePid: number, state: TimerState, openFds: readonly number[], scratch: bigint): PlanStep[] {
  if (state.itimers.length === 0 && state.posix.length === 0 && state.timerfds.length === 0) return [];
  const layout = new ScratchLayout(scratch);
  const idSlot = layout.place(Buffer.alloc(8));
  const calls: PlanStep[] = [];
  for (const t of state.itimers) {
    const armed = { ...t, valueNs: armingValue(t)! };
    calls.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.setitimer, args: [BigInt(ITIMERS.indexOf(t.which)), layout.place(encodeItimerval(armed)), 0n] },
      why: `interval timer ITIMER_${t.which.toUpperCase()}: ${describeSetting(t)}`,
      expect: 0n,
    });
  }
  // Sequential ids: each id below the next timer's is a placeholder, created and deleted.
  const byId = new Map(state.posix.map((t) => [t.id, t]));
  const top = state.posix.length === 0 ? -1 : Math.max(...state.posix.map((t) => t.id));
  const placeholder = layout.place(encodeSigevent({ signo: 0, sival: 0n, notify: 'none', tid: 0 }, 0));
  for (let id = 0; id <= top; id++) {
    const t = byId.get(id);
    if (!t) {
      calls.push({
        op: { op: 'INJECT_SYSCALL', pid, nr: NR.timer_create, args: [1n, placeholder, idSlot] },
        why: `placeholder for POSIX timer id ${id} (ids are handed out in order)`,
        expect: 0n,
      });
      calls.push({ op: { op: 'INJECT_SYSCALL', pid, nr: NR.timer_delete, args: [BigInt(id)] }, why: `delete placeholder ${id}`, expect: 0n });
      continue;
    }
    const tid = t.tid === imagePid ? pid : t.tid;
    calls.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.timer_create, args: [BigInt(t.clock), layout.place(encodeSigevent(t, tid)), idSlot] },
      why: `POSIX timer ${id}: ${RESTORABLE_CLOCKS.get(t.clock)}, ${t.notify === 'none' ? 'SIGEV_NONE' : `signal ${t.signo}${t.notify === 'thread-id' ? ` to thread ${tid}` : ''}, sigev_value ${hex(t.sival)}`}`,
      expect: 0n,
    });
    const value = armingValue(t);
    if (value !== undefined)
      calls.push({
        op: { op: 'INJECT_SYSCALL', pid, nr: NR.timer_settime, args: [BigInt(id), 0n, layout.place(encodeItimerspec({ ...t, valueNs: value })), 0n] },
        why: `arm POSIX timer ${id}: ${describeSetting(t)}`,
        expect: 0n,
      });
  }
  const table = new DescriptorTable(openFds);
  for (const f of state.timerfds) {
    const got = table.lowestFree();
    calls.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.timerfd_create, args: [BigInt(f.clock), BigInt(f.flags)] },
      why: `timerfd for fd ${f.fd}: clock ${f.clock}, flags 0o${f.flags.toString(8)}`,
      expect: BigInt(got),
    });
    calls.push(...table.place(pid, got, f.fd, (f.flags & O_CLOEXEC) !== 0, `timerfd ${f.fd}`));
    const value = armingValue(f);
    if (value !== undefined)
      calls.push({
        op: { op: 'INJECT_SYSCALL', pid, nr: NR.timerfd_settime, args: [BigInt(f.fd), 0n, layout.place(encodeItimerspec({ ...f, valueNs: value })), 0n] },
        why: `arm timerfd ${f.fd}: ${describeSetting(f)}`,
        expect: 0n,
      });
    if (f.ticks > 0n) {
      const ticks = Buffer.alloc(8);
      ticks.writeBigUInt64LE(f.ticks);
      calls.push({
        op: { op: 'INJECT_SYSCALL', pid, nr: NR.ioctl, args: [BigInt(f.fd), TFD_IOC_SET_TICKS, layout.place(ticks)] },
        why: `${f.ticks} unread expiration(s) on timerfd ${f.fd}`,
        expect: 0n,
      });
    }
  }
  return layout.steps(
    pid,
    `timer settings and sigevents (${state.itimers.length} interval, ${state.posix.length} POSIX, ${state.timerfds.length} timerfd)`,
    calls,
  );
}

const SI_KERNEL = 0x80;
const SI_TIMER = -2;

/**
 * Whether a siginfo record (as PTRACE_PEEKSIGINFO gives it) was sent by one
 * of `state`'s timers once restored: SI_TIMER with the id of a POSIX timer
 * and its signal, or SI_KERNEL with an armed interval timer's signal. Such
 * entries join the queues while the rest of a restore runs — the timers
 * are live — and are not differences from the image.
 */
export function isTimerSignal(info: Buffer, state: TimerState): boolean {
  const signo = info.readInt32LE(0);
  const code = info.readInt32LE(8);
  if (code === SI_TIMER) return state.posix.some((t) => t.notify !== 'none' && t.signo === signo && t.id === info.readInt32LE(16));
  return code === SI_KERNEL && state.itimers.some((t) => ITIMER_SIGNAL[t.which] === signo);
}

export function describeSetting(s: TimerSetting): string {
  const ms = (ns: bigint): string => `${Number(ns) / 1e6} ms`;
  return `${ms(s.valueNs)} remaining${s.valueNs === 0n ? ' (expired, signal pending: armed with one interval)' : ''}, interval ${s.intervalNs === 0n ? 'none' : ms(s.intervalNs)}`;
}

/**
 * Checks a timer state as untrusted input: a field name and why, or
 * undefined. `tids` are the image's threads (main included): a thread-id
 * timer must name one; `fds` the descriptors the image restores otherwise.
 */
export function timerStateProblem(state: TimerState, tids: ReadonlySet<number>, fds: ReadonlySet<number>): { field: string; why: string } | undefined {
  const time = (v: bigint, field: string): { field: string; why: string } | undefined =>
    v < 0n || v >= MAX_TIMER_NS ? { field, why: `${v} ns is out of range (0 to 2^62)` } : undefined;
  const seenWhich = new Set<string>();
  for (const [i, t] of state.itimers.entries()) {
    const at = `itimers[${i}]`;
    if (!(ITIMERS as readonly string[]).includes(t.which))
      return { field: `${at}.which`, why: `${JSON.stringify(t.which)} is not one of ${ITIMERS.join(', ')}` };
    if (seenWhich.has(t.which)) return { field: `${at}.which`, why: `${t.which} appears twice` };
    seenWhich.add(t.which);
    const bad = time(t.valueNs, `${at}.valueNs`) ?? time(t.intervalNs, `${at}.intervalNs`);
    if (bad) return bad;
    if (t.valueNs % 1000n !== 0n || t.intervalNs % 1000n !== 0n)
      return { field: `${at}`, why: 'interval timers count microseconds: times must be multiples of 1000 ns' };
    if (armingValue(t) === undefined) return { field: `${at}.valueNs`, why: 'a disarmed timer (no value, no interval) is not listed' };
  }
  if (state.posix.length > MAX_POSIX_TIMERS) return { field: 'posix', why: `${state.posix.length} timers, limit ${MAX_POSIX_TIMERS}` };
  let lastId = -1;
  for (const [i, t] of state.posix.entries()) {
    const at = `posix[${i}]`;
    if (!Number.isInteger(t.id) || t.id < 0 || t.id > MAX_TIMER_ID) return { field: `${at}.id`, why: `${t.id} is not an id 0-${MAX_TIMER_ID}` };
    if (t.id <= lastId) return { field: `${at}.id`, why: `${t.id} is not above the previous id ${lastId} (ascending, each once)` };
    lastId = t.id;
    if (!RESTORABLE_CLOCKS.has(t.clock)) return { field: `${at}.clock`, why: `${t.clock} is not a clock a restore can create a timer on` };
    if (!(POSIX_NOTIFY as readonly string[]).includes(t.notify))
      return { field: `${at}.notify`, why: `${JSON.stringify(t.notify)} is not one of ${POSIX_NOTIFY.join(', ')}` };
    if (t.notify === 'none' ? t.signo !== 0 : !Number.isInteger(t.signo) || t.signo < 1 || t.signo > 64 || t.signo === 9 || t.signo === 19)
      return { field: `${at}.signo`, why: `${t.signo} is not a signal a timer with notify ${t.notify} sends` };
    if (t.notify === 'thread-id' ? !tids.has(t.tid) : t.tid !== 0)
      return {
        field: `${at}.tid`,
        why: t.notify === 'thread-id' ? `${t.tid} is not a thread of the image` : `${t.tid}: only a thread-id timer names a thread`,
      };
    if (t.sival < 0n || t.sival >= 1n << 64n) return { field: `${at}.sival`, why: 'not a 64-bit value' };
    if (!Number.isInteger(t.overrun) || t.overrun < 0 || t.overrun > 0x7fffffff)
      return { field: `${at}.overrun`, why: `${t.overrun} is not a count timer_getoverrun returns` };
    const bad = time(t.valueNs, `${at}.valueNs`) ?? time(t.intervalNs, `${at}.intervalNs`);
    if (bad) return bad;
  }
  let lastFd = -1;
  for (const [i, f] of state.timerfds.entries()) {
    const at = `timerfds[${i}]`;
    if (!Number.isInteger(f.fd) || f.fd < 3 || f.fd > 65535) return { field: `${at}.fd`, why: `${f.fd} is not a descriptor 3-65535` };
    if (f.fd <= lastFd) return { field: `${at}.fd`, why: `${f.fd} is not above the previous fd ${lastFd} (ascending, each once)` };
    lastFd = f.fd;
    if (fds.has(f.fd)) return { field: `${at}.fd`, why: `fd ${f.fd} is also another descriptor of the image` };
    if (!(TIMERFD_CLOCKS as readonly number[]).includes(f.clock)) return { field: `${at}.clock`, why: `${f.clock} is not a clock timerfd_create accepts` };
    if (!Number.isInteger(f.flags) || (f.flags & ~TIMERFD_FLAGS) !== 0)
      return { field: `${at}.flags`, why: `0o${Number(f.flags).toString(8)} has bits other than O_NONBLOCK and O_CLOEXEC` };
    if (f.ticks < 0n || f.ticks >= 1n << 63n) return { field: `${at}.ticks`, why: `${f.ticks} is out of range` };
    const bad = time(f.valueNs, `${at}.valueNs`) ?? time(f.intervalNs, `${at}.intervalNs`);
    if (bad) return bad;
  }
  return undefined;
}

/** The JSON form in the image (timers.json): times as decimal strings of nanoseconds, sigev_value in hex. */
export function timersJson(s: TimerState): unknown {
  const setting = (t: TimerSetting): { valueNs: string; intervalNs: string } => ({ valueNs: t.valueNs.toString(), intervalNs: t.intervalNs.toString() });
  return {
    itimers: s.itimers.map((t) => ({ which: t.which, ...setting(t) })),
    posix: s.posix.map((t) => ({
      id: t.id,
      clock: t.clock,
      signo: t.signo,
      sival: hex(t.sival),
      notify: t.notify,
      tid: t.tid,
      overrun: t.overrun,
      ...setting(t),
    })),
    timerfds: s.timerfds.map((f) => ({ fd: f.fd, clock: f.clock, flags: f.flags, ticks: f.ticks.toString(), ...setting(f) })),
  };
}
