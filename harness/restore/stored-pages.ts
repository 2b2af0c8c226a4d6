/**
 * Which pages of a mapping the image stores (image format 9). A page left
 * out reads after restore as the mapping's own backing — zeros — which is
 * exactly what the original read there when the page of private anonymous
 * memory was never touched (pagemap: neither present nor swapped) or held
 * only zeros.
 *
 * Every page of a private file mapping is stored, touched or not, zero or
 * not: a page left to the file would make the image depend on the file's
 * bytes at restore time, and a restore that maps the region as anonymous
 * memory (omit=mapping-kinds) would read zeros there. (pagemap's bit 61,
 * PAGE_FILE, could tell the pages still the file's from copied ones; that
 * saving is left for when restores no longer map file regions anonymous.)
 *
 * Not left out either: anything of a region a userfaultfd holds (there a
 * missing page faults to the server, so a zero page must be written and an
 * absent one is recorded as absent, userfaultfd.ts); and untouched pages
 * of shared anonymous memory (its pages live in the shared object, not in
 * this process's page table, so pagemap cannot tell) — only its zero pages go.
 */
import { PAGE_PRESENT, PAGE_SWAPPED } from '../agent/ops.ts';
import type { MemoryRegion } from './image-model.ts';
import { presentSlices } from './userfaultfd.ts';

export const PAGE_BYTES = 4096;
const ZERO_PAGE = Buffer.alloc(PAGE_BYTES);

/** How a region's pages are chosen. */
export type StoreRule = 'all-but-absent' | 'every' | 'touched-nonzero' | 'nonzero';

/** The rule for a region (a region with no entry stores nothing). */
export function storeRule(region: Pick<MemoryRegion, 'file' | 'perms' | 'userfault'>): StoreRule {
  if (region.userfault) return 'all-but-absent';
  if (region.perms[3] === 's') return 'nonzero';
  return region.file === null ? 'touched-nonzero' : 'every';
}

/** Merges page indexes (ascending) into [start, end) address ranges. */
function pageRanges(start: bigint, pages: Iterable<number>): Array<[bigint, bigint]> {
  const ranges: Array<[bigint, bigint]> = [];
  for (const page of pages) {
    const at = start + BigInt(page * PAGE_BYTES);
    const last = ranges.at(-1);
    if (last && last[1] === at) last[1] = at + BigInt(PAGE_BYTES);
    else ranges.push([at, at + BigInt(PAGE_BYTES)]);
  }
  return ranges;
}

/**
 * The ranges to read from the process: for 'touched-nonzero' the pages
 * pagemap shows present or swapped (`pagemap`, one byte per page), for the
 * others every page but the absent ones.
 */
export function pagesToRead(
  region: Pick<MemoryRegion, 'start' | 'end' | 'file' | 'perms' | 'userfault' | 'absent'>,
  pagemap: Buffer | undefined,
): Array<[bigint, bigint]> {
  const rule = storeRule(region);
  if (rule !== 'touched-nonzero' || !pagemap) return presentSlices(region).map(([from, to]) => [region.start + BigInt(from), region.start + BigInt(to)]);
  const keep = function* (): Generator<number> {
    for (let i = 0; i < pagemap.length; i++) if ((pagemap[i]! & (PAGE_PRESENT | PAGE_SWAPPED)) !== 0) yield i;
  };
  return pageRanges(region.start, keep());
}

/** `read` (the bytes of `ranges`, concatenated) without its zero pages, where the rule lets zeros go. */
export function dropZeroPages(
  region: Pick<MemoryRegion, 'file' | 'perms' | 'userfault'>,
  ranges: ReadonlyArray<readonly [bigint, bigint]>,
  read: Buffer,
): Array<[bigint, bigint]> {
  const rule = storeRule(region);
  if (rule === 'all-but-absent' || rule === 'every') return ranges.map(([s, e]) => [s, e]);
  const pages: Array<[bigint, bigint]> = [];
  let at = 0;
  for (const [start, end] of ranges) {
    for (let page = start; page < end; page += BigInt(PAGE_BYTES), at += PAGE_BYTES) {
      if (read.subarray(at, at + PAGE_BYTES).equals(ZERO_PAGE)) continue;
      const last = pages.at(-1);
      if (last && last[1] === page) last[1] = page + BigInt(PAGE_BYTES);
      else pages.push([page, page + BigInt(PAGE_BYTES)]);
    }
  }
  return pages;
}

/** The ranges a region's entry holds: `stored`, or (an image built in memory without it) every page but the absent ones. */
export function storedRanges(region: Pick<MemoryRegion, 'start' | 'end' | 'absent' | 'stored' | 'entry'>): Array<[bigint, bigint]> {
  if (region.entry === null) return [];
  if (region.stored) return region.stored.map(([s, e]) => [s, e]);
  return presentSlices(region).map(([from, to]) => [region.start + BigInt(from), region.start + BigInt(to)]);
}

/** Bytes the ranges cover. */
export function rangesBytes(ranges: ReadonlyArray<readonly [bigint, bigint]>): number {
  return ranges.reduce((n, [s, e]) => n + Number(e - s), 0);
}

/** The stored bytes of a full-region buffer, concatenated in range order (the entry's bytes). */
export function packStored(region: Pick<MemoryRegion, 'start'>, ranges: ReadonlyArray<readonly [bigint, bigint]>, full: Buffer): Buffer {
  if (ranges.length === 1 && ranges[0]![0] === region.start && ranges[0]![1] - ranges[0]![0] === BigInt(full.length)) return full;
  return Buffer.concat(ranges.map(([s, e]) => full.subarray(Number(s - region.start), Number(e - region.start))));
}

/** The full-region buffer an entry's packed bytes stand for: zeros outside the ranges. */
export function unpackStored(region: Pick<MemoryRegion, 'start' | 'end'>, ranges: ReadonlyArray<readonly [bigint, bigint]>, packed: Buffer): Buffer {
  const size = Number(region.end - region.start);
  if (ranges.length === 1 && ranges[0]![0] === region.start && packed.length === size) return packed;
  const full = Buffer.alloc(size);
  let at = 0;
  for (const [s, e] of ranges) {
    packed.copy(full, Number(s - region.start), at, at + Number(e - s));
    at += Number(e - s);
  }
  return full;
}
