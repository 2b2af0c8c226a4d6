/**
 * `--shard i/n`: the case files split across n CI runners. Deterministic
 * (the same files and durations give the same split on every runner, with
 * no coordination), disjoint and together complete, and balanced by the
 * durations the cases recorded: longest first, each to the shard with the
 * least time so far (LPT), ties broken by shard number.
 */
import type { Shard } from '../flags/run-flags.ts';

export type { Shard };

/**
 * The cases of every shard, each list in the input's order. `durationsMs`
 * maps a case to its recorded time; a case never timed counts as the median
 * of the others (or 1 when none is known), so a new case lands somewhere
 * sensible rather than all new cases on shard 1.
 */
export function splitIntoShards(cases: readonly string[], durationsMs: Readonly<Record<string, number>>, count: number): string[][] {
  const weight = caseWeight(cases, durationsMs);
  const order = longestFirst(cases, durationsMs);
  const load = new Array<number>(count).fill(0);
  const members = Array.from({ length: count }, () => new Set<string>());
  for (const c of order) {
    let best = 0;
    for (let s = 1; s < count; s++) if (load[s]! < load[best]!) best = s;
    load[best]! += weight(c);
    members[best]!.add(c);
  }
  return members.map((set) => cases.filter((c) => set.has(c)));
}

/**
 * A case's recorded time, or for a case never timed the median of the
 * others' (1 when none is known).
 */
function caseWeight(cases: readonly string[], durationsMs: Readonly<Record<string, number>>): (c: string) => number {
  const known = cases
    .map((c) => durationsMs[c])
    .filter((d): d is number => d !== undefined && d > 0)
    .sort((a, b) => a - b);
  const fallback = known.length > 0 ? known[Math.floor(known.length / 2)]! : 1;
  return (c) => {
    const d = durationsMs[c];
    return d !== undefined && d > 0 ? d : fallback;
  };
}

/**
 * The cases longest first (ties by name): the order a run with a few slots
 * starts them in, so that the longest (sleep-restart sleeps for minutes) does
 * not start last and hold the run open alone.
 */
export function longestFirst(cases: readonly string[], durationsMs: Readonly<Record<string, number>>): string[] {
  const weight = caseWeight(cases, durationsMs);
  return [...cases].sort((a, b) => weight(b) - weight(a) || (a < b ? -1 : a > b ? 1 : 0));
}

/** The cases of one shard. */
export function casesOfShard(cases: readonly string[], durationsMs: Readonly<Record<string, number>>, shard: Shard): string[] {
  return splitIntoShards(cases, durationsMs, shard.count)[shard.index - 1]!;
}
