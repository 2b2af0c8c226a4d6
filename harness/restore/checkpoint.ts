/**
 * Takes a checkpoint of a process stopped under the agent — every thread in
 * a ptrace stop, as RUN leaves them: each thread's registers, xstate, debug
 * registers, rseq registration, mask, pending queue, alternate stack,
 * clear_child_tid and robust list (threads.ts), the process's signal state,
 * files (a userfaultfd, eventfds and signalfds among them), its membarrier
 * registrations, the memory map, every mapping isDumped()
 * selects (with the file and offset of a file mapping, and the
 * userfaultfd registration and absent pages of a registered one, and the
 * mapping attributes a restore gives back: vma-flags.ts) and the
 * contents of those that have their own (all but shared file mappings). The result is an in-memory image; writing it is
 * checkpoint-image.ts's job.
 */
import type { AgentClient } from '../agent/client.ts';
import { NT_X86_XSTATE, debugRegOffset } from '../x86/registers.ts';
import {
  DEBUG_REG_NAMES,
  memoryEntryName,
  type CheckpointImage,
  type DebugRegs,
  type MemoryRegion,
  type PlatformFacts,
  type ProcessInfo,
  type RseqState,
  type ThreadState,
} from './image-model.ts';
import { hasContents, isDumped, mappedFile, parseMaps } from './proc-maps.ts';
import { rseqCsAddress } from './rseq.ts';
import { ALL_BLOCKABLE, capturePending, captureSignals, SS_DISABLE } from './signals.ts';
import { captureTimers, TIMERFD_LINK } from './timers.ts';
import { descriptorsLinkedTo, readFdTable, type FdTable } from './fd-table.ts';
import { captureLinks, otherThreads } from './threads.ts';
import { captureTask, CheckpointError } from './files.ts';
import { captureLdt } from './ldt.ts';
import { captureSleep, threadRestartBlockProblem } from './sleep-deadline.ts';
import { capturePkeys } from './pkeys.ts';
import { refuseUncapturable, specialFileProblems, uncapturableError } from './uncapturable.ts';
import { probeMembarrier } from './membarrier.ts';
import { captureVmFlags, vmaFlagsProblems } from './vma-flags.ts';
import { captureEventFds, eventfdDescriptors, sharedEventfdProblems } from './event-fds.ts';
import { readProcText } from './proc-text.ts';
import { readPlatformDependencies } from './platform-dependencies.ts';
import { readProcessClocks } from './time-namespace.ts';
import { absentRanges, checkRegistrations, parseSmapsRegistrations } from './userfaultfd.ts';
import { dropZeroPages, PAGE_BYTES, pagesToRead, rangesBytes, storeRule, unpackStored } from './stored-pages.ts';
import { AgentError } from '../errors.ts';
import { constants } from 'node:os';

/** Generous bound for the XSAVE area (AVX-512 needs ~2.7 KiB, AMX ~11 KiB). */
const XSTATE_MAX_BYTES = 16 * 1024;

export interface CheckpointProcessOptions {
  /**
   * refuse (the default): state no image can hold fails the checkpoint by
   * name (uncapturable.ts). ignore: the check is skipped — the negative
   * control that shows what the refusal prevents (the state silently
   * missing after restore); descriptors files.ts cannot hold still fail.
   */
  uncapturable?: 'refuse' | 'ignore';
  /**
   * Pipe descriptors are left to the caller (a tree's checkpoint captures
   * the pipes between its processes: tree-pipes.ts) instead of refused.
   */
  pipesCaptured?: boolean;
}

export async function checkpointProcess(
  agent: AgentClient,
  process: ProcessInfo,
  platform: PlatformFacts,
  options: CheckpointProcessOptions = {},
): Promise<CheckpointImage> {
  const pid = process.pid;
  const refuse = (options.uncapturable ?? 'refuse') === 'refuse';
  // The clock first, as close to the interruption as can be: it dates an
  // interrupted sleep's deadline, and the refusal's reads take a second under
  // TCG. Its clock_gettime is the one call injected before the refusal.
  const sleep = await captureSleep(agent, pid, await agent.call({ op: 'GETREGS', pid }), refuse);
  // The descriptor table, read once for every module that looks at descriptors (fd-table.ts).
  const fds = await readFdTable(agent, pid);
  // Then, before anything else is injected: state no image can hold is refused by name (uncapturable.ts).
  if (refuse) await refuseUncapturable(agent, pid, process.noAslr, fds, { pipesCaptured: options.pipesCaptured ?? false });
  const others = await otherThreads(agent, pid);
  // Every thread's mask as it was, then every signal blocked until the
  // injected calls are over: a signal that arrives meanwhile (a periodic
  // timer) waits in its queue instead of stopping a call half-way, and the
  // queues, read last, hold it — the image has it pending.
  const tids = [pid, ...others];
  const held = await Promise.all(tids.map((tid) => agent.call({ op: 'GETSIGMASK', pid: tid })));
  const masks = new Map(tids.map((tid, i) => [tid, held[i]!]));
  try {
    await Promise.all(tids.map((tid) => agent.call({ op: 'SETSIGMASK', pid: tid, mask: ALL_BLOCKABLE })));
    return await captureBlocked(agent, process, platform, others, masks, fds, { refuse, sleep, pipesCaptured: options.pipesCaptured ?? false });
  } finally {
    await Promise.all([...masks].map(([tid, mask]) => agent.call({ op: 'SETSIGMASK', pid: tid, mask })));
  }
}

async function captureBlocked(
  agent: AgentClient,
  process: ProcessInfo,
  platform: PlatformFacts,
  others: readonly number[],
  masks: ReadonlyMap<number, bigint>,
  fds: FdTable,
  { refuse, sleep, pipesCaptured }: { refuse: boolean; sleep: CheckpointImage['sleep']; pipesCaptured: boolean },
): Promise<CheckpointImage> {
  const pid = process.pid;
  const main = await threadRegisters(agent, pid);
  const threads: ThreadState[] = [];
  for (const tid of others) {
    const t = await threadRegisters(agent, tid);
    threads.push({ tid, ...t, blocked: masks.get(tid)!, pending: [], altstack: { sp: 0n, flags: SS_DISABLE, size: 0n }, clearChildTid: 0n, robustList: 0n });
    const restartBlock = threadRestartBlockProblem(tid, t.regs);
    if (restartBlock && refuse) throw new CheckpointError(`pid ${pid}: ${restartBlock}`, { state: 'restart_block', target: `thread ${tid}` });
  }
  // Read once for the refusals below and the capture after them: the injected calls between leave no mapping behind
  // (their scratch page is unmapped again: scratch.ts).
  const smaps = await readProcText(agent, `/proc/${pid}/smaps`);
  // A path that names a FIFO or a device node (an fstat injected: signals are blocked by now), one eventfd two
  // descriptors hold (kcmp); mapping attributes a restore's mmap does not give back (smaps).
  if (refuse) {
    // A tree's FIFOs are its own (tree-fifos.ts): captured with their queued bytes, not refused.
    const special = (
      await withRseqCsParked(agent, pid, [main.rseq, ...threads.map((t) => t.rseq)], async () => [
        ...(await specialFileProblems(agent, pid, fds)),
        ...(await sharedEventfdProblems(agent, eventfdDescriptors(pid, fds))),
      ])
    ).filter((u) => !(pipesCaptured && u.state === 'fifo'));
    special.push(...vmaFlagsProblems(pid, smaps));
    if (special.length > 0) throw uncapturableError(pid, special);
  }
  const task = await captureTask(agent, pid, fds, { skipPipes: pipesCaptured });
  const timerfdFds = descriptorsLinkedTo(fds, TIMERFD_LINK);
  const maps = await readProcText(agent, `/proc/${pid}/maps`);
  const registrations = parseSmapsRegistrations(smaps);
  // The mapping attributes a restore gives back (vma-flags.ts), by start address like the registrations.
  const vmFlags = captureVmFlags(smaps);
  const dumped = parseMaps(maps)
    .filter((m) => isDumped(m, process.binary))
    .map((m) => ({ ...m, userfault: registrations.get(m.start) ?? 0 }));
  checkRegistrations(pid, dumped, task.userfaultfds ?? []);
  const { clocks, dispositions, links, absent, ldt, timers, pkeys, eventFds, membarrier } = await withRseqCsParked(
    agent,
    pid,
    [main.rseq, ...threads.map((t) => t.rseq)],
    async () => {
      // The process's own clocks, first of the injected calls (an mmap and clock_gettime, so inside the parked
      // section like the rest: a call injected inside an rseq section is aborted to its handler): a restore in another
      // boot continues them from here (time-namespace.ts), so what passes until they are read shows as a forward step.
      const clocks = await readProcessClocks(agent, pid);
      const dispositions = await captureSignals(agent, pid, masks.get(pid)!);
      const links = await captureLinks(agent, pid, others);
      const absent = await absentRanges(
        agent,
        pid,
        dumped.filter((m) => m.userfault !== 0).map((m) => [m.start, m.end] as const),
      );
      const ldt = await captureLdt(agent, pid);
      const timers = await captureTimers(agent, pid, timerfdFds);
      // The allocated protection keys: a pkey_mprotect probe of a scratch page (pkeys.ts).
      const pkeys = await capturePkeys(agent, pid, dumped, smaps);
      // Injected too: an eventfd's semaphore flag where fdinfo does not show it, and the membarrier probes.
      const eventFds = await captureEventFds(agent, pid, fds);
      const membarrier = await probeMembarrier(agent, pid);
      return { clocks, dispositions, links, absent, ldt, timers, pkeys, eventFds, membarrier };
    },
  );
  if (eventFds.eventfds.length > 0) task.eventfds = eventFds.eventfds;
  if (eventFds.signalfds.length > 0) task.signalfds = eventFds.signalfds;
  if (membarrier.length > 0) task.membarrier = membarrier;
  threads.forEach((t, i) => Object.assign(t, links.others[i]));
  // Last, after every injected call: a timer that fired meanwhile is in here.
  const signals = { ...dispositions, pending: await capturePending(agent, pid) };
  for (const t of threads) t.pending = await agent.call({ op: 'PEEKSIGINFO', pid: t.tid, shared: false });

  const regions: CheckpointImage['regions'] = [];
  for (const m of dumped) {
    // A memfd a tree's process maps shared is the tree's (tree-memfds.ts: created once, mapped before the children
    // are cloned): the process's own restore finds it in place, as shared anonymous memory it inherited, and writes
    // its pages like any other.
    const treeMemfd = pipesCaptured && m.perms[3] === 's' && /^\/memfd:.* \(deleted\)$/.test(m.name);
    const file = treeMemfd ? null : (mappedFile(m) ?? null);
    // A deleted file (or a memfd, a SysV segment) cannot be opened again; a
    // process restored without it would fail later, far from the cause.
    if (file?.endsWith(' (deleted)'))
      throw new CheckpointError(`mapping ${m.start.toString(16)}-${m.end.toString(16)} ${m.perms} maps ${file}, which a restore cannot open again`, {
        mapping: `${m.start.toString(16)}-${m.end.toString(16)}`,
        target: file,
      });
    const entry = treeMemfd || hasContents(m) ? memoryEntryName(regions.length) : null;
    const region: MemoryRegion = { start: m.start, end: m.end, perms: m.perms, name: m.name, file, offset: file === null ? 0n : m.offset, entry };
    if (m.userfault !== 0) Object.assign(region, { userfault: m.userfault, absent: absent.get(m.start) ?? [] });
    const flags = vmFlags.get(m.start);
    if (flags) region.vmFlags = flags;
    regions.push(region);
  }
  const memory = await readContents(agent, pid, regions);
  const { regs, xstate, debugRegs, rseq } = main;
  // What a restore elsewhere must offer (platform-dependencies.ts): read, not injected, so any time before the kill will do.
  const dependencies = await readPlatformDependencies(agent, pid, [xstate, ...threads.map((t) => t.xstate)], parseMaps(maps));
  return {
    created: new Date().toISOString(),
    process,
    platform,
    regs,
    xstate,
    debugRegs,
    rseq,
    signals,
    task,
    links: links.main,
    threads,
    ldt,
    timers,
    sleep,
    pkeys,
    clocks,
    dependencies,
    maps,
    regions,
    memory,
  };
}

/**
 * The contents of every region with an entry, as full-region buffers, and
 * each region's `stored` pages (stored-pages.ts): pagemap says which pages
 * were touched (one BATCH for all regions), the touched pages cross in one
 * readMemory (the bulk port when there is one), zero pages are let go where
 * a hole reads as zeros. An absent page of a userfaultfd region is never
 * read: reading it would raise the fault the server holds.
 */
async function readContents(agent: AgentClient, pid: number, regions: MemoryRegion[]): Promise<Map<string, Buffer>> {
  const withEntry = regions.filter((r) => r.entry !== null);
  const mapped = withEntry.filter((r) => storeRule(r) === 'touched-nonzero');
  const pagemaps = new Map<MemoryRegion, Buffer>();
  const steps = await agent.batch(mapped.map((r) => ({ op: 'PAGEMAP', pid, start: r.start, pages: Number(r.end - r.start) / PAGE_BYTES }) as const));
  steps.forEach((step, i) => {
    if (!step.ok) throw new AgentError(`PAGEMAP pid ${pid} ${describeRegionRange(mapped[i]!)}: ${step.message}`, 'PAGEMAP', step.errno);
    pagemaps.set(mapped[i]!, step.result as Buffer);
  });
  if (steps.length !== mapped.length) throw new AgentError(`PAGEMAP pid ${pid}: ${steps.length} answers for ${mapped.length} regions`, 'PAGEMAP', undefined);
  const reads = withEntry.map((r) => pagesToRead(r, pagemaps.get(r)));
  const bytes = await agent.readMemory(
    pid,
    reads.flat().map(([s, e]) => ({ address: s, length: Number(e - s) })),
  );
  const memory = new Map<string, Buffer>();
  let at = 0;
  withEntry.forEach((region, i) => {
    const ranges = reads[i]!;
    const size = rangesBytes(ranges);
    const read = bytes.subarray(at, at + size);
    at += size;
    region.stored = dropZeroPages(region, ranges, read);
    memory.set(region.entry!, unpackStored(region, ranges, read));
  });
  return memory;
}

function describeRegionRange(r: MemoryRegion): string {
  return `${r.start.toString(16)}-${r.end.toString(16)} ${r.perms}`;
}

/** What ptrace reads of one thread without running it: registers, xstate, debug registers, rseq registration. */
async function threadRegisters(agent: AgentClient, tid: number): Promise<Pick<ThreadState, 'regs' | 'xstate' | 'debugRegs' | 'rseq'>> {
  // Reads only, sent together: the agent answers them back to back.
  const [regs, xstate, values, rseq] = await Promise.all([
    agent.call({ op: 'GETREGS', pid: tid }),
    agent.call({ op: 'GETREGSET', pid: tid, noteType: NT_X86_XSTATE, maxSize: XSTATE_MAX_BYTES }),
    Promise.all(DEBUG_REG_NAMES.map((name) => agent.call({ op: 'PEEKUSER', pid: tid, offset: debugRegOffset(Number(name.slice(2))) }))),
    rseqRegistration(agent, tid),
  ]);
  const debugRegs = {} as DebugRegs;
  DEBUG_REG_NAMES.forEach((name, i) => (debugRegs[name] = values[i]!));
  return { regs, xstate, debugRegs, rseq };
}

/**
 * Runs `inject` (calls injected into the threads) with the rseq_cs word of
 * every registered area set to 0, and puts the values back afterwards,
 * before anything is dumped. A thread stopped inside a critical section
 * would otherwise be sent to its abort handler by the first return to user
 * mode, and run workload code instead of the injected call. (Memory is
 * shared: the words are read and written through the main thread.)
 */
async function withRseqCsParked<T>(agent: AgentClient, pid: number, registrations: ReadonlyArray<RseqState | null>, inject: () => Promise<T>): Promise<T> {
  const parked: Array<{ at: bigint; saved: Buffer }> = [];
  try {
    for (const rseq of registrations) {
      if (!rseq) continue;
      const at = rseqCsAddress(rseq);
      const saved = await agent.call({ op: 'READ_MEM', pid, address: at, length: 8 });
      if (saved.readBigUInt64LE(0) === 0n) continue;
      await agent.call({ op: 'WRITE_MEM', pid, address: at, data: Buffer.alloc(8) });
      parked.push({ at, saved });
    }
    return await inject();
  } finally {
    for (const { at, saved } of parked) await agent.call({ op: 'WRITE_MEM', pid, address: at, data: saved });
  }
}

/** The task's rseq registration; null when it has none or the kernel has no rseq (EIO: no CONFIG_RSEQ). */
async function rseqRegistration(agent: AgentClient, pid: number): Promise<RseqState | null> {
  try {
    const config = await agent.call({ op: 'RSEQ_CONFIG', pid });
    if (config.area === 0n) return null;
    if (config.flags !== 0)
      throw new AgentError(`pid ${pid} registered rseq with flags 0x${config.flags.toString(16)}, which no current kernel accepts`, 'RSEQ_CONFIG', undefined);
    return { area: config.area, size: config.size, signature: config.signature };
  } catch (error) {
    if (error instanceof AgentError && error.errno === constants.errno.EIO) return null;
    throw error;
  }
}
