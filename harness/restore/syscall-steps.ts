/**
 * Plan steps that are system calls injected into the target (x86-64 Linux
 * numbers and flags), each with the result that means success.
 */
import type { RseqState } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';

const NR = { mmap: 9, mprotect: 10, munmap: 11, brk: 12, madvise: 28, rseq: 334, mlock2: 325 } as const;
const MADV_DONTNEED = 4n;
export const PROT = { READ: 1n, WRITE: 2n, EXEC: 4n } as const;
const MAP_PRIVATE = 0x02n;
const MAP_ANONYMOUS = 0x20n;
/** Never replaces a mapping: a clash fails (EEXIST) instead of corrupting the target. */
const MAP_FIXED_NOREPLACE = 0x100000n;
const NO_FD = BigInt.asUintN(64, -1n);

/** MAP_NORESERVE: the mapping is not charged to the commit limit (VmFlags nr). */
export const MAP_NORESERVE = 0x4000n;

/** Private anonymous memory exactly at `start`; `extraFlags` such as MAP_NORESERVE. */
export function mapFixedStep(pid: number, start: bigint, length: bigint, prot: bigint, why: string, extraFlags = 0n): PlanStep {
  return {
    op: {
      op: 'INJECT_SYSCALL',
      pid,
      nr: NR.mmap,
      args: [start, length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | extraFlags, NO_FD, 0n],
    },
    why,
    expect: start,
  };
}

export function unmapStep(pid: number, start: bigint, length: bigint, why: string): PlanStep {
  return { op: { op: 'INJECT_SYSCALL', pid, nr: NR.munmap, args: [start, length] }, why, expect: 0n };
}

export function protectStep(pid: number, start: bigint, length: bigint, prot: bigint, why: string): PlanStep {
  return { op: { op: 'INJECT_SYSCALL', pid, nr: NR.mprotect, args: [start, length, prot] }, why, expect: 0n };
}

/** Moves the program break; brk() answers with the new break on success. */
export function brkStep(pid: number, end: bigint, why: string): PlanStep {
  return { op: { op: 'INJECT_SYSCALL', pid, nr: NR.brk, args: [end] }, why, expect: end };
}

/** rseq(area, size, flags 0, signature): the registration the image had. */
export function rseqStep(pid: number, rseq: RseqState, why: string): PlanStep {
  return { op: { op: 'INJECT_SYSCALL', pid, nr: NR.rseq, args: [rseq.area, BigInt(rseq.size), 0n, BigInt(rseq.signature)] }, why, expect: 0n };
}

/** madvise(MADV_DONTNEED): the range's pages are dropped; private memory then reads as its backing (zeros, or the file). */
export function dontNeedStep(pid: number, start: bigint, length: bigint, why: string): PlanStep {
  return { op: { op: 'INJECT_SYSCALL', pid, nr: NR.madvise, args: [start, length, MADV_DONTNEED] }, why, expect: 0n };
}

/** madvise(start, length, advice): a piece of advice the region had (vma-flags.ts). */
export function madviseStep(pid: number, start: bigint, length: bigint, advice: bigint, why: string): PlanStep {
  return { op: { op: 'INJECT_SYSCALL', pid, nr: NR.madvise, args: [start, length, advice] }, why, expect: 0n };
}

export const MLOCK_ONFAULT = 1n;

/** mlock2(start, length, flags): flags 0 is mlock (pages faulted in now), MLOCK_ONFAULT locks them as they fault. */
export function mlock2Step(pid: number, start: bigint, length: bigint, flags: bigint, why: string): PlanStep {
  return { op: { op: 'INJECT_SYSCALL', pid, nr: NR.mlock2, args: [start, length, flags] }, why, expect: 0n };
}
