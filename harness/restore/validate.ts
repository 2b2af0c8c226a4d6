/**
 * Field-level validation of a checkpoint image. Everything arrives untyped
 * from a hostile file; what leaves is a CheckpointImage whose every value
 * is in range. Each failure names the entry and the field.
 */
import { parseDependencies } from './platform-dependencies.ts';
import { parseClocks } from './time-namespace.ts';
import { ImageRejectedError } from '../errors.ts';
import {
  EFLAGS_REQUIRED_FIXED,
  EFLAGS_USER_CHANGEABLE,
  USER_CS,
  USER_REGS_FIELDS,
  USER_SPACE_END,
  USER_SS,
  eflagsBitNames,
  hex,
  type UserRegs,
} from '../x86/registers.ts';
import {
  DEBUG_REG_NAMES,
  ITIMERS,
  POSIX_NOTIFY,
  threadXstateEntry,
  type CheckpointImage,
  type DebugRegs,
  type FileKind,
  type IntervalTimer,
  type LdtEntry,
  type MemoryRegion,
  type PkeyState,
  type PlatformFacts,
  type PosixTimer,
  type ProcessInfo,
  type RseqState,
  type SignalState,
  type SleepDeadline,
  type TaskState,
  type ThreadLinks,
  type ThreadState,
  type TimerfdState,
  type TimerState,
  type UserfaultfdState,
  type EventfdState,
  type SignalfdState,
  type MembarrierRegistration,
} from './image-model.ts';
import type { UntrustedImage } from './image-tar.ts';
import { parseMaps } from './proc-maps.ts';
import { unpackStored } from './stored-pages.ts';
import { mappedPathProblem } from './mappings.ts';
import { checkRseqArea } from './rseq.ts';
import { SIGINFO_BYTES, signalStateProblem } from './signals.ts';
import { taskStateProblem } from './files.ts';
import { eventFdsProblem } from './event-fds.ts';
import { imageDescriptors } from './descriptors.ts';
import { membarrierProblem } from './membarrier.ts';
import { regionUserfaultProblem, userfaultfdsProblem } from './userfaultfd.ts';
import { vmFlagsProblem } from './vma-flags.ts';
import { ldtProblem, LDT_ENTRIES, LDT_ENTRY_KEYS } from './ldt.ts';
import { timerStateProblem } from './timers.ts';
import { BOOT_ID, sleepProblem } from './sleep-deadline.ts';
import { pkeysProblem } from './pkeys.ts';
import { linksProblem, MAX_THREADS, MAX_TID } from './threads.ts';

const PAGE = 4096n;
/** Largest file offset (loff_t) a mapping may reach. */
const MAX_FILE_OFFSET = 1n << 63n;
const U64_HEX = /^0x[0-9a-f]{1,16}$/;

function reject(entry: string, field: string, why: string): never {
  throw new ImageRejectedError(why, entry, field);
}

function u64(entry: string, field: string, value: unknown): bigint {
  if (typeof value !== 'string' || !U64_HEX.test(value))
    reject(entry, field, `must be a 64-bit hex string like "0x1f", got ${JSON.stringify(value)?.slice(0, 40)}`);
  return BigInt(value);
}

/**
 * EFLAGS rule of the 2009 restart check: bits outside the user-changeable
 * set must be exactly IF | bit 1. Returns the offending bit names (empty
 * when acceptable).
 */
export function eflagsViolations(eflags: bigint): string[] {
  const fixed = eflags & ~EFLAGS_USER_CHANGEABLE;
  const forbidden = eflagsBitNames(fixed & ~EFLAGS_REQUIRED_FIXED).map((n) => `${n} set`);
  const missing = eflagsBitNames(EFLAGS_REQUIRED_FIXED & ~fixed).map((n) => `${n} clear`);
  return [...forbidden, ...missing];
}

export function validateRegs(raw: Record<string, unknown>, entry = 'regs.json', at = ''): UserRegs {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) reject(entry, `${at}(root)`, 'must be an object');
  const regs = {} as UserRegs;
  for (const name of USER_REGS_FIELDS) regs[name] = u64(entry, `${at}${name}`, raw[name]);
  for (const key of Object.keys(raw)) {
    if (!(USER_REGS_FIELDS as readonly string[]).includes(key)) reject(entry, `${at}${key}`, 'unknown register');
  }
  const bad = eflagsViolations(regs.eflags);
  if (bad.length > 0) {
    reject(entry, `${at}eflags`, `${hex(regs.eflags)} has bits outside {CF PF AF ZF SF TF DF OF NT AC ID RF} that differ from IF|0x2: ${bad.join(', ')}`);
  }
  if (regs.cs !== USER_CS) reject(entry, `${at}cs`, `${hex(regs.cs)} is not the 64-bit user code selector ${hex(USER_CS)}`);
  if (regs.ss !== USER_SS) reject(entry, `${at}ss`, `${hex(regs.ss)} is not the user stack selector ${hex(USER_SS)}`);
  for (const seg of ['ds', 'es', 'fs', 'gs'] as const) {
    // A null selector, or any selector with RPL 3 (GDT or LDT); the kernel checks the descriptor itself.
    if (regs[seg] > 0xffffn || (regs[seg] !== 0n && (regs[seg] & 3n) !== 3n)) {
      reject(entry, `${at}${seg}`, `${hex(regs[seg])} is neither null nor a user (RPL 3) selector`);
    }
  }
  for (const name of ['rip', 'rsp', 'fs_base', 'gs_base'] as const) {
    if (regs[name] >= USER_SPACE_END) reject(entry, `${at}${name}`, `${hex(regs[name])} is outside user space`);
  }
  return regs;
}

/** DR7 bits that must be zero: reserved 11-12 and 14-15, GD (13), and the upper half. */
const DR7_MUST_BE_ZERO = (0xffff_ffffn << 32n) | (1n << 11n) | (1n << 12n) | (1n << 13n) | (1n << 14n) | (1n << 15n);

export function validateDebugRegs(raw: Record<string, unknown>, entry = 'debugregs.json', at = ''): DebugRegs {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) reject(entry, `${at}(root)`, 'must be an object');
  const dr = {} as DebugRegs;
  for (const name of DEBUG_REG_NAMES) dr[name] = u64(entry, `${at}${name}`, raw[name]);
  for (const key of Object.keys(raw)) {
    if (!(DEBUG_REG_NAMES as readonly string[]).includes(key)) reject(entry, `${at}${key}`, 'unknown debug register');
  }
  if ((dr.dr7 & DR7_MUST_BE_ZERO) !== 0n) reject(entry, `${at}dr7`, `${hex(dr.dr7)} sets reserved or GD bits`);
  if (dr.dr6 >> 32n !== 0n) reject(entry, `${at}dr6`, `${hex(dr.dr6)} sets bits above 31`);
  for (let i = 0; i < 4; i++) {
    const name = (['dr0', 'dr1', 'dr2', 'dr3'] as const)[i]!;
    const address = dr[name];
    const enabled = ((dr.dr7 >> BigInt(i * 2)) & 3n) !== 0n;
    if (address >= USER_SPACE_END) reject(entry, `${at}${name}`, `${hex(address)} is not a user-space address`);
    if (!enabled) continue;
    const rw = (dr.dr7 >> BigInt(16 + i * 4)) & 3n;
    const lenBits = (dr.dr7 >> BigInt(18 + i * 4)) & 3n;
    const length = [1n, 2n, 8n, 4n][Number(lenBits)]!;
    if (rw === 2n) reject(entry, `${at}dr7`, `DR${i} is an I/O breakpoint, which user space cannot have`);
    if (rw === 0n && lenBits !== 0n) reject(entry, `${at}dr7`, `DR${i} is an execute breakpoint with length ${length} (must be 1)`);
    if (address % length !== 0n) reject(entry, `${at}${name}`, `${hex(address)} is not aligned to the breakpoint length ${length}`);
  }
  return dr;
}

/** XSAVE layout facts (Intel SDM vol. 1, 13.4): legacy area, then the 64-byte header. */
const XSAVE_LEGACY = 512;
const XSAVE_HEADER = 64;
const XSTATE_MAX = 64 * 1024;
/**
 * The ptrace ABI (arch/x86/include/asm/user.h, struct user_xstateregs) puts
 * the OS-enabled feature mask — XCR0 — in the first 8 software-usable bytes
 * of the legacy area.
 */
const XCR0_OFFSET = 464;
const X87_SSE = 3n;

/** The XCR0 recorded in a ptrace xstate buffer. */
export function xstateFeatures(data: Buffer): bigint {
  return data.readBigUInt64LE(XCR0_OFFSET);
}

export function validateXstate(data: Buffer, entry = 'xstate.bin', at = ''): void {
  if (data.length < XSAVE_LEGACY + XSAVE_HEADER) reject(entry, `${at}(size)`, `${data.length} bytes is smaller than the legacy area plus header`);
  if (data.length > XSTATE_MAX) reject(entry, `${at}(size)`, `${data.length} bytes is larger than any XSAVE area`);
  const mxcsr = data.readUInt32LE(24);
  if ((mxcsr & 0xffff0000) !== 0) reject(entry, `${at}mxcsr`, `0x${mxcsr.toString(16)} sets reserved bits`);
  const xcr0 = xstateFeatures(data);
  if ((xcr0 & X87_SSE) !== X87_SSE) reject(entry, `${at}xcr0`, `0x${xcr0.toString(16)} lacks x87 or SSE, which every x86-64 CPU enables`);
  const xstateBv = data.readBigUInt64LE(XSAVE_LEGACY);
  const xcompBv = data.readBigUInt64LE(XSAVE_LEGACY + 8);
  if (xcompBv !== 0n) reject(entry, `${at}xcomp_bv`, `0x${xcompBv.toString(16)}: ptrace uses the standard (uncompacted) format`);
  for (let off = XSAVE_LEGACY + 16; off < XSAVE_LEGACY + XSAVE_HEADER; off += 8) {
    if (data.readBigUInt64LE(off) !== 0n) reject(entry, `${at}header.reserved`, `reserved header bytes at ${off} are not zero`);
  }
  if ((xstateBv & ~xcr0) !== 0n)
    reject(entry, `${at}xstate_bv`, `0x${xstateBv.toString(16)} has features the CPU did not enable (XCR0 0x${xcr0.toString(16)})`);
}

function validateProcess(raw: unknown): ProcessInfo {
  const p = raw as Partial<ProcessInfo> | null;
  const strings = (field: string, v: unknown): string[] => {
    if (!Array.isArray(v) || v.length > 4096 || !v.every((s) => typeof s === 'string' && !s.includes('\0') && s.length < 65536)) {
      reject('manifest.json', `process.${field}`, 'must be a list of strings without NUL');
    }
    return v as string[];
  };
  if (typeof p !== 'object' || p === null) reject('manifest.json', 'process', 'missing');
  if (typeof p.binary !== 'string' || !/^\/[^\0]{1,4095}$/.test(p.binary) || p.binary.split('/').includes('..')) {
    reject('manifest.json', 'process.binary', `${JSON.stringify(p.binary)} is not an absolute path without ".."`);
  }
  if (typeof p.noAslr !== 'boolean') reject('manifest.json', 'process.noAslr', 'must be a boolean');
  if (!Number.isInteger(p.pid) || (p.pid as number) < 1 || (p.pid as number) > 4194304) reject('manifest.json', 'process.pid', 'not a pid');
  return { binary: p.binary, argv: strings('argv', p.argv), envp: strings('envp', p.envp), noAslr: p.noAslr, pid: p.pid as number };
}

function validatePlatform(raw: unknown): PlatformFacts {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) reject('manifest.json', 'platform', 'must be an object');
  for (const [k, v] of Object.entries(raw)) {
    if (!(v === null || ['string', 'number', 'boolean'].includes(typeof v))) reject('manifest.json', `platform.${k}`, 'must be a scalar');
  }
  return raw as PlatformFacts;
}

/** The regions, and each entry's bytes as the full region (zeros where no page is stored). */
function validateRegions(raw: unknown, entries: Map<string, Buffer>): { regions: MemoryRegion[]; memory: Map<string, Buffer> } {
  if (!Array.isArray(raw)) reject('memory.json', '(root)', 'must be a list');
  const regions: MemoryRegion[] = [];
  const memory = new Map<string, Buffer>();
  let regionBytes = 0n;
  const used = new Set<string>();
  raw.forEach((r: Record<string, unknown>, i: number) => {
    const at = `[${i}]`;
    if (typeof r !== 'object' || r === null) reject('memory.json', at, 'must be an object');
    const start = u64('memory.json', `${at}.start`, r.start);
    const end = u64('memory.json', `${at}.end`, r.end);
    if (start % PAGE !== 0n || end % PAGE !== 0n) reject('memory.json', `${at}.start`, 'region is not page aligned');
    if (end <= start) reject('memory.json', `${at}.end`, 'region is empty or inverted');
    if (end > USER_SPACE_END) reject('memory.json', `${at}.end`, `${hex(end)} is outside user space`);
    const prev = regions.at(-1);
    if (prev && start < prev.end) reject('memory.json', `${at}.start`, 'regions overlap or are not sorted');
    if (typeof r.perms !== 'string' || !/^[r-][w-][x-][ps]$/.test(r.perms))
      reject('memory.json', `${at}.perms`, `${JSON.stringify(r.perms)} is not perms like "rw-p" (private) or "rw-s" (shared)`);
    if (typeof r.name !== 'string' || r.name.length > 4096 || r.name.includes('\0')) reject('memory.json', `${at}.name`, 'must be a string');
    let file: string | null = null;
    if (r.file !== null) {
      const problem = mappedPathProblem(r.file);
      if (problem) reject('memory.json', `${at}.file`, `must be null (anonymous) or a file a restore may open: ${problem}`);
      file = r.file as string;
    }
    const offset = u64('memory.json', `${at}.offset`, r.offset);
    if (offset % PAGE !== 0n) reject('memory.json', `${at}.offset`, `${hex(offset)} is not page aligned`);
    if (file === null && offset !== 0n) reject('memory.json', `${at}.offset`, `${hex(offset)} for anonymous memory (must be 0x0)`);
    if (offset + (end - start) > MAX_FILE_OFFSET) reject('memory.json', `${at}.offset`, `${hex(offset)} puts the mapping's end past any file offset`);
    if (typeof r.userfault !== 'number' || !Number.isInteger(r.userfault))
      reject('memory.json', `${at}.userfault`, 'must be an integer (0: not registered with a userfaultfd)');
    if (!Array.isArray(r.absent) || r.absent.length > 1 << 20) reject('memory.json', `${at}.absent`, 'must be a list of [start, end] pairs');
    const absent = (r.absent as unknown[]).map((pair, j): [bigint, bigint] => {
      if (!Array.isArray(pair) || pair.length !== 2) reject('memory.json', `${at}.absent[${j}]`, 'must be a [start, end] pair');
      return [u64('memory.json', `${at}.absent[${j}][0]`, pair[0]), u64('memory.json', `${at}.absent[${j}][1]`, pair[1])];
    });
    const stored = validateStored(r.stored, start, end, absent, at);
    // The VmFlags a restore gives back (vma-flags.ts): absent when none.
    const vmFlagsProblemSeen = r.vmFlags === undefined ? undefined : vmFlagsProblem(r.vmFlags, { perms: r.perms, file });
    if (vmFlagsProblemSeen) reject('memory.json', `${at}.vmFlags`, vmFlagsProblemSeen);
    const registration = {
      ...(r.userfault === 0 ? {} : { userfault: r.userfault, absent }),
      ...(r.vmFlags === undefined ? {} : { vmFlags: [...(r.vmFlags as string[])] }),
    };
    const sharedFile = file !== null && r.perms[3] === 's';
    if (sharedFile) {
      if (r.entry !== null) reject('memory.json', `${at}.entry`, "must be null: a shared file mapping's contents are the file's, never written back");
      if (stored.length > 0) reject('memory.json', `${at}.stored`, 'must be empty: a shared file mapping has no entry');
      const uffd = regionUserfaultProblem({ start, end, perms: r.perms, file, userfault: r.userfault, absent }, undefined);
      if (uffd) reject('memory.json', `${at}.${uffd.field}`, uffd.why);
      regions.push({ start, end, perms: r.perms, name: r.name, file, offset, entry: null, stored, ...registration });
      return;
    }
    if (typeof r.entry !== 'string' || !r.entry.startsWith('memory/')) reject('memory.json', `${at}.entry`, 'must name a memory/ entry');
    if (used.has(r.entry)) reject('memory.json', `${at}.entry`, 'entry used twice');
    used.add(r.entry);
    const data = entries.get(r.entry);
    if (!data) reject(r.entry, '(entry)', `missing (named by memory.json${at})`);
    const storedBytes = stored.reduce((n, [s, e]) => n + (e - s), 0n);
    if (BigInt(data.length) !== storedBytes) reject(r.entry, 'size', `${data.length} bytes for the ${storedBytes} bytes memory.json${at}.stored names`);
    // The whole region is held in memory on restore: bounded as an entry was when it held every page.
    if (end - start > BigInt(REGION_MAX_BYTES)) reject('memory.json', `${at}.end`, `a ${end - start}-byte region exceeds ${REGION_MAX_BYTES} bytes`);
    regionBytes += end - start;
    if (regionBytes > BigInt(REGIONS_MAX_BYTES)) reject('memory.json', `${at}.end`, `regions with contents exceed ${REGIONS_MAX_BYTES} bytes in all`);
    const full = unpackStored({ start, end }, stored, data);
    const uffd = regionUserfaultProblem({ start, end, perms: r.perms, file, userfault: r.userfault, absent }, full);
    if (uffd) reject('memory.json', `${at}.${uffd.field}`, uffd.why);
    memory.set(r.entry, full);
    regions.push({ start, end, perms: r.perms, name: r.name, file, offset, entry: r.entry, stored, ...registration });
  });
  for (const name of entries.keys()) {
    if (name.startsWith('memory/') && !used.has(name)) reject(name, '(entry)', 'memory entry not named by memory.json');
  }
  return { regions, memory };
}

/** Bounds on what a restore holds in memory, as format 7 bounded entries (checkpoint-image.ts LIMITS). */
const REGION_MAX_BYTES = 512 * 1024 * 1024;
const REGIONS_MAX_BYTES = 2 * 1024 * 1024 * 1024;

/**
 * memory.json[i].stored: the page ranges the entry holds — sorted,
 * disjoint, page aligned, non-empty, inside the region, and never a page
 * the region's userfaultfd had not provided (an absent page is not written).
 */
function validateStored(raw: unknown, start: bigint, end: bigint, absent: ReadonlyArray<readonly [bigint, bigint]>, at: string): Array<[bigint, bigint]> {
  if (!Array.isArray(raw) || raw.length > 1 << 20) reject('memory.json', `${at}.stored`, 'must be a list of [start, end] pairs');
  let cursor = start;
  return raw.map((pair: unknown, j: number): [bigint, bigint] => {
    if (!Array.isArray(pair) || pair.length !== 2) reject('memory.json', `${at}.stored[${j}]`, 'must be a [start, end] pair');
    const s = u64('memory.json', `${at}.stored[${j}][0]`, pair[0]);
    const e = u64('memory.json', `${at}.stored[${j}][1]`, pair[1]);
    if (s % PAGE !== 0n || e % PAGE !== 0n || e <= s) reject('memory.json', `${at}.stored[${j}]`, `${hex(s)}-${hex(e)} is not a non-empty page-aligned range`);
    if (s < cursor || e > end)
      reject('memory.json', `${at}.stored[${j}]`, `${hex(s)}-${hex(e)} is outside the region ${hex(start)}-${hex(end)}, overlaps or is out of order`);
    cursor = e;
    const hole = absent.find(([as, ae]) => as < e && s < ae);
    if (hole) reject('memory.json', `${at}.stored[${j}]`, `${hex(s)}-${hex(e)} includes absent pages ${hex(hole[0])}-${hex(hole[1])}`);
    return [s, e];
  });
}

const U32_HEX = /^0x[0-9a-f]{1,8}$/;

/** rseq.json: null, or the registration — checked against the memory the kernel will write. */
export function validateRseq(raw: unknown, regions: readonly MemoryRegion[], entry = 'rseq.json', at = ''): RseqState | null {
  if (raw === null) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) reject(entry, `${at}(root)`, 'must be null or an object');
  const r = raw as Record<string, unknown>;
  for (const key of Object.keys(r)) if (!['area', 'size', 'signature'].includes(key)) reject(entry, `${at}${key}`, 'unknown field');
  const area = u64(entry, `${at}area`, r.area);
  if (area >= USER_SPACE_END) reject(entry, `${at}area`, `${hex(area)} is outside user space`);
  if (!Number.isInteger(r.size)) reject(entry, `${at}size`, 'must be an integer');
  if (typeof r.signature !== 'string' || !U32_HEX.test(r.signature)) reject(entry, `${at}signature`, 'must be a 32-bit hex string');
  const rseq = { area, size: r.size as number, signature: Number(r.signature) };
  const problem = checkRseqArea(rseq, regions);
  if (problem) reject(entry, `${at}${problem.startsWith('size') ? 'size' : 'area'}`, problem);
  return rseq;
}

/**
 * sleep.json: null, or the deadline of the interrupted sleep — shapes here,
 * meaning (the registers show that call, the clock adds up, the kernel can
 * write rmtp and read the deadline) in sleep-deadline.ts sleepProblem.
 */
export function validateSleep(raw: unknown, regs: UserRegs, regions: readonly MemoryRegion[]): SleepDeadline | null {
  const entry = 'sleep.json';
  if (raw === null) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) reject(entry, '(root)', 'must be null or an object');
  const r = raw as Record<string, unknown>;
  const keys = ['nr', 'rmtp', 'remainingNs', 'checkpointClockNs', 'deadlineNs', 'bootId'];
  for (const key of Object.keys(r)) if (!keys.includes(key)) reject(entry, key, 'unknown field');
  if (r.nr !== 35 && r.nr !== 230) reject(entry, 'nr', `must be 35 (nanosleep) or 230 (clock_nanosleep), got ${JSON.stringify(r.nr)?.slice(0, 40)}`);
  if (typeof r.bootId !== 'string' || !BOOT_ID.test(r.bootId)) reject(entry, 'bootId', 'must be a boot id like 0f1e2d3c-...: 8-4-4-4-12 lower-case hex digits');
  const sleep: SleepDeadline = {
    nr: r.nr,
    rmtp: u64(entry, 'rmtp', r.rmtp),
    remainingNs: u64(entry, 'remainingNs', r.remainingNs),
    checkpointClockNs: u64(entry, 'checkpointClockNs', r.checkpointClockNs),
    deadlineNs: u64(entry, 'deadlineNs', r.deadlineNs),
    bootId: r.bootId,
  };
  const writable = (start: bigint, length: bigint): boolean => regions.some((m) => m.perms[1] === 'w' && m.start <= start && start + length <= m.end);
  const problem = sleepProblem(sleep, regs, writable);
  if (problem) reject(entry, problem.field, problem.why);
  return sleep;
}

/** pkeys.json: { allocated: [keys], tagged: [{ start, end, pkey }] } — shapes here, meaning in pkeys.ts pkeysProblem. */
export function validatePkeys(raw: unknown, regions: readonly MemoryRegion[]): PkeyState {
  const entry = 'pkeys.json';
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) reject(entry, '(root)', 'must be an object');
  const r = raw as Record<string, unknown>;
  for (const key of Object.keys(r)) if (!['allocated', 'tagged'].includes(key)) reject(entry, key, 'unknown field');
  if (!Array.isArray(r.allocated) || r.allocated.length > 15) reject(entry, 'allocated', 'must be a list of at most 15 keys');
  if (!Array.isArray(r.tagged) || r.tagged.length > 1 << 16) reject(entry, 'tagged', 'must be a list');
  const allocated = (r.allocated as unknown[]).map((k, i): number => {
    if (typeof k !== 'number' || !Number.isInteger(k)) reject(entry, `allocated[${i}]`, 'must be an integer');
    return k;
  });
  const tagged = (r.tagged as unknown[]).map((t, i) => {
    if (typeof t !== 'object' || t === null || Array.isArray(t)) reject(entry, `tagged[${i}]`, 'must be an object');
    const o = t as Record<string, unknown>;
    for (const key of Object.keys(o)) if (!['start', 'end', 'pkey'].includes(key)) reject(entry, `tagged[${i}].${key}`, 'unknown field');
    if (typeof o.pkey !== 'number' || !Number.isInteger(o.pkey)) reject(entry, `tagged[${i}].pkey`, 'must be an integer');
    return { start: u64(entry, `tagged[${i}].start`, o.start), end: u64(entry, `tagged[${i}].end`, o.end), pkey: o.pkey };
  });
  const pkeys = { allocated, tagged };
  const problem = pkeysProblem(pkeys, regions);
  if (problem) reject(entry, problem.field, problem.why);
  return pkeys;
}

const HEX_BYTES = /^(?:[0-9a-f]{2})*$/;

/** signals.json: shapes and ranges here, meaning against the image's mappings in signalStateProblem. */
export function validateSignals(raw: unknown, maps: string): SignalState {
  const e = 'signals.json';
  const obj = (v: unknown, field: string): Record<string, unknown> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) reject(e, field, 'must be an object');
    return v as Record<string, unknown>;
  };
  const list = (v: unknown, field: string, max: number): unknown[] => {
    if (!Array.isArray(v) || v.length > max) reject(e, field, `must be a list of at most ${max}`);
    return v;
  };
  const root = obj(raw, '(root)');
  const actions = list(root.actions, 'actions', 64).map((a, i) => {
    const o = obj(a, `actions[${i}]`);
    if (!Number.isInteger(o.signo)) reject(e, `actions[${i}].signo`, 'must be an integer');
    return {
      signo: o.signo as number,
      handler: u64(e, `actions[${i}].handler`, o.handler),
      flags: u64(e, `actions[${i}].flags`, o.flags),
      restorer: u64(e, `actions[${i}].restorer`, o.restorer),
      mask: u64(e, `actions[${i}].mask`, o.mask),
    };
  });
  const ss = obj(root.altstack, 'altstack');
  if (!Number.isInteger(ss.flags) || (ss.flags as number) < -(2 ** 31) || (ss.flags as number) >= 2 ** 31)
    reject(e, 'altstack.flags', 'must be a 32-bit integer');
  const pending = obj(root.pending, 'pending');
  const records = (field: 'thread' | 'shared'): Buffer[] =>
    list(pending[field], `pending.${field}`, 4096).map((h, i) => {
      if (typeof h !== 'string' || h.length !== SIGINFO_BYTES * 2 || !HEX_BYTES.test(h))
        reject(e, `pending.${field}[${i}]`, `must be a ${SIGINFO_BYTES}-byte siginfo in hex`);
      return Buffer.from(h, 'hex');
    });
  const state: SignalState = {
    blocked: u64(e, 'blocked', root.blocked),
    actions,
    altstack: { sp: u64(e, 'altstack.sp', ss.sp), flags: ss.flags as number, size: u64(e, 'altstack.size', ss.size) },
    pending: { thread: records('thread'), shared: records('shared') },
  };
  const problem = signalStateProblem(state, parseMaps(maps));
  if (problem) reject(e, problem.field, problem.why);
  return state;
}

/** task.json: the session and the open files; shapes here, meaning in taskStateProblem. */
export function validateTask(raw: unknown): TaskState {
  const e = 'task.json';
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) reject(e, '(root)', 'must be an object');
  const r = raw as Record<string, unknown>;
  if (!Array.isArray(r.files) || r.files.length > 1024) reject(e, 'files', 'must be a list of at most 1024');
  const files = (r.files as unknown[]).map((f, i) => {
    if (typeof f !== 'object' || f === null || Array.isArray(f)) reject(e, `files[${i}]`, 'must be an object');
    const o = f as Record<string, unknown>;
    if (typeof o.pos !== 'string' || !/^\d{1,20}$/.test(o.pos)) reject(e, `files[${i}].pos`, 'must be a decimal string');
    return { fd: o.fd as number, path: o.path as string, flags: o.flags as number, pos: BigInt(o.pos), kind: o.kind as FileKind };
  });
  if (!Array.isArray(r.userfaultfds)) reject(e, 'userfaultfds', 'must be a list');
  const userfaultfds = (r.userfaultfds as unknown[]).map((u, i): UserfaultfdState => {
    if (typeof u !== 'object' || u === null || Array.isArray(u)) reject(e, `userfaultfds[${i}]`, 'must be an object');
    const o = u as Record<string, unknown>;
    return { fd: o.fd as number, flags: o.flags as number, features: o.features as number | null };
  });
  if (r.umask !== undefined && !(Number.isInteger(r.umask) && (r.umask as number) >= 0 && (r.umask as number) <= 0o777))
    reject(e, 'umask', `${String(r.umask).slice(0, 20)} is no file-mode creation mask (0 to 0o777)`);
  // Optional (written only when the process had some): shapes here, meaning in eventFdsProblem and membarrierProblem.
  const objects = (name: string): Array<Record<string, unknown>> | undefined => {
    const list = r[name];
    if (list === undefined) return undefined;
    if (!Array.isArray(list) || list.length > 1024) reject(e, name, 'must be a list of at most 1024');
    return (list as unknown[]).map((o, i) => {
      if (typeof o !== 'object' || o === null || Array.isArray(o)) reject(e, `${name}[${i}]`, 'must be an object');
      return o as Record<string, unknown>;
    });
  };
  const eventfds = objects('eventfds')?.map((o, i): EventfdState => {
    if (typeof o.count !== 'string' || !/^\d{1,20}$/.test(o.count)) reject(e, `eventfds[${i}].count`, 'must be a decimal string');
    return { fd: o.fd as number, count: BigInt(o.count), flags: o.flags as number, semaphore: o.semaphore as boolean };
  });
  const signalfds = objects('signalfds')?.map((o, i): SignalfdState => {
    if (typeof o.mask !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(o.mask)) reject(e, `signalfds[${i}].mask`, 'must be a hex string of at most 64 bits');
    return { fd: o.fd as number, mask: BigInt(o.mask), flags: o.flags as number };
  });
  if (r.membarrier !== undefined) {
    const problem = membarrierProblem(r.membarrier);
    if (problem) reject(e, problem.field, problem.why);
  }
  const task: TaskState = {
    pgid: r.pgid as number,
    sid: r.sid as number,
    files,
    ...(userfaultfds.length > 0 ? { userfaultfds } : {}),
    ...(r.umask !== undefined ? { umask: r.umask as number } : {}),
    ...(eventfds?.length ? { eventfds } : {}),
    ...(signalfds?.length ? { signalfds } : {}),
    ...(Array.isArray(r.membarrier) && r.membarrier.length > 0 ? { membarrier: r.membarrier as MembarrierRegistration[] } : {}),
  };
  const fileFds = new Set(files.map((f) => f.fd));
  const problem =
    taskStateProblem(task) ?? userfaultfdsProblem(userfaultfds, fileFds) ?? eventFdsProblem(task, new Set([...fileFds, ...userfaultfds.map((u) => u.fd)]));
  if (problem) reject(e, problem.field, problem.why);
  return task;
}

const THREAD_KEYS = ['tid', 'regs', 'xstate', 'debugRegs', 'rseq', 'blocked', 'altstack', 'pending', 'clearChildTid', 'robustList'];

/** What the threads section is checked against: the rest of the image, already validated. */
export interface ThreadsContext {
  pid: number;
  xstate: Buffer;
  rseq: RseqState | null;
  regions: readonly MemoryRegion[];
  maps: string;
  entries: Map<string, Buffer>;
}

/**
 * threads.json: the main thread's clear_child_tid and robust list, and every
 * other thread, each field checked as its single-threaded counterpart is
 * (registers, debug registers, xstate, rseq area, mask, alternate stack,
 * pending queue), plus what only threads have: tids (ascending, so each
 * once, and never the pid), one xstate entry each with the size and XCR0 of
 * xstate.bin (one CPU, one XSAVE layout), an rseq area no other thread has,
 * and the two addresses in writable memory.
 */
export function validateThreads(raw: unknown, ctx: ThreadsContext): { links: ThreadLinks; threads: ThreadState[] } {
  const e = 'threads.json';
  const obj = (v: unknown, field: string): Record<string, unknown> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) reject(e, field, 'must be an object');
    return v as Record<string, unknown>;
  };
  const links = (o: Record<string, unknown>, at: string): ThreadLinks => {
    const l = { clearChildTid: u64(e, `${at}clearChildTid`, o.clearChildTid), robustList: u64(e, `${at}robustList`, o.robustList) };
    const problem = linksProblem(l, ctx.regions);
    if (problem) reject(e, `${at}${problem.field}`, problem.why);
    return l;
  };
  const root = obj(raw, '(root)');
  for (const key of Object.keys(root)) if (key !== 'main' && key !== 'threads') reject(e, key, 'unknown field');
  const mainRaw = obj(root.main, 'main');
  for (const key of Object.keys(mainRaw)) if (key !== 'clearChildTid' && key !== 'robustList') reject(e, `main.${key}`, 'unknown field');
  const main = links(mainRaw, 'main.');
  if (!Array.isArray(root.threads) || root.threads.length > MAX_THREADS) reject(e, 'threads', `must be a list of at most ${MAX_THREADS}`);
  const maps = parseMaps(ctx.maps);
  const named = new Set<string>();
  const areas = new Map<bigint, string>(ctx.rseq ? [[ctx.rseq.area, 'the main thread']] : []);
  let previous = 0;
  const threads = (root.threads as unknown[]).map((item, i): ThreadState => {
    const at = `threads[${i}].`;
    const o = obj(item, `threads[${i}]`);
    for (const key of Object.keys(o)) if (!THREAD_KEYS.includes(key)) reject(e, `${at}${key}`, 'unknown field');
    const tid = o.tid as number;
    if (!Number.isInteger(tid) || tid < 1 || tid > MAX_TID) reject(e, `${at}tid`, `${JSON.stringify(o.tid)?.slice(0, 40)} is not a tid`);
    if (tid === ctx.pid) reject(e, `${at}tid`, `${tid} is the main thread's (the pid)`);
    if (tid <= previous) reject(e, `${at}tid`, `${tid} does not follow ${previous}: threads are listed once each, ascending`);
    previous = tid;
    const regs = validateRegs(o.regs as Record<string, unknown>, e, `${at}regs.`);
    const debugRegs = validateDebugRegs(o.debugRegs as Record<string, unknown>, e, `${at}debugRegs.`);
    const entry = threadXstateEntry(tid);
    if (o.xstate !== entry) reject(e, `${at}xstate`, `must name ${entry}`);
    const xstate = ctx.entries.get(entry);
    if (!xstate) reject(entry, '(entry)', `missing (named by threads.json ${at}xstate)`);
    validateXstate(xstate, entry);
    if (xstate.length !== ctx.xstate.length)
      reject(entry, '(size)', `${xstate.length} bytes, xstate.bin has ${ctx.xstate.length}: one CPU has one XSAVE layout`);
    if (xstateFeatures(xstate) !== xstateFeatures(ctx.xstate))
      reject(entry, 'xcr0', `${hex(xstateFeatures(xstate))} differs from xstate.bin's ${hex(xstateFeatures(ctx.xstate))}`);
    named.add(entry);
    const rseq = validateRseq(o.rseq, ctx.regions, e, `${at}rseq.`);
    if (rseq) {
      const owner = areas.get(rseq.area);
      if (owner) reject(e, `${at}rseq.area`, `${hex(rseq.area)} is the area of ${owner} too; each thread registers its own`);
      areas.set(rseq.area, `thread ${tid}`);
    }
    const blocked = u64(e, `${at}blocked`, o.blocked);
    const ss = obj(o.altstack, `${at}altstack`);
    if (!Number.isInteger(ss.flags) || (ss.flags as number) < -(2 ** 31) || (ss.flags as number) >= 2 ** 31)
      reject(e, `${at}altstack.flags`, 'must be a 32-bit integer');
    const altstack = { sp: u64(e, `${at}altstack.sp`, ss.sp), flags: ss.flags as number, size: u64(e, `${at}altstack.size`, ss.size) };
    if (!Array.isArray(o.pending) || o.pending.length > 4096) reject(e, `${at}pending`, 'must be a list of at most 4096');
    const pending = (o.pending as unknown[]).map((h, j) => {
      if (typeof h !== 'string' || h.length !== SIGINFO_BYTES * 2 || !HEX_BYTES.test(h))
        reject(e, `${at}pending[${j}]`, `must be a ${SIGINFO_BYTES}-byte siginfo in hex`);
      return Buffer.from(h, 'hex');
    });
    const problem = signalStateProblem({ blocked, actions: [], altstack, pending: { thread: pending, shared: [] } }, maps);
    if (problem) reject(e, `${at}${problem.field.replace(/^pending\.thread/, 'pending')}`, problem.why);
    return { tid, regs, xstate, debugRegs, rseq, blocked, altstack, pending, ...links(o, at) };
  });
  for (const name of ctx.entries.keys()) if (name.startsWith('threads/') && !named.has(name)) reject(name, '(entry)', 'thread entry not named by threads.json');
  return { links: main, threads };
}

/**
 * ldt.json: { entries: [...] }, each a struct user_desc — base_addr and
 * limit in hex, the rest small integers — checked as modify_ldt(0x11) would
 * check it and for what it would silently change (ldt.ts ldtEntryProblem),
 * slots ascending and each once.
 */
export function validateLdt(raw: unknown): LdtEntry[] {
  const e = 'ldt.json';
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) reject(e, '(root)', 'must be an object');
  const root = raw as Record<string, unknown>;
  for (const key of Object.keys(root)) if (key !== 'entries') reject(e, key, 'unknown field');
  if (!Array.isArray(root.entries) || root.entries.length > LDT_ENTRIES) reject(e, 'entries', `must be a list of at most ${LDT_ENTRIES}`);
  const entries = (root.entries as unknown[]).map((item, i): LdtEntry => {
    const at = `entries[${i}]`;
    if (typeof item !== 'object' || item === null || Array.isArray(item)) reject(e, at, 'must be an object');
    const o = item as Record<string, unknown>;
    for (const key of Object.keys(o)) if (!(LDT_ENTRY_KEYS as readonly string[]).includes(key)) reject(e, `${at}.${key}`, 'unknown field');
    const u32 = (field: 'base_addr' | 'limit'): number => {
      if (typeof o[field] !== 'string' || !U32_HEX.test(o[field] as string))
        reject(e, `${at}.${field}`, `must be a 32-bit hex string, got ${JSON.stringify(o[field])?.slice(0, 40)}`);
      return Number(o[field]);
    };
    const small = (field: Exclude<(typeof LDT_ENTRY_KEYS)[number], 'base_addr' | 'limit'>): number => {
      if (!Number.isInteger(o[field])) reject(e, `${at}.${field}`, `must be an integer, got ${JSON.stringify(o[field])?.slice(0, 40)}`);
      return o[field] as number;
    };
    return {
      entry_number: small('entry_number'),
      base_addr: u32('base_addr'),
      limit: u32('limit'),
      seg_32bit: small('seg_32bit'),
      contents: small('contents'),
      read_exec_only: small('read_exec_only'),
      limit_in_pages: small('limit_in_pages'),
      seg_not_present: small('seg_not_present'),
      useable: small('useable'),
      lm: small('lm'),
    };
  });
  const problem = ldtProblem(entries);
  if (problem) reject(e, problem.field, problem.why);
  return entries;
}

/**
 * A segment register holding an LDT selector (TI = 1) names an entry that
 * is installed and present: the kernel reloads the segment registers
 * whenever the LDT changes, and one whose entry went away or lost its
 * present bit becomes null. So an image that says otherwise was not taken
 * from a process. A missing entry is blamed on the register (`entry`, `at`),
 * a not-present one on ldt.json.
 */
export function ldtSelectorProblem(
  regs: UserRegs,
  ldt: readonly LdtEntry[],
  entry: string,
  at = '',
): { entry: string; field: string; why: string } | undefined {
  for (const seg of ['ds', 'es', 'fs', 'gs'] as const) {
    const selector = regs[seg];
    if ((selector & 4n) === 0n) continue;
    const index = Number(selector >> 3n);
    const i = ldt.findIndex((e) => e.entry_number === index);
    if (i < 0) return { entry, field: `${at}${seg}`, why: `${hex(selector)} names LDT entry ${index}, which ldt.json does not install` };
    if (ldt[i]!.seg_not_present)
      return {
        entry: 'ldt.json',
        field: `entries[${i}].seg_not_present`,
        why: `entry ${index} is marked not present, yet ${entry} ${at}${seg} holds its selector ${hex(selector)}`,
      };
  }
  return undefined;
}

const DECIMAL = /^(?:0|[1-9][0-9]{0,19})$/;

/**
 * timers.json: { itimers, posix, timerfds } (timers.ts) — times as decimal
 * strings of nanoseconds, sigev_value in hex, the rest small integers and
 * names; every key known, every value in range (timerStateProblem), a
 * thread-id timer naming a thread of the image, a timerfd at a descriptor
 * no other part of the image restores.
 */
export function validateTimers(raw: unknown, tids: ReadonlySet<number>, fds: ReadonlySet<number>): TimerState {
  const e = 'timers.json';
  const object = (v: unknown, at: string): Record<string, unknown> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) reject(e, at, 'must be an object');
    return v as Record<string, unknown>;
  };
  const only = (o: Record<string, unknown>, at: string, keys: readonly string[]): void => {
    for (const key of Object.keys(o)) if (!keys.includes(key)) reject(e, `${at}.${key}`, 'unknown field');
  };
  const list = (v: unknown, at: string, max: number): unknown[] => {
    if (!Array.isArray(v) || v.length > max) reject(e, at, `must be a list of at most ${max}`);
    return v;
  };
  const int = (o: Record<string, unknown>, at: string, key: string): number => {
    if (!Number.isSafeInteger(o[key])) reject(e, `${at}.${key}`, `must be an integer, got ${JSON.stringify(o[key])?.slice(0, 40)}`);
    return o[key] as number;
  };
  const ns = (o: Record<string, unknown>, at: string, key: string): bigint => {
    if (typeof o[key] !== 'string' || !DECIMAL.test(o[key] as string))
      reject(e, `${at}.${key}`, `must be a decimal string, got ${JSON.stringify(o[key])?.slice(0, 40)}`);
    return BigInt(o[key] as string);
  };
  const oneOf = <T extends string>(o: Record<string, unknown>, at: string, key: string, names: readonly T[]): T => {
    if (!(names as readonly unknown[]).includes(o[key]))
      reject(e, `${at}.${key}`, `must be one of ${names.join(', ')}, got ${JSON.stringify(o[key])?.slice(0, 40)}`);
    return o[key] as T;
  };
  const root = object(raw, '(root)');
  only(root, '(root)', ['itimers', 'posix', 'timerfds']);
  const itimers = list(root.itimers, 'itimers', ITIMERS.length).map((item, i): IntervalTimer => {
    const at = `itimers[${i}]`;
    const o = object(item, at);
    only(o, at, ['which', 'valueNs', 'intervalNs']);
    return { which: oneOf(o, at, 'which', ITIMERS), valueNs: ns(o, at, 'valueNs'), intervalNs: ns(o, at, 'intervalNs') };
  });
  const posix = list(root.posix, 'posix', 256).map((item, i): PosixTimer => {
    const at = `posix[${i}]`;
    const o = object(item, at);
    only(o, at, ['id', 'clock', 'signo', 'sival', 'notify', 'tid', 'overrun', 'valueNs', 'intervalNs']);
    return {
      id: int(o, at, 'id'),
      clock: int(o, at, 'clock'),
      signo: int(o, at, 'signo'),
      sival: u64(e, `${at}.sival`, o.sival),
      notify: oneOf(o, at, 'notify', POSIX_NOTIFY),
      tid: int(o, at, 'tid'),
      overrun: int(o, at, 'overrun'),
      valueNs: ns(o, at, 'valueNs'),
      intervalNs: ns(o, at, 'intervalNs'),
    };
  });
  const timerfds = list(root.timerfds, 'timerfds', 1024).map((item, i): TimerfdState => {
    const at = `timerfds[${i}]`;
    const o = object(item, at);
    only(o, at, ['fd', 'clock', 'flags', 'ticks', 'valueNs', 'intervalNs']);
    return {
      fd: int(o, at, 'fd'),
      clock: int(o, at, 'clock'),
      flags: int(o, at, 'flags'),
      ticks: ns(o, at, 'ticks'),
      valueNs: ns(o, at, 'valueNs'),
      intervalNs: ns(o, at, 'intervalNs'),
    };
  });
  const state = { itimers, posix, timerfds };
  const problem = timerStateProblem(state, tids, fds);
  if (problem) reject(e, problem.field, problem.why);
  return state;
}

export function validateImage(raw: UntrustedImage): CheckpointImage {
  if (typeof raw.created !== 'string') reject('manifest.json', 'created', 'must be a string');
  const process = validateProcess(raw.process);
  const platform = validatePlatform(raw.platform);
  const regs = validateRegs(raw.regs);
  const debugRegs = validateDebugRegs(raw.debugRegs);
  validateXstate(raw.xstate);
  try {
    parseMaps(raw.maps);
  } catch (error) {
    reject('maps.txt', '(line)', (error as Error).message);
  }
  const { regions, memory } = validateRegions(raw.regions, raw.entries);
  const entries = new Map([...raw.entries, ...memory]);
  const rseq = validateRseq(raw.rseq, regions);
  const signals = validateSignals(raw.signals, raw.maps);
  const task = validateTask(raw.task);
  const registered = regions.find((r) => r.userfault);
  const owners = task.userfaultfds ?? [];
  if (registered && (owners.length !== 1 || owners[0]!.features === null)) {
    reject(
      'task.json',
      'userfaultfds',
      `memory.json registers ${hex(registered.start)}-${hex(registered.end)} with a userfaultfd, so exactly one userfaultfd that went through UFFDIO_API must own it (found ${owners.length}${owners.length === 1 ? ', which never had UFFDIO_API' : ''})`,
    );
  }
  const { links, threads } = validateThreads(raw.threads, { pid: process.pid, xstate: raw.xstate, rseq, regions, maps: raw.maps, entries });
  const ldt = validateLdt(raw.ldt);
  const unbacked =
    ldtSelectorProblem(regs, ldt, 'regs.json') ?? threads.map((th, i) => ldtSelectorProblem(th.regs, ldt, 'threads.json', `threads[${i}].regs.`)).find(Boolean);
  if (unbacked) reject(unbacked.entry, unbacked.field, unbacked.why);
  const tids = new Set([process.pid, ...threads.map((th) => th.tid)]);
  const fds = new Set(imageDescriptors(task));
  const timers = validateTimers(raw.timers, tids, fds);
  const sleep = validateSleep(raw.sleep, regs, regions);
  const pkeys = validatePkeys(raw.pkeys, regions);
  // Version 9 has no depends.json (undefined); in version 10 it is required like every other entry.
  const dependencies = raw.dependencies === undefined ? undefined : parseDependencies(raw.dependencies);
  // Before version 11 there is no clocks.json (undefined); from 11 on it is required like every other entry.
  const clocks = raw.clocks === undefined ? undefined : parseClocks(raw.clocks);
  return {
    created: raw.created,
    process,
    platform,
    regs,
    debugRegs,
    rseq,
    signals,
    task,
    links,
    threads,
    ldt,
    timers,
    sleep,
    pkeys,
    ...(dependencies ? { dependencies } : {}),
    ...(clocks ? { clocks } : {}),
    xstate: raw.xstate,
    maps: raw.maps,
    regions,
    memory,
  };
}
