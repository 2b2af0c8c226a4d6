/**
 * A booted guest with an open agent session, for cases: opened as the CLI
 * opens one (guest/open-guest.ts), released in tap teardown whatever happens,
 * and an infrastructure failure recorded for `crh run`'s exit code.
 */
import path from 'node:path';
import { mkdir } from 'node:fs/promises';
import { openGuest, type Guest } from '../guest/open-guest.ts';
import { artifactsRoot, recordVerdict } from '../report/verdicts.ts';
import { enginesRecorded } from './verdict-rows.ts';
import { isInfraFailure, recordInfraFailure } from '../report/infra-failures.ts';
import { runConfiguration } from '../flags/run-configuration.ts';
import { kernelChoiceFromFlags } from '../flags/kernel-flags.ts';

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
  /** a --kernel value (a bzImage, debian:PACKAGE[@SUITE]) instead of the run's kernel */
  kernel?: string;
}

export async function startGuest(t: Teardownable, caseName: string, options: GuestOptions = {}): Promise<Guest> {
  const artifactsDir = options.name ? path.join(artifactsRoot(), caseName, options.name) : path.join(artifactsRoot(), caseName);
  await mkdir(artifactsDir, { recursive: true });
  try {
    // crh run --engine …criu: every case boots the image variant with CRIU (crh run built it up front).
    const { engines } = runConfiguration();
    const criu = engines.includes('criu');
    const guest = await openGuest({
      artifactsDir,
      log: (line) => t.comment(`${caseName}${options.name ? `/${options.name}` : ''}: ${line}`),
      ...(options.agentCwd ? { agentCwd: options.agentCwd } : {}),
      ...(options.cpuModel !== undefined ? { cpuModel: options.cpuModel } : {}),
      ...(options.kernel !== undefined ? { kernel: kernelChoiceFromFlags({ kernel: options.kernel }) } : {}),
      ...(criu ? { criu } : {}),
    });
    t.teardown(() => guest.close());
    // An engine the run asked for that this case recorded no row for is said, never silently absent from the table: once, by the case's own guest.
    if (!options.name)
      t.teardown(() => {
        for (const engine of engines.filter((e) => e !== 'crh' && !enginesRecorded().has(e))) {
          recordVerdict({
            case: caseName,
            scenario: '(every scenario of the case)',
            policy: '-',
            engine,
            control: false,
            expected: '-',
            observed: '-',
            pass: false,
            skipped: `no scenario of this case is handed to ${engine.toUpperCase()} yet (its crh rows ran); cases with CRIU rows: README, "Engines"`,
          });
        }
      });
    // A guest lost mid-case (QEMU died, the kernel panicked) fails the case's assertions too; recorded here, crh run exits 69 for it, not 1.
    guest.machine.failure.catch((error: unknown) => recordInfraFailure(caseName, error));
    return guest;
  } catch (error) {
    if (isInfraFailure(error)) recordInfraFailure(caseName, error);
    throw error;
  }
}

/**
 * `count` guests of one case, started together: the case's own and
 * `${name}-1`… beside it, for a case whose runs mostly wait (real sleeps) and
 * so can overlap, one guest per group of runs — an agent session runs one
 * program at a time. Each is released in teardown, also when another failed
 * to start; the first failure is thrown.
 */
export async function startGuests(t: Teardownable, caseName: string, count: number, name: string): Promise<Guest[]> {
  const settled = await Promise.allSettled(Array.from({ length: count }, (_, i) => startGuest(t, caseName, i === 0 ? {} : { name: `${name}-${i}` })));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<Guest>).value);
}
