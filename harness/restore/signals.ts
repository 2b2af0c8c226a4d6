/**
 * Signal state across a checkpoint: dispositions, the blocked mask, the
 * alternate signal stack, and the pending queues (per-thread and shared,
 * real-time entries with their values, in delivery order).
 *
 * Dispositions and the alternate stack are only visible from inside the
 * task, so they are read with injected rt_sigaction/sigaltstack calls into
 * a scratch page mapped for the purpose and unmapped again. The queues come
 * from PTRACE_PEEKSIGINFO, the mask from PTRACE_GETSIGMASK.
 *
 * On restore the order matters: every signal is blocked (PTRACE_SETSIGMASK,
 * which does not run the task) before the pending entries are queued again,
 * so none is delivered to a half-restored process; the image's mask is set
 * last, when nothing will return the task to user mode before it resumes.
 */
import type { AgentClient } from '../agent/client.ts';
import type { AgentOp } from '../agent/ops.ts';
import { AgentError } from '../errors.ts';
import { hex } from '../x86/registers.ts';
import type { AltStack, SigAction, SignalState } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import { ScratchLayout, withScratchPage } from './scratch.ts';
import type { Mapping } from './proc-maps.ts';

export const NSIG = 64;
const SIGKILL = 9;
const SIGSTOP = 19;
export const SIG_DFL = 0n;
export const SIG_IGN = 1n;
export const SIGINFO_BYTES = 128;
/** Signals whose disposition can be read and set (not SIGKILL, not SIGSTOP). */
export const SETTABLE_SIGNALS = Array.from({ length: NSIG }, (_, i) => i + 1).filter((s) => s !== SIGKILL && s !== SIGSTOP);
/** The kernel never blocks these, whatever a mask says. */
export const UNBLOCKABLE = (1n << BigInt(SIGKILL - 1)) | (1n << BigInt(SIGSTOP - 1));
export const ALL_BLOCKABLE = ((1n << 64n) - 1n) & ~UNBLOCKABLE;

/** SA_* bits the x86-64 kernel knows (uapi asm-generic/signal-defs.h, asm/signal.h). */
export const SA_KNOWN =
  0x1n /* NOCLDSTOP */ |
  0x2n /* NOCLDWAIT */ |
  0x4n /* SIGINFO */ |
  0x400n /* UNSUPPORTED */ |
  0x800n /* EXPOSE_TAGBITS */ |
  0x04000000n /* RESTORER */ |
  0x08000000n /* ONSTACK */ |
  0x10000000n /* RESTART */ |
  0x40000000n /* NODEFER */ |
  0x80000000n; /* RESETHAND */
export const SA_RESTORER = 0x04000000n;
export const SS_ONSTACK = 1;
export const SS_DISABLE = 2;
export const SS_AUTODISARM = 1 << 31;

const NR = { rt_sigaction: 13, rt_sigqueueinfo: 129, sigaltstack: 131, rt_tgsigqueueinfo: 297 } as const;
const SIGACTION_BYTES = 32;
const STACK_T_BYTES = 24;
const SIGSET_BYTES = 8n;

export function encodeSigAction(a: Omit<SigAction, 'signo'>): Buffer {
  const b = Buffer.alloc(SIGACTION_BYTES);
  b.writeBigUInt64LE(a.handler, 0);
  b.writeBigUInt64LE(a.flags, 8);
  b.writeBigUInt64LE(a.restorer, 16);
  b.writeBigUInt64LE(a.mask, 24);
  return b;
}

export function decodeSigAction(signo: number, b: Buffer): SigAction {
  return { signo, handler: b.readBigUInt64LE(0), flags: b.readBigUInt64LE(8), restorer: b.readBigUInt64LE(16), mask: b.readBigUInt64LE(24) };
}

export function encodeAltStack(s: AltStack): Buffer {
  const b = Buffer.alloc(STACK_T_BYTES);
  b.writeBigUInt64LE(s.sp, 0);
  b.writeInt32LE(s.flags | 0, 8);
  b.writeBigUInt64LE(s.size, 16);
  return b;
}

/** The signal a siginfo record is for (si_signo, its first field). */
export const siginfoSigno = (info: Buffer): number => info.readInt32LE(0);

const isDefault = (a: SigAction): boolean => a.handler === SIG_DFL && a.flags === 0n && a.mask === 0n;

/**
 * Reads a stopped task's dispositions and alternate stack; `blocked` is its
 * mask as the caller read it before blocking every signal (checkpoint.ts:
 * a signal arriving while calls are injected — a timer, say — then waits
 * in the queue, and the queues are read last, with capturePending). The
 * task is left as it was (the scratch page is unmapped).
 */
export async function captureSignals(agent: AgentClient, pid: number, blocked: bigint): Promise<Omit<SignalState, 'pending'>> {
  return withScratchPage(agent, pid, async (scratch) => {
    const ops: AgentOp[] = SETTABLE_SIGNALS.flatMap((signo): AgentOp[] => [
      { op: 'INJECT_SYSCALL', pid, nr: NR.rt_sigaction, args: [BigInt(signo), 0n, scratch, SIGSET_BYTES] },
      { op: 'READ_MEM', pid, address: scratch, length: SIGACTION_BYTES },
    ]);
    ops.push({ op: 'INJECT_SYSCALL', pid, nr: NR.sigaltstack, args: [0n, scratch] }, { op: 'READ_MEM', pid, address: scratch, length: STACK_T_BYTES });
    const steps = await agent.batch(ops);
    const results = steps.map((s, i) => {
      if (!s.ok) throw new AgentError(`reading signal state of pid ${pid}: step ${i} failed: ${s.message}`, s.op.op, s.errno);
      if (s.op.op === 'INJECT_SYSCALL' && (s.result as bigint) !== 0n)
        throw new AgentError(`reading signal state of pid ${pid}: system call ${s.op.nr} returned ${s.result}`, s.op.op, Number(-(s.result as bigint)));
      return s.result;
    });
    const actions = SETTABLE_SIGNALS.map((signo, i) => decodeSigAction(signo, results[i * 2 + 1] as Buffer)).filter((a) => !isDefault(a));
    const ss = results.at(-1) as Buffer;
    const altstack = { sp: ss.readBigUInt64LE(0), flags: ss.readInt32LE(8), size: ss.readBigUInt64LE(16) };
    return { blocked, actions, altstack };
  });
}

/** The process's pending queues as seen from thread `pid`: its own, and the shared one. */
export async function capturePending(agent: AgentClient, pid: number): Promise<SignalState['pending']> {
  const thread = await agent.call({ op: 'PEEKSIGINFO', pid, shared: false });
  const shared = await agent.call({ op: 'PEEKSIGINFO', pid, shared: true });
  return { thread, shared };
}

/**
 * The plan steps that give the target the image's signal state, except the
 * final mask (finalMaskStep, the plan's last step). `scratch` is a free page
 * address for the structures the injected calls read.
 */
export function signalSteps(pid: number, state: SignalState, scratch: bigint): PlanStep[] {
  const pendingCount = state.pending.shared.length + state.pending.thread.length;
  // A fresh exec has default actions, no alternate stack and nothing pending: then there is nothing to inject.
  if (state.actions.length === 0 && (state.altstack.flags & SS_DISABLE) !== 0 && pendingCount === 0) return [];
  const steps: PlanStep[] = [
    { op: { op: 'SETSIGMASK', pid, mask: ALL_BLOCKABLE }, why: 'block every signal while the restore runs: nothing is delivered to a half-restored task' },
  ];
  const layout = new ScratchLayout(scratch);
  const at = (b: Buffer): bigint => layout.place(b);
  const calls: PlanStep[] = [];
  for (const a of state.actions) {
    calls.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.rt_sigaction, args: [BigInt(a.signo), at(encodeSigAction(a)), 0n, SIGSET_BYTES] },
      why: `disposition of signal ${a.signo}: handler ${hex(a.handler)}, flags ${hex(a.flags)}, mask ${hex(a.mask)}`,
      expect: 0n,
    });
  }
  const ss = { ...state.altstack, flags: state.altstack.flags & ~SS_ONSTACK };
  calls.push({
    op: { op: 'INJECT_SYSCALL', pid, nr: NR.sigaltstack, args: [at(encodeAltStack(ss)), 0n] },
    why: `alternate signal stack ${hex(ss.sp)} +${hex(ss.size)}, flags ${hex(BigInt(ss.flags >>> 0))}`,
    expect: 0n,
  });
  for (const info of state.pending.shared) {
    calls.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.rt_sigqueueinfo, args: [BigInt(pid), BigInt(siginfoSigno(info)), at(info)] },
      why: `queue signal ${siginfoSigno(info)} on the process (shared) queue again, with its siginfo`,
      expect: 0n,
    });
  }
  for (const info of state.pending.thread) {
    calls.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.rt_tgsigqueueinfo, args: [BigInt(pid), BigInt(pid), BigInt(siginfoSigno(info)), at(info)] },
      why: `queue signal ${siginfoSigno(info)} on the thread queue again, with its siginfo`,
      expect: 0n,
    });
  }
  return [...steps, ...layout.steps(pid, `${state.actions.length} sigaction(s), the stack_t and ${pendingCount} siginfo record(s)`, calls)];
}

export function finalMaskStep(pid: number, state: SignalState): PlanStep {
  return { op: { op: 'SETSIGMASK', pid, mask: state.blocked }, why: `blocked signals ${hex(state.blocked)}, set last: no injected call runs after it` };
}

/**
 * Checks a signal state against the image's mappings: handlers and restorers
 * in executable memory, an alternate stack in writable memory, siginfo
 * records for real signals. Returns a message naming the field, or undefined.
 */
export function signalStateProblem(state: SignalState, maps: readonly Mapping[]): { field: string; why: string } | undefined {
  const inMapping = (address: bigint, perm: 'x' | 'w'): boolean =>
    maps.some((m) => m.start <= address && address < m.end && m.perms[perm === 'x' ? 2 : 1] === perm);
  if ((state.blocked & UNBLOCKABLE) !== 0n) return { field: 'blocked', why: `${hex(state.blocked)} blocks SIGKILL or SIGSTOP, which no task can` };
  const seen = new Set<number>();
  for (const [i, a] of state.actions.entries()) {
    const f = `actions[${i}]`;
    if (!SETTABLE_SIGNALS.includes(a.signo)) return { field: `${f}.signo`, why: `${a.signo} is not a signal whose action can be set` };
    if (seen.has(a.signo)) return { field: `${f}.signo`, why: `signal ${a.signo} appears twice` };
    seen.add(a.signo);
    if ((a.flags & ~SA_KNOWN) !== 0n) return { field: `${f}.flags`, why: `${hex(a.flags)} has bits the kernel does not define` };
    if (a.handler > SIG_IGN && !inMapping(a.handler, 'x'))
      return { field: `${f}.handler`, why: `${hex(a.handler)} is not in an executable mapping of the image` };
    if ((a.flags & SA_RESTORER) !== 0n && !inMapping(a.restorer, 'x'))
      return { field: `${f}.restorer`, why: `${hex(a.restorer)} is not in an executable mapping of the image` };
    if ((a.mask & UNBLOCKABLE) !== 0n) return { field: `${f}.mask`, why: `${hex(a.mask)} blocks SIGKILL or SIGSTOP` };
  }
  const ss = state.altstack;
  const knownSs = SS_ONSTACK | SS_DISABLE | SS_AUTODISARM;
  if ((ss.flags & ~knownSs) !== 0) return { field: 'altstack.flags', why: `0x${(ss.flags >>> 0).toString(16)} has unknown bits` };
  if ((ss.flags & SS_DISABLE) === 0) {
    if (ss.size === 0n || ss.size > 1n << 30n) return { field: 'altstack.size', why: `${ss.size} is not a plausible stack size` };
    if (!inMapping(ss.sp, 'w') || !inMapping(ss.sp + ss.size - 1n, 'w'))
      return { field: 'altstack.sp', why: `${hex(ss.sp)} +${hex(ss.size)} is not in writable memory of the image` };
  }
  for (const [queue, list] of Object.entries(state.pending)) {
    if (list.length > 4096) return { field: `pending.${queue}`, why: `${list.length} entries, more than any RLIMIT_SIGPENDING allows here` };
    for (const [i, info] of list.entries()) {
      if (info.length !== SIGINFO_BYTES) return { field: `pending.${queue}[${i}]`, why: `${info.length} bytes, a siginfo is ${SIGINFO_BYTES}` };
      const signo = siginfoSigno(info);
      if (signo < 1 || signo > NSIG || signo === SIGKILL || signo === SIGSTOP)
        return { field: `pending.${queue}[${i}].si_signo`, why: `${signo} cannot be pending in a stopped, live task` };
    }
  }
  return undefined;
}

/** The JSON form in the image: numbers as hex strings, siginfo records as hex. */
export function signalsJson(s: SignalState): unknown {
  return {
    blocked: hex(s.blocked),
    actions: s.actions.map((a) => ({ signo: a.signo, handler: hex(a.handler), flags: hex(a.flags), restorer: hex(a.restorer), mask: hex(a.mask) })),
    altstack: { sp: hex(s.altstack.sp), flags: s.altstack.flags, size: hex(s.altstack.size) },
    pending: { thread: s.pending.thread.map((b) => b.toString('hex')), shared: s.pending.shared.map((b) => b.toString('hex')) },
  };
}
