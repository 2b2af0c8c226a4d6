/**
 * The sweep switches of `crh repro` and `crh cr`: `--sweep SYMBOL|0xADDR
 * [--count N] [--every K]`. Parsed apart from options.ts so that the sweep
 * stays one module's business; options.ts only merges them in.
 */
import { UsageError } from './usage-error.ts';

/** A sweep: N instruction boundaries from the first execution of `symbol`, a checkpoint at every K-th. */
export interface SweepRequest {
  symbol: string;
  /** instruction boundaries walked, the hit itself being boundary 0 */
  count: number;
  /** a checkpoint at boundaries 0, K, 2K, … below `count` */
  every: number;
}

export const SWEEP_DEFAULT_COUNT = 40;
/** Bound on N: every boundary is a single-step round trip, every checkpoint a restore and a run to the end. */
export const SWEEP_MAX_COUNT = 10_000;

/** Bound on the checkpoints of one sweep: all are taken (and written to disk) before the first is restored. */
export const SWEEP_MAX_CHECKPOINTS = 1_000;

export const SWEEP_USAGE = '--sweep SYMBOL|0xADDR [--hit N] [--count N] [--every K]';

export const sweepOptions = {
  sweep: { type: 'string' },
  count: { type: 'string' },
  every: { type: 'string' },
} as const;

interface SweepValues {
  sweep?: string;
  count?: string;
  every?: string;
  'checkpoint-at'?: string;
  'checkpoint-after'?: string;
  'when-ready'?: boolean;
  'finish-signal'?: string;
}

/** The sweep a command line asks for, or undefined; a contradiction is a UsageError naming the flags. */
export function parseSweepFlags(values: SweepValues): SweepRequest | undefined {
  if (values.sweep === undefined) {
    const stray = (['count', 'every'] as const).filter((flag) => values[flag] !== undefined);
    if (stray.length > 0) throw new UsageError(`${stray.map((f) => `--${f}`).join(' and ')} go${stray.length === 1 ? 'es' : ''} with --sweep SYMBOL`);
    return undefined;
  }
  const other = (['checkpoint-at', 'checkpoint-after', 'when-ready', 'finish-signal'] as const).filter(
    (flag) => values[flag] !== undefined && values[flag] !== false,
  );
  if (other.length > 0)
    throw new UsageError(
      `--sweep takes its checkpoints itself (at the boundaries after the first execution of its symbol); drop ${other.map((f) => `--${f}`).join(' and ')}`,
    );
  const symbol = values.sweep;
  if (!/^(?:[A-Za-z_.$][\w.$@]*|0x[0-9a-fA-F]+)$/.test(symbol)) throw new UsageError(`--sweep: "${symbol}" is neither a symbol name nor a 0x address`);
  const count = values.count === undefined ? SWEEP_DEFAULT_COUNT : boundedInteger('--count', values.count, SWEEP_MAX_COUNT);
  const every = values.every === undefined ? 1 : boundedInteger('--every', values.every, count);
  const checkpoints = Math.ceil(count / every);
  if (checkpoints > SWEEP_MAX_CHECKPOINTS)
    throw new UsageError(
      `--count ${count} --every ${every} takes ${checkpoints} checkpoints, more than ${SWEEP_MAX_CHECKPOINTS}: give --every ${Math.ceil(count / SWEEP_MAX_CHECKPOINTS)} or more`,
    );
  return { symbol, count, every };
}

/** The switches that re-create a sweep, for a rerun command line. */
export function sweepFlags(sweep: SweepRequest): string[] {
  return ['--sweep', sweep.symbol, '--count', String(sweep.count), '--every', String(sweep.every)];
}

/** The boundaries a sweep checkpoints, ascending. */
export function sweepBoundaries(sweep: Pick<SweepRequest, 'count' | 'every'>): number[] {
  const out: number[] = [];
  for (let i = 0; i < sweep.count; i += sweep.every) out.push(i);
  return out;
}

function boundedInteger(flag: string, text: string, max: number): number {
  if (!/^[1-9]\d{0,8}$/.test(text)) throw new UsageError(`${flag}: "${text}" is not a positive whole number`);
  const n = Number(text);
  if (n > max) throw new UsageError(`${flag}: ${n} is more than ${max}${flag === '--every' ? ' (--count)' : ''}`);
  return n;
}
