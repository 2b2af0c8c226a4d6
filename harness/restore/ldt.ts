/**
 * The process's LDT (local descriptor table): the segments a program
 * installed for itself with modify_ldt — Wine, DOS emulators, 32-bit code
 * run from a 64-bit process, or a program that keeps a data segment in %gs.
 * The LDT belongs to the mm, so every thread shares it. A selector with
 * TI = 1 (bit 2) in DS/ES/FS/GS names one of its entries.
 *
 * The image keeps each non-empty entry as the struct user_desc modify_ldt
 * takes (arch/x86/include/uapi/asm/ldt.h), decoded from the raw 8-byte
 * descriptor the kernel reads back. Only descriptors modify_ldt can create
 * are representable: a code or data segment (S = 1), DPL 3, the accessed
 * bit set (the kernel sets it, so that a read-only LDT page never needs a
 * CPU write), L = 0 (the kernel never sets it: a 64-bit code segment in the
 * LDT would confuse user_64bit_mode). Anything else was not made by
 * modify_ldt on this kernel and fails the checkpoint, naming the entry.
 *
 * Capture: modify_ldt(0, buf, 65536) injected into the task, into a scratch
 * mapping. It answers 0 when the mm has no LDT, else the byte count asked
 * for, the entries past the last one installed zero-filled.
 *
 * Restore: modify_ldt(0x11, &user_desc, 16) injected per entry — 0x11 is
 * the "new mode" write, the one that keeps the `useable` (AVL) bit.
 */
import type { AgentClient } from '../agent/client.ts';
import { CheckpointError } from '../errors.ts';
import { hex } from '../x86/registers.ts';
import type { LdtEntry } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import { ScratchLayout, withScratchPage } from './scratch.ts';

/** LDT_ENTRIES and LDT_ENTRY_SIZE (arch/x86/include/uapi/asm/ldt.h). */
export const LDT_ENTRIES = 8192;
export const LDT_ENTRY_BYTES = 8;
const LDT_BYTES = LDT_ENTRIES * LDT_ENTRY_BYTES;
/** sizeof(struct user_desc): entry_number, base_addr, limit, then the flag bits. */
export const USER_DESC_BYTES = 16;
const NR_MODIFY_LDT = 154;
/** modify_ldt functions: 0 reads the table, 0x11 writes one entry keeping AVL. */
const READ_LDT = 0n;
const WRITE_LDT = 0x11n;

export const USER_DESC_FLAGS = ['seg_32bit', 'read_exec_only', 'limit_in_pages', 'seg_not_present', 'useable', 'lm'] as const;
export const LDT_ENTRY_KEYS = ['entry_number', 'base_addr', 'limit', 'contents', ...USER_DESC_FLAGS] as const;

/** Descriptor bit positions (Intel SDM vol. 3, 3.4.5). */
const bits = (raw: bigint, at: number, width: number): number => Number((raw >> BigInt(at)) & ((1n << BigInt(width)) - 1n));

/**
 * The user_desc that makes the kernel write `raw` (its fill_ldt, read
 * backwards), or why no user_desc does. A zero descriptor is an empty slot:
 * undefined.
 */
export function decodeDescriptor(entryNumber: number, raw: bigint): { entry: LdtEntry } | { why: string } | undefined {
  if (raw === 0n) return undefined;
  const type = bits(raw, 40, 4);
  const s = bits(raw, 44, 1);
  const dpl = bits(raw, 45, 2);
  const l = bits(raw, 53, 1);
  if (s !== 1) return { why: `${hex(raw)} is a system descriptor (S = 0), which modify_ldt never writes` };
  if (dpl !== 3) return { why: `${hex(raw)} has DPL ${dpl}; modify_ldt writes DPL 3 only` };
  if (l !== 0) return { why: `${hex(raw)} has L = 1 (a 64-bit code segment), which modify_ldt never writes` };
  if ((type & 1) === 0) return { why: `${hex(raw)} has the accessed bit clear; modify_ldt always sets it` };
  const entry: LdtEntry = {
    entry_number: entryNumber,
    base_addr: (bits(raw, 16, 24) | (bits(raw, 56, 8) << 24)) >>> 0,
    limit: bits(raw, 0, 16) | (bits(raw, 48, 4) << 16),
    seg_32bit: bits(raw, 54, 1),
    contents: type >> 2,
    read_exec_only: ((type >> 1) & 1) ^ 1,
    limit_in_pages: bits(raw, 55, 1),
    seg_not_present: bits(raw, 47, 1) ^ 1,
    useable: bits(raw, 52, 1),
    lm: 0,
  };
  const problem = ldtEntryProblem(entry);
  return problem ? { why: `${hex(raw)} decodes to a user_desc modify_ldt refuses: ${problem.why}` } : { entry };
}

/** The descriptor modify_ldt(0x11) writes for `e` (the kernel's fill_ldt). */
export function encodeDescriptor(e: LdtEntry): bigint {
  const type = (((e.read_exec_only ^ 1) << 1) | (e.contents << 2) | 1) >>> 0;
  const base = BigInt(e.base_addr >>> 0);
  const limit = BigInt(e.limit);
  return (
    (limit & 0xffffn) |
    ((base & 0xffffffn) << 16n) |
    (BigInt(type) << 40n) |
    (1n << 44n) | // S: code or data
    (3n << 45n) | // DPL 3
    (BigInt(e.seg_not_present ^ 1) << 47n) |
    (((limit >> 16n) & 0xfn) << 48n) |
    (BigInt(e.useable) << 52n) |
    (BigInt(e.seg_32bit) << 54n) |
    (BigInt(e.limit_in_pages) << 55n) |
    ((base >> 24n) << 56n)
  );
}

/** struct user_desc as modify_ldt reads it: three u32, then the flag bits packed in the fourth. */
export function encodeUserDesc(e: LdtEntry): Buffer {
  const b = Buffer.alloc(USER_DESC_BYTES);
  b.writeUInt32LE(e.entry_number, 0);
  b.writeUInt32LE(e.base_addr >>> 0, 4);
  b.writeUInt32LE(e.limit, 8);
  const flags = e.seg_32bit | (e.contents << 1) | (e.read_exec_only << 3) | (e.limit_in_pages << 4) | (e.seg_not_present << 5) | (e.useable << 6) | (e.lm << 7);
  b.writeUInt32LE(flags, 12);
  return b;
}

/**
 * A message naming the field, or undefined: what modify_ldt(0x11) would
 * refuse or turn into something else (the kernel's write_ldt and LDT_empty).
 */
export function ldtEntryProblem(e: LdtEntry): { field: string; why: string } | undefined {
  if (!Number.isInteger(e.entry_number) || e.entry_number < 0 || e.entry_number >= LDT_ENTRIES)
    return { field: 'entry_number', why: `${e.entry_number} is not an LDT slot 0-${LDT_ENTRIES - 1}` };
  if (!Number.isInteger(e.base_addr) || e.base_addr < 0 || e.base_addr > 0xffffffff) return { field: 'base_addr', why: `${e.base_addr} is not a 32-bit base` };
  if (!Number.isInteger(e.limit) || e.limit < 0 || e.limit > 0xfffff) return { field: 'limit', why: `${e.limit} is not a 20-bit limit` };
  if (!Number.isInteger(e.contents) || e.contents < 0 || e.contents > 3) return { field: 'contents', why: `${e.contents} is not 0-3` };
  for (const flag of USER_DESC_FLAGS) if (e[flag] !== 0 && e[flag] !== 1) return { field: flag, why: `${JSON.stringify(e[flag])} is not 0 or 1` };
  // The kernel clears L whatever user_desc says: an image asking for it asks for what no restore can give.
  if (e.lm !== 0) return { field: 'lm', why: 'a 64-bit LDT code segment, which modify_ldt never creates (the kernel clears L)' };
  // A conforming code segment runs at the caller's privilege: the kernel only takes one marked not present.
  if (e.contents === 3 && e.seg_not_present !== 1) return { field: 'contents', why: '3 (conforming code) on a present segment, which modify_ldt refuses' };
  const empty =
    e.base_addr === 0 &&
    e.limit === 0 &&
    e.contents === 0 &&
    e.read_exec_only === 1 &&
    e.seg_32bit === 0 &&
    e.limit_in_pages === 0 &&
    e.seg_not_present === 1 &&
    e.useable === 0;
  if (empty) return { field: 'entry_number', why: `entry ${e.entry_number} is the empty user_desc, which clears the slot instead of installing it` };
  return undefined;
}

/** The image's whole table: each entry valid, ascending slots, each once. */
export function ldtProblem(entries: readonly LdtEntry[]): { field: string; why: string } | undefined {
  if (entries.length > LDT_ENTRIES) return { field: 'entries', why: `${entries.length} entries, the LDT holds ${LDT_ENTRIES}` };
  let previous = -1;
  for (const [i, e] of entries.entries()) {
    const problem = ldtEntryProblem(e);
    if (problem) return { field: `entries[${i}].${problem.field}`, why: problem.why };
    if (e.entry_number <= previous)
      return { field: `entries[${i}].entry_number`, why: `${e.entry_number} does not follow ${previous}: entries are listed once each, ascending` };
    previous = e.entry_number;
  }
  return undefined;
}

/**
 * The non-empty entries of a table read by modify_ldt(0): `table` is what it
 * wrote, `returned` its answer. A descriptor no user_desc makes fails the
 * checkpoint, naming the slot.
 */
export function parseLdtTable(pid: number, table: Buffer, returned: bigint): LdtEntry[] {
  if (returned < 0n) throw new CheckpointError(`modify_ldt(0) in pid ${pid} failed: errno ${-returned}`, { field: 'ldt' });
  if (returned % BigInt(LDT_ENTRY_BYTES) !== 0n || returned > BigInt(table.length))
    throw new CheckpointError(`modify_ldt(0) in pid ${pid} answered ${returned} bytes, not a whole number of 8-byte descriptors within ${table.length}`, {
      field: 'ldt',
    });
  const entries: LdtEntry[] = [];
  for (let i = 0; i < Number(returned) / LDT_ENTRY_BYTES; i++) {
    const decoded = decodeDescriptor(i, table.readBigUInt64LE(i * LDT_ENTRY_BYTES));
    if (decoded === undefined) continue;
    if ('why' in decoded) throw new CheckpointError(`LDT entry ${i} of pid ${pid}: ${decoded.why}; a restore cannot install it`, { field: `ldt[${i}]` });
    entries.push(decoded.entry);
  }
  return entries;
}

/** The task's LDT, read by modify_ldt(0) injected into it; [] when it has none. */
export async function captureLdt(agent: AgentClient, pid: number): Promise<LdtEntry[]> {
  return withScratchPage(
    agent,
    pid,
    async (scratch) => {
      const returned = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR_MODIFY_LDT, args: [READ_LDT, scratch, BigInt(LDT_BYTES)] });
      if (returned === 0n) return [];
      const table =
        returned > 0n && returned <= BigInt(LDT_BYTES)
          ? await agent.call({ op: 'READ_MEM', pid, address: scratch, length: Number(returned) })
          : Buffer.alloc(0);
      return parseLdtTable(pid, table, returned);
    },
    LDT_BYTES,
  );
}

/** Steps that install every entry, one modify_ldt(0x11) each; `scratch` is a free address for the user_desc structs. */
export function ldtSteps(pid: number, entries: readonly LdtEntry[], scratch: bigint): PlanStep[] {
  if (entries.length === 0) return [];
  const layout = new ScratchLayout(scratch);
  const steps: PlanStep[] = entries.map((e) => ({
    op: { op: 'INJECT_SYSCALL', pid, nr: NR_MODIFY_LDT, args: [WRITE_LDT, layout.place(encodeUserDesc(e)), BigInt(USER_DESC_BYTES)] },
    why: `LDT entry ${e.entry_number} (selector ${hex(BigInt((e.entry_number << 3) | 7))}): ${describeLdtEntry(e)}`,
    expect: 0n,
  }));
  return layout.steps(pid, `${entries.length} struct user_desc`, steps);
}

export function describeLdtEntry(e: LdtEntry): string {
  const kind =
    e.contents & 2
      ? `code${e.contents & 1 ? ' conforming' : ''}${e.read_exec_only ? ' execute-only' : ' readable'}`
      : `data${e.contents & 1 ? ' expand-down' : ''}${e.read_exec_only ? ' read-only' : ' read-write'}`;
  return `${kind}, base ${hex(BigInt(e.base_addr))}, limit ${hex(BigInt(e.limit))}${e.limit_in_pages ? ' pages' : ''}, ${e.seg_32bit ? '32' : '16'}-bit${e.seg_not_present ? ', not present' : ''}${e.useable ? ', AVL' : ''}`;
}

/** ldt.json: { entries: [...] }, base and limit in hex. */
export function ldtJson(entries: readonly LdtEntry[]): unknown {
  return { entries: entries.map((e) => ({ ...e, base_addr: hex(BigInt(e.base_addr)), limit: hex(BigInt(e.limit)) })) };
}
