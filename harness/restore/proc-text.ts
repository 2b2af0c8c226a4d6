/**
 * A /proc text file read whole, or refused: the agent's READ_FILE stops at
 * the size it is given, and a /proc/PID/maps or smaps cut short would
 * silently leave mappings out of an image (measured: ZDTM's maps06, 20,480
 * file and anonymous mappings, has a 1.6 MB maps and a 20 MB smaps — the
 * old 1 MiB and 4 MiB reads dropped the tail, the vDSO with it). The file
 * is read with one byte beyond the bound, so a longer one is named, not cut.
 */
import type { AgentClient } from '../agent/client.ts';
import { CrhError } from '../errors.ts';

/** Bound on one /proc text file: far above any process the cases run, well within the agent's frame. */
export const PROC_TEXT_MAX_BYTES = 128 * 1024 * 1024;

/** The whole of `path`; a CrhError naming it when it is longer than `maxBytes`. */
export async function readProcText(agent: AgentClient, path: string, maxBytes: number = PROC_TEXT_MAX_BYTES): Promise<string> {
  const data = await agent.call({ op: 'READ_FILE', path, maxSize: maxBytes + 1 });
  if (data.length > maxBytes) throw new CrhError(`${path} is longer than ${maxBytes} bytes: too many mappings to read whole`, { path });
  return data.toString('utf8');
}
