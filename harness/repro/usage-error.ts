import { UsageError } from '../errors.ts';
import { escapeControl } from '../util/terminal-text.ts';

/** UsageError lives with the other typed errors; it is named here too for the repro code that has always taken it from here. */
export { UsageError };

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
