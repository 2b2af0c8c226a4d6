/**
 * The default guest: Debian 12's cloud kernel and a busybox initramfs with
 * dropbear, the agent and the workloads. Everything named here feeds the
 * image's cache key.
 */
import path from 'node:path';

export const RECIPE_DIR = import.meta.dirname;

export const debianCloudRecipe = {
  name: 'debian-cloud',
  /** Bump when the recipe's meaning changes without its files changing. */
  revision: 1,
  /** Debian metapackage that names the current cloud kernel; resolved with apt-cache. */
  kernelMetapackage: 'linux-image-cloud-amd64',
  /**
   * Modules the guest loads at boot, dependencies resolved from each .ko's
   * modinfo: the network, pvpanic so a panic reaches QMP as GUEST_PANICKED,
   * virtio_console for the bulk data port (qemu-args.ts bulkPortArgs), and
   * unix_diag: a tree's socketpairs are paired by sock_diag
   * (restore/tree-sockets.ts), which answers ENOENT for every unix socket
   * without it (measured on the 6.1 cloud kernel, where it is a module).
   */
  modules: ['virtio_net', 'virtio_pci', 'pvpanic_mmio', 'virtio_console', 'unix_diag'],
  /** Host files copied into the guest with their shared-library closure. */
  hostPrograms: {
    '/bin/busybox': '/bin/busybox',
    '/usr/sbin/dropbear': '/usr/sbin/dropbear',
  },
  /** Files of the recipe copied verbatim: guest path → file beside this recipe. */
  files: {
    '/init': path.join(RECIPE_DIR, 'init'),
    '/etc/inittab': path.join(RECIPE_DIR, 'inittab'),
    '/etc/init.d/rcS': path.join(RECIPE_DIR, 'rcS'),
  },
  /** Kernel command line (console on the first serial port; the rest explained in docs). */
  // no_timer_check: on a loaded host TCG's emulated timer can miss the kernel's early IO-APIC check, which then
  // panics ("IO-APIC + timer doesn't work!", seen at 0.06 s with the load average at 25); the check says nothing here.
  cmdline: ['console=ttyS0', 'nokaslr', 'panic=-1', 'loglevel=5', 'mitigations=off', 'tsc=reliable', 'no_timer_check'],
} as const;

export type Recipe = typeof debianCloudRecipe;
