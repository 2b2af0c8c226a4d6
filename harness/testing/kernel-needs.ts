/**
 * A case states the kernel options it needs in one line:
 *
 *   t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_RSEQ']), async (t) => { … })
 *
 * (a catalog report puts `needs: [...]` in its HistoricReport instead). When
 * the kernel the cases boot lacks one, the case is skipped through tap with a
 * reason naming the option, before any guest is booted, and a skip row goes
 * to the verdicts. When its config is unknown the case runs and says so.
 */
import { debianCloudRecipe } from '../../images/debian-cloud/recipe.ts';
import { debianKernel, resolveKernel, type GuestKernel } from '../image/kernel.ts';
import { runConfiguration } from '../flags/run-configuration.ts';
import { guestKernelConfig } from '../platform/guest-kernel-config.ts';
import { decideRequirements, type RequirementDecision } from '../platform/kernel-requirements.ts';
import { recordVerdict } from '../report/verdicts.ts';

/**
 * What every case needs, whatever it exercises: the guest network it is
 * driven over (virtio-net on virtio-pci), and hardware breakpoints, which the
 * platform profile measured at every guest start uses.
 */
export const EVERY_CASE_NEEDS = ['CONFIG_VIRTIO_NET', 'CONFIG_VIRTIO_PCI', 'CONFIG_HAVE_HW_BREAKPOINT'] as const;

interface Commentable {
  comment(...args: unknown[]): void;
}

/** The kernel the cases boot: the run configuration's (`crh run --kernel`, CRH_KERNEL), else the recipe's Debian kernel. */
export async function casesKernel(): Promise<GuestKernel> {
  return (await resolveKernel(runConfiguration().kernel)) ?? (await debianKernel(debianCloudRecipe.kernelMetapackage));
}

/** The decision for a case needing `options` (beyond EVERY_CASE_NEEDS) on the kernel the cases boot. */
export async function kernelDecision(options: readonly string[]): Promise<RequirementDecision | undefined> {
  let kernel: GuestKernel;
  try {
    kernel = await casesKernel();
  } catch {
    // A kernel that cannot be had is the case's start to report, as infrastructure (exit 69), not a reason to skip.
    return undefined;
  }
  return decideRequirements(await guestKernelConfig(kernel), [...EVERY_CASE_NEEDS, ...options]);
}

/** tap options for the case: `{ skip: reason }` when the kernel lacks an option it needs (recorded as a skip row), else `{}`. */
export async function kernelNeeds(t: Commentable, caseName: string, options: readonly string[] = []): Promise<{ skip?: string }> {
  const decision = await kernelDecision(options);
  if (!decision) return {};
  if (decision.run) {
    t.comment(`${caseName}: kernel options: ${decision.reason}`);
    return {};
  }
  recordSkip(caseName, decision);
  return { skip: decision.reason };
}

/** The verdict row of a case skipped as a whole. */
export function recordSkip(caseName: string, decision: RequirementDecision): void {
  recordVerdict({
    case: caseName,
    scenario: '(every scenario of the case)',
    policy: '-',
    control: false,
    expected: `a kernel with ${decision.missing.join(', ')}`,
    observed: `lacks ${decision.missing.join(', ')}`,
    pass: false,
    skipped: decision.reason,
  });
}
