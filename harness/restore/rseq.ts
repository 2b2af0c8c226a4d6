/**
 * rseq across a restore (CRIU wiki, "Restartable sequences"): the restored
 * task registers the same area, size and signature again; a task
 * checkpointed inside a critical section must resume at the section's
 * abort handler, as the kernel would have sent it there on its way back to
 * user mode. The kernel cannot do that for a restored task: the
 * registration happens in a fresh task whose IP is elsewhere, and the first
 * return to user mode with an IP outside the section clears rseq_cs — so
 * the restorer has to apply the fixup itself (policy rseq-fixup=on; off is
 * the restorer that did not know).
 */
import { hex } from '../x86/registers.ts';
import type { CheckpointImage, MemoryRegion, RseqState } from './image-model.ts';
import { PlanError } from './plan-step.ts';
import { parseMaps } from './proc-maps.ts';

/** struct rseq: cpu_id_start u32, cpu_id u32, rseq_cs u64, flags u32 — the original 32-byte ABI. */
export const RSEQ_AREA_MIN = 32;
/** rseq areas grow with the kernel (node_id, mm_cid in 6.3); a page bounds any of them. */
export const RSEQ_AREA_MAX = 4096;
export const RSEQ_AREA_ALIGN = 32n;
const RSEQ_CS_OFFSET = 8n;

/** Where a registration's rseq_cs pointer lives: the word the kernel reads, and clears when stale. */
export function rseqCsAddress(rseq: RseqState): bigint {
  return rseq.area + RSEQ_CS_OFFSET;
}
/** struct rseq_cs: version u32, flags u32, start_ip, post_commit_offset, abort_ip (u64 each). */
const RSEQ_CS_SIZE = 32n;
/** RSEQ_CS_FLAG_NO_RESTART_ON_PREEMPT | _SIGNAL | _MIGRATE: deprecated since 6.0. */
export const RSEQ_CS_NO_RESTART_FLAGS = 0x7;

export interface RseqCriticalSection {
  /** where the descriptor is */
  at: bigint;
  version: number;
  flags: number;
  startIp: bigint;
  postCommitOffset: bigint;
  abortIp: bigint;
}

/** Bytes [address, address + length) of the image's memory, or undefined when not dumped. */
export function imageBytes(image: Pick<CheckpointImage, 'regions' | 'memory'>, address: bigint, length: bigint): Buffer | undefined {
  const region = image.regions.find((r) => r.start <= address && address + length <= r.end);
  if (!region || region.entry === null) return undefined;
  const data = image.memory.get(region.entry)!;
  const off = Number(address - region.start);
  return data.subarray(off, off + Number(length));
}

/** The rseq_cs pointer stored in the registered area, as the image has it. */
export function rseqCsPointer(image: CheckpointImage): bigint {
  const rseq = image.rseq!;
  const bytes = imageBytes(image, rseqCsAddress(rseq), 8n);
  if (!bytes) throw new PlanError(`the rseq area ${hex(rseq.area)} is not in the image's memory`);
  return bytes.readBigUInt64LE(0);
}

/** The critical section the image's rseq_cs points at, or undefined when it is 0. */
export function activeCriticalSection(image: CheckpointImage): RseqCriticalSection | undefined {
  const at = rseqCsPointer(image);
  if (at === 0n) return undefined;
  const bytes = imageBytes(image, at, RSEQ_CS_SIZE);
  if (!bytes) throw new PlanError(`rseq_cs ${hex(at)} points outside the image's memory`);
  return {
    at,
    version: bytes.readUInt32LE(0),
    flags: bytes.readUInt32LE(4),
    startIp: bytes.readBigUInt64LE(8),
    postCommitOffset: bytes.readBigUInt64LE(16),
    abortIp: bytes.readBigUInt64LE(24),
  };
}

/** The kernel's test (kernel/rseq.c in_rseq_cs): the upper bound is exclusive. */
export function inCriticalSection(ip: bigint, cs: RseqCriticalSection): boolean {
  return ip >= cs.startIp && ip - cs.startIp < cs.postCommitOffset;
}

export interface RseqFixup {
  /** the image with the fixup applied (unchanged when none applies) */
  image: CheckpointImage;
  /** what was done and why, for the plan */
  note: string;
  /**
   * rseq_cs to write back as the very last step, after every injected call
   * (whose return to user mode lets the kernel clear it): a task left inside
   * a NO_RESTART section must still have it when it resumes.
   */
  lastStage?: { address: bigint; value: bigint };
}

/**
 * The abort the kernel owes a task stopped inside a critical section: IP to
 * abort_ip and rseq_cs cleared, as rseq_ip_fixup() does. A section with the
 * deprecated NO_RESTART flags keeps its IP and gets its rseq_cs back at the
 * last stage (CRIU's rule: the kernel clears it while the restorer runs) —
 * the kernel then decides what happens to it (6.0+: SIGSEGV).
 */
export function applyRseqFixup(image: CheckpointImage): RseqFixup {
  if (!image.rseq) return { image, note: 'no rseq registration' };
  const cs = activeCriticalSection(image);
  if (!cs) return { image, note: 'rseq_cs is 0: not in a critical section' };
  const ip = image.regs.rip;
  if (!inCriticalSection(ip, cs))
    return { image, note: `rip ${hex(ip)} is outside the section [${hex(cs.startIp)}, +${hex(cs.postCommitOffset)}) that rseq_cs names: nothing to abort` };
  if (cs.version !== 0) throw new PlanError(`rseq_cs at ${hex(cs.at)} has version ${cs.version}; only version 0 exists`);
  if ((cs.flags & RSEQ_CS_NO_RESTART_FLAGS) !== 0) {
    return {
      image,
      note: `rip ${hex(ip)} is inside a section with NO_RESTART flags 0x${cs.flags.toString(16)}: rip kept, rseq_cs written back last (CRIU's rule; the kernel decides)`,
      lastStage: { address: rseqCsAddress(image.rseq), value: cs.at },
    };
  }
  // The text is usually not in the image (the binary is exec'd again), so the
  // signature is checked here only when the image has the bytes; the kernel
  // checks it again on every abort.
  const abortIn = parseMaps(image.maps).find((m) => m.start <= cs.abortIp - 4n && cs.abortIp < m.end);
  if (!abortIn || abortIn.perms[2] !== 'x')
    throw new PlanError(`abort_ip ${hex(cs.abortIp)} of rseq_cs at ${hex(cs.at)} is not in an executable mapping of the image`);
  const signature = imageBytes(image, cs.abortIp - 4n, 4n);
  if (signature && signature.readUInt32LE(0) !== image.rseq.signature) {
    throw new PlanError(
      `abort_ip ${hex(cs.abortIp)} is not preceded by the registered signature 0x${image.rseq.signature.toString(16)} (the kernel would kill the task)`,
    );
  }
  const memory = new Map(image.memory);
  const csAt = rseqCsAddress(image.rseq);
  const region = image.regions.find((r) => r.start <= csAt && csAt + 8n <= r.end)!;
  const copy = Buffer.from(memory.get(region.entry!)!);
  copy.writeBigUInt64LE(0n, Number(csAt - region.start));
  memory.set(region.entry!, copy);
  return {
    image: { ...image, regs: { ...image.regs, rip: cs.abortIp }, memory },
    note: `rip ${hex(ip)} is inside the section [${hex(cs.startIp)}, +${hex(cs.postCommitOffset)}): rip set to abort_ip ${hex(cs.abortIp)}, rseq_cs cleared`,
  };
}

/** Checks a registration against the image's memory: an aligned area inside one writable region. */
export function checkRseqArea(rseq: RseqState, regions: readonly MemoryRegion[]): string | undefined {
  if (rseq.area % RSEQ_AREA_ALIGN !== 0n) return `area ${hex(rseq.area)} is not ${RSEQ_AREA_ALIGN}-byte aligned`;
  if (rseq.size < RSEQ_AREA_MIN || rseq.size > RSEQ_AREA_MAX) return `size ${rseq.size} is outside [${RSEQ_AREA_MIN}, ${RSEQ_AREA_MAX}]`;
  const end = rseq.area + BigInt(rseq.size);
  const holder = regions.find((r) => r.start <= rseq.area && end <= r.end);
  if (!holder || holder.entry === null) return `area ${hex(rseq.area)}-${hex(end)} is not inside one dumped region`;
  if (holder.perms[1] !== 'w') return `area ${hex(rseq.area)} is in a ${holder.perms} region; the kernel writes it`;
  return undefined;
}
