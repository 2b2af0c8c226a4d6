/**
 * Which checkpoint/restore engines a `crh run` puts the cases through —
 * crh's restore core, CRIU in the guest, or both side by side — and how the
 * choice reaches the case processes: as CRH_ENGINES, the way the kernel
 * flags reach them as CRH_KERNEL and friends (cli/kernel-flags.ts).
 */
import { ENGINES, type Engine } from '../report/verdicts.ts';

export const ENGINES_ENV = 'CRH_ENGINES';

/** What a run without --engine runs. */
export const DEFAULT_ENGINES: readonly Engine[] = ['crh'];

/** `crh`, `criu`, `crh,criu` (in any order, each once) → the engines in crh-first order; anything else is refused, named. */
export function parseEngines(text: string): Engine[] {
  const names = text.split(',').map((e) => e.trim());
  for (const name of names) {
    if (name === '') throw new Error(`--engine ${JSON.stringify(text)}: an empty engine name (give ${ENGINES.join(', ')} or ${ENGINES.join(',')})`);
    if (!(ENGINES as readonly string[]).includes(name)) throw new Error(`--engine: "${name}" is not an engine (${ENGINES.join(' or ')}, or both: ${ENGINES.join(',')})`);
  }
  const repeated = names.find((n, i) => names.indexOf(n) !== i);
  if (repeated) throw new Error(`--engine ${text}: ${repeated} is named twice`);
  return ENGINES.filter((e) => names.includes(e));
}

/** The engines this case process runs, from CRH_ENGINES (set by crh run); crh alone when unset. */
export function runEngines(env: NodeJS.ProcessEnv = process.env): Engine[] {
  const text = env[ENGINES_ENV];
  return text === undefined || text === '' ? [...DEFAULT_ENGINES] : parseEngines(text);
}
