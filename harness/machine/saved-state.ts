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
 *   is stopped. A start maps `ram` private as its RAM (copy on write, QEMU's
 *   VM templating: nothing copied, the file never written, any number of
 *   machines on one file) and loads `stream` with the same capability
 *   (`-incoming defer`, then QMP `migrate-set-capabilities` and
 *   `migrate-incoming`): the stream has no page of the block the source
 *   shared, and the destination's private block keeps what the file holds
 *   (QEMU b17fbbe55cba, "allow private destination ram with
 *   x-ignore-shared"). None of what would punch holes in the file
 *   (ram_block_discard_range: postcopy, virtio-balloon, virtio-mem) is used
 *   here.
 *
 * A directory may also hold `agent-session`: the saved guest has a session
 * of the agent port waiting for its first request (machine/agent-session.ts),
 * whose process id it names (`{"pid": N}`); a start connects the port before
 * the load and sends requests at once.
 *
 * A directory is written whole under another name and renamed into place,
 * so its stream and its RAM always come from one save.
 */
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { InfraError } from '../errors.ts';

export const STATE_STREAM = 'stream';
export const STATE_RAM = 'ram';
export const STATE_AGENT_SESSION = 'agent-session';
/** The migration capability that leaves shared, file-backed RAM out of the stream. */
export const IGNORE_SHARED = 'x-ignore-shared';

export interface StateLayout {
  /** what QEMU's incoming migration reads */
  stream: string;
  /** the guest RAM file to start from, when the stream leaves RAM out */
  ram?: string;
  /** the agent port's session waiting in the saved guest, when there is one */
  agentSession?: { pid: number };
}

/** Where the parts of the state at `state` are (a file: the stream alone). */
export function stateLayout(state: string): StateLayout {
  if (!statSync(state).isDirectory()) return { stream: state };
  const agentSession = readAgentSession(path.join(state, STATE_AGENT_SESSION));
  return { stream: path.join(state, STATE_STREAM), ram: path.join(state, STATE_RAM), ...(agentSession ? { agentSession } : {}) };
}

/** The `agent-session` note's content; its absence means no session waits. */
export function formatAgentSession(pid: number): string {
  return `${JSON.stringify({ pid })}\n`;
}

function readAgentSession(file: string): { pid: number } | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const { pid } = JSON.parse(text) as { pid?: unknown };
  if (typeof pid !== 'number' || !Number.isInteger(pid) || pid < 1)
    throw new InfraError(`saved state note ${file}: no process id in ${JSON.stringify(text.slice(0, 100))}`);
  return { pid };
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
