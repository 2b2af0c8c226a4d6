import { CrhError } from '../errors.ts';
import { escapeControl } from '../util/terminal-text.ts';

/**
 * The request cannot be carried out as given — a flag, a reproducer that
 * does not compile, a checkpoint point the program never reaches. `crh`
 * exits 2 for it: it says nothing about checkpoint/restore.
 */
export class UsageError extends CrhError {
  override readonly name: string = 'UsageError';
}

/** The program ended, or hung, before the requested checkpoint point. */
export class CheckpointNotReachedError extends UsageError {
  override readonly name = 'CheckpointNotReachedError';
}

/**
 * A bundle given to `crh repro --bundle` was refused before anything in it
 * was extracted, compiled or run. `field` names what was rejected
 * (`rerun.cflags`, `entry files/x`, `verdict.json`), so a hostile or
 * corrupt bundle is easy to pin down. A UsageError: crh exits 2.
 */
export class BundleRejectedError extends UsageError {
  override readonly name = 'BundleRejectedError';
  constructor(
    readonly bundle: string,
    readonly field: string,
    why: string,
  ) {
    // Field names and values come from the bundle: escaped here, once, for every place that prints the message.
    super(escapeControl(`${bundle}: ${field}: ${why}`));
  }
}
