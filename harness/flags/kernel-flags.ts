/** The kernel switches every command that boots a guest takes, and how they reach the cases. */
import path from 'node:path';
import { DEBIAN_KERNEL_PREFIX, splitDebianSpec, splitKernelSpec } from '../image/kernel.ts';
import { DEBIAN_SUITE } from '../image/private-apt.ts';
import { UsageError } from '../errors.ts';

export const kernelOptions = {
  kernel: { type: 'string' },
  'system-map': { type: 'string' },
  'kernel-config': { type: 'string' },
  modules: { type: 'string' },
} as const;

export const KERNEL_USAGE = '[--kernel BZIMAGE|debian:PACKAGE[@SUITE] [--system-map FILE] [--kernel-config FILE] [--modules DIR]]';

const ENVIRONMENT: Record<keyof typeof kernelOptions, string> = {
  kernel: 'CRH_KERNEL',
  'system-map': 'CRH_SYSTEM_MAP',
  'kernel-config': 'CRH_KERNEL_CONFIG',
  modules: 'CRH_MODULES_DIR',
};

/** Kernel flags become the CRH_* variables that cases (separate processes) and the image builder read. */
export function applyKernelOptions(values: Record<string, string | boolean | string[] | undefined>): void {
  for (const [flag, env] of Object.entries(ENVIRONMENT)) {
    const value = values[flag];
    if (typeof value === 'string') process.env[env] = resolveKernelFlag(flag, value);
  }
}

/** The kernel flags as given (absolute paths), to repeat them in a command line. */
export function kernelFlagArgs(values: Record<string, string | boolean | string[] | undefined>): string[] {
  return Object.keys(ENVIRONMENT).flatMap((flag) => {
    const value = values[flag];
    return typeof value === 'string' ? [`--${flag}`, resolveKernelFlag(flag, value)] : [];
  });
}

/**
 * A file flag made absolute (cases run in other directories); a `debian:`
 * package name stays as it is once it is one: it reaches apt-get's command
 * line, where `debian:--help` would be an option. A `NAME=` label before a
 * --kernel value is kept.
 */
export function resolveKernelFlag(flag: string, value: string): string {
  const { label, spec } = flag === 'kernel' ? splitKernelSpec(value) : { label: undefined, spec: value };
  if (spec === '') throw new UsageError(`--${flag} takes a file${flag === 'kernel' ? ' or debian:PACKAGE[@SUITE]' : ''}, not an empty string`);
  const labelled = (resolved: string): string => (label ? `${label}=${resolved}` : resolved);
  if (!spec.startsWith(DEBIAN_KERNEL_PREFIX)) return labelled(path.resolve(spec));
  const { name, suite } = splitDebianSpec(spec.slice(DEBIAN_KERNEL_PREFIX.length));
  if (flag !== 'kernel') throw new UsageError(`--${flag} takes a file, not a Debian package (${spec})`);
  // Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting alphanumeric.
  if (!/^[a-z0-9][a-z0-9+.-]+$/.test(name)) throw new UsageError(`--kernel ${JSON.stringify(value)}: "${name}" is not a Debian package name`);
  if (suite !== undefined && !DEBIAN_SUITE.test(suite)) throw new UsageError(`--kernel ${JSON.stringify(value)}: "${suite}" is not a Debian suite name (e.g. bookworm-backports, trixie)`);
  return labelled(spec);
}
