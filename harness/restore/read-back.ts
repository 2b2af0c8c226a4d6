/**
 * The read-back after a restore, as data: what the plan asked of each task
 * becomes a list of checks (compileReadBack, pure), their agent operations
 * run as one BATCH, and a pure comparison turns the answers into typed
 * differences. The main thread and every other thread go through the same
 * path; only what the image holds for a task differs (the process-wide
 * queue, pkeys and userfaultfd ranges belong to the main one).
 *
 * The kernel may sanitize what it is given (RF dropped by ptrace before 2009,
 * a stale rseq_cs cleared): a difference is its answer, reported, not an error.
 */
import type { AgentClient, BatchStep } from '../agent/client.ts';
import type { AgentOp, ResultOf } from '../agent/ops.ts';
import { describeOp } from '../agent/ops.ts';
import { AgentError } from '../errors.ts';
import { PROC_TEXT_MAX_BYTES } from './proc-text.ts';
import { NT_X86_XSTATE, USER_REGS_FIELDS, debugRegOffset, hex, type UserRegs } from '../x86/registers.ts';
import {
  DEBUG_REG_NAMES,
  type CheckpointImage,
  type DebugRegs,
  type EventfdState,
  type OpenFile,
  type RseqState,
  type SignalfdState,
  type TaskState,
  type TimerState,
} from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import { omits, type RestorePolicy } from './policy.ts';
import { parseMaps } from './proc-maps.ts';
import { rseqCsAddress, rseqCsPointer } from './rseq.ts';
import { siginfoSigno } from './signals.ts';
import { isTimerSignal, NO_TIMERS } from './timers.ts';
import { parseSmapsPkeys } from './pkeys.ts';
import { describeModes, describeUserfaultfd, parseSmapsRegistrations } from './userfaultfd.ts';
import { describeEventFd } from './event-fds.ts';

/** What a restore asked for and what the kernel holds instead, for people: `what` names the task when it is not the main one. */
export interface Difference {
  what: string;
  requested: string;
  accepted: string;
}

type DebugRegName = (typeof DEBUG_REG_NAMES)[number];

/** Which piece of state a read-back difference is about. */
export type DifferenceSubject =
  | { kind: 'register'; tid: number; name: string }
  | { kind: 'xstate'; tid: number }
  | { kind: 'debug-register'; tid: number; name: DebugRegName }
  | { kind: 'rseq'; tid: number }
  | { kind: 'rseq-cs'; tid: number }
  | { kind: 'signal-mask'; tid: number }
  | { kind: 'pending-signals'; tid: number; queue: 'thread' | 'shared' }
  | { kind: 'pkey'; start: bigint; end: bigint }
  | { kind: 'userfault-range'; start: bigint; end: bigint }
  | { kind: 'session'; pid: number }
  | { kind: 'descriptor'; fd: number }
  | { kind: 'userfaultfd'; fd: number };

export type ReadBackDifference = Difference & { subject: DifferenceSubject };

/** One task's restored state as the plan requested it: the read-back's expectation. */
interface TaskExpectation {
  tid: number;
  /** '' for the main thread, 'thread N ' otherwise: the prefix of `what` */
  who: string;
  regs?: UserRegs;
  xstate?: Buffer;
  debugRegs: DebugRegs;
  /** the image as this task sees it for rseq: its own registration */
  rseq?: { image: CheckpointImage; state: RseqState; omitted: boolean };
  blocked?: bigint;
  pending?: { thread: readonly Buffer[]; shared?: readonly Buffer[]; timers: TimerState };
}

/** A check: the agent operations it needs, and everything to judge their answers. */
export type ReadBackCheck =
  | { kind: 'registers'; task: TaskExpectation; ops: [AgentOp & { op: 'GETREGS' }] }
  | { kind: 'xstate'; task: TaskExpectation; ops: [AgentOp & { op: 'GETREGSET' }] }
  | { kind: 'debug-register'; task: TaskExpectation; name: DebugRegName; ops: [AgentOp & { op: 'PEEKUSER' }] }
  | { kind: 'rseq'; task: TaskExpectation; ops: [AgentOp & { op: 'RSEQ_CONFIG' }, AgentOp & { op: 'READ_MEM' }] }
  | { kind: 'signal-mask'; task: TaskExpectation; ops: [AgentOp & { op: 'GETSIGMASK' }] }
  | { kind: 'pending-signals'; task: TaskExpectation; queue: 'thread' | 'shared'; ops: [AgentOp & { op: 'PEEKSIGINFO' }] }
  | { kind: 'pkeys'; tagged: CheckpointImage['pkeys']['tagged']; ops: [AgentOp & { op: 'READ_FILE' }] }
  | { kind: 'userfault-ranges'; regions: CheckpointImage['regions']; ops: [AgentOp & { op: 'READ_FILE' }, AgentOp & { op: 'READ_FILE' }] };

/**
 * What each task should hold now. `image` is what the plan asked for (the
 * checkpoint with the rseq fixup, when applied); registers and xstate are
 * taken from the plan's own SETREGS/SETREGSET steps.
 */
export function expectations(pid: number, plan: readonly PlanStep[], image: CheckpointImage, policy: RestorePolicy): TaskExpectation[] {
  const timers = omits(policy, 'timers') ? NO_TIMERS : image.timers;
  const signals = !omits(policy, 'signals');
  const setRegs = (tid: number): UserRegs | undefined =>
    (plan.find((s) => s.op.op === 'SETREGS' && s.op.pid === tid)?.op as { regs: UserRegs } | undefined)?.regs;
  // The sigreturn restorer hands xstate to the kernel in the signal frame: it is
  // loaded when the task runs, so there is nothing to read back yet.
  const setXstate = (tid: number): Buffer | undefined => {
    const op = plan.find((s) => s.op.op === 'SETREGSET' && s.op.pid === tid && s.op.noteType === NT_X86_XSTATE)?.op as { data: Uint8Array } | undefined;
    return op ? Buffer.from(op.data) : undefined;
  };
  const rseq = (view: CheckpointImage) => (view.rseq ? { image: view, state: view.rseq, omitted: omits(policy, 'rseq') } : undefined);
  const main: TaskExpectation = {
    tid: pid,
    who: '',
    regs: setRegs(pid),
    xstate: setXstate(pid),
    debugRegs: image.debugRegs,
    rseq: rseq(image),
    ...(signals ? { blocked: image.signals.blocked, pending: { thread: image.signals.pending.thread, shared: image.signals.pending.shared, timers } } : {}),
  };
  const threads = image.threads.map((t): TaskExpectation => ({
    tid: t.tid,
    who: `thread ${t.tid} `,
    regs: setRegs(t.tid),
    xstate: setXstate(t.tid),
    debugRegs: t.debugRegs,
    rseq: rseq({ ...image, regs: t.regs, rseq: t.rseq }),
    ...(signals ? { ...(omits(policy, 'thread-masks') ? {} : { blocked: t.blocked }), pending: { thread: t.pending, timers } } : {}),
  }));
  return [main, ...threads];
}

/** The checks for every task, then the process-wide ones (pkeys, userfaultfd ranges). Pure. */
export function compileReadBack(pid: number, plan: readonly PlanStep[], image: CheckpointImage, policy: RestorePolicy): ReadBackCheck[] {
  const checks: ReadBackCheck[] = [];
  for (const task of expectations(pid, plan, image, policy)) {
    const tid = task.tid;
    if (task.regs) checks.push({ kind: 'registers', task, ops: [{ op: 'GETREGS', pid: tid }] });
    if (task.xstate) checks.push({ kind: 'xstate', task, ops: [{ op: 'GETREGSET', pid: tid, noteType: NT_X86_XSTATE, maxSize: task.xstate.length }] });
    for (const name of DEBUG_REG_NAMES)
      checks.push({ kind: 'debug-register', task, name, ops: [{ op: 'PEEKUSER', pid: tid, offset: debugRegOffset(Number(name.slice(2))) }] });
    if (task.rseq)
      checks.push({
        kind: 'rseq',
        task,
        ops: [
          { op: 'RSEQ_CONFIG', pid: tid },
          { op: 'READ_MEM', pid: tid, address: rseqCsAddress(task.rseq.state), length: 8 },
        ],
      });
    if (task.blocked !== undefined) checks.push({ kind: 'signal-mask', task, ops: [{ op: 'GETSIGMASK', pid: tid }] });
    if (task.pending) {
      checks.push({ kind: 'pending-signals', task, queue: 'thread', ops: [{ op: 'PEEKSIGINFO', pid: tid, shared: false }] });
      if (task.pending.shared) checks.push({ kind: 'pending-signals', task, queue: 'shared', ops: [{ op: 'PEEKSIGINFO', pid: tid, shared: true }] });
    }
  }
  const smaps = { op: 'READ_FILE', path: `/proc/${pid}/smaps`, maxSize: PROC_TEXT_MAX_BYTES } as const;
  if (!omits(policy, 'pkeys') && image.pkeys.tagged.length > 0) checks.push({ kind: 'pkeys', tagged: image.pkeys.tagged, ops: [smaps] });
  if (!omits(policy, 'userfaultfd') && (image.task.userfaultfds?.length ?? 0) > 0 && image.regions.some((r) => r.userfault)) {
    checks.push({
      kind: 'userfault-ranges',
      regions: image.regions,
      ops: [{ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: PROC_TEXT_MAX_BYTES }, smaps],
    });
  }
  return checks;
}

/** The answers, in the order of the checks' ops: every op must have succeeded (a read that fails is the agent's error, not a difference). */
export function answersOf(checks: readonly ReadBackCheck[], steps: readonly BatchStep[]): unknown[][] {
  const ops = checks.flatMap((c): AgentOp[] => c.ops);
  const failed = steps.find((s) => !s.ok) as (BatchStep & { ok: false }) | undefined;
  if (failed) throw new AgentError(`read-back ${describeOp(failed.op)}: ${failed.message}`, failed.op.op, failed.errno);
  if (steps.length !== ops.length) throw new AgentError(`read-back: the agent answered ${steps.length} of ${ops.length} operations`, 'BATCH', undefined);
  let at = 0;
  return checks.map((c) => c.ops.map(() => (steps[at++] as BatchStep & { ok: true }).result));
}

/** Every difference between the checks' expectations and the kernel's answers. Pure. */
export function compareReadBack(checks: readonly ReadBackCheck[], answers: readonly unknown[][]): ReadBackDifference[] {
  return checks.flatMap((check, i) => judge(check, answers[i]!));
}

function judge(check: ReadBackCheck, answer: readonly unknown[]): ReadBackDifference[] {
  const out: ReadBackDifference[] = [];
  const add = (subject: DifferenceSubject, what: string, requested: string, accepted: string): void => void out.push({ what, requested, accepted, subject });
  switch (check.kind) {
    case 'registers': {
      const { task } = check;
      const regs = answer[0] as ResultOf<AgentOp & { op: 'GETREGS' }>;
      for (const name of USER_REGS_FIELDS) {
        if (regs[name] !== task.regs![name]) add({ kind: 'register', tid: task.tid, name }, `${task.who}${name}`, hex(task.regs![name]), hex(regs[name]));
      }
      break;
    }
    case 'xstate': {
      const { task } = check;
      const wanted = task.xstate!;
      const got = answer[0] as Buffer;
      if (!got.equals(wanted))
        add(
          { kind: 'xstate', tid: task.tid },
          `${task.who}xstate`,
          `${wanted.length} bytes`,
          `${got.length} bytes, first difference at offset ${got.findIndex((b, i) => b !== wanted[i])}`,
        );
      break;
    }
    case 'debug-register': {
      const { task, name } = check;
      const value = answer[0] as bigint;
      if (value !== task.debugRegs[name]) add({ kind: 'debug-register', tid: task.tid, name }, `${task.who}${name}`, hex(task.debugRegs[name]), hex(value));
      break;
    }
    case 'rseq': {
      const { task } = check;
      const rseq = task.rseq!;
      const config = answer[0] as ResultOf<AgentOp & { op: 'RSEQ_CONFIG' }>;
      const describe = (area: bigint, size: number, signature: number): string =>
        area === 0n ? 'none' : `${hex(area)} size ${size} signature 0x${signature.toString(16)}`;
      const requested = rseq.omitted ? 'none' : describe(rseq.state.area, rseq.state.size, rseq.state.signature);
      const accepted = describe(config.area, config.size, config.signature);
      if (requested !== accepted) add({ kind: 'rseq', tid: task.tid }, `${task.who}rseq`, requested, accepted);
      // The rseq_cs word the kernel left in memory: it clears one it finds stale.
      const cs = (answer[1] as Buffer).readBigUInt64LE(0);
      const wanted = rseqCsPointer(rseq.image);
      if (cs !== wanted) add({ kind: 'rseq-cs', tid: task.tid }, `${task.who}rseq.rseq_cs`, hex(wanted), hex(cs));
      break;
    }
    case 'signal-mask': {
      const { task } = check;
      const blocked = answer[0] as bigint;
      if (blocked !== task.blocked) add({ kind: 'signal-mask', tid: task.tid }, `${task.who}signals.blocked`, hex(task.blocked!), hex(blocked));
      break;
    }
    case 'pending-signals': {
      const { task, queue } = check;
      const pending = task.pending!;
      const wanted = (queue === 'thread' ? pending.thread : pending.shared)!;
      const held = liveTimerSignalsDropped(answer[0] as Buffer[], wanted, pending.timers);
      if (held.length !== wanted.length || !held.every((b, i) => b.equals(wanted[i]!))) {
        const signos = (list: readonly Buffer[]): string => `[${list.map(siginfoSigno).join(' ')}]`;
        add(
          { kind: 'pending-signals', tid: task.tid, queue },
          `${task.who}signals.pending.${queue}`,
          signos(wanted),
          `${signos(held)}${held.length === wanted.length ? ' (siginfo contents differ)' : ''}`,
        );
      }
      break;
    }
    case 'pkeys': {
      // The allocation map shows nowhere: the plan's pkey_alloc results were checked step by step.
      const keys = parseSmapsPkeys((answer[0] as Buffer).toString('utf8'));
      for (const t of check.tagged) {
        if (keys.get(t.start) !== t.pkey)
          add({ kind: 'pkey', start: t.start, end: t.end }, `pkey ${hex(t.start)}-${hex(t.end)}`, String(t.pkey), String(keys.get(t.start) ?? 'no VMA there'));
      }
      break;
    }
    case 'userfault-ranges': {
      const maps = parseMaps((answer[0] as Buffer).toString('utf8'));
      const modes = parseSmapsRegistrations((answer[1] as Buffer).toString('utf8'));
      for (const r of check.regions) {
        if (!r.userfault) continue;
        const vma = maps.find((m) => m.start <= r.start && r.start < m.end);
        const mode = vma ? (modes.get(vma.start) ?? 0) : 0;
        if (mode !== r.userfault)
          add(
            { kind: 'userfault-range', start: r.start, end: r.end },
            `userfault ${hex(r.start)}-${hex(r.end)}`,
            describeModes(r.userfault),
            describeModes(mode),
          );
      }
      break;
    }
  }
  return out;
}

/**
 * A queue as read back, less what the restored timers sent after the
 * image's entries were queued (they come after them): a live timer's
 * signal is the restore working, not a difference.
 */
function liveTimerSignalsDropped(held: Buffer[], wanted: readonly Buffer[], timers: TimerState): Buffer[] {
  const head = held.slice(0, wanted.length);
  const rest = held.slice(wanted.length);
  return head.every((b, i) => b.equals(wanted[i]!)) ? [...head, ...rest.filter((b) => !isTimerSignal(b, timers))] : held;
}

/** Session, process group and every restored descriptor, as the kernel reports them now (`now`, from captureTask). Pure. */
export function compareTask(now: TaskState, pid: number, image: CheckpointImage): ReadBackDifference[] {
  const differences: ReadBackDifference[] = [];
  const session = (t: TaskState, p: number): string => `pgid ${t.pgid === p ? 'own' : t.pgid}, sid ${t.sid === p ? 'own' : t.sid}`;
  if (session(now, pid) !== session(image.task, image.process.pid))
    differences.push({ what: 'session', requested: session(image.task, image.process.pid), accepted: session(now, pid), subject: { kind: 'session', pid } });
  const describe = (f: OpenFile | undefined): string => (f ? `${f.path} flags 0o${f.flags.toString(8)} pos ${f.kind === 'file' ? f.pos : '-'}` : 'closed');
  for (const f of image.task.files) {
    const got = now.files.find((g) => g.fd === f.fd);
    if (describe(got) !== describe(f))
      differences.push({ what: `fd ${f.fd}`, requested: describe(f), accepted: describe(got), subject: { kind: 'descriptor', fd: f.fd } });
  }
  return differences;
}

/** Each userfaultfd's flags and features (the descriptors now, from captureTask). Pure. */
export function compareUserfaultfds(now: TaskState, image: CheckpointImage): ReadBackDifference[] {
  return (image.task.userfaultfds ?? []).flatMap((u) => {
    const got = now.userfaultfds?.find((g) => g.fd === u.fd);
    return describeUserfaultfd(got) === describeUserfaultfd(u)
      ? []
      : [
          {
            what: `userfaultfd fd ${u.fd}`,
            requested: describeUserfaultfd(u),
            accepted: describeUserfaultfd(got),
            subject: { kind: 'userfaultfd' as const, fd: u.fd },
          },
        ];
  });
}

/**
 * Each eventfd's counter and flags and each signalfd's mask and flags, as
 * the descriptors are now (`now`: event-fds.ts captureEventFds without its
 * probe, which would move the counter: the semaphore flag is not compared).
 * What the policy omits is not expected. Pure.
 */
export function compareEventFds(
  now: { eventfds: readonly EventfdState[]; signalfds: readonly SignalfdState[] },
  image: CheckpointImage,
  policy: RestorePolicy,
): ReadBackDifference[] {
  const expected = [...(omits(policy, 'eventfd') ? [] : (image.task.eventfds ?? [])), ...(omits(policy, 'signalfd') ? [] : (image.task.signalfds ?? []))];
  const got = [...now.eventfds, ...now.signalfds];
  return expected.flatMap((e) => {
    const there = got.find((g) => g.fd === e.fd);
    return describeEventFd(there) === describeEventFd(e)
      ? []
      : [{ what: `fd ${e.fd}`, requested: describeEventFd(e), accepted: describeEventFd(there), subject: { kind: 'descriptor' as const, fd: e.fd } }];
  });
}

/** Compiles the checks, runs them as one BATCH, and compares. */
export async function readBackBatch(
  agent: AgentClient,
  pid: number,
  plan: readonly PlanStep[],
  image: CheckpointImage,
  policy: RestorePolicy,
): Promise<ReadBackDifference[]> {
  const checks = compileReadBack(pid, plan, image, policy);
  const steps = await agent.batch(checks.flatMap((c): AgentOp[] => c.ops));
  return compareReadBack(checks, answersOf(checks, steps));
}
