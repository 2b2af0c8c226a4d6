/**
 * Compiles a validated checkpoint image into a restore plan: plain data, a
 * list of primitive agent operations with the result each must produce,
 * shipped to the agent in one BATCH. The target is a fresh instance of the
 * same binary, stopped before its first instruction; `probe` is what it
 * looks like there.
 */
import { debugRegOffset, hex } from '../x86/registers.ts';
import { DEBUG_REG_NAMES, type CheckpointImage } from './image-model.ts';
import { PlanError, type PlanStep, type TargetProbe } from './plan-step.ts';
import { vdsoMovable } from './platform-dependencies.ts';
import { vdsoRedirectSteps } from './vdso-redirect.ts';
import { omits, type RestorePolicy } from './policy.ts';
import { applyRseqFixup, type RseqFixup } from './rseq.ts';
import { isKernelProvided, parseMaps, protOf, type Mapping } from './proc-maps.ts';
import { mappingSteps } from './mappings.ts';
import { freePage, registerSteps, threadRegisterSteps, xstateStep } from './restorers.ts';
import { ALL_BLOCKABLE, finalMaskStep, signalSteps } from './signals.ts';
import { applyThreadRseqFixups, debugRegSteps, linkSteps, threadCreationSteps, threadFinalSteps, type ThreadFixup } from './threads.ts';
import { fileSteps, sessionSteps, umaskSteps } from './files.ts';
import { ldtSteps } from './ldt.ts';
import { timerSteps } from './timers.ts';
import { userfaultfdSteps } from './userfaultfd.ts';
import { eventFdSteps } from './event-fds.ts';
import { membarrierSteps } from './membarrier.ts';
import { rewindInterruptedSyscall } from './syscall-restart.ts';
import { reissueSleep, type SleepReissue } from './sleep-deadline.ts';
import { pkeySteps } from './pkeys.ts';
import { brkStep, dontNeedStep, protectStep, rseqStep, unmapStep } from './syscall-steps.ts';
import { storedRanges } from './stored-pages.ts';
import { timeNamespaceSteps } from './time-namespace.ts';
import { vmFlagSteps } from './vma-flags.ts';

/** The parts of [start, end) the mappings cover. */
function existingParts(start: bigint, end: bigint, mappings: readonly Mapping[]): Array<[bigint, bigint]> {
  return mappings.filter((m) => m.start < end && start < m.end).map((m) => [m.start > start ? m.start : start, m.end < end ? m.end : end]);
}

export { PlanError, type PlanStep, type TargetProbe };

/** Memory is written in slices so no single frame gets large. */
export const WRITE_CHUNK_BYTES = 1024 * 1024;

/**
 * The rseq abort is decided on the image before anything is planned: it
 * moves the IP and clears rseq_cs. Undefined when the policy does not apply it.
 */
export function rseqFixupFor(image: CheckpointImage, policy: RestorePolicy): RseqFixup | undefined {
  return image.rseq && (policy.rseqFixup ?? 'on') === 'on' ? applyRseqFixup(image) : undefined;
}

/**
 * The image as a plan under `policy` writes it: the rseq fixup of every
 * thread applied (each moves its own IP and clears the rseq_cs word of its
 * own area), with what each decided.
 */
export function fixedImage(image: CheckpointImage, policy: RestorePolicy): { image: CheckpointImage; main?: RseqFixup; threads: ThreadFixup[] } {
  if ((policy.rseqFixup ?? 'on') !== 'on') return { image, threads: image.threads.map((thread) => ({ thread })) };
  const main = rseqFixupFor(image, policy);
  const threaded = applyThreadRseqFixups(main?.image ?? image);
  return { image: threaded.image, main, threads: threaded.fixups };
}

/**
 * A task stopped inside an interrupted system call resumes by issuing it
 * again, as the kernel would have restarted it (syscall-restart.ts): no
 * -ERESTART* value ever reaches the restored program. Every thread alike.
 * An interrupted sleep whose deadline the image holds is re-issued with
 * that deadline instead (sleep-deadline.ts), not started over.
 */
export function withSyscallRestart(image: CheckpointImage, bootId?: string): { image: CheckpointImage; sleep?: SleepReissue } {
  const rewound = (regs: CheckpointImage['regs']) => rewindInterruptedSyscall(regs)?.regs ?? regs;
  const sleep = image.sleep ? reissueSleep(image.regs, image.sleep, bootId === image.sleep.bootId) : undefined;
  return { image: { ...image, regs: sleep?.regs ?? rewound(image.regs), threads: image.threads.map((t) => ({ ...t, regs: rewound(t.regs) })) }, sleep };
}

/** The kernel's mappings a process may unmap itself (munmap of [vsyscall] fails): the vDSO and its data pages. */
const VDSO_MAPPING = /^\[(vdso|vvar[a-z_]*)\]$/;

export function compileRestorePlan(checkpointed: CheckpointImage, probe: TargetProbe, policy: RestorePolicy): PlanStep[] {
  const pid = probe.pid;
  const fixed = fixedImage(checkpointed, policy);
  const fixup = fixed.main;
  const restarted = policy.syscallRestart === 'off' ? { image: fixed.image } : withSyscallRestart(fixed.image, probe.bootId);
  const image = restarted.image;
  const threadFixups: ThreadFixup[] = image.threads.map((thread, i) => ({ thread, fixup: fixed.threads[i]?.fixup }));
  const steps: PlanStep[] = [];
  const imageMaps = parseMaps(image.maps);

  // The kernel's own mappings cannot be moved; with ASLR off they coincide.
  for (const m of imageMaps.filter(isKernelProvided)) {
    const there = probe.maps.find((t) => t.name === m.name);
    if (!there || there.start !== m.start || there.end !== m.end) {
      throw new PlanError(
        `${m.name} is at ${hex(m.start)}-${hex(m.end)} in the image but ${there ? `${hex(there.start)}-${hex(there.end)}` : 'absent'} in the target`,
      );
    }
  }
  // A process that unmapped its vDSO (CRIU's ZDTM vdso02 does) is restored without one: the target's goes too.
  const unmapped = probe.maps.filter((t) => VDSO_MAPPING.test(t.name) && !imageMaps.some((m) => m.name === t.name));
  for (const t of unmapped) steps.push(unmapStep(pid, t.start, t.end - t.start, `unmap the target's ${t.name}: the process had unmapped its own`));
  // In another boot, the time namespace first (time-namespace.ts): setns wants a single-threaded task, and
  // no descriptor of the image is open yet, so the one it opens and closes is the lowest the fresh target lacks.
  if (probe.clockOffsets) steps.push(...timeNamespaceSteps(pid, probe.clockOffsets, probe.fds ?? [0, 1, 2], freePage(probe.maps, imageMaps)));

  // Another kernel's vDSO in the same place: the old offsets jump to the new code (vdso-redirect.ts).
  // (Functions the new vDSO lacks get int3; the dependency check refused them already unless the restore is tried anyway.)
  if (image.dependencies && probe.dependencies && !omits(policy, 'vdso') && vdsoMovable(image.dependencies, probe.dependencies)) {
    const rips = [image.regs.rip, ...image.threads.map((t) => t.regs.rip)];
    steps.push(...vdsoRedirectSteps(pid, image.dependencies, probe.dependencies, rips, [...probe.maps, ...imageMaps]).steps);
  }

  const covered: Mapping[] = probe.maps.filter((t) => !unmapped.includes(t));
  // The kernel may show the heap as several adjacent [heap] VMAs; brk() must
  // reach the end of the last one, or later sbrk() calls would collide.
  const heaps = imageMaps.filter((m) => m.name === '[heap]');
  if (heaps.length > 0 && !probe.maps.some((m) => m.name === '[heap]')) {
    const start = heaps[0]!.start;
    const end = heaps.at(-1)!.end;
    steps.push(brkStep(pid, end, `grow the heap to ${hex(end)}`));
    covered.push({ ...heaps[0]!, start, end });
  }

  // Every kind of mapping (mappings.ts): anonymous, shared anonymous, files.
  steps.push(...mappingSteps(pid, image.regions, probe, covered, policy, freePage(probe.maps, imageMaps)));

  const userfaultfds = omits(policy, 'userfaultfd') ? [] : (image.task.userfaultfds ?? []);
  // A page the image does not store (stored-pages.ts) must read as the
  // mapping's backing. In memory the plan mapped it is; in a mapping the
  // fresh target already had (its binary, its stack) it may not be:
  // MADV_DONTNEED drops those pages first (zeros for anonymous memory, the
  // file's bytes for a private file mapping). Never in a userfaultfd region,
  // where a dropped page would fault to the server.
  for (const region of image.regions) {
    if (region.entry === null || region.userfault) continue;
    const stored = storedRanges(region);
    if (stored.length === 1 && stored[0]![0] === region.start && stored[0]![1] === region.end) continue;
    for (const [start, end] of existingParts(region.start, region.end, probe.maps)) {
      steps.push(
        dontNeedStep(
          pid,
          start,
          end - start,
          `drop the target's own pages of ${hex(start)}-${hex(end)} (${region.name || 'anonymous'}): the image leaves pages out`,
        ),
      );
    }
  }

  // A shared file mapping has no entry: its contents are the file's. Only
  // the stored pages are written, so the pages a userfaultfd server had not
  // provided stay unwritten, and touching them faults to the server again
  // (userfaultfd.ts). The client sends large writes over the bulk port.
  for (const region of image.regions) {
    if (region.entry === null) continue;
    const data = image.memory.get(region.entry)!;
    for (const [start, end] of storedRanges(region)) {
      const from = Number(start - region.start);
      const to = Number(end - region.start);
      for (let off = from; off < to; off += WRITE_CHUNK_BYTES) {
        const slice = data.subarray(off, Math.min(off + WRITE_CHUNK_BYTES, to));
        steps.push({
          op: { op: 'WRITE_MEM', pid, address: region.start + BigInt(off), data: slice },
          why: `contents of ${region.name || 'anonymous'} (${region.entry})`,
        });
      }
    }
  }

  // After the contents: the timespec sits below the stack's red zone, in memory the image also writes.
  if (restarted.sleep)
    steps.push({ op: { op: 'WRITE_MEM', pid, address: restarted.sleep.address, data: restarted.sleep.timespec }, why: restarted.sleep.note });

  // Registered once its area holds the image's contents, before the
  // protections: the injected mprotect calls that follow return to user mode
  // with the IP elsewhere, so the kernel clears an rseq_cs that names a
  // section — which is why the fixup is the restorer's job.
  if (image.rseq && !omits(policy, 'rseq')) {
    const why = `register rseq: area ${hex(image.rseq.area)}, ${image.rseq.size} bytes, signature 0x${image.rseq.signature.toString(16)}; rseq-fixup=${policy.rseqFixup ?? 'on'}: ${fixup?.note ?? 'not applied'}`;
    steps.push(rseqStep(pid, image.rseq, why));
  }

  for (const region of image.regions) {
    steps.push(
      protectStep(
        pid,
        region.start,
        region.end - region.start,
        BigInt(protOf(region.perms)),
        `protections ${region.perms} on ${hex(region.start)}-${hex(region.end)}`,
      ),
    );
  }

  // Mapping attributes (vma-flags.ts) once each region is mapped, written and protected: madvise advice, then
  // mlock, which faults the pages in with the image's contents already there.
  steps.push(...vmFlagSteps(pid, image.regions, policy));

  // Keys after the protections (pkey_mprotect sets both), before the registers: their xstate carries PKRU.
  if (!omits(policy, 'pkeys')) steps.push(...pkeySteps(pid, image.pkeys, image.regions));

  if (!omits(policy, 'files')) {
    // A tree's sessions and groups were formed with its processes (tree.ts).
    if (!probe.tree) steps.push(...sessionSteps(pid, image.process.pid, image.task));
    if (!omits(policy, 'umask')) steps.push(...umaskSteps(pid, image.task));
    steps.push(...fileSteps(pid, image.task.files, probe.fds ?? [0, 1, 2], freePage(probe.maps, imageMaps)));
  }
  // After the memory writes: a write to a registered, missing page would fault to a server that is not running.
  const openFds = [...(probe.fds ?? [0, 1, 2]), ...(omits(policy, 'files') ? [] : image.task.files.map((f) => f.fd))];
  steps.push(...userfaultfdSteps(pid, userfaultfds, image.regions, openFds, freePage(probe.maps, imageMaps)));
  // eventfds and signalfds at their numbers (event-fds.ts), and the membarrier registrations (membarrier.ts).
  const eventFds = {
    eventfds: omits(policy, 'eventfd') ? [] : (image.task.eventfds ?? []),
    signalfds: omits(policy, 'signalfd') ? [] : (image.task.signalfds ?? []),
  };
  steps.push(...eventFdSteps(pid, eventFds, [...openFds, ...userfaultfds.map((u) => u.fd)], freePage(probe.maps, imageMaps)));
  if (!omits(policy, 'membarrier')) steps.push(...membarrierSteps(pid, image.task.membarrier ?? []));

  // The LDT before any register write, the threads' included: SETREGS (or
  // a sigreturn frame) only stores DS/ES/FS/GS; the kernel loads them into
  // the CPU when it next switches to the task, and a selector with TI = 1
  // whose LDT entry is not there yet faults inside the kernel, whose fixup
  // loads the null selector instead — silently, and for good. (The threads
  // share the LDT: it belongs to the mm, so one install serves them all.)
  if (!omits(policy, 'ldt')) steps.push(...ldtSteps(pid, image.ldt, freePage(probe.maps, imageMaps)));

  const signals = omits(policy, 'signals') ? undefined : image.signals;
  const signalPart = signals ? signalSteps(pid, signals, freePage(probe.maps, imageMaps)) : [];
  steps.push(...signalPart);
  if (!omits(policy, 'thread-links')) steps.push(...linkSteps(pid, image.links, 'the main thread', true));

  // Threads (threads.ts): created by clone3 in the main thread, with every
  // signal blocked (they inherit the main thread's mask) and, under the
  // ptrace and popf restorers, the main thread's xstate already in place
  // (they start with a copy of it).
  const threaded = image.threads.length > 0;
  const xstateSetEarlier = threaded && (policy.restorer ?? 'ptrace') !== 'sigreturn' && !omits(policy, 'xstate');
  if (threaded) {
    if (signals && signalPart.length === 0)
      steps.push({
        op: { op: 'SETSIGMASK', pid, mask: ALL_BLOCKABLE },
        why: 'block every signal before the threads are created: they start with this mask, and nothing is delivered to a half-restored process',
      });
    if (xstateSetEarlier)
      steps.push(xstateStep(image, pid, 'FPU/SSE/AVX state (xstate) of the main thread, before the threads are created: each starts with a copy'));
    steps.push(...threadCreationSteps(pid, image, policy, freePage(probe.maps, imageMaps)));
  }

  // Timers (timers.ts) once the threads exist — a SIGEV_THREAD_ID timer
  // names one — and every signal is blocked: one that fires while the rest
  // of the plan runs waits in the queue until the image's mask is set.
  if (!omits(policy, 'timers')) {
    const fdsNow = [...openFds, ...userfaultfds.map((u) => u.fd), ...eventFds.eventfds.map((e) => e.fd), ...eventFds.signalfds.map((x) => x.fd)];
    steps.push(...timerSteps(pid, image.process.pid, image.timers, fdsNow, freePage(probe.maps, imageMaps)));
  }

  steps.push(...registerSteps(image, probe, imageMaps, policy, { xstateSetEarlier }));
  for (const t of image.threads) steps.push(...threadRegisterSteps(t, probe, imageMaps, policy));

  // Addresses before control: DR7 enables a breakpoint only once its address is in place.
  if (!omits(policy, 'debugregs')) {
    for (const name of DEBUG_REG_NAMES) {
      const index = Number(name.slice(2));
      steps.push({ op: { op: 'POKEUSER', pid, offset: debugRegOffset(index), value: image.debugRegs[name] }, why: `debug register ${name.toUpperCase()}` });
    }
    for (const t of image.threads) steps.push(...debugRegSteps(t.tid, t.debugRegs, `thread ${t.tid}`));
  }

  // Nothing after this returns a task to user mode before it resumes.
  if (signals) steps.push(finalMaskStep(pid, signals));
  const last = fixup?.lastStage;
  if (last && !omits(policy, 'rseq')) {
    const value = Buffer.alloc(8);
    value.writeBigUInt64LE(last.value);
    steps.push({
      op: { op: 'WRITE_MEM', pid, address: last.address, data: value },
      why: `rseq_cs ${hex(last.value)} written back last: the kernel cleared it while the plan ran`,
    });
  }
  steps.push(...threadFinalSteps(threadFixups, policy));
  return steps;
}
