/**
 * Threads across a checkpoint. The kernel keeps per thread what a
 * single-threaded restore sets once: registers, xstate, debug registers,
 * the rseq registration, the blocked mask, the alternate signal stack and a
 * pending queue of its own — and two addresses the C library hands it at
 * thread start, which a restored thread needs to behave: clear_child_tid
 * (set_tid_address, CLONE_CHILD_CLEARTID: the word the kernel zeroes and
 * wakes when the thread exits, which pthread_join waits on) and the robust
 * futex list (set_robust_list: the mutexes the kernel marks owner-dead when
 * the thread dies holding them).
 *
 * The image keeps the main thread's state where a single-threaded image has
 * it (regs.json, xstate.bin, ...) plus its two addresses, and every other
 * thread in threads.json (one xstate entry each), ascending by tid.
 *
 * Capture: clear_child_tid and the robust list can only be read from inside
 * the thread (prctl(PR_GET_TID_ADDRESS), get_robust_list(0, ...)), the
 * alternate stack too (sigaltstack): injected calls, into a scratch page.
 *
 * Restore: the plan creates each thread in the fresh target with clone3
 * injected into the main thread — CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM,
 * set_tid = the checkpointed tid, CLONE_CHILD_CLEARTID with the thread's
 * clear_child_tid — in ascending tid order. The agent traces the new thread
 * (PTRACE_O_TRACECLONE) and leaves it in its first stop, before any
 * instruction of its own; the calls only the thread itself can make (rseq,
 * set_robust_list, sigaltstack, rt_tgsigqueueinfo of a signal sent by
 * tgkill) are then injected into it, and the ptrace-only state (registers,
 * xstate, debug registers, mask) set on it by tid. The main thread blocks
 * every signal first, so the threads are created with everything blocked and
 * nothing is delivered to a half-restored process; their own masks are set
 * last. Every tid is known when the plan is compiled, which is why threads
 * always get their checkpointed tids (set_tid), also in a restore under a
 * new pid.
 */
import type { AgentClient } from '../agent/client.ts';
import type { AgentOp } from '../agent/ops.ts';
import { AgentError, ImageRejectedError } from '../errors.ts';
import { NT_X86_XSTATE, USER_REGS_FIELDS, debugRegOffset, hex } from '../x86/registers.ts';
import {
  DEBUG_REG_NAMES,
  threadXstateEntry,
  type AltStack,
  type CheckpointImage,
  type DebugRegs,
  type MemoryRegion,
  type ThreadLinks,
  type ThreadState,
} from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import { ScratchLayout, withScratchPage } from './scratch.ts';
import { assertPolicyAdmits, omits, type RestorePolicy } from './policy.ts';
import { applyRseqFixup, type RseqFixup } from './rseq.ts';
import { ALL_BLOCKABLE, encodeAltStack, siginfoSigno, SS_DISABLE, SS_ONSTACK } from './signals.ts';
import { rseqStep } from './syscall-steps.ts';

/** sizeof(struct robust_list_head) on x86-64. */
export const ROBUST_LIST_HEAD_BYTES = 24n;
/** A bound on threads per image: far above any workload here, far below what would make a plan absurd. */
export const MAX_THREADS = 1024;
export const MAX_TID = 4194304;

const NR = { sigaltstack: 131, prctl: 157, set_tid_address: 218, set_robust_list: 273, get_robust_list: 274, rt_tgsigqueueinfo: 297, clone3: 435 } as const;
const PR_GET_TID_ADDRESS = 40n;

/** clone3 flags (uapi linux/sched.h). */
export const CLONE = {
  VM: 0x100n,
  FS: 0x200n,
  FILES: 0x400n,
  SIGHAND: 0x800n,
  THREAD: 0x10000n,
  SYSVSEM: 0x40000n,
  CHILD_CLEARTID: 0x200000n,
} as const;
/** What pthread_create asks for, less what the plan does differently (TLS and the tid words come from the image). */
export const THREAD_CLONE_FLAGS = CLONE.VM | CLONE.FS | CLONE.FILES | CLONE.SIGHAND | CLONE.THREAD | CLONE.SYSVSEM;
/** struct clone_args up to set_tid_size (CLONE_ARGS_SIZE_VER1). */
const CLONE_ARGS_BYTES = 80;

/** The threads of a process other than the main one, ascending, from /proc/PID/task. */
export async function otherThreads(agent: AgentClient, pid: number): Promise<number[]> {
  const tids = (await agent.call({ op: 'LISTDIR', path: `/proc/${pid}/task` })).map(Number);
  if (!tids.includes(pid))
    throw new AgentError(`/proc/${pid}/task does not list the main thread ${pid} (has it exited before the others?)`, 'LISTDIR', undefined);
  return tids.filter((tid) => tid !== pid).sort((a, b) => a - b);
}

/**
 * Every thread's clear_child_tid and robust list head, and the alternate
 * stack of each thread in `others` (the main thread's is in its signal
 * state), read by calls injected into each thread, with a scratch page
 * mapped in the main one and unmapped again. Threads stopped inside an rseq
 * critical section must have rseq_cs parked by the caller.
 */
export async function captureLinks(
  agent: AgentClient,
  pid: number,
  others: readonly number[],
): Promise<{ main: ThreadLinks; others: Array<ThreadLinks & { altstack: AltStack }> }> {
  return withScratchPage(agent, pid, async (scratch) => {
    const perThread = (tid: number, altstack: boolean): AgentOp[] => [
      { op: 'INJECT_SYSCALL', pid: tid, nr: NR.prctl, args: [PR_GET_TID_ADDRESS, scratch] },
      { op: 'INJECT_SYSCALL', pid: tid, nr: NR.get_robust_list, args: [0n, scratch + 8n, scratch + 16n] },
      ...(altstack ? [{ op: 'INJECT_SYSCALL', pid: tid, nr: NR.sigaltstack, args: [0n, scratch + 32n] } as AgentOp] : []),
      { op: 'READ_MEM', pid, address: scratch, length: 56 },
    ];
    const tids = [pid, ...others];
    const steps = await agent.batch(tids.flatMap((tid) => perThread(tid, tid !== pid)));
    const results = steps.map((s, i) => {
      if (!s.ok) throw new AgentError(`reading the thread links of pid ${pid}: step ${i} failed: ${s.message}`, s.op.op, s.errno);
      if (s.op.op === 'INJECT_SYSCALL' && (s.result as bigint) !== 0n) {
        const what =
          s.op.nr === NR.prctl
            ? 'prctl(PR_GET_TID_ADDRESS) (needs CONFIG_CHECKPOINT_RESTORE)'
            : s.op.nr === NR.get_robust_list
              ? 'get_robust_list'
              : 'sigaltstack';
        throw new AgentError(
          `reading the thread links of pid ${pid}: ${what} in thread ${s.op.pid} returned ${s.result}`,
          s.op.op,
          Number(-(s.result as bigint)),
        );
      }
      return s.result;
    });
    const reads = results.filter((r): r is Buffer => Buffer.isBuffer(r));
    const decode = (b: Buffer): ThreadLinks & { altstack: AltStack } => {
      const length = b.readBigUInt64LE(16);
      if (length !== ROBUST_LIST_HEAD_BYTES)
        throw new AgentError(`get_robust_list reported a ${length}-byte head; x86-64 has ${ROBUST_LIST_HEAD_BYTES}`, 'INJECT_SYSCALL', undefined);
      return {
        clearChildTid: b.readBigUInt64LE(0),
        robustList: b.readBigUInt64LE(8),
        altstack: { sp: b.readBigUInt64LE(32), flags: b.readInt32LE(40), size: b.readBigUInt64LE(48) },
      };
    };
    const [main, ...rest] = reads.map(decode);
    return { main: { clearChildTid: main!.clearChildTid, robustList: main!.robustList }, others: rest };
  });
}

/** The JSON form of the threads section: numbers as hex strings, siginfo records as hex. */
export function threadsJson(image: Pick<CheckpointImage, 'links' | 'threads'>): unknown {
  const links = (l: ThreadLinks) => ({ clearChildTid: hex(l.clearChildTid), robustList: hex(l.robustList) });
  return {
    main: links(image.links),
    threads: image.threads.map((t) => ({
      tid: t.tid,
      regs: Object.fromEntries(USER_REGS_FIELDS.map((n) => [n, hex(t.regs[n])])),
      xstate: threadXstateEntry(t.tid),
      debugRegs: Object.fromEntries(DEBUG_REG_NAMES.map((n) => [n, hex(t.debugRegs[n])])),
      rseq: t.rseq && { area: hex(t.rseq.area), size: t.rseq.size, signature: hex(t.rseq.signature) },
      blocked: hex(t.blocked),
      altstack: { sp: hex(t.altstack.sp), flags: t.altstack.flags, size: hex(t.altstack.size) },
      pending: t.pending.map((b) => b.toString('hex')),
      ...links(t),
    })),
  };
}

/**
 * Checks a thread's two addresses against the image's memory: each 0, or
 * naturally aligned inside one writable dumped region (the kernel writes
 * both when the thread exits). A message naming the field, or undefined.
 */
export function linksProblem(links: ThreadLinks, regions: readonly MemoryRegion[]): { field: string; why: string } | undefined {
  const inWritable = (at: bigint, length: bigint): boolean => regions.some((r) => r.start <= at && at + length <= r.end && r.perms[1] === 'w');
  if (links.clearChildTid !== 0n) {
    if (links.clearChildTid % 4n !== 0n) return { field: 'clearChildTid', why: `${hex(links.clearChildTid)} is not 4-byte aligned (a futex word)` };
    if (!inWritable(links.clearChildTid, 4n))
      return { field: 'clearChildTid', why: `${hex(links.clearChildTid)} is not in a writable dumped region of the image` };
  }
  if (links.robustList !== 0n) {
    if (links.robustList % 8n !== 0n) return { field: 'robustList', why: `${hex(links.robustList)} is not 8-byte aligned` };
    if (!inWritable(links.robustList, ROBUST_LIST_HEAD_BYTES))
      return { field: 'robustList', why: `${hex(links.robustList)} +${ROBUST_LIST_HEAD_BYTES} is not in a writable dumped region of the image` };
  }
  return undefined;
}

/** A thread's rseq fixup, decided as for the main thread (rseq.ts) on its own registers and area. */
export interface ThreadFixup {
  thread: ThreadState;
  fixup?: RseqFixup;
}

/**
 * The rseq fixup (rseq.ts applyRseqFixup) of every thread other than the
 * main one, applied one after another to the same memory: each may clear
 * the rseq_cs word of its own area. Returns the image with that memory and
 * the fixed threads.
 */
export function applyThreadRseqFixups(image: CheckpointImage): { image: CheckpointImage; fixups: ThreadFixup[] } {
  let memory = image.memory;
  const fixups = image.threads.map((thread): ThreadFixup => {
    if (!thread.rseq) return { thread };
    const fixup = applyRseqFixup({ ...image, memory, regs: thread.regs, rseq: thread.rseq });
    memory = fixup.image.memory;
    return { thread: { ...thread, regs: fixup.image.regs }, fixup };
  });
  return { image: { ...image, memory, threads: fixups.map((f) => f.thread) }, fixups };
}

/** set_tid_address and set_robust_list, injected into `tid` itself (both act on the calling thread). */
export function linkSteps(tid: number, links: ThreadLinks, who: string, clearChildTidToo: boolean): PlanStep[] {
  const steps: PlanStep[] = [];
  if (clearChildTidToo && links.clearChildTid !== 0n) {
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid: tid, nr: NR.set_tid_address, args: [links.clearChildTid] },
      why: `clear_child_tid of ${who}: ${hex(links.clearChildTid)} (set_tid_address; it answers the caller's tid)`,
      expect: BigInt(tid),
    });
  }
  if (links.robustList !== 0n) {
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid: tid, nr: NR.set_robust_list, args: [links.robustList, ROBUST_LIST_HEAD_BYTES] },
      why: `robust futex list of ${who}: head ${hex(links.robustList)}`,
      expect: 0n,
    });
  }
  return steps;
}

/** The clone_args that create thread `t` with its own tid and clear_child_tid; `setTidAt` is where the tid array is. */
export function cloneArgs(t: ThreadState, setTidAt: bigint, withClearTid: boolean): { args: Buffer; flags: bigint } {
  const clearTid = withClearTid && t.clearChildTid !== 0n;
  const flags = THREAD_CLONE_FLAGS | (clearTid ? CLONE.CHILD_CLEARTID : 0n);
  const args = Buffer.alloc(CLONE_ARGS_BYTES);
  args.writeBigUInt64LE(flags, 0);
  args.writeBigUInt64LE(clearTid ? t.clearChildTid : 0n, 16); // child_tid
  // exit_signal 0 (a thread), stack 0 (it never runs on the injecting thread's stack: its registers are set before it runs), no TLS flag.
  args.writeBigUInt64LE(setTidAt, 64); // set_tid
  args.writeBigUInt64LE(1n, 72); // set_tid_size
  return { args, flags };
}

/**
 * The steps that create every thread of the image in the fresh target
 * (`pid` is its main thread) and inject what only the thread itself can
 * set: rseq registration, robust list, alternate stack, its pending queue.
 * `scratch` is a free page address for clone_args and the structures the
 * injected calls read; it is unmapped again at the end.
 */
export function threadCreationSteps(pid: number, image: CheckpointImage, policy: RestorePolicy, scratch: bigint): PlanStep[] {
  if (image.threads.length === 0) return [];
  const links = !omits(policy, 'thread-links');
  const signals = !omits(policy, 'signals');
  const layout = new ScratchLayout(scratch);
  const at = (b: Buffer): bigint => layout.place(b);
  const calls: PlanStep[] = [];
  for (const t of image.threads) {
    const tidBytes = Buffer.alloc(8);
    tidBytes.writeInt32LE(t.tid, 0);
    const setTidAt = at(tidBytes);
    const { args, flags } = cloneArgs(t, setTidAt, links);
    calls.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.clone3, args: [at(args), BigInt(CLONE_ARGS_BYTES)] },
      why: `create thread ${t.tid}: clone3 flags ${hex(flags)}, set_tid ${t.tid}${(flags & CLONE.CHILD_CLEARTID) !== 0n ? `, clear_child_tid ${hex(t.clearChildTid)}` : ''}; traced, it waits in its first stop`,
      expect: BigInt(t.tid),
    });
    const who = `thread ${t.tid}`;
    if (t.rseq && !omits(policy, 'rseq'))
      calls.push(rseqStep(t.tid, t.rseq, `register rseq of ${who}: area ${hex(t.rseq.area)}, ${t.rseq.size} bytes, signature ${hex(t.rseq.signature)}`));
    if (links) calls.push(...linkSteps(t.tid, t, who, false));
    if (signals && (t.altstack.flags & SS_DISABLE) === 0) {
      const ss = { ...t.altstack, flags: t.altstack.flags & ~SS_ONSTACK };
      calls.push({
        op: { op: 'INJECT_SYSCALL', pid: t.tid, nr: NR.sigaltstack, args: [at(encodeAltStack(ss)), 0n] },
        why: `alternate signal stack of ${who}: ${hex(ss.sp)} +${hex(ss.size)}`,
        expect: 0n,
      });
    }
    if (signals) {
      for (const info of t.pending) {
        // Injected into the thread itself: a siginfo with si_code >= 0 or SI_TKILL (kill, tgkill) may only be queued by its target.
        calls.push({
          op: { op: 'INJECT_SYSCALL', pid: t.tid, nr: NR.rt_tgsigqueueinfo, args: [BigInt(pid), BigInt(t.tid), BigInt(siginfoSigno(info)), at(info)] },
          why: `queue signal ${siginfoSigno(info)} on the queue of ${who} again, with its siginfo`,
          expect: 0n,
        });
      }
    }
  }
  return layout.steps(pid, `${image.threads.length} clone_args with set_tid arrays, stack_t and siginfo records`, calls);
}

/** DR0-3, DR6, then DR7 of one task: DR7 enables a breakpoint only once its address is in place. */
export function debugRegSteps(tid: number, dr: DebugRegs, who: string): PlanStep[] {
  return DEBUG_REG_NAMES.map((name) => ({
    op: { op: 'POKEUSER', pid: tid, offset: debugRegOffset(Number(name.slice(2))), value: dr[name] },
    why: `debug register ${name.toUpperCase()} of ${who}`,
  }));
}

/** The mask a thread is created with under `policy`: everything blocked while the restore runs, or (signals omitted) the fresh main thread's none. */
export function creationMask(policy: RestorePolicy): bigint {
  return omits(policy, 'signals') ? 0n : ALL_BLOCKABLE;
}

/** The last steps for each thread: its own mask (nothing runs it after this) and, for a NO_RESTART section, rseq_cs written back. */
export function threadFinalSteps(fixups: readonly ThreadFixup[], policy: RestorePolicy): PlanStep[] {
  const steps: PlanStep[] = [];
  if (!omits(policy, 'signals') && !omits(policy, 'thread-masks')) {
    for (const { thread: t } of fixups)
      steps.push({ op: { op: 'SETSIGMASK', pid: t.tid, mask: t.blocked }, why: `blocked signals of thread ${t.tid}: ${hex(t.blocked)}, set last` });
  }
  if (!omits(policy, 'rseq')) {
    for (const { thread: t, fixup } of fixups) {
      const last = fixup?.lastStage;
      if (!last) continue;
      const value = Buffer.alloc(8);
      value.writeBigUInt64LE(last.value);
      steps.push({
        op: { op: 'WRITE_MEM', pid: t.tid, address: last.address, data: value },
        why: `rseq_cs ${hex(last.value)} of thread ${t.tid} written back last: the kernel cleared it while the plan ran`,
      });
    }
  }
  return steps;
}

/** SETREGSET of a thread's xstate, or none when omitted. */
export function threadXstateStep(t: ThreadState, policy: RestorePolicy): PlanStep[] {
  if (omits(policy, 'xstate') || omits(policy, 'thread-xstate')) return [];
  return [{ op: { op: 'SETREGSET', pid: t.tid, noteType: NT_X86_XSTATE, data: t.xstate }, why: `FPU/SSE/AVX state (xstate) of thread ${t.tid}` }];
}

/** rf=reject refuses RF in any thread's EFLAGS, before any guest operation, as for the main thread's. */
export function assertThreadsAdmitted(image: CheckpointImage, policy: RestorePolicy): void {
  image.threads.forEach((t, i) => {
    try {
      assertPolicyAdmits(t.regs.eflags, policy);
    } catch (error) {
      if (error instanceof ImageRejectedError)
        throw new ImageRejectedError(
          `thread ${t.tid}: ${hex(t.regs.eflags)} has RF (resume flag) set, which policy rf=reject refuses (the 2009 restart check)`,
          'threads.json',
          `threads[${i}].regs.eflags.RF`,
        );
      throw error;
    }
  });
}
