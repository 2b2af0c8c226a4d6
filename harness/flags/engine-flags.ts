/**
 * Which checkpoint/restore engines a `crh run` puts the cases through —
 * crh's restore core, CRIU in the guest, or both side by side. The choice
 * reaches the case processes in the run configuration (run-configuration.ts).
 */
import { ENGINES, runConfiguration, type Engine } from './run-configuration.ts';

/** What a run without --engine runs. */
export const DEFAULT_ENGINES: readonly Engine[] = ['crh'];

/** `crh`, `criu`, `crh,criu` (in any order, each once) → the engines in crh-first order; anything else is refused, named. */
export function parseEngines(text: string): Engine[] {
  const names = text.split(',').map((e) => e.trim());
  for (const name of names) {
    if (name === '') throw new Error(`--engine ${JSON.stringify(text)}: an empty engine name (give ${ENGINES.join(', ')} or ${ENGINES.join(',')})`);
    if (!(ENGINES as readonly string[]).includes(name))
      throw new Error(`--engine: "${name}" is not an engine (${ENGINES.join(' or ')}, or both: ${ENGINES.join(',')})`);
  }
  const repeated = names.find((n, i) => names.indexOf(n) !== i);
  if (repeated) throw new Error(`--engine ${text}: ${repeated} is named twice`);
  return ENGINES.filter((e) => names.includes(e));
}

/** The engines this case process runs: its run configuration's (crh alone unless crh run or CRH_ENGINES said otherwise). */
export function runEngines(): Engine[] {
  return runConfiguration().engines;
}
