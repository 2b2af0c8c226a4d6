import { CrhError } from '../errors.ts';

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
