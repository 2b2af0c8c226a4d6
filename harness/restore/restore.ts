/**
 * Restores a validated checkpoint image into a fresh instance of its binary:
 * policy gate (before anything touches the guest), spawn and probe the
 * target, compile the plan, run it as one BATCH, then read back what the
 * kernel accepted and report every difference from what was asked for.
 * A failed step kills the half-restored target and names the step.
 */
import type { AgentClient, BatchStep } from '../agent/client.ts';
import { describeOp } from '../agent/ops.ts';
import { AgentError, CrhError, RestoreStepError } from '../errors.ts';
import { NT_X86_XSTATE, USER_REGS_FIELDS, debugRegOffset, hex, type UserRegs } from '../x86/registers.ts';
import { DEBUG_REG_NAMES, type CheckpointImage, type OpenFile, type TaskState, type TimerState } from './image-model.ts';
import { compileRestorePlan, fixedImage, type PlanStep, type TargetProbe } from './plan.ts';
import { assertPolicyAdmits, omits, type RestorePolicy } from './policy.ts';
import { parseMaps, type Mapping } from './proc-maps.ts';
import { describeMissing, IncompatibleTargetError, missingDependencies, readTargetDependencies, vdsoFingerprint, vdsoMovable, xstateHeader, type PlatformDependencies } from './platform-dependencies.ts';
import { withFittedXstate } from './xstate-fit.ts';
import { mappedFiles, probeMappedFiles } from './mappings.ts';
import { rseqCsAddress, rseqCsPointer } from './rseq.ts';
import { siginfoSigno } from './signals.ts';
import { captureTask } from './files.ts';
import { assertThreadsAdmitted } from './threads.ts';
import { isTimerSignal, NO_TIMERS } from './timers.ts';
import { BOOT_ID_PATH } from './sleep-deadline.ts';
import { clockDecision, readTargetClocks, type ClockDecision } from './time-namespace.ts';
import { parseSmapsPkeys } from './pkeys.ts';
import { describeModes, describeUserfaultfd, parseSmapsRegistrations } from './userfaultfd.ts';
import { errnoName } from '../agent/errno.ts';

const EEXIST = 17;
/** Bound on a target's xstate regset read (the largest XSAVE layouts, AMX included, stay below 12 KiB). */
const XSTATE_MAX_BYTES = 16 * 1024;

export interface Difference {
  what: string;
  requested: string;
  accepted: string;
}

export interface RestoreResult {
  pid: number;
  plan: PlanStep[];
  /** what the kernel accepted that differs from the plan's request (it may sanitize) */
  differences: Difference[];
  /** dependencies the target lacks, restored anyway (dependencies: 'try'), or why they were not checked; [] when all were there */
  dependencyNotes: string[];
}

export interface RestoreOptions {
  policy: RestorePolicy;
  /** guest file the restored process writes its stdout/stderr to */
  stdoutPath: string;
  /**
   * Give the restored process the checkpointed pid (default true): what a
   * program sees through getpid() must not change across a restore. The
   * original must be gone (kill-and-restore); a pid in use is PidInUseError.
   * The other threads get their checkpointed tids either way (threads.ts):
   * a tid in use fails that thread's clone3 step.
   */
  samePid?: boolean;
  /**
   * refuse (default): a target lacking something the image says the process
   * depends on (a CPU feature, the vDSO, the rseq ABI: platform-dependencies.ts)
   * is refused before any plan step, naming it (IncompatibleTargetError).
   * try: restore anyway; what is missing comes back in `dependencyNotes`.
   */
  dependencies?: 'refuse' | 'try';
}

/** The checkpointed pid could not be had: another process holds it. */
export class PidInUseError extends CrhError {
  override readonly name = 'PidInUseError';
}

export async function restoreProcess(agent: AgentClient, image: CheckpointImage, options: RestoreOptions): Promise<RestoreResult> {
  assertPolicyAdmits(image.regs.eflags, options.policy);
  assertThreadsAdmitted(image, options.policy);
  const { pid } = await spawnTarget(agent, image, options);
  try {
    return await restoreInto(agent, image, pid, options.policy, undefined, options.dependencies ?? 'refuse');
  } catch (error) {
    // No half-restored process is left behind.
    const killed = await agent.call({ op: 'KILL', pid }).then(
      () => `pid ${pid} killed`,
      (e: unknown) => `pid ${pid} could not be killed: ${(e as Error).message}`,
    );
    if (error instanceof CrhError) error.details.target = killed;
    throw error;
  }
}

/**
 * Restores `image` into `pid`, a process stopped under the agent that the
 * image's binary was exec'd into (or a copy of one: a tree's stub, whose
 * `tree` facts the plan takes into account): probe, compile the plan, run
 * it, read back. The caller owns the process, and kills it on failure.
 */
export async function restoreInto(agent: AgentClient, checkpointed: CheckpointImage, pid: number, policy: RestorePolicy, tree?: TargetProbe['tree'], dependencies: 'refuse' | 'try' = 'refuse'): Promise<RestoreResult> {
  const regs = await agent.call({ op: 'GETREGS', pid });
  const maps = parseMaps((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: 1 << 20 })).toString('utf8'));
  const { notes: dependencyNotes, target } = await checkTargetDependencies(agent, pid, maps, checkpointed, dependencies, !omits(policy, 'vdso'));
  // Another CPU model's XSAVE layout has another size, and the kernel takes only its own (xstate-fit.ts).
  const targetXstate = await agent.call({ op: 'GETREGSET', pid, noteType: NT_X86_XSTATE, maxSize: XSTATE_MAX_BYTES });
  const fitted = withFittedXstate(checkpointed, targetXstate.length, xstateHeader(targetXstate).xcr0);
  if (fitted.note) dependencyNotes.push(fitted.note);
  const image = fitted.image;
  const fds = (await agent.call({ op: 'LISTDIR', path: `/proc/${pid}/fd` })).map(Number);
  const files = await probeMappedFiles(agent, pid, mappedFiles(image.regions));
  const bootId = image.sleep ? (await agent.call({ op: 'READ_FILE', path: BOOT_ID_PATH, maxSize: 64 })).toString('latin1').trim() : undefined;
  // Last before the plan: the time namespace's offsets count from this read (time-namespace.ts).
  const clocks = await clocksFor(agent, pid, image, policy, dependencies);
  if (clocks.note) dependencyNotes.push(clocks.note);
  const plan = compileRestorePlan(image, { pid, regs, maps, fds, files, bootId, ...(tree ? { tree } : {}), ...(target ? { dependencies: target } : {}), ...(clocks.offsets ? { clockOffsets: clocks.offsets } : {}) }, policy);
  const steps = await agent.batch(plan.map((s) => s.op));
  checkSteps(plan, steps);
  const requested = fixedImage(image, policy).image;
  const differences = [...(await readBack(agent, pid, plan, requested, policy)), ...(await readBackThreads(agent, plan, requested, policy))];
  return { pid, plan, differences, dependencyNotes };
}

/**
 * The image's platform dependencies against the fresh target's
 * (platform-dependencies.ts): refused by name, or — under 'try' — returned
 * as notes for the verdict to say what the restore went on without.
 */
async function checkTargetDependencies(agent: AgentClient, pid: number, maps: Mapping[], image: CheckpointImage, mode: 'refuse' | 'try', redirectVdso: boolean): Promise<{ notes: string[]; target?: PlatformDependencies }> {
  if (!image.dependencies) return { notes: ['the image records no platform dependencies (format 9): CPU features, vDSO and rseq ABI not checked'] };
  const target = await readTargetDependencies(agent, pid, maps);
  const notes = redirectVdso && vdsoMovable(image.dependencies, target) ? [`vDSO redirected: the target kernel's vDSO has other offsets (${vdsoFingerprint(image.dependencies)} → ${vdsoFingerprint(target)}); the old ones jump to the new code`] : [];
  const missing = missingDependencies(image.dependencies, target, image.rseq?.area, { redirectVdso });
  if (missing.length === 0) return { notes, target };
  if (mode === 'refuse') throw new IncompatibleTargetError(missing);
  return { notes: [...notes, `restored anyway, the target lacks: ${describeMissing(missing)}`], target };
}

/**
 * The target's clocks against the image's (time-namespace.ts): offsets for
 * a time namespace when the restore is in another boot; a kernel without
 * time namespaces refused by name, or — under 'try' — a note.
 */
async function clocksFor(agent: AgentClient, pid: number, image: CheckpointImage, policy: RestorePolicy, mode: 'refuse' | 'try'): Promise<ClockDecision> {
  const decision = clockDecision(image.clocks, await readTargetClocks(agent, pid), omits(policy, 'timens'));
  if (!decision.missing) return decision;
  if (mode === 'refuse') throw new IncompatibleTargetError([decision.missing]);
  return { note: `restored anyway, the target lacks: ${describeMissing([decision.missing])}` };
}

async function spawnTarget(agent: AgentClient, image: CheckpointImage, options: RestoreOptions): Promise<{ pid: number }> {
  const { process } = image;
  const pid = options.samePid === false ? undefined : process.pid;
  try {
    return await agent.call({ op: 'SPAWN', path: process.binary, argv: process.argv, envp: process.envp, stdoutPath: options.stdoutPath, noAslr: process.noAslr, pid });
  } catch (error) {
    if (error instanceof AgentError && error.errno === EEXIST) {
      throw new PidInUseError(`cannot restore as pid ${process.pid}, the pid the checkpoint was taken with: another process has it (is the original still alive?)`, { agent: error.message });
    }
    throw error;
  }
}

/** Throws RestoreStepError for the first step that failed or returned other than its `expect`. */
export function checkSteps(plan: PlanStep[], steps: BatchStep[]): void {
  steps.forEach((step, i) => {
    const planned = plan[i]!;
    if (!step.ok) throw new RestoreStepError(`${step.message} (${errnoName(step.errno)})`, i, `${describeOp(planned.op)}: ${planned.why}`);
    if (planned.expect !== undefined && step.result !== BigInt.asIntN(64, planned.expect)) {
      const got = step.result as bigint;
      const detail = got < 0n && got > -4096n ? errnoName(Number(-got)) : hex(BigInt.asUintN(64, got));
      throw new RestoreStepError(`returned ${detail}, expected ${hex(planned.expect)}`, i, `${describeOp(planned.op)}: ${planned.why}`);
    }
  });
  if (steps.length !== plan.length) throw new RestoreStepError('the agent stopped the batch early without an error', steps.length, 'batch');
}

/** `image` is what the plan asked for: the checkpoint with the rseq fixup, when applied. */
async function readBack(agent: AgentClient, pid: number, plan: PlanStep[], image: CheckpointImage, policy: RestorePolicy): Promise<Difference[]> {
  const differences: Difference[] = [];
  const setRegs = plan.find((s) => s.op.op === 'SETREGS' && s.op.pid === pid)!.op as { regs: UserRegs };
  const regs = await agent.call({ op: 'GETREGS', pid });
  for (const name of USER_REGS_FIELDS) {
    if (regs[name] !== setRegs.regs[name]) differences.push({ what: name, requested: hex(setRegs.regs[name]), accepted: hex(regs[name]) });
  }
  // The sigreturn restorer hands xstate to the kernel in the signal frame: it is
  // loaded when the task runs, so there is nothing to read back yet.
  const setXstate = plan.some((s) => s.op.op === 'SETREGSET' && s.op.pid === pid && s.op.noteType === NT_X86_XSTATE);
  const xstate = setXstate ? await agent.call({ op: 'GETREGSET', pid, noteType: NT_X86_XSTATE, maxSize: image.xstate.length }) : image.xstate;
  if (!xstate.equals(image.xstate)) {
    const at = xstate.findIndex((b, i) => b !== image.xstate[i]);
    differences.push({ what: 'xstate', requested: `${image.xstate.length} bytes`, accepted: `${xstate.length} bytes, first difference at offset ${at}` });
  }
  for (const name of DEBUG_REG_NAMES) {
    const value = await agent.call({ op: 'PEEKUSER', pid, offset: debugRegOffset(Number(name.slice(2))) });
    if (value !== image.debugRegs[name]) differences.push({ what: name, requested: hex(image.debugRegs[name]), accepted: hex(value) });
  }
  differences.push(...(await readBackRseq(agent, pid, image, policy)));
  const timers = omits(policy, 'timers') ? NO_TIMERS : image.timers;
  if (!omits(policy, 'signals')) differences.push(...(await readBackSignals(agent, pid, image, timers)));
  const files = !omits(policy, 'files');
  const userfaultfds = !omits(policy, 'userfaultfd') && (image.task.userfaultfds?.length ?? 0) > 0;
  // One look at the descriptor table serves both.
  // A restored tree's pipes are read back by tree-restore.ts.
  const task = files || userfaultfds ? await captureTask(agent, pid, { skipPipes: true }) : undefined;
  if (task && files) differences.push(...readBackTask(task, pid, image));
  if (task && userfaultfds) differences.push(...(await readBackUserfaultfds(agent, pid, image, task)));
  if (!omits(policy, 'pkeys') && image.pkeys.tagged.length > 0) differences.push(...(await readBackPkeys(agent, pid, image)));
  return differences;
}

/** Each tagged mapping's protection key, as smaps shows it now. (The allocation map shows nowhere: the plan's pkey_alloc results were checked step by step.) */
async function readBackPkeys(agent: AgentClient, pid: number, image: CheckpointImage): Promise<Difference[]> {
  const keys = parseSmapsPkeys((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/smaps`, maxSize: 4 << 20 })).toString('utf8'));
  return image.pkeys.tagged
    .filter((t) => keys.get(t.start) !== t.pkey)
    .map((t) => ({ what: `pkey ${hex(t.start)}-${hex(t.end)}`, requested: String(t.pkey), accepted: String(keys.get(t.start) ?? 'no VMA there') }));
}

/**
 * The blocked mask and the pending queues the kernel holds. (Dispositions
 * and the alternate stack can only be read by running code in the task;
 * the workloads check those themselves.)
 */
async function readBackSignals(agent: AgentClient, pid: number, image: CheckpointImage, timers: TimerState): Promise<Difference[]> {
  const differences: Difference[] = [];
  const blocked = await agent.call({ op: 'GETSIGMASK', pid });
  if (blocked !== image.signals.blocked) differences.push({ what: 'signals.blocked', requested: hex(image.signals.blocked), accepted: hex(blocked) });
  for (const queue of ['thread', 'shared'] as const) {
    const wanted = image.signals.pending[queue];
    const held = liveTimerSignalsDropped(await agent.call({ op: 'PEEKSIGINFO', pid, shared: queue === 'shared' }), wanted, timers);
    const same = held.length === wanted.length && held.every((b, i) => b.equals(wanted[i]!));
    if (!same) {
      const signos = (list: Buffer[]): string => `[${list.map(siginfoSigno).join(' ')}]`;
      differences.push({ what: `signals.pending.${queue}`, requested: signos(wanted), accepted: `${signos(held)}${held.length === wanted.length ? ' (siginfo contents differ)' : ''}` });
    }
  }
  return differences;
}

/** Session, process group and every restored descriptor, as the kernel reports them now (`now`). */
function readBackTask(now: TaskState, pid: number, image: CheckpointImage): Difference[] {
  const differences: Difference[] = [];
  const session = (t: TaskState, p: number): string => `pgid ${t.pgid === p ? 'own' : t.pgid}, sid ${t.sid === p ? 'own' : t.sid}`;
  if (session(now, pid) !== session(image.task, image.process.pid)) differences.push({ what: 'session', requested: session(image.task, image.process.pid), accepted: session(now, pid) });
  const describe = (f: OpenFile | undefined): string => (f ? `${f.path} flags 0o${f.flags.toString(8)} pos ${f.kind === 'file' ? f.pos : '-'}` : 'closed');
  for (const f of image.task.files) {
    const got = now.files.find((g) => g.fd === f.fd);
    if (describe(got) !== describe(f)) differences.push({ what: `fd ${f.fd}`, requested: describe(f), accepted: describe(got) });
  }
  return differences;
}

/** Each userfaultfd (flags, features: from `task`, the descriptors now) and each registered range's mode, as the kernel reports them now. */
async function readBackUserfaultfds(agent: AgentClient, pid: number, image: CheckpointImage, task: TaskState): Promise<Difference[]> {
  const differences: Difference[] = [];
  for (const u of image.task.userfaultfds ?? []) {
    const got = task.userfaultfds?.find((g) => g.fd === u.fd);
    if (describeUserfaultfd(got) !== describeUserfaultfd(u)) differences.push({ what: `userfaultfd fd ${u.fd}`, requested: describeUserfaultfd(u), accepted: describeUserfaultfd(got) });
  }
  const maps = parseMaps((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: 1 << 20 })).toString('utf8'));
  const modes = parseSmapsRegistrations((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/smaps`, maxSize: 4 << 20 })).toString('utf8'));
  for (const r of image.regions) {
    if (!r.userfault) continue;
    const vma = maps.find((m) => m.start <= r.start && r.start < m.end);
    const mode = vma ? (modes.get(vma.start) ?? 0) : 0;
    if (mode !== r.userfault) differences.push({ what: `userfault ${hex(r.start)}-${hex(r.end)}`, requested: describeModes(r.userfault), accepted: describeModes(mode) });
  }
  return differences;
}

/** The registration the kernel holds, and the rseq_cs it left in memory (it clears one it finds stale). */
async function readBackRseq(agent: AgentClient, pid: number, image: CheckpointImage, policy: RestorePolicy): Promise<Difference[]> {
  if (!image.rseq) return [];
  const differences: Difference[] = [];
  const config = await agent.call({ op: 'RSEQ_CONFIG', pid });
  const describe = (area: bigint, size: number, signature: number): string => (area === 0n ? 'none' : `${hex(area)} size ${size} signature 0x${signature.toString(16)}`);
  const requested = omits(policy, 'rseq') ? 'none' : describe(image.rseq.area, image.rseq.size, image.rseq.signature);
  const accepted = describe(config.area, config.size, config.signature);
  if (requested !== accepted) differences.push({ what: 'rseq', requested, accepted });
  const csAt = rseqCsAddress(image.rseq);
  const cs = (await agent.call({ op: 'READ_MEM', pid, address: csAt, length: 8 })).readBigUInt64LE(0);
  const wanted = rseqCsPointer(image);
  if (cs !== wanted) differences.push({ what: 'rseq.rseq_cs', requested: hex(wanted), accepted: hex(cs) });
  return differences;
}

/**
 * Every other thread, as the kernel holds it now: registers and xstate as
 * the plan set them, debug registers, the rseq registration and the rseq_cs
 * word of its area, its mask and its own pending queue. Differences name
 * the thread. (clear_child_tid and the robust list can only be read by
 * running code in the thread; the workloads check those themselves.)
 */
async function readBackThreads(agent: AgentClient, plan: PlanStep[], image: CheckpointImage, policy: RestorePolicy): Promise<Difference[]> {
  const differences: Difference[] = [];
  for (const t of image.threads) {
    const who = `thread ${t.tid}`;
    const add = (what: string, requested: string, accepted: string): void => void differences.push({ what: `${who} ${what}`, requested, accepted });
    const setRegs = plan.find((s) => s.op.op === 'SETREGS' && s.op.pid === t.tid)?.op as { regs: UserRegs } | undefined;
    if (setRegs) {
      const regs = await agent.call({ op: 'GETREGS', pid: t.tid });
      for (const name of USER_REGS_FIELDS) if (regs[name] !== setRegs.regs[name]) add(name, hex(setRegs.regs[name]), hex(regs[name]));
    }
    const setXstate = plan.find((s) => s.op.op === 'SETREGSET' && s.op.pid === t.tid && s.op.noteType === NT_X86_XSTATE)?.op as { data: Uint8Array } | undefined;
    if (setXstate) {
      const wanted = Buffer.from(setXstate.data);
      const xstate = await agent.call({ op: 'GETREGSET', pid: t.tid, noteType: NT_X86_XSTATE, maxSize: wanted.length });
      if (!xstate.equals(wanted)) add('xstate', `${wanted.length} bytes`, `${xstate.length} bytes, first difference at offset ${xstate.findIndex((b, i) => b !== wanted[i])}`);
    }
    for (const name of DEBUG_REG_NAMES) {
      const value = await agent.call({ op: 'PEEKUSER', pid: t.tid, offset: debugRegOffset(Number(name.slice(2))) });
      if (value !== t.debugRegs[name]) add(name, hex(t.debugRegs[name]), hex(value));
    }
    for (const d of await readBackRseq(agent, t.tid, { ...image, regs: t.regs, rseq: t.rseq }, policy)) add(d.what, d.requested, d.accepted);
    if (omits(policy, 'signals')) continue;
    if (!omits(policy, 'thread-masks')) {
      const blocked = await agent.call({ op: 'GETSIGMASK', pid: t.tid });
      if (blocked !== t.blocked) add('signals.blocked', hex(t.blocked), hex(blocked));
    }
    const held = liveTimerSignalsDropped(await agent.call({ op: 'PEEKSIGINFO', pid: t.tid, shared: false }), t.pending, omits(policy, 'timers') ? NO_TIMERS : image.timers);
    if (held.length !== t.pending.length || !held.every((b, i) => b.equals(t.pending[i]!))) {
      add('signals.pending.thread', `[${t.pending.map(siginfoSigno).join(' ')}]`, `[${held.map(siginfoSigno).join(' ')}]`);
    }
  }
  return differences;
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
