/**
 * `--restore-cpu MODEL`, `--restore-kernel K` and `--restore-anyway` on
 * `crh repro` and `crh cr`: the checkpoint is taken in one guest and
 * restored in another, started with `-cpu MODEL` and/or kernel K from the
 * same image recipe. A target lacking what the image says the process
 * depends on (restore/platform-dependencies.ts) is refused naming it, exit
 * 1 — unless --restore-anyway, and then the verdict says what happened.
 */
import { resolveKernelFlag } from '../flags/kernel-flags.ts';
import { UsageError } from './usage-error.ts';

export interface RestoreElsewhereRequest {
  /** the QEMU CPU model of the restore guest; absent: the checkpoint guest's */
  cpu?: string;
  /** a --kernel value for the restore guest; absent: the checkpoint guest's */
  kernel?: string;
  /** restore even where the target lacks a dependency (the verdict says which) */
  anyway: boolean;
}

export const restoreElsewhereOptions = {
  'restore-cpu': { type: 'string' },
  'restore-kernel': { type: 'string' },
  'restore-anyway': { type: 'boolean' },
} as const;

export const RESTORE_ELSEWHERE_USAGE = '[--restore-cpu MODEL] [--restore-kernel BZIMAGE|debian:PACKAGE[@SUITE]] [--restore-anyway]';

/**
 * A QEMU -cpu value: a model name and +feature/-feature/feature=value
 * items, comma-separated (`max,-avx`, `Skylake-Client`, `max,pku=off`). It
 * reaches QEMU as one argv element, never a shell; the pattern keeps it to
 * what QEMU's own syntax uses.
 */
const CPU_MODEL = /^[A-Za-z0-9][A-Za-z0-9_.-]*(?:,[+-]?[A-Za-z0-9_.-]+(?:=[A-Za-z0-9_.-]+)?)*$/;

export function parseCpuModel(flag: string, text: string): string {
  if (text.length > 200 || !CPU_MODEL.test(text)) throw new UsageError(`${flag}: "${text}" is not a QEMU CPU model (e.g. max,-avx or Skylake-Client)`);
  return text;
}

/** The request, or undefined when none of the three flags was given. */
export function parseRestoreElsewhere(values: {
  'restore-cpu'?: string;
  'restore-kernel'?: string;
  'restore-anyway'?: boolean;
}): RestoreElsewhereRequest | undefined {
  const cpu = values['restore-cpu'];
  const kernel = values['restore-kernel'];
  if (cpu === undefined && kernel === undefined) {
    if (values['restore-anyway'])
      throw new UsageError(
        '--restore-anyway goes with --restore-cpu or --restore-kernel: it says to restore in that guest even where it lacks what the process depends on',
      );
    return undefined;
  }
  return {
    ...(cpu !== undefined ? { cpu: parseCpuModel('--restore-cpu', cpu) } : {}),
    ...(kernel !== undefined ? { kernel: resolveKernelFlag('kernel', kernel) } : {}),
    anyway: values['restore-anyway'] === true,
  };
}

/** The flags that re-create `request`, for a rerun command line. */
export function restoreElsewhereFlags(request: RestoreElsewhereRequest): string[] {
  return [
    ...(request.cpu !== undefined ? ['--restore-cpu', request.cpu] : []),
    ...(request.kernel !== undefined ? ['--restore-kernel', request.kernel] : []),
    ...(request.anyway ? ['--restore-anyway'] : []),
  ];
}

/** "-cpu max,-avx, kernel debian:…" — what the restore guest differs by, for phases and notes. */
export function describeElsewhere(request: RestoreElsewhereRequest): string {
  return [request.cpu !== undefined && `-cpu ${request.cpu}`, request.kernel !== undefined && `kernel ${request.kernel}`].filter(Boolean).join(', ');
}
