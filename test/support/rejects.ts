/** The assertion restore tests share: `fn` must refuse with an ImageRejectedError naming `entry` and `field`. */
import type { Test } from 'tap';
import { ImageRejectedError } from '../../harness/errors.ts';

export function rejects(t: Test, fn: () => unknown, entry: string, field: RegExp | string): void {
  try {
    fn();
    t.fail(`accepted, expected rejection of ${entry} ${field}`);
  } catch (error) {
    t.ok(error instanceof ImageRejectedError, `ImageRejectedError (${(error as Error).message})`);
    t.equal((error as ImageRejectedError).entry, entry);
    t.match((error as ImageRejectedError).field, field);
  }
}
