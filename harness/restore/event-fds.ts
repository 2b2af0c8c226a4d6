/**
 * A process's eventfds and signalfds: captured from /proc/PID/fdinfo and
 * created again at their descriptor numbers.
 *
 * - eventfd: the counter (fdinfo "eventfd-count", hex), O_NONBLOCK and
 *   O_CLOEXEC (the "flags" line: the kernel keeps only those two in the
 *   file's flags), and EFD_SEMAPHORE. Kernels from 6.6 show the semaphore
 *   flag ("eventfd-semaphore"); older ones (the guest's Debian 6.1) show it
 *   nowhere, so it is asked of the eventfd itself: a read injected into the
 *   stopped process returns 1 from a semaphore and the whole counter from
 *   any other eventfd, and what was read is written back (probeSemaphore;
 *   the counter is made at least 2 first, so the two answers differ). The
 *   counter ends where it was; only a poller outside the stopped processes
 *   could see the moment it moved.
 *   Restored by eventfd2 (whose initial value is 32 bits wide: a larger
 *   counter is written after it) and dup3 to the number the image had.
 * - signalfd: its mask (fdinfo "sigmask", hex, bit n-1 = signal n) and
 *   flags. Restored by signalfd4(-1, &mask, 8, flags) and dup3. What a
 *   signalfd reads is the reading process's own pending signals, which the
 *   image holds already (signals.ts), so the mask is its whole state.
 *
 * One eventfd several descriptors hold (a dup, or inherited across fork in
 * a tree) is one counter: made twice it would be two. kcmp finds them
 * (sharedEventfdProblems), and they are refused by name. A signalfd held
 * twice is made twice: each copy reads the signals of the process reading
 * it, as the shared one did.
 */
import type { AgentClient } from '../agent/client.ts';
import { CheckpointError } from '../errors.ts';
import type { EventfdState, SignalfdState, TaskState } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import { DescriptorTable } from './descriptors.ts';
import { descriptorsLinkedTo, type FdTable } from './fd-table.ts';
import { sameOpenFile } from './kcmp.ts';
import { ScratchLayout, withScratchPage } from './scratch.ts';

export const EVENTFD_LINK = 'anon_inode:[eventfd]';
export const SIGNALFD_LINK = 'anon_inode:[signalfd]';

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
/** The flags a restore gives back (EFD_/SFD_NONBLOCK and _CLOEXEC are these). */
export const EVENT_FD_FLAGS = O_NONBLOCK | O_CLOEXEC;
const EFD_SEMAPHORE = 1;
/** The largest counter an eventfd holds (a write that would pass it blocks). */
export const EVENTFD_MAX = 0xfffffffffffffffen;
/** SIGKILL and SIGSTOP: never in a signalfd's mask (the kernel drops them). */
const UNBLOCKABLE = (1n << 8n) | (1n << 18n);
const NR = { read: 0, write: 1, signalfd4: 289, eventfd2: 290 } as const;

/** flags, counter and (on kernels that show it) the semaphore flag, from an eventfd's fdinfo. Pure. */
export function parseEventfdFdinfo(text: string): { flags: number; count: bigint; semaphore: boolean | undefined } {
  const flags = /^flags:\s+([0-7]+)$/m.exec(text)?.[1];
  const count = /^eventfd-count:\s*([0-9a-f]{1,16})$/m.exec(text)?.[1];
  if (flags === undefined || count === undefined) throw new CheckpointError(`unreadable eventfd fdinfo: ${JSON.stringify(text.slice(0, 160))}`);
  const semaphore = /^eventfd-semaphore:\s*([01])$/m.exec(text)?.[1];
  return { flags: parseInt(flags, 8) & EVENT_FD_FLAGS, count: BigInt(`0x${count}`), semaphore: semaphore === undefined ? undefined : semaphore === '1' };
}

/** flags and mask from a signalfd's fdinfo. Pure. */
export function parseSignalfdFdinfo(text: string): { flags: number; mask: bigint } {
  const flags = /^flags:\s+([0-7]+)$/m.exec(text)?.[1];
  const mask = /^sigmask:\s*([0-9a-f]{16})$/m.exec(text)?.[1];
  if (flags === undefined || mask === undefined) throw new CheckpointError(`unreadable signalfd fdinfo: ${JSON.stringify(text.slice(0, 160))}`);
  return { flags: parseInt(flags, 8) & EVENT_FD_FLAGS, mask: BigInt(`0x${mask}`) };
}

/**
 * Whether the eventfd at `fd` of the stopped task is a semaphore, asked of
 * it (module comment): the counter made at least 2, one read, and the
 * counter put back to `count`. Injected calls: the caller blocks signals
 * and parks an rseq critical section, as for every injected capture.
 */
export async function probeSemaphore(agent: AgentClient, pid: number, fd: number, count: bigint): Promise<boolean> {
  return withScratchPage(agent, pid, async (scratch) => {
    const value = Buffer.alloc(8);
    const call = async (nr: number, what: string, amount?: bigint): Promise<bigint> => {
      if (amount !== undefined) {
        value.writeBigUInt64LE(amount);
        await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: value });
      }
      const result = await agent.call({ op: 'INJECT_SYSCALL', pid, nr, args: [BigInt(fd), scratch, 8n] });
      if (result !== 8n) throw new CheckpointError(`${what} on eventfd fd ${fd} of pid ${pid} returned ${result}: cannot tell whether it is a semaphore`);
      return (await agent.call({ op: 'READ_MEM', pid, address: scratch, length: 8 })).readBigUInt64LE(0);
    };
    const raised = count < 2n ? 2n : count;
    if (count < 2n) await call(NR.write, `write(${2n - count})`, 2n - count);
    const read = await call(NR.read, 'read');
    const semaphore = read === 1n && raised !== 1n;
    if (!semaphore && read !== raised)
      throw new CheckpointError(`read on eventfd fd ${fd} of pid ${pid} returned ${read}, neither 1 nor its counter ${raised}`);
    // Back to `count`: a semaphore lost 1, any other eventfd everything.
    const left = raised - read;
    if (left > count) for (let i = left; i > count; i--) await call(NR.read, 'read back');
    else if (left < count) await call(NR.write, `write back ${count - left}`, count - left);
    return semaphore;
  });
}

/**
 * The eventfds and signalfds of the stopped task, by descriptor number;
 * an eventfd's semaphore flag probed when its fdinfo does not show it
 * (injected: see probeSemaphore). `probe: false` leaves a flag the kernel
 * does not show as false (a read-back, which must not touch the counter).
 */
export async function captureEventFds(
  agent: AgentClient,
  pid: number,
  fds: FdTable,
  { probe = true }: { probe?: boolean } = {},
): Promise<{ eventfds: EventfdState[]; signalfds: SignalfdState[] }> {
  const eventfds: EventfdState[] = [];
  const signalfds: SignalfdState[] = [];
  const events = fds.filter(({ link }) => link === EVENTFD_LINK || link === SIGNALFD_LINK);
  const fdinfos = await Promise.all(events.map(({ fd }) => agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 65536 })));
  for (const [i, { fd, link }] of events.entries()) {
    const fdinfo = fdinfos[i]!.toString('utf8');
    if (link === SIGNALFD_LINK) {
      signalfds.push({ fd, ...parseSignalfdFdinfo(fdinfo) });
      continue;
    }
    const { flags, count, semaphore } = parseEventfdFdinfo(fdinfo);
    eventfds.push({ fd, count, flags, semaphore: semaphore ?? (probe ? await probeSemaphore(agent, pid, fd, count) : false) });
  }
  return { eventfds, signalfds };
}

/** The eventfd descriptors of `pid` in its table `fds`, ascending, as { pid, fd } (for sharedEventfdProblems). */
export function eventfdDescriptors(pid: number, fds: FdTable): Array<{ pid: number; fd: number }> {
  return descriptorsLinkedTo(fds, EVENTFD_LINK).map((fd) => ({ pid, fd }));
}

/**
 * Pairs of eventfd descriptors (of one process or of several) that are one
 * eventfd, asked of the kernel with kcmp(KCMP_FILE) injected into the first
 * holder: one counter, which a restore would make twice.
 */
export async function sharedEventfdProblems(
  agent: AgentClient,
  held: ReadonlyArray<{ pid: number; fd: number }>,
): Promise<Array<{ state: string; where: string; seen: string }>> {
  // (An Uncapturable of uncapturable.ts, spelled out: that module imports this one's links.)
  const found: Array<{ state: string; where: string; seen: string }> = [];
  for (const [i, a] of held.entries()) {
    for (const b of held.slice(i + 1)) {
      if (await sameOpenFile(agent, a, b))
        found.push({
          state: 'shared eventfd',
          where: `pid ${a.pid} fd ${a.fd} and pid ${b.pid} fd ${b.fd}`,
          seen: 'one eventfd counter held by two descriptors: a restore would make two counters',
        });
    }
  }
  return found;
}

/**
 * Steps that make the image's eventfds and signalfds again at their
 * numbers. `openFds` is what the target has open when they run; `scratch`
 * a free page for the masks and large counters.
 */
export function eventFdSteps(
  pid: number,
  { eventfds, signalfds }: { eventfds: readonly EventfdState[]; signalfds: readonly SignalfdState[] },
  openFds: readonly number[],
  scratch: bigint,
): PlanStep[] {
  if (eventfds.length === 0 && signalfds.length === 0) return [];
  const table = new DescriptorTable(openFds);
  const layout = new ScratchLayout(scratch);
  const steps: PlanStep[] = [];
  let placed = false;
  for (const e of eventfds) {
    const got = table.lowestFree();
    // eventfd2's initial value is an unsigned int: a larger counter is written once the eventfd is in place.
    const initial = e.count <= 0xffffffffn ? e.count : 0n;
    const flags = (e.flags & EVENT_FD_FLAGS) | (e.semaphore ? EFD_SEMAPHORE : 0);
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.eventfd2, args: [initial, BigInt(flags)] },
      why: `eventfd2(${initial}, 0o${flags.toString(8)}${e.semaphore ? ', EFD_SEMAPHORE' : ''}) for fd ${e.fd}`,
      expect: BigInt(got),
    });
    steps.push(...table.place(pid, got, e.fd, (e.flags & O_CLOEXEC) !== 0, `the eventfd`));
    if (initial !== e.count) {
      const value = Buffer.alloc(8);
      value.writeBigUInt64LE(e.count);
      placed = true;
      steps.push({
        op: { op: 'INJECT_SYSCALL', pid, nr: NR.write, args: [BigInt(e.fd), layout.place(value), 8n] },
        why: `counter ${e.count} into the eventfd at fd ${e.fd}`,
        expect: 8n,
      });
    }
  }
  for (const s of signalfds) {
    const got = table.lowestFree();
    const mask = Buffer.alloc(8);
    mask.writeBigUInt64LE(s.mask);
    placed = true;
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.signalfd4, args: [BigInt.asUintN(64, -1n), layout.place(mask), 8n, BigInt(s.flags & EVENT_FD_FLAGS)] },
      why: `signalfd4(-1, mask 0x${s.mask.toString(16)}, 8, 0o${(s.flags & EVENT_FD_FLAGS).toString(8)}) for fd ${s.fd}`,
      expect: BigInt(got),
    });
    steps.push(...table.place(pid, got, s.fd, (s.flags & O_CLOEXEC) !== 0, 'the signalfd'));
  }
  // No scratch page when nothing was placed (eventfds with counters eventfd2 takes whole).
  return placed ? layout.steps(pid, 'signalfd masks and eventfd counters', steps) : steps;
}

/** A message naming the field, or undefined: the eventfd and signalfd part of task.json. `otherFds`: the image's other descriptors. Pure. */
export function eventFdsProblem(task: Pick<TaskState, 'eventfds' | 'signalfds'>, otherFds: ReadonlySet<number>): { field: string; why: string } | undefined {
  const seen = new Set(otherFds);
  const fdProblem = (at: string, fd: number): { field: string; why: string } | undefined => {
    if (!Number.isInteger(fd) || fd < 3 || fd > 65535) return { field: `${at}.fd`, why: `${fd} is not a descriptor 3-65535` };
    if (seen.has(fd)) return { field: `${at}.fd`, why: `fd ${fd} appears twice` };
    seen.add(fd);
    return undefined;
  };
  const flagsProblem = (at: string, flags: number): { field: string; why: string } | undefined =>
    Number.isInteger(flags) && (flags & ~EVENT_FD_FLAGS) === 0
      ? undefined
      : { field: `${at}.flags`, why: `0o${Number(flags).toString(8)} is not a combination of O_CLOEXEC and O_NONBLOCK` };
  const eventfds = task.eventfds ?? [];
  const signalfds = task.signalfds ?? [];
  if (eventfds.length > 1024) return { field: 'eventfds', why: `${eventfds.length} eventfds, limit 1024` };
  if (signalfds.length > 1024) return { field: 'signalfds', why: `${signalfds.length} signalfds, limit 1024` };
  for (const [i, e] of eventfds.entries()) {
    const at = `eventfds[${i}]`;
    const problem = fdProblem(at, e.fd) ?? flagsProblem(at, e.flags);
    if (problem) return problem;
    if (typeof e.count !== 'bigint' || e.count < 0n || e.count > EVENTFD_MAX)
      return { field: `${at}.count`, why: `${String(e.count)} is not an eventfd counter 0-${EVENTFD_MAX}` };
    if (typeof e.semaphore !== 'boolean') return { field: `${at}.semaphore`, why: 'must be true or false' };
  }
  for (const [i, s] of signalfds.entries()) {
    const at = `signalfds[${i}]`;
    const problem = fdProblem(at, s.fd) ?? flagsProblem(at, s.flags);
    if (problem) return problem;
    if (typeof s.mask !== 'bigint' || s.mask < 0n || s.mask >= 1n << 64n) return { field: `${at}.mask`, why: `${String(s.mask)} is not a 64-bit signal mask` };
    if ((s.mask & UNBLOCKABLE) !== 0n) return { field: `${at}.mask`, why: `0x${s.mask.toString(16)} holds SIGKILL or SIGSTOP, which no signalfd mask has` };
  }
  return undefined;
}

/** How task.json spells them: counters and masks as strings (they pass 2^53). */
export function eventFdsJson(task: Pick<TaskState, 'eventfds' | 'signalfds'>): Record<string, unknown> {
  return {
    ...(task.eventfds?.length ? { eventfds: task.eventfds.map((e) => ({ fd: e.fd, count: e.count.toString(), flags: e.flags, semaphore: e.semaphore })) } : {}),
    ...(task.signalfds?.length ? { signalfds: task.signalfds.map((s) => ({ fd: s.fd, mask: `0x${s.mask.toString(16)}`, flags: s.flags })) } : {}),
  };
}

/** An eventfd or signalfd as read-back compares it; "closed" when there is none. Pure. */
export function describeEventFd(e: EventfdState | SignalfdState | undefined): string {
  if (!e) return 'closed';
  if ('mask' in e) return `signalfd mask 0x${e.mask.toString(16)} flags 0o${e.flags.toString(8)}`;
  return `eventfd count ${e.count} flags 0o${e.flags.toString(8)}`;
}
