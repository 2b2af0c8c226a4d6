/**
 * A process that serves its own page faults: its userfaultfd, the ranges
 * registered with it, and the pages the server has not provided yet.
 *
 * A thread blocked in a fault that a userfaultfd holds is woken by the
 * checkpoint's ptrace interrupt: the kernel abandons the fault, and the
 * thread stops with its IP at the faulting instruction (RCX/RSI/RDI of a
 * rep string at the iteration that faulted). So the fault itself needs no
 * state of its own: restored, the thread executes the instruction again and
 * faults again — provided the page is still missing and still registered,
 * which is what this module keeps. The queue of messages the server has not
 * read is not kept for the same reason: each pending fault is raised again
 * by the thread that waits on it. (Non-fault events — fork, remap, remove,
 * unmap, for servers that asked for them — would be lost with the queue.)
 *
 * Capture: the descriptor's flags and API features (its fdinfo), which
 * mappings are registered and how (the VmFlags of /proc/PID/smaps), and for
 * those mappings which pages are absent (mincore, injected: reading a page
 * a MISSING registration holds would raise the very fault being
 * checkpointed). Only MISSING registrations of private anonymous memory
 * with one userfaultfd per process are taken: write-protect and minor-fault
 * state lives in page tables the image does not hold, and with two
 * descriptors smaps does not say which one a range belongs to.
 *
 * Restore: absent pages are not written, then userfaultfd(2) at the
 * checkpointed descriptor number, UFFDIO_API with the same features, and
 * UFFDIO_REGISTER of every registered range — after the memory writes,
 * which would otherwise fault on the registration themselves.
 */
import type { AgentClient } from '../agent/client.ts';
import { hex } from '../x86/registers.ts';
import { CheckpointError } from '../errors.ts';
import type { MemoryRegion, UserfaultfdState } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import type { Mapping } from './proc-maps.ts';
import { DescriptorTable } from './descriptors.ts';
import { ScratchLayout, withScratchPage } from './scratch.ts';

/** What /proc/PID/fd shows for a userfaultfd. */
export const USERFAULTFD_LINK = 'anon_inode:[userfaultfd]';

/** UFFDIO_REGISTER_MODE_* bits. */
export const UFFD_MODE = { MISSING: 1, WP: 2, MINOR: 4 } as const;
/** The smaps VmFlags mnemonic of each mode (fs/proc/task_mmu.c). */
const VMFLAG_MODE: Readonly<Record<string, number>> = { um: UFFD_MODE.MISSING, uw: UFFD_MODE.WP, ui: UFFD_MODE.MINOR };

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const O_LARGEFILE = 0o100000;
export const USERFAULTFD_FLAGS = O_NONBLOCK | O_CLOEXEC;
/** UFFD_FEATURE_INITIALIZED: the kernel's mark that UFFDIO_API was called; fdinfo shows it among the features. */
const FEATURE_INITIALIZED = 0x8000_0000;
/** Feature bits a restore may ask for (the UAPI's bits 0-15; a kernel that lacks one refuses UFFDIO_API). */
export const MAX_FEATURES = 0xffff;
const UFFD_API = 0xaan;
const IOCTL = { api: 0xc018aa3fn, register: 0xc020aa00n } as const;
const NR = { ioctl: 16, mincore: 27, userfaultfd: 323 } as const;
const PAGE = 4096n;

/** flags and API features from a userfaultfd's /proc/PID/fdinfo/N ("API:\t<api>:<features>:<ioctls>"). */
export function parseUserfaultfdFdinfo(text: string): { flags: number; features: number | null } {
  const flags = /^flags:\s+([0-7]+)$/m.exec(text)?.[1];
  const api = /^API:\s+([0-9a-f]+):([0-9a-f]+):([0-9a-f]+)$/m.exec(text);
  if (flags === undefined || !api) throw new CheckpointError(`unreadable userfaultfd fdinfo: ${JSON.stringify(text.slice(0, 160))}`);
  const raw = parseInt(api[2]!, 16);
  return { flags: parseInt(flags, 8) & ~O_LARGEFILE, features: (raw & FEATURE_INITIALIZED) !== 0 ? raw & 0x7fff_ffff : null };
}

/** The userfaultfd registration modes of every mapping in /proc/PID/smaps, by start address (0 when none). */
export function parseSmapsRegistrations(smaps: string): Map<bigint, number> {
  const modes = new Map<bigint, number>();
  let current: bigint | undefined;
  for (const line of smaps.split('\n')) {
    const head = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line);
    if (head) {
      current = BigInt(`0x${head[1]}`);
      modes.set(current, 0);
      continue;
    }
    if (current === undefined || !line.startsWith('VmFlags:')) continue;
    const mode = line
      .slice(8)
      .trim()
      .split(/\s+/)
      .reduce((m, flag) => m | (VMFLAG_MODE[flag] ?? 0), 0);
    modes.set(current, mode);
  }
  return modes;
}

/** A registration as errors and the plan name it. */
export function describeModes(mode: number): string {
  return (
    Object.entries(UFFD_MODE)
      .filter(([, bit]) => (mode & bit) !== 0)
      .map(([name]) => name)
      .join('|') || 'none'
  );
}

/**
 * Which registered mappings a checkpoint can hold, or a CheckpointError
 * naming the one it cannot: MISSING mode on private anonymous memory, one
 * userfaultfd in the process to own them.
 */
export function checkRegistrations(pid: number, mappings: ReadonlyArray<Mapping & { userfault: number }>, userfaultfds: readonly UserfaultfdState[]): void {
  const registered = mappings.filter((m) => m.userfault !== 0);
  if (registered.length === 0) return;
  if (userfaultfds.length !== 1) {
    throw new CheckpointError(
      `pid ${pid} has ${registered.length} userfaultfd-registered mapping(s) and ${userfaultfds.length} userfaultfd descriptors: which descriptor owns a range is not visible from outside unless there is exactly one`,
      { fds: userfaultfds.map((u) => u.fd).join(' ') || 'none' },
    );
  }
  for (const m of registered) {
    const where = `mapping ${hex(m.start)}-${hex(m.end)} ${m.perms} ${m.name || 'anonymous'}`;
    if (m.userfault !== UFFD_MODE.MISSING)
      throw new CheckpointError(
        `${where} is registered ${describeModes(m.userfault)}: only MISSING registrations can be checkpointed (write-protect and minor-fault state is in page tables)`,
        { mapping: where },
      );
    if (m.perms[3] !== 'p' || m.name.startsWith('/'))
      throw new CheckpointError(`${where} is registered with a userfaultfd but is not private anonymous memory`, { mapping: where });
  }
}

/**
 * The absent pages of [start, end) in the stopped task, as sorted ranges:
 * mincore(2) injected into the task, its vector in a scratch page. (Absent
 * means never provided: the held fault's page, and any other the server has
 * not placed.)
 */
export async function absentRanges(
  agent: AgentClient,
  pid: number,
  ranges: ReadonlyArray<readonly [bigint, bigint]>,
): Promise<Map<bigint, Array<[bigint, bigint]>>> {
  const found = new Map<bigint, Array<[bigint, bigint]>>();
  if (ranges.length === 0) return found;
  await withScratchPage(agent, pid, async (scratch) => {
    for (const [start, end] of ranges) {
      const absent: Array<[bigint, bigint]> = [];
      for (let at = start; at < end; at += PAGE * PAGE) {
        const length = end - at < PAGE * PAGE ? end - at : PAGE * PAGE;
        const result = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.mincore, args: [at, length, scratch] });
        if (result !== 0n) throw new CheckpointError(`mincore(${hex(at)}, ${length}) in pid ${pid} failed: errno ${-result}`);
        const vector = await agent.call({ op: 'READ_MEM', pid, address: scratch, length: Number(length / PAGE) });
        vector.forEach((resident, i) => {
          if ((resident & 1) !== 0) return;
          const page = at + BigInt(i) * PAGE;
          const last = absent.at(-1);
          if (last && last[1] === page) last[1] = page + PAGE;
          else absent.push([page, page + PAGE]);
        });
      }
      found.set(start, absent);
    }
  });
  return found;
}

/** Byte slices of a region outside its absent ranges: what a restore writes. */
export function presentSlices(region: Pick<MemoryRegion, 'start' | 'end' | 'absent'>): Array<[number, number]> {
  const slices: Array<[number, number]> = [];
  let cursor = region.start;
  for (const [start, end] of region.absent ?? []) {
    if (start > cursor) slices.push([Number(cursor - region.start), Number(start - region.start)]);
    cursor = end;
  }
  if (cursor < region.end) slices.push([Number(cursor - region.start), Number(region.end - region.start)]);
  return slices;
}

/**
 * Steps that create the userfaultfd at its descriptor number and register
 * every registered region with it. `openFds` is what the target has open
 * once the plan's files are restored; `scratch` a free page for the ioctl
 * structures.
 */
export function userfaultfdSteps(
  pid: number,
  userfaultfds: readonly UserfaultfdState[],
  regions: readonly MemoryRegion[],
  openFds: readonly number[],
  scratch: bigint,
): PlanStep[] {
  if (userfaultfds.length === 0) return [];
  const table = new DescriptorTable(openFds);
  const layout = new ScratchLayout(scratch);
  const steps: PlanStep[] = [];
  for (const u of userfaultfds) {
    const got = table.lowestFree();
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.userfaultfd, args: [BigInt(u.flags & USERFAULTFD_FLAGS)] },
      why: `userfaultfd(0o${(u.flags & USERFAULTFD_FLAGS).toString(8)}) for fd ${u.fd}`,
      expect: BigInt(got),
    });
    steps.push(...table.place(pid, got, u.fd, (u.flags & O_CLOEXEC) !== 0, 'the userfaultfd'));
    if (u.features === null) continue;
    const api = Buffer.alloc(24);
    api.writeBigUInt64LE(UFFD_API, 0);
    api.writeBigUInt64LE(BigInt(u.features), 8);
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.ioctl, args: [BigInt(u.fd), IOCTL.api, layout.place(api)] },
      why: `UFFDIO_API on fd ${u.fd}, features 0x${u.features.toString(16)}`,
      expect: 0n,
    });
    for (const r of regions) {
      const mode = r.userfault ?? 0;
      if (mode === 0) continue;
      const reg = Buffer.alloc(32);
      reg.writeBigUInt64LE(r.start, 0);
      reg.writeBigUInt64LE(r.end - r.start, 8);
      reg.writeBigUInt64LE(BigInt(mode), 16);
      steps.push({
        op: { op: 'INJECT_SYSCALL', pid, nr: NR.ioctl, args: [BigInt(u.fd), IOCTL.register, layout.place(reg)] },
        why: `UFFDIO_REGISTER ${hex(r.start)}-${hex(r.end)} ${describeModes(mode)} on fd ${u.fd} (${r.absent?.length ?? 0} absent range(s) left for the server)`,
        expect: 0n,
      });
    }
  }
  return layout.steps(pid, 'uffdio_api and uffdio_register structures', steps);
}

/** A message naming the field, or undefined: the userfaultfd part of task.json on its own. */
export function userfaultfdsProblem(list: readonly UserfaultfdState[], fileFds: ReadonlySet<number>): { field: string; why: string } | undefined {
  if (list.length > 16) return { field: 'userfaultfds', why: `${list.length} userfaultfds, limit 16` };
  const seen = new Set<number>();
  for (const [i, u] of list.entries()) {
    const at = `userfaultfds[${i}]`;
    if (!Number.isInteger(u.fd) || u.fd < 3 || u.fd > 65535) return { field: `${at}.fd`, why: `${u.fd} is not a descriptor 3-65535` };
    if (seen.has(u.fd) || fileFds.has(u.fd)) return { field: `${at}.fd`, why: `fd ${u.fd} appears twice` };
    seen.add(u.fd);
    if (!Number.isInteger(u.flags) || (u.flags & ~USERFAULTFD_FLAGS) !== 0)
      return { field: `${at}.flags`, why: `0o${Number(u.flags).toString(8)} is not a combination of O_CLOEXEC and O_NONBLOCK` };
    if (u.features !== null && (!Number.isInteger(u.features) || u.features < 0 || u.features > MAX_FEATURES))
      return { field: `${at}.features`, why: `${u.features} is not a feature set 0x0-0x${MAX_FEATURES.toString(16)}` };
  }
  return undefined;
}

/**
 * Why a region's userfault fields are unacceptable, or undefined: only
 * MISSING on private anonymous memory, absent ranges page aligned, sorted,
 * inside the region, and zero in the image (nothing hidden in them).
 */
export function regionUserfaultProblem(
  r: Pick<MemoryRegion, 'start' | 'end' | 'perms' | 'file'> & { userfault: number; absent: ReadonlyArray<readonly [bigint, bigint]> },
  data: Buffer | undefined,
): { field: string; why: string } | undefined {
  if (r.userfault !== 0 && r.userfault !== UFFD_MODE.MISSING) return { field: 'userfault', why: `mode ${r.userfault} (only 0 or 1, MISSING, is restorable)` };
  if (r.userfault !== 0 && (r.file !== null || r.perms[3] !== 'p')) return { field: 'userfault', why: 'only private anonymous memory may be registered' };
  if (r.absent.length > 0 && r.userfault === 0) return { field: 'absent', why: 'absent pages in a region no userfaultfd holds' };
  let cursor = r.start;
  for (const [i, [start, end]] of r.absent.entries()) {
    if (start % PAGE !== 0n || end % PAGE !== 0n || end <= start)
      return { field: `absent[${i}]`, why: `${hex(start)}-${hex(end)} is not a non-empty page-aligned range` };
    if (start < cursor || end > r.end) return { field: `absent[${i}]`, why: `${hex(start)}-${hex(end)} is outside the region or out of order` };
    cursor = end;
    if (data && data.subarray(Number(start - r.start), Number(end - r.start)).some((b) => b !== 0))
      return { field: `absent[${i}]`, why: `${hex(start)}-${hex(end)} holds non-zero bytes in the image` };
  }
  return undefined;
}

/** A userfaultfd's flags and features as read-back compares them; "closed" when there is none. */
export function describeUserfaultfd(u: UserfaultfdState | undefined): string {
  return u ? `flags 0o${u.flags.toString(8)} features ${u.features === null ? 'none (no UFFDIO_API)' : `0x${u.features.toString(16)}`}` : 'closed';
}
