/**
 * The checks of `crh run`'s own flags that say how the cases run — how many
 * at once (--jobs), which shard of them (--shard), which of them (--grep) —
 * beside the other flag modules: each value parsed once, anything else a
 * UsageError naming the flag (crh exits 2).
 */
import { availableParallelism } from 'node:os';
import { UsageError } from '../errors.ts';

/**
 * What --jobs is without the flag: one case file more than the host has
 * CPUs (at least 2). A case waits for part of its time — sleeps it checks
 * the end of, a guest's answers — and one slot per CPU left the CPUs idle
 * then: on 2 CPUs the matrix took 194 s two at a time and 144 s three at a
 * time, every row as expected (docs/BENCHMARKS.md).
 */
export const DEFAULT_JOBS = Math.max(2, availableParallelism() + 1);

/** One CI runner's part of the case files, 1-based: the `index`-th of `count`. */
export interface Shard {
  /** 1-based */
  index: number;
  count: number;
}

/** --jobs N: a whole number of case files to run at once, at least 1; absent, DEFAULT_JOBS. */
export function parseJobs(text: string | undefined): number {
  if (text === undefined) return DEFAULT_JOBS;
  if (!/^[1-9][0-9]*$/.test(text)) throw new UsageError(`--jobs takes a number of case files to run at once, not ${text}`);
  return Number(text);
}

/** --shard "2/3" → { index: 2, count: 3 }; anything else is a usage error naming the flag. */
export function parseShard(text: string): Shard {
  const m = /^([1-9]\d{0,3})\/([1-9]\d{0,3})$/.exec(text);
  if (!m) throw new UsageError(`--shard takes i/n (e.g. 2/3), not "${text}"`);
  const shard = { index: Number(m[1]), count: Number(m[2]) };
  if (shard.index > shard.count) throw new UsageError(`--shard ${text}: shard ${shard.index} of ${shard.count} does not exist`);
  return shard;
}

/** --grep RE: the pattern case files' relative paths are matched against; one that does not compile is refused, named. */
export function parseGrep(text: string | undefined): RegExp | undefined {
  if (!text) return undefined;
  try {
    return new RegExp(text);
  } catch (error) {
    throw new UsageError(`--grep: ${(error as Error).message}`);
  }
}
