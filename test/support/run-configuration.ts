/**
 * A run configuration handed to a child crh or case process as crh run
 * hands one: written into `dir`, named by CRH_RUN in the returned variables.
 */
import path from 'node:path';
import { RUN_CONFIGURATION_ENV, verdictsFileIn, writeRunConfiguration, type RunConfiguration } from '../../harness/flags/run-configuration.ts';

export async function handDown(dir: string, configuration: Partial<RunConfiguration> = {}): Promise<Record<string, string>> {
  const artifactsDir = configuration.artifactsDir ?? path.join(dir, 'artifacts');
  const file = await writeRunConfiguration(
    { engines: ['crh'], artifactsDir, verdictsFile: verdictsFileIn(artifactsDir), ...configuration },
    path.join(dir, 'run-configuration.json'),
  );
  return { [RUN_CONFIGURATION_ENV]: file };
}
