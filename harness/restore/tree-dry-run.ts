/**
 * `crh restore --dry-run` of a tree image: the skeleton (stubs, clones,
 * sessions, groups, shared objects, pipes) and then each process's own
 * plan, compiled against what its stub is assumed to look like — a fresh
 * exec of the root's binary (dry-run.ts), plus the shared objects it
 * inherits. No process exists: the stub's stack scratch is shown at a
 * nominal DRY_RUN_SCRATCH, and the text word put back in each child as 0.
 */
import type { PlanStep } from './plan-step.ts';
import { compileRestorePlan } from './plan.ts';
import { assertPolicyAdmits, type RestorePolicy } from './policy.ts';
import { isKernelProvided, parseMaps } from './proc-maps.ts';
import { assertThreadsAdmitted } from './threads.ts';
import { inheritedShared, planTreeRestore, skeletonSteps } from './tree-restore.ts';
import type { ProcessTree } from './tree.ts';

/** Where a dry run shows the stub's stack scratch (a real restore takes it below the stub's stack pointer). */
export const DRY_RUN_SCRATCH = 0x7fff00000000n;

export function dryRunTreePlan(tree: ProcessTree, policy: RestorePolicy): PlanStep[] {
  for (const m of tree.members) {
    assertPolicyAdmits(m.image.regs.eflags, policy);
    assertThreadsAdmitted(m.image, policy);
  }
  const { shared, memfds, actions } = planTreeRestore(tree, policy);
  const root = tree.members[0]!.image;
  const steps = skeletonSteps(actions, { scratch: DRY_RUN_SCRATCH, rip: root.regs.rip, word: Buffer.alloc(8) });
  const fresh = parseMaps(root.maps).filter((m) => m.name.startsWith('/') || m.name === '[stack]' || isKernelProvided(m));
  for (const m of tree.members) {
    const held = inheritedShared(shared, m.pid, memfds);
    steps.push(
      ...compileRestorePlan(
        m.image,
        { pid: m.pid, regs: { ...root.regs, eflags: 0x202n }, maps: [...fresh, ...held], tree: { inheritedShared: held } },
        policy,
      ),
    );
  }
  return steps;
}
