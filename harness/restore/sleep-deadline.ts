/**
 * A sleep interrupted by the checkpoint (nanosleep, or a relative
 * clock_nanosleep) stops with rax = -ERESTART_RESTARTBLOCK: the kernel would
 * resume it through restart_syscall and the task's restart_block, which
 * holds the absolute expiry. The restart_block lives in the kernel's task
 * and no ptrace request reads it, so re-issuing the call with its original
 * arguments starts a relative sleep over (the sleep lasts longer by the time
 * already slept).
 *
 * What a checkpoint can see: the kernel copies the remaining time out to the
 * call's rmtp when it is interrupted (do_nanosleep → nanosleep_copyout), and
 * the checkpoint reads CLOCK_MONOTONIC in the stopped task. Their sum is the
 * absolute deadline (late by the time between the interruption and the
 * clock read: a few milliseconds). On restore the interrupted call is
 * replaced, on the same `syscall` instruction, by
 * clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, rmtp): it
 * returns 0 at the deadline, as the uninterrupted call would have. The
 * deadline's timespec is placed below the stack's red zone, where nothing
 * of the program lives. Restored in another boot (the boot id differs), the
 * monotonic clock means nothing there: the call sleeps the remaining time,
 * relative.
 *
 * What differs from the uninterrupted call: rdi, rsi and rdx hold the
 * absolute call's arguments when it returns (the syscall ABI preserves
 * them; a libc wrapper does not read them again), and a signal handled
 * during the re-issued sleep ends it with EINTR without writing rmtp (an
 * absolute sleep has no remaining time).
 *
 * poll/select/epoll_wait with a timeout cannot be given their deadline back
 * (their restart_block holds the expiry and nothing in user memory does): the
 * checkpoint refuses them by name (restartBlockProblem). A sleep with rmtp
 * NULL (usleep, a program waiting in a loop) has no deadline either, but a
 * sleep's only effect is its length: it is issued again with its original
 * arguments and starts over, which the run's syscall-restart note says
 * (syscall-restart.ts), rather than making every such program uncheckpointable.
 */
import type { AgentClient } from '../agent/client.ts';
import { CheckpointError } from '../errors.ts';
import type { UserRegs } from '../x86/registers.ts';
import { hex } from '../x86/registers.ts';
import type { SleepDeadline } from './image-model.ts';
import { withScratchPage } from './scratch.ts';

export const ERESTART_RESTARTBLOCK = 516n;
export const NR_NANOSLEEP = 35;
export const NR_CLOCK_NANOSLEEP = 230;
export const CLOCK_MONOTONIC = 1n;
export const TIMER_ABSTIME = 1n;
/** x86-64 System V: the 128 bytes below rsp belong to the running function. */
const RED_ZONE_BYTES = 128n;
const TIMESPEC_BYTES = 16n;
const NS_PER_S = 1_000_000_000n;
const NR_CLOCK_GETTIME = 228;

/** The interrupted call and where its rmtp is, or undefined when `regs` show no interrupted sleep. */
export function interruptedSleep(regs: UserRegs): { nr: number; rmtp: bigint } | undefined {
  if (BigInt.asIntN(64, regs.rax) !== -ERESTART_RESTARTBLOCK) return undefined;
  const nr = Number(BigInt.asIntN(64, regs.orig_rax));
  if (nr === NR_NANOSLEEP) return { nr, rmtp: regs.rsi };
  if (nr === NR_CLOCK_NANOSLEEP) return { nr, rmtp: regs.r10 };
  return undefined;
}

/**
 * Why the restart block of an interrupted call cannot be captured, or
 * undefined when there is none or it can: the call with ERESTART_RESTARTBLOCK
 * and nowhere in user memory that holds its remaining time.
 */
export function restartBlockProblem(regs: UserRegs): string | undefined {
  if (BigInt.asIntN(64, regs.rax) !== -ERESTART_RESTARTBLOCK) return undefined;
  const nr = BigInt.asIntN(64, regs.orig_rax);
  const sleep = interruptedSleep(regs);
  if (!sleep)
    return `system call ${nr} was interrupted with ERESTART_RESTARTBLOCK: its remaining timeout lives only in the kernel's restart_block, which no ptrace request reads`;
  return undefined;
}

/** A struct timespec (two little-endian 64-bit words) as nanoseconds; undefined when it is not a valid one. */
export function timespecNs(data: Buffer): bigint | undefined {
  if (data.length !== Number(TIMESPEC_BYTES)) return undefined;
  const sec = data.readBigInt64LE(0);
  const nsec = data.readBigInt64LE(8);
  if (sec < 0n || nsec < 0n || nsec >= NS_PER_S) return undefined;
  return sec * NS_PER_S + nsec;
}

export function timespecBytes(ns: bigint): Buffer {
  const data = Buffer.alloc(Number(TIMESPEC_BYTES));
  data.writeBigInt64LE(ns / NS_PER_S, 0);
  data.writeBigInt64LE(ns % NS_PER_S, 8);
  return data;
}

export function sleepDeadline(nr: number, rmtp: bigint, remaining: Buffer, clock: Buffer, bootId: string): SleepDeadline | undefined {
  const remainingNs = timespecNs(remaining);
  const checkpointClockNs = timespecNs(clock);
  if (remainingNs === undefined || checkpointClockNs === undefined) return undefined;
  return { nr, rmtp, remainingNs, checkpointClockNs, deadlineNs: checkpointClockNs + remainingNs, bootId };
}

/** Where the deadline's timespec goes: below the red zone, 16-byte aligned. */
export function deadlineAddress(rsp: bigint): bigint {
  return (rsp - RED_ZONE_BYTES - TIMESPEC_BYTES) & ~0xfn;
}

export interface SleepReissue {
  /** the registers with the absolute (or, in another boot, relative) clock_nanosleep on the interrupted `syscall` */
  regs: UserRegs;
  /** the timespec the call reads, and where */
  address: bigint;
  timespec: Buffer;
  note: string;
}

/**
 * The interrupted sleep re-issued with its deadline. `sameBoot`: the
 * restore runs in the boot the checkpoint was taken in (the deadline is
 * absolute there).
 */
export function reissueSleep(regs: UserRegs, sleep: SleepDeadline, sameBoot: boolean): SleepReissue {
  const address = deadlineAddress(regs.rsp);
  const rewound = {
    ...regs,
    rip: regs.rip - 2n,
    rax: BigInt(NR_CLOCK_NANOSLEEP),
    orig_rax: BigInt(NR_CLOCK_NANOSLEEP),
    rdi: CLOCK_MONOTONIC,
    rdx: address,
    r10: sleep.rmtp,
  };
  if (sameBoot) {
    return {
      regs: { ...rewound, rsi: TIMER_ABSTIME },
      address,
      timespec: timespecBytes(sleep.deadlineNs),
      note: `system call ${sleep.nr} was interrupted (ERESTART_RESTARTBLOCK) with ${sleep.remainingNs} ns left: re-issued as clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) until ${sleep.deadlineNs} ns, its deadline (timespec at ${hex(address)})`,
    };
  }
  return {
    regs: { ...rewound, rsi: 0n },
    address,
    timespec: timespecBytes(sleep.remainingNs),
    note: `system call ${sleep.nr} was interrupted (ERESTART_RESTARTBLOCK) with ${sleep.remainingNs} ns left in boot ${sleep.bootId}, which is not this one: re-issued as a relative clock_nanosleep(CLOCK_MONOTONIC) for the remaining time (timespec at ${hex(address)})`,
  };
}

/** sleep.json: null, or the fields with the 64-bit ones in hex. */
export function sleepJson(sleep: SleepDeadline | null): unknown {
  if (!sleep) return null;
  return {
    nr: sleep.nr,
    rmtp: hex(sleep.rmtp),
    remainingNs: hex(sleep.remainingNs),
    checkpointClockNs: hex(sleep.checkpointClockNs),
    deadlineNs: hex(sleep.deadlineNs),
    bootId: sleep.bootId,
  };
}

/** An upper bound no real sleep reaches (about 317 years): a deadline beyond it is hostile. */
export const MAX_SLEEP_NS = 1n << 63n;
export const BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id';
export const BOOT_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * What is wrong with `sleep` against the registers and memory of the image
 * (undefined when nothing): the registers must show that very call
 * interrupted with ERESTART_RESTARTBLOCK and rmtp, the deadline must be the
 * clock plus the remaining time, and the kernel must be able to write rmtp
 * and read the timespec the restore places below the red zone.
 */
export function sleepProblem(
  sleep: SleepDeadline,
  regs: UserRegs,
  writable: (start: bigint, length: bigint) => boolean,
): { field: string; why: string } | undefined {
  const seen = interruptedSleep(regs);
  if (!seen || seen.nr !== sleep.nr)
    return {
      field: 'nr',
      why: `regs.json does not show system call ${sleep.nr} interrupted with ERESTART_RESTARTBLOCK (rax ${hex(regs.rax)}, orig_rax ${hex(regs.orig_rax)})`,
    };
  if (seen.rmtp !== sleep.rmtp) return { field: 'rmtp', why: `${hex(sleep.rmtp)} is not the call's rmtp argument, ${hex(seen.rmtp)}` };
  if (!writable(sleep.rmtp, 16n)) return { field: 'rmtp', why: `${hex(sleep.rmtp)} is not 16 bytes of writable memory in memory.json` };
  if (sleep.deadlineNs !== sleep.checkpointClockNs + sleep.remainingNs)
    return { field: 'deadlineNs', why: `is not checkpointClockNs + remainingNs (${hex(sleep.checkpointClockNs + sleep.remainingNs)})` };
  if (sleep.deadlineNs >= MAX_SLEEP_NS) return { field: 'deadlineNs', why: `${hex(sleep.deadlineNs)} is beyond any clock_nanosleep deadline` };
  if (regs.rsp < 256n) return { field: 'nr', why: `regs.json rsp ${hex(regs.rsp)} leaves no room below it for the deadline's timespec` };
  const at = deadlineAddress(regs.rsp);
  if (!writable(at, 16n))
    return {
      field: 'nr',
      why: `the deadline's timespec would go at ${hex(at)} (below rsp ${hex(regs.rsp)} and its red zone), which is not writable memory in memory.json`,
    };
  return undefined;
}

/**
 * For a checkpoint of the stopped task `pid` whose registers are `regs`:
 * the deadline of the sleep it was interrupted in (null when none). Taken
 * first, so that the clock is read as close to the interruption as can be.
 * A restart block that cannot be captured fails the checkpoint by name,
 * unless `refuse` is false (then it is left out: the call starts over).
 */
export async function captureSleep(agent: AgentClient, pid: number, regs: UserRegs, refuse: boolean): Promise<SleepDeadline | null> {
  const problem = restartBlockProblem(regs);
  if (problem) {
    if (refuse) throw new CheckpointError(`pid ${pid}: ${problem}`, { state: 'restart_block', target: `pid ${pid}` });
    return null;
  }
  const sleep = interruptedSleep(regs);
  // rmtp NULL: no remaining time anywhere; the call starts over (see the top of this file).
  if (!sleep || sleep.rmtp === 0n) return null;
  const clock = await withScratchPage(agent, pid, async (scratch) => {
    const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR_CLOCK_GETTIME, args: [CLOCK_MONOTONIC, scratch] });
    if (r !== 0n) throw new CheckpointError(`pid ${pid}: clock_gettime(CLOCK_MONOTONIC) returned ${r}`, { target: `pid ${pid}` });
    return agent.call({ op: 'READ_MEM', pid, address: scratch, length: 16 });
  });
  const remaining = await agent.call({ op: 'READ_MEM', pid, address: sleep.rmtp, length: 16 });
  const bootId = (await agent.call({ op: 'READ_FILE', path: BOOT_ID_PATH, maxSize: 64 })).toString('latin1').trim();
  const deadline = sleepDeadline(sleep.nr, sleep.rmtp, remaining, clock, bootId);
  if (!deadline)
    throw new CheckpointError(`pid ${pid}: system call ${sleep.nr} left no valid timespec at rmtp ${hex(sleep.rmtp)} (${remaining.toString('hex')})`, {
      target: `pid ${pid}`,
    });
  return deadline;
}

/**
 * Why a thread other than the main one cannot be checkpointed where it is
 * (undefined when it can): a restart block of any kind — the image holds the
 * deadline of the main thread's sleep only, and a thread's call re-issued
 * with its original arguments would start over.
 */
export function threadRestartBlockProblem(tid: number, regs: UserRegs): string | undefined {
  if (BigInt.asIntN(64, regs.rax) !== -ERESTART_RESTARTBLOCK) return undefined;
  // A sleep with rmtp NULL starts over in any thread, as in the main one.
  if (interruptedSleep(regs)?.rmtp === 0n) return undefined;
  return `thread ${tid}: ${restartBlockProblem(regs) ?? `system call ${BigInt.asIntN(64, regs.orig_rax)} (a sleep) was interrupted with ERESTART_RESTARTBLOCK: the image holds the main thread's sleep deadline only`}`;
}
