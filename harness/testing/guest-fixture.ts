/**
 * A booted guest with an open agent session, for cases: opened as the CLI
 * opens one (guest/open-guest.ts), released in tap teardown whatever happens,
 * and an infrastructure failure recorded for `crh run`'s exit code.
 */
import path from 'node:path';
import { mkdir } from 'node:fs/promises';
import { openGuest, type Guest } from '../guest/open-guest.ts';
import { artifactsRoot } from '../report/verdicts.ts';
import { isInfraFailure, recordInfraFailure } from '../report/infra-failures.ts';

export type { Guest };

interface Teardownable {
  teardown(fn: () => unknown): void;
  comment(...args: unknown[]): void;
}

/** How a case's guest differs from the default one. */
export interface GuestOptions {
  /** the guest directory the agent runs in (open-guest.ts), for cases whose programs need their own */
  agentCwd?: string;
  /** a second guest of a case (a restore elsewhere): the folder under the case's artifacts, e.g. "restore-max-avx" */
  name?: string;
  /** QEMU -cpu model */
  cpuModel?: string;
  /** a --kernel value */
  kernel?: string;
}

export async function startGuest(t: Teardownable, caseName: string, options: GuestOptions = {}): Promise<Guest> {
  const artifactsDir = options.name ? path.join(artifactsRoot(), caseName, options.name) : path.join(artifactsRoot(), caseName);
  await mkdir(artifactsDir, { recursive: true });
  try {
    const guest = await openGuest({
      artifactsDir,
      log: (line) => t.comment(`${caseName}${options.name ? `/${options.name}` : ''}: ${line}`),
      ...(options.agentCwd ? { agentCwd: options.agentCwd } : {}),
      ...(options.cpuModel !== undefined ? { cpuModel: options.cpuModel } : {}),
      ...(options.kernel !== undefined ? { kernel: options.kernel } : {}),
    });
    t.teardown(() => guest.close());
    // A guest lost mid-case (QEMU died, the kernel panicked) fails the case's assertions too; recorded here, crh run exits 69 for it, not 1.
    guest.machine.failure.catch((error: unknown) => recordInfraFailure(caseName, error));
    return guest;
  } catch (error) {
    if (isInfraFailure(error)) recordInfraFailure(caseName, error);
    throw error;
  }
}
