/**
 * The two shapes of a saved VM state (QemuMachine.saveState writes them,
 * launch loads them):
 *
 * - a file: a full migration stream, guest RAM inside (a machine with QEMU's
 *   own RAM);
 * - a directory of `stream` and `ram`: a machine whose RAM is a shared file
 *   (qemu-args.ts guestRamArgs) saves with the migration capability
 *   `x-ignore-shared`, so the stream holds the device state only (~0.4 MB
 *   instead of ~100 MB) and the RAM is its file, copied sparse while the VM
 *   is stopped. A start copies `ram` back as its RAM file before QEMU opens
 *   it and loads `stream` with the same capability (`-incoming defer`, then
 *   QMP `migrate-set-capabilities` and `migrate-incoming`).
 *
 * A directory is written whole under another name and renamed into place,
 * so its stream and its RAM always come from one save.
 */
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { InfraError } from '../errors.ts';

export const STATE_STREAM = 'stream';
export const STATE_RAM = 'ram';
/** The migration capability that leaves shared, file-backed RAM out of the stream. */
export const IGNORE_SHARED = 'x-ignore-shared';

export interface StateLayout {
  /** what QEMU's incoming migration reads */
  stream: string;
  /** the guest RAM file to start from, when the stream leaves RAM out */
  ram?: string;
}

/** Where the parts of the state at `state` are (a file: the stream alone). */
export function stateLayout(state: string): StateLayout {
  if (!statSync(state).isDirectory()) return { stream: state };
  return { stream: path.join(state, STATE_STREAM), ram: path.join(state, STATE_RAM) };
}

/**
 * Copies a RAM file keeping its holes (pages never touched stay holes: a
 * 512 MiB guest that used 130 MiB copies 130 MiB).
 */
export async function copySparse(from: string, to: string): Promise<void> {
  try {
    await promisify(execFile)('cp', ['--sparse=always', '--', from, to]);
  } catch (error) {
    throw new InfraError(`copying guest RAM ${from} -> ${to} failed: ${(error as Error).message}`, {}, { cause: error });
  }
}
