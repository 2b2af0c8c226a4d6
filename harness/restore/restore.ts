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
import { readProcText } from './proc-text.ts';
import { NT_X86_XSTATE, hex } from '../x86/registers.ts';
import type { CheckpointImage } from './image-model.ts';
import { compileRestorePlan, fixedImage, type PlanStep, type TargetProbe } from './plan.ts';
import { assertPolicyAdmits, omits, type RestorePolicy } from './policy.ts';
import { parseMaps, type Mapping } from './proc-maps.ts';
import {
  describeMissing,
  IncompatibleTargetError,
  missingDependencies,
  readTargetDependencies,
  vdsoFingerprint,
  vdsoMovable,
  xstateHeader,
  type PlatformDependencies,
} from './platform-dependencies.ts';
import { withFittedXstate } from './xstate-fit.ts';
import { mappedFiles, probeMappedFiles } from './mappings.ts';
import { captureTask } from './files.ts';
import { assertThreadsAdmitted } from './threads.ts';
import { BOOT_ID_PATH } from './sleep-deadline.ts';
import { clockDecision, readTargetClocks, type ClockDecision } from './time-namespace.ts';
import { errnoName } from '../agent/errno.ts';
import { compareEventFds, compareTask, compareUserfaultfds, readBackBatch, type Difference } from './read-back.ts';
import { captureEventFds } from './event-fds.ts';
import { readFdTable } from './fd-table.ts';

const EEXIST = 17;
/** Bound on a target's xstate regset read (the largest XSAVE layouts, AMX included, stay below 12 KiB). */
const XSTATE_MAX_BYTES = 16 * 1024;

export type { Difference } from './read-back.ts';

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
export async function restoreInto(
  agent: AgentClient,
  checkpointed: CheckpointImage,
  pid: number,
  policy: RestorePolicy,
  tree?: TargetProbe['tree'],
  dependencies: 'refuse' | 'try' = 'refuse',
): Promise<RestoreResult> {
  const regs = await agent.call({ op: 'GETREGS', pid });
  const maps = parseMaps(await readProcText(agent, `/proc/${pid}/maps`));
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
  const plan = compileRestorePlan(
    image,
    {
      pid,
      regs,
      maps,
      fds,
      files,
      bootId,
      ...(tree ? { tree } : {}),
      ...(target ? { dependencies: target } : {}),
      ...(clocks.offsets ? { clockOffsets: clocks.offsets } : {}),
    },
    policy,
  );
  const steps = await agent.batch(plan.map((s) => s.op));
  checkSteps(plan, steps);
  const requested = fixedImage(image, policy).image;
  const differences = await readBack(agent, pid, plan, requested, policy);
  return { pid, plan, differences, dependencyNotes };
}

/**
 * The image's platform dependencies against the fresh target's
 * (platform-dependencies.ts): refused by name, or — under 'try' — returned
 * as notes for the verdict to say what the restore went on without.
 */
async function checkTargetDependencies(
  agent: AgentClient,
  pid: number,
  maps: Mapping[],
  image: CheckpointImage,
  mode: 'refuse' | 'try',
  redirectVdso: boolean,
): Promise<{ notes: string[]; target?: PlatformDependencies }> {
  if (!image.dependencies) return { notes: ['the image records no platform dependencies (format 9): CPU features, vDSO and rseq ABI not checked'] };
  const target = await readTargetDependencies(agent, pid, maps);
  const notes =
    redirectVdso && vdsoMovable(image.dependencies, target)
      ? [
          `vDSO redirected: the target kernel's vDSO has other offsets (${vdsoFingerprint(image.dependencies)} → ${vdsoFingerprint(target)}); the old ones jump to the new code`,
        ]
      : [];
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
    return await agent.call({
      op: 'SPAWN',
      path: process.binary,
      argv: process.argv,
      envp: process.envp,
      stdoutPath: options.stdoutPath,
      noAslr: process.noAslr,
      pid,
    });
  } catch (error) {
    if (error instanceof AgentError && error.errno === EEXIST) {
      throw new PidInUseError(
        `cannot restore as pid ${process.pid}, the pid the checkpoint was taken with: another process has it (is the original still alive?)`,
        { agent: error.message },
      );
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

/**
 * The read-back (read-back.ts: every task's checks in one BATCH, compared
 * purely), then what needs the descriptor table: session, descriptors and
 * userfaultfds, from one look at it; eventfds and signalfds from their fdinfo. A restored tree's pipes are read back
 * by tree-restore.ts. `image` is what the plan asked for.
 */
async function readBack(agent: AgentClient, pid: number, plan: PlanStep[], image: CheckpointImage, policy: RestorePolicy): Promise<Difference[]> {
  const differences: Difference[] = await readBackBatch(agent, pid, plan, image, policy);
  const files = !omits(policy, 'files');
  const userfaultfds = !omits(policy, 'userfaultfd') && (image.task.userfaultfds?.length ?? 0) > 0;
  const eventFds =
    (!omits(policy, 'eventfd') && (image.task.eventfds?.length ?? 0) > 0) || (!omits(policy, 'signalfd') && (image.task.signalfds?.length ?? 0) > 0);
  const fds = files || userfaultfds || eventFds ? await readFdTable(agent, pid) : [];
  const task = files || userfaultfds ? await captureTask(agent, pid, fds, { skipPipes: true }) : undefined;
  if (task && files) differences.push(...compareTask(task, pid, image));
  if (task && userfaultfds) differences.push(...compareUserfaultfds(task, image));
  if (eventFds) differences.push(...compareEventFds(await captureEventFds(agent, pid, fds, { probe: false }), image, policy));
  return differences;
}
