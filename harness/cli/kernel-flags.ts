/** The kernel switches every command that boots a guest takes, and how they reach the cases. */
import path from 'node:path';
import { DEBIAN_KERNEL_PREFIX, splitKernelSpec } from '../image/kernel.ts';

export const kernelOptions = {
  kernel: { type: 'string' },
  'system-map': { type: 'string' },
  'kernel-config': { type: 'string' },
  modules: { type: 'string' },
} as const;

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
    if (typeof value === 'string') process.env[env] = resolveFlag(value);
  }
}

/** The kernel flags as given (absolute paths), to repeat them in a command line. */
export function kernelFlagArgs(values: Record<string, string | boolean | string[] | undefined>): string[] {
  return Object.keys(ENVIRONMENT).flatMap((flag) => {
    const value = values[flag];
    return typeof value === 'string' ? [`--${flag}`, resolveFlag(value)] : [];
  });
}

/** A file flag made absolute (cases run in other directories); a `debian:` package name stays as it is, and a `NAME=` before either too. */
function resolveFlag(value: string): string {
  const { label, spec } = splitKernelSpec(value);
  const resolved = spec.startsWith(DEBIAN_KERNEL_PREFIX) ? spec : path.resolve(spec);
  return label ? `${label}=${resolved}` : resolved;
}
