/**
 * `crh restore --dry-run`: validates an image and prints the plan it compiles
 * to, without a guest. The target is assumed to be what a fresh exec of the
 * image's binary looks like: the binary's file mappings, the stack, vdso and
 * vvar where the image has them, no heap and no anonymous mappings yet, and
 * the neutral entry EFLAGS. A real restore probes the real target instead.
 */
import { describeOp } from '../agent/ops.ts';
import type { CheckpointImage } from './image-model.ts';
import { compileRestorePlan, type PlanStep } from './plan.ts';
import { assertPolicyAdmits, type RestorePolicy } from './policy.ts';
import { isKernelProvided, parseMaps } from './proc-maps.ts';
import { assertThreadsAdmitted } from './threads.ts';

/** The pid shown in a dry-run plan: no process exists. */
export const DRY_RUN_PID = 0;

export function dryRunPlan(image: CheckpointImage, policy: RestorePolicy): PlanStep[] {
  assertPolicyAdmits(image.regs.eflags, policy);
  assertThreadsAdmitted(image, policy);
  const maps = parseMaps(image.maps).filter((m) => m.name.startsWith('/') || m.name === '[stack]' || isKernelProvided(m));
  return compileRestorePlan(image, { pid: DRY_RUN_PID, regs: { ...image.regs, eflags: 0x202n }, maps }, policy);
}

export function formatPlan(plan: readonly PlanStep[]): string {
  const width = String(plan.length).length;
  return plan
    .map(
      (s, i) =>
        `${String(i + 1).padStart(width)}. ${describeOp(s.op)}${s.expect !== undefined ? ` (expect 0x${s.expect.toString(16)})` : ''}\n${' '.repeat(width + 2)}${s.why}`,
    )
    .join('\n');
}
