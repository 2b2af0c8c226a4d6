/**
 * Restores a validated checkpoint image into a fresh instance of its binary:
 * policy gate (before anything touches the guest), spawn and probe the
 * target, compile the plan, run it as one BATCH, then read back what the
 * kernel accepted and report every difference from what was asked for.
 * A failed step kills the half-restored target and names the step.
 */
import type { AgentClient, BatchStep } from '../agent/client.ts';
import { describeOp } from '../agent/ops.ts';
import { CrhError, RestoreStepError } from '../errors.ts';
import { NT_X86_XSTATE, USER_REGS_FIELDS, debugRegOffset, hex, type UserRegs } from '../x86/registers.ts';
import { DEBUG_REG_NAMES, type CheckpointImage } from './checkpoint-image.ts';
import { compileRestorePlan, type PlanStep } from './plan.ts';
import { assertPolicyAdmits, type RestorePolicy } from './policy.ts';
import { parseMaps } from './proc-maps.ts';
import { errnoName } from '../agent/errno.ts';

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
}

export interface RestoreOptions {
  policy: RestorePolicy;
  /** guest file the restored process writes its stdout/stderr to */
  stdoutPath: string;
}

export async function restoreProcess(agent: AgentClient, image: CheckpointImage, options: RestoreOptions): Promise<RestoreResult> {
  assertPolicyAdmits(image.regs.eflags, options.policy);
  const { process } = image;
  const { pid } = await agent.call({ op: 'SPAWN', path: process.binary, argv: process.argv, envp: process.envp, stdoutPath: options.stdoutPath, noAslr: process.noAslr });
  try {
    const regs = await agent.call({ op: 'GETREGS', pid });
    const maps = parseMaps((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: 1 << 20 })).toString('utf8'));
    const plan = compileRestorePlan(image, { pid, regs, maps }, options.policy);
    const steps = await agent.batch(plan.map((s) => s.op));
    checkSteps(plan, steps);
    const differences = await readBack(agent, pid, plan, image);
    return { pid, plan, differences };
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

function checkSteps(plan: PlanStep[], steps: BatchStep[]): void {
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

async function readBack(agent: AgentClient, pid: number, plan: PlanStep[], image: CheckpointImage): Promise<Difference[]> {
  const differences: Difference[] = [];
  const setRegs = plan.find((s) => s.op.op === 'SETREGS')!.op as { regs: UserRegs };
  const regs = await agent.call({ op: 'GETREGS', pid });
  for (const name of USER_REGS_FIELDS) {
    if (regs[name] !== setRegs.regs[name]) differences.push({ what: name, requested: hex(setRegs.regs[name]), accepted: hex(regs[name]) });
  }
  // The sigreturn restorer hands xstate to the kernel in the signal frame: it is
  // loaded when the task runs, so there is nothing to read back yet.
  const setXstate = plan.some((s) => s.op.op === 'SETREGSET' && s.op.noteType === NT_X86_XSTATE);
  const xstate = setXstate ? await agent.call({ op: 'GETREGSET', pid, noteType: NT_X86_XSTATE, maxSize: image.xstate.length }) : image.xstate;
  if (!xstate.equals(image.xstate)) {
    const at = xstate.findIndex((b, i) => b !== image.xstate[i]);
    differences.push({ what: 'xstate', requested: `${image.xstate.length} bytes`, accepted: `${xstate.length} bytes, first difference at offset ${at}` });
  }
  for (const name of DEBUG_REG_NAMES) {
    const value = await agent.call({ op: 'PEEKUSER', pid, offset: debugRegOffset(Number(name.slice(2))) });
    if (value !== image.debugRegs[name]) differences.push({ what: name, requested: hex(image.debugRegs[name]), accepted: hex(value) });
  }
  return differences;
}
