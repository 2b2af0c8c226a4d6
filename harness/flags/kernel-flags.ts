/** The kernel switches every command that boots a guest takes, and the kernel choice they make. */
import path from 'node:path';
import { DEBIAN_KERNEL_PREFIX, splitDebianSpec, splitKernelSpec, type KernelChoice } from '../image/kernel.ts';
import { DEBIAN_SUITE } from '../image/private-apt.ts';
import { UsageError } from '../errors.ts';

export const kernelOptions = {
  kernel: { type: 'string' },
  'system-map': { type: 'string' },
  'kernel-config': { type: 'string' },
  modules: { type: 'string' },
} as const;

export const KERNEL_USAGE = '[--kernel BZIMAGE|debian:PACKAGE[@SUITE] [--system-map FILE] [--kernel-config FILE] [--modules DIR]]';

const KERNEL_FLAGS = Object.keys(kernelOptions) as (keyof typeof kernelOptions)[];

/**
 * The kernel the flags choose, checked and made absolute (resolveKernelFlag);
 * undefined without --kernel (the recipe's default kernel; companion files
 * alone choose nothing, as they always have).
 */
export function kernelChoiceFromFlags(values: Partial<Record<string, string | boolean | string[] | undefined>>): KernelChoice | undefined {
  const text = (flag: keyof typeof kernelOptions): string | undefined => {
    const value = values[flag];
    return typeof value === 'string' ? resolveKernelFlag(flag, value) : undefined;
  };
  const kernel = text('kernel');
  const systemMap = text('system-map');
  const config = text('kernel-config');
  const modulesDir = text('modules');
  if (kernel === undefined) return undefined;
  const { label, spec } = splitKernelSpec(kernel);
  return { spec, ...(label ? { label } : {}), ...(systemMap ? { systemMap } : {}), ...(config ? { config } : {}), ...(modulesDir ? { modulesDir } : {}) };
}

/** The kernel flags as given (absolute paths), to repeat them in a command line. */
export function kernelFlagArgs(values: Record<string, string | boolean | string[] | undefined>): string[] {
  return KERNEL_FLAGS.flatMap((flag) => {
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
  if (suite !== undefined && !DEBIAN_SUITE.test(suite))
    throw new UsageError(`--kernel ${JSON.stringify(value)}: "${suite}" is not a Debian suite name (e.g. bookworm-backports, trixie)`);
  return labelled(spec);
}
