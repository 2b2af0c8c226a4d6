/**
 * Page data straight from and into guest RAM (docs/agent-protocol.md, "Page
 * data in guest RAM"): the agent names each page's frame (PAGE_FRAMES), the
 * host copies the page at frame × 4096 of the RAM file (guest-ram.ts). The
 * page bytes never cross the guest.
 *
 * The pages must stay where they were named while the host copies: the
 * tracee is ptrace-stopped (it touches nothing), but the guest kernel may
 * still migrate a page (compaction, khugepaged). So after each copy the
 * frames are asked for again (mode check) and every page whose frame moved
 * — and every page the agent gave no usable frame — is moved the ordinary
 * way, through the agent (READ_MEM/WRITE_MEM, on the bulk port or SSH). A
 * page that is where it was before and after the copy was copied whole:
 * the kernel moves a page by copying it to a new frame and switching the
 * mapping, and the old frame is not reused while the check still finds the
 * page there.
 */
import { AgentError } from '../errors.ts';
import type { AgentOp, MemoryRange } from './ops.ts';
import { GUEST_PAGE_BYTES, type GuestRam } from './guest-ram.ts';

type WriteMemOp = Extract<AgentOp, { op: 'WRITE_MEM' }>;
type FramesOp = Extract<AgentOp, { op: 'PAGE_FRAMES' }>;

/** A step of a BATCH, as client.ts defines it (kept structural: no import cycle). */
export type RamBatchStep = { ok: true; op: AgentOp; result: unknown } | { ok: false; op: AgentOp; errno: number; message: string };

/** What the guest-RAM path needs of the agent client. */
export interface RamAgent {
  frames(op: FramesOp): Promise<Uint32Array>;
  /** the ordinary path: bulk port or SSH */
  readThroughAgent(pid: number, ranges: readonly MemoryRange[]): Promise<Buffer>;
  batchThroughAgent(ops: readonly AgentOp[]): Promise<RamBatchStep[]>;
}

/** Pages moved by the guest-RAM path, and pages it handed back to the agent. */
export interface RamStats {
  pagesRead: number;
  pagesWritten: number;
  /** pages with no usable frame, or whose frame moved during the copy */
  pagesThroughAgent: number;
}

/** One PAGE_FRAMES request's bound: its answer is 4 bytes a page. */
const FRAMES_GROUP_BYTES = 1024 * 1024 * 1024;

export function pageAligned(r: MemoryRange): boolean {
  return r.address % BigInt(GUEST_PAGE_BYTES) === 0n && r.length % GUEST_PAGE_BYTES === 0;
}

/** A WRITE_MEM the guest-RAM path takes: whole pages. */
export function ramWritable(op: AgentOp): op is WriteMemOp {
  return op.op === 'WRITE_MEM' && op.data.length > 0 && pageAligned({ address: op.address, length: op.data.length });
}

/** The address of page `index` of `ranges` (pages counted across them in order). */
function pageAddresses(ranges: readonly MemoryRange[]): bigint[] {
  const out: bigint[] = [];
  for (const r of ranges) for (let off = 0; off < r.length; off += GUEST_PAGE_BYTES) out.push(r.address + BigInt(off));
  return out;
}

/** Pages (by index) to move through the agent: no frame, or a frame that changed between `before` and `after`. */
function unsettled(before: Uint32Array, after: Uint32Array): number[] {
  if (after.length !== before.length)
    throw new AgentError(`PAGE_FRAMES answered ${after.length} frames on the check, ${before.length} before`, 'PAGE_FRAMES', undefined);
  const out: number[] = [];
  for (let i = 0; i < before.length; i++) if (before[i] === 0 || after[i] !== before[i]) out.push(i);
  return out;
}

/** Page indexes merged into [first, count] runs. */
function runs(indexes: readonly number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const i of indexes) {
    const last = out.at(-1);
    if (last && last[0] + last[1] === i) last[1]++;
    else out.push([i, 1]);
  }
  return out;
}

/** The bytes of page-aligned `ranges` of stopped tracee `pid`, concatenated. */
export async function readThroughRam(agent: RamAgent, ram: GuestRam, stats: RamStats, pid: number, ranges: readonly MemoryRange[]): Promise<Buffer> {
  const total = ranges.reduce((n, r) => n + r.length, 0);
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  for (const group of groupPages(ranges)) {
    const pages = group.reduce((n, r) => n + r.length, 0) / GUEST_PAGE_BYTES;
    const frames = await agent.frames({ op: 'PAGE_FRAMES', pid, mode: 'read', ranges: group });
    if (frames.length !== pages) throw new AgentError(`PAGE_FRAMES pid ${pid}: ${frames.length} frames for ${pages} pages`, 'PAGE_FRAMES', undefined);
    ram.readPages(frames, out, at);
    const redo = unsettled(frames, await agent.frames({ op: 'PAGE_FRAMES', pid, mode: 'check', ranges: group }));
    if (redo.length > 0) {
      const addresses = pageAddresses(group);
      const spans = runs(redo);
      const again = await agent.readThroughAgent(
        pid,
        spans.map(([i, n]) => ({ address: addresses[i]!, length: n * GUEST_PAGE_BYTES })),
      );
      let from = 0;
      for (const [i, n] of spans) {
        again.copy(out, at + i * GUEST_PAGE_BYTES, from, from + n * GUEST_PAGE_BYTES);
        from += n * GUEST_PAGE_BYTES;
      }
    }
    stats.pagesRead += pages - redo.length;
    stats.pagesThroughAgent += redo.length;
    at += pages * GUEST_PAGE_BYTES;
  }
  return out;
}

/**
 * A BATCH in which every run of whole-page WRITE_MEMs (of one pid) goes into
 * guest RAM: the ops before the run go in one BATCH with a PAGE_FRAMES
 * (write) for the run, the host writes the pages, a check finds the pages
 * that moved, and those go as WRITE_MEMs. The steps are those of the plain
 * BATCH: in order, up to and including the first failure; a WRITE_MEM done
 * in guest RAM answers as a WRITE_MEM done.
 */
export async function batchThroughRam(agent: RamAgent, ram: GuestRam, stats: RamStats, ops: readonly AgentOp[]): Promise<RamBatchStep[]> {
  const steps: RamBatchStep[] = [];
  let from = 0;
  while (from < ops.length) {
    let first = from;
    while (first < ops.length && !ramWritable(ops[first]!)) first++;
    if (first === ops.length) {
      steps.push(...(await agent.batchThroughAgent(ops.slice(from))));
      break;
    }
    const pid = (ops[first] as WriteMemOp).pid;
    let end = first;
    while (end < ops.length && ramWritable(ops[end]!) && (ops[end] as WriteMemOp).pid === pid) end++;
    const writes = ops.slice(first, end) as WriteMemOp[];
    const before = ops.slice(from, first);
    const ranges = writes.map((w) => ({ address: w.address, length: w.data.length }));
    const framesOp: FramesOp = { op: 'PAGE_FRAMES', pid, mode: 'write', ranges };
    const part = await agent.batchThroughAgent([...before, framesOp]);
    steps.push(...part.slice(0, before.length));
    // An op before the run failed: the BATCH stopped there, as a plain one would.
    const framesStep = part[before.length];
    if (!framesStep) return steps;
    if (!framesStep.ok) {
      // No frames (the pid is gone, say): the writes go the ordinary way, and fail there as they would have.
      const plain = await agent.batchThroughAgent(writes);
      steps.push(...plain);
      if (plain.length < writes.length || plain.at(-1)?.ok === false) return steps;
      from = end;
      continue;
    }
    const frames = framesStep.result as Uint32Array;
    const pages = ranges.reduce((n, r) => n + r.length, 0) / GUEST_PAGE_BYTES;
    if (frames.length !== pages) throw new AgentError(`PAGE_FRAMES pid ${pid}: ${frames.length} frames for ${pages} pages`, 'PAGE_FRAMES', undefined);
    let page = 0;
    for (const w of writes) {
      ram.writePages(frames.subarray(page, page + w.data.length / GUEST_PAGE_BYTES), w.data, 0);
      page += w.data.length / GUEST_PAGE_BYTES;
    }
    const redo = unsettled(frames, await agent.frames({ op: 'PAGE_FRAMES', pid, mode: 'check', ranges }));
    if (redo.length > 0) {
      const failed = await writeThroughAgent(agent, writes, redo);
      if (failed) {
        steps.push(...writes.slice(0, failed.index).map((op): RamBatchStep => ({ ok: true, op, result: undefined })), {
          ok: false,
          op: writes[failed.index]!,
          errno: failed.errno,
          message: failed.message,
        });
        return steps;
      }
    }
    stats.pagesWritten += pages - redo.length;
    stats.pagesThroughAgent += redo.length;
    steps.push(...writes.map((op): RamBatchStep => ({ ok: true, op, result: undefined })));
    from = end;
  }
  return steps;
}

/** The pages `redo` (indexes across `writes`) as WRITE_MEMs; the first failure, named by the write it belongs to. */
async function writeThroughAgent(
  agent: RamAgent,
  writes: readonly WriteMemOp[],
  redo: readonly number[],
): Promise<{ index: number; errno: number; message: string } | undefined> {
  const owner: Array<{ index: number; page: number }> = [];
  writes.forEach((w, index) => {
    for (let page = 0; page < w.data.length / GUEST_PAGE_BYTES; page++) owner.push({ index, page });
  });
  const ops: WriteMemOp[] = [];
  const opOwner: number[] = [];
  for (const [i, n] of runs(redo)) {
    // A run may cross from one write to the next: split it at the boundary.
    for (let k = i; k < i + n;) {
      const { index, page } = owner[k]!;
      const w = writes[index]!;
      const count = Math.min(i + n - k, w.data.length / GUEST_PAGE_BYTES - page);
      ops.push({
        op: 'WRITE_MEM',
        pid: w.pid,
        address: w.address + BigInt(page * GUEST_PAGE_BYTES),
        data: w.data.subarray(page * GUEST_PAGE_BYTES, (page + count) * GUEST_PAGE_BYTES),
      });
      opOwner.push(index);
      k += count;
    }
  }
  const steps = await agent.batchThroughAgent(ops);
  const bad = steps.findIndex((s) => !s.ok);
  if (bad >= 0) {
    const s = steps[bad] as Extract<RamBatchStep, { ok: false }>;
    return { index: opOwner[bad]!, errno: s.errno, message: s.message };
  }
  if (steps.length !== ops.length) throw new AgentError(`BATCH answered ${steps.length} of ${ops.length} page writes`, 'BATCH', undefined);
  return undefined;
}

/** Page-aligned ranges in groups of at most FRAMES_GROUP_BYTES (a longer range split). */
function groupPages(ranges: readonly MemoryRange[]): MemoryRange[][] {
  const groups: MemoryRange[][] = [];
  let group: MemoryRange[] = [];
  let bytes = 0;
  for (const r of ranges) {
    for (let off = 0; off < r.length;) {
      const length = Math.min(r.length - off, FRAMES_GROUP_BYTES - bytes);
      group.push({ address: r.address + BigInt(off), length });
      bytes += length;
      off += length;
      if (bytes === FRAMES_GROUP_BYTES) {
        groups.push(group);
        group = [];
        bytes = 0;
      }
    }
  }
  if (group.length > 0) groups.push(group);
  return groups;
}
