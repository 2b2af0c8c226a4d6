/**
 * Every kind of mapping, recreated where the fresh target lacks it: private
 * anonymous memory, shared anonymous memory (MAP_SHARED | MAP_ANONYMOUS),
 * and file mappings, private or shared, by opening the file again and
 * mapping it at its old address with its old offset. Which files exist, and
 * how long they are, is probed in the target before the plan is made
 * (probeMappedFiles), so a file that is gone or too short fails the plan,
 * naming the mapping, before anything is changed.
 *
 * Contents: anonymous memory and private file mappings are written from the
 * image (a private file mapping may hold copy-on-write pages the file does
 * not); a shared file mapping's contents are the file's and are never
 * written (that would write the file).
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError } from '../errors.ts';
import { hex } from '../x86/registers.ts';
import type { MemoryRegion } from './image-model.ts';
import { PlanError, type MappedFileState, type PlanStep, type TargetProbe } from './plan-step.ts';
import { omits, type RestorePolicy } from './policy.ts';
import { protOf, uncovered, type Mapping } from './proc-maps.ts';
import { DescriptorTable } from './descriptors.ts';
import { ScratchLayout, withScratchPage } from './scratch.ts';
import { MAP_NORESERVE, mapFixedStep, PROT } from './syscall-steps.ts';

export type { MappedFileState };

const NR = { close: 3, mmap: 9, openat: 257, newfstatat: 262 } as const;
const PAGE = 4096n;
const AT_FDCWD = BigInt.asUintN(64, -100n);
const O_RDONLY = 0n;
const O_RDWR = 2n;
const O_CLOEXEC = 0o2000000n;
const MAP_SHARED = 0x01n;
const MAP_PRIVATE = 0x02n;
const MAP_ANONYMOUS = 0x20n;
const MAP_FIXED_NOREPLACE = 0x100000n;
const NO_FD = BigInt.asUintN(64, -1n);
const ENOENT = 2;
const ENOTDIR = 20;
/** struct stat (x86-64): st_mode at 24, st_size at 48. */
const STAT_BYTES = 144;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
/** Where the path goes in the probe's scratch page, after the struct stat. */
const PATH_AT = 256;
/** Devices a mapping may name: mapping them again is harmless and the same in every guest. */
export const MAPPABLE_DEVICES = ['/dev/zero'];

/** Why a path from memory.json may not be opened by a restore, or undefined (checked as hostile input). */
export function mappedPathProblem(path: unknown): string | undefined {
  if (typeof path !== 'string' || !/^\/[^\0\n]{0,4094}$/.test(path) || path.split('/').includes('..'))
    return `${JSON.stringify(path)?.slice(0, 60)} is not an absolute path without ".."`;
  if (path.endsWith(' (deleted)')) return `${path.slice(0, 60)} is a deleted file`;
  if (/^\/(proc|sys|dev)\//.test(path) && !MAPPABLE_DEVICES.includes(path))
    return `${path.slice(0, 60)} is under /proc, /sys or /dev (${MAPPABLE_DEVICES.join(' ')} only)`;
  if (Buffer.byteLength(path) + 1 > Number(PAGE) - PATH_AT) return `${path.slice(0, 60)}… is longer than ${Number(PAGE) - PATH_AT - 1} bytes`;
  return undefined;
}

/** The files the image's mappings name, once each. */
export function mappedFiles(regions: readonly MemoryRegion[]): string[] {
  return [...new Set(regions.flatMap((r) => (r.file === null ? [] : [r.file])))];
}

/**
 * Stats every path in the target itself (its view of the file system),
 * through an injected newfstatat into a scratch page that is unmapped
 * again: the target is left as it was.
 */
export async function probeMappedFiles(agent: AgentClient, pid: number, paths: readonly string[]): Promise<Map<string, MappedFileState>> {
  const found = new Map<string, MappedFileState>();
  if (paths.length === 0) return found;
  await withScratchPage(agent, pid, async (scratch) => {
    for (const path of paths) {
      const problem = mappedPathProblem(path);
      if (problem) throw new PlanError(`cannot probe a mapped file: ${problem}`);
      await agent.call({ op: 'WRITE_MEM', pid, address: scratch + BigInt(PATH_AT), data: Buffer.from(`${path}\0`) });
      const result = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.newfstatat, args: [AT_FDCWD, scratch + BigInt(PATH_AT), scratch, 0n] });
      if (result === BigInt(-ENOENT) || result === BigInt(-ENOTDIR)) {
        found.set(path, null);
        continue;
      }
      if (result !== 0n) throw new AgentError(`newfstatat(${path}) in pid ${pid} failed: errno ${-result}`, 'INJECT_SYSCALL', Number(-result));
      const st = await agent.call({ op: 'READ_MEM', pid, address: scratch, length: STAT_BYTES });
      found.set(path, { size: st.readBigInt64LE(48), regular: (st.readUInt32LE(24) & S_IFMT) === S_IFREG });
    }
  });
  return found;
}

/** A region as errors name it. */
export function describeRegion(r: MemoryRegion): string {
  return `mapping ${hex(r.start)}-${hex(r.end)} ${r.perms} ${r.file ? `${r.file} @ ${hex(r.offset)}` : r.name || 'anonymous'}`;
}

/**
 * A shared or file-backed region must not overlap anything the fresh target
 * has, except the very same file mapping (the binary's own, which the exec
 * recreated): same file, same kind, same offset at every address.
 */
function checkOccupants(region: MemoryRegion, target: readonly Mapping[], inherited: readonly Mapping[]): void {
  const shared = region.perms[3] === 's';
  if (region.file === null && !shared) return;
  // A tree's shared object, which an ancestor created for this process to inherit (tree.ts).
  if (region.file === null && inherited.some((m) => m.start === region.start && m.end === region.end)) return;
  for (const m of target) {
    if (m.end <= region.start || m.start >= region.end) continue;
    const same = region.file !== null && m.name === region.file && m.perms[3] === region.perms[3] && m.offset - m.start === region.offset - region.start;
    if (!same) throw new PlanError(`${describeRegion(region)}: the fresh target has ${hex(m.start)}-${hex(m.end)} ${m.perms} ${m.name || 'anonymous'} there`);
  }
}

/**
 * Steps that create every part of every region the target lacks (`covered`:
 * what the target has, with the heap the plan grows). Under
 * omit=mapping-kinds every part is private anonymous memory, as before
 * shared and file mappings were restored.
 */
export function mappingSteps(
  pid: number,
  regions: readonly MemoryRegion[],
  probe: TargetProbe,
  covered: readonly Mapping[],
  policy: RestorePolicy,
  scratch: bigint,
): PlanStep[] {
  const kinds = !omits(policy, 'mapping-kinds');
  const anonymous: PlanStep[] = [];
  const fileCalls: PlanStep[] = [];
  const layout = new ScratchLayout(scratch);
  const paths = new Map<string, bigint>();
  const fd = BigInt(new DescriptorTable(probe.fds ?? [0, 1, 2]).lowestFree());
  for (const region of regions) {
    if (kinds) checkOccupants(region, probe.maps, probe.tree?.inheritedShared ?? []);
    const pieces = uncovered(region.start, region.end, covered);
    const shared = region.perms[3] === 's';
    // VmFlags given at the mmap and the open (vma-flags.ts; the rest are injected after the contents).
    const flagsKept = !omits(policy, 'vma-flags') ? (region.vmFlags ?? []) : [];
    const noReserve = flagsKept.includes('nr') ? MAP_NORESERVE : 0n;
    const reserveNote = noReserve ? ' MAP_NORESERVE' : '';
    if (!kinds || (region.file === null && !shared)) {
      for (const [start, end] of pieces)
        anonymous.push(
          mapFixedStep(
            pid,
            start,
            end - start,
            PROT.READ | PROT.WRITE,
            `map ${hex(start)}-${hex(end)}${reserveNote} (absent in the target) for ${region.name || 'anonymous memory'}${kinds ? '' : ' (omit=mapping-kinds: private anonymous)'}`,
            noReserve,
          ),
        );
      continue;
    }
    if (region.file === null) {
      for (const [start, end] of pieces) {
        anonymous.push({
          op: {
            op: 'INJECT_SYSCALL',
            pid,
            nr: NR.mmap,
            args: [start, end - start, PROT.READ | PROT.WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | noReserve, NO_FD, 0n],
          },
          why: `map ${hex(start)}-${hex(end)} shared anonymous${reserveNote} for ${region.name}`,
          expect: start,
        });
      }
      continue;
    }
    if (pieces.length === 0) continue;
    const file = region.file;
    const state = probe.files?.get(file);
    if (state === undefined) throw new PlanError(`${describeRegion(region)}: ${file} was not probed in the target`);
    if (state === null) throw new PlanError(`${describeRegion(region)}: ${file} no longer exists`);
    const fileEnd = region.offset + (region.end - region.start);
    if (state.regular && ((state.size + PAGE - 1n) / PAGE) * PAGE < fileEnd) {
      throw new PlanError(`${describeRegion(region)}: ${file} is ${state.size} bytes now, the mapping reaches file offset ${hex(fileEnd)}`);
    }
    // Written regions are mapped writable and get their protections with the rest.
    const prot = region.entry === null ? BigInt(protOf(region.perms)) : PROT.READ | PROT.WRITE;
    // A shared mapping writable now, or later (VmFlags mw without w: it was mapped from a descriptor open for
    // writing, and a later mprotect to PROT_WRITE needs one too), is mapped from a read-write open.
    const writableLater = shared && region.perms[1] !== 'w' && flagsKept.includes('mw');
    const writable = shared && (region.perms[1] === 'w' || writableLater);
    const path = paths.get(file) ?? layout.place(Buffer.from(`${file}\0`));
    paths.set(file, path);
    for (const [start, end] of pieces) {
      const offset = region.offset + (start - region.start);
      fileCalls.push(
        {
          op: { op: 'INJECT_SYSCALL', pid, nr: NR.openat, args: [AT_FDCWD, path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0n] },
          why: `open ${file} ${writable ? 'read-write' : 'read-only'} to map it${writableLater ? ' (VmFlags mw: writable later)' : ''}`,
          expect: fd,
        },
        {
          op: {
            op: 'INJECT_SYSCALL',
            pid,
            nr: NR.mmap,
            args: [start, end - start, prot, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED_NOREPLACE | noReserve, fd, offset],
          },
          why: `map ${hex(start)}-${hex(end)} ${shared ? 'MAP_SHARED' : 'MAP_PRIVATE'}${reserveNote} of ${file} at offset ${hex(offset)}`,
          expect: start,
        },
        { op: { op: 'INJECT_SYSCALL', pid, nr: NR.close, args: [fd] }, why: `close fd ${fd}: the mapping holds the file`, expect: 0n },
      );
    }
  }
  return fileCalls.length === 0 ? anonymous : [...anonymous, ...layout.steps(pid, 'path(s) of mapped files, NUL-terminated', fileCalls)];
}
