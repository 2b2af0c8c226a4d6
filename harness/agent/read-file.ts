/**
 * READ_FILE with a bound that says when it bit. The agent reads at most
 * max_size bytes and stops there, silently; asking for one byte more tells a
 * file that fits from one that was cut, and the text then ends with a note.
 */
import { truncationNote } from '../util/capped-buffer.ts';
import type { AgentClient } from './client.ts';

export interface GuestFile {
  data: Buffer;
  /** the file has more than the bytes in `data` */
  truncated: boolean;
}

export async function readGuestFile(agent: Pick<AgentClient, 'call'>, path: string, maxBytes: number): Promise<GuestFile> {
  const data = await agent.call({ op: 'READ_FILE', path, maxSize: maxBytes + 1 });
  return data.length > maxBytes ? { data: data.subarray(0, maxBytes), truncated: true } : { data, truncated: false };
}

/** The file as text, at most `maxBytes` of it; a cut file ends with a line saying so. */
export async function readGuestText(agent: Pick<AgentClient, 'call'>, path: string, maxBytes: number): Promise<string> {
  const { data, truncated } = await readGuestFile(agent, path, maxBytes);
  return truncated ? `${data.toString('utf8')}\n${truncationNote(path, maxBytes)}` : data.toString('utf8');
}
