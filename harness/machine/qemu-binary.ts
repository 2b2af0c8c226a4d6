/**
 * The QEMU binary every launch, probe and version query runs. CRH_QEMU
 * overrides it (a wrapper, a QEMU built from source, or the tests' fake QEMU
 * that fails the way a broken nested KVM does).
 */
export const DEFAULT_QEMU_BINARY = 'qemu-system-x86_64';

export function qemuBinary(): string {
  const override = process.env.CRH_QEMU;
  return override && override.length > 0 ? override : DEFAULT_QEMU_BINARY;
}
