/**
 * Which kernel a run was about, as a person validating a patch needs it:
 * the name they gave it, the release its bzImage header names, the image's
 * SHA-256 and the hash of the config the cases were decided on — so that a
 * base and a patched build at the same path are still two kernels in every
 * report. And the one check on a kernel's companions that must stop a run
 * before it boots anything: a --kernel-config that contradicts the config
 * embedded in the kernel.
 */
import type { GuestKernel } from '../image/kernel.ts';
import { guestKernelConfig, KernelConfigConflictError } from '../platform/guest-kernel-config.ts';
import type { KernelIdentity } from '../report/kernel-matrix.ts';
import { UsageError } from '../errors.ts';

/** The identity of `kernel` for the JSON report and the side-by-side header. */
export async function kernelIdentity(kernel: GuestKernel): Promise<KernelIdentity> {
  const config = await guestKernelConfig(kernel);
  return {
    ...(kernel.label ? { label: kernel.label } : {}),
    release: kernel.release,
    ...(kernel.kernelVersion ? { kernelVersion: kernel.kernelVersion } : {}),
    origin: kernel.origin,
    sha256: kernel.sha256,
    ...(config.sha256 ? { configSha256: config.sha256 } : {}),
    configSource: config.source,
  };
}

/**
 * Throws a UsageError (exit 2) naming the options when the kernel's
 * --kernel-config contradicts its embedded IKCONFIG; a kernel that cannot be
 * had is left to the image build to report (as infrastructure).
 */
export async function checkKernelConfig(resolve: () => Promise<GuestKernel | undefined>): Promise<void> {
  let kernel: GuestKernel | undefined;
  try {
    kernel = await resolve();
  } catch {
    return;
  }
  if (!kernel?.config) return;
  try {
    await guestKernelConfig(kernel);
  } catch (error) {
    if (error instanceof KernelConfigConflictError) throw new UsageError(error.message, error.details, { cause: error });
    throw error;
  }
}
