/**
 * A stopped process's descriptor table as a checkpoint reads it: every open
 * descriptor and what /proc/PID/fd/N names, ascending. It is read once per
 * checkpoint and handed to every module that looks at descriptors
 * (uncapturable.ts, files.ts, event-fds.ts, timers.ts): five walks of the
 * same table, each a listing and a readlink per descriptor, were five times
 * the round trips for one answer. The injected calls between those modules
 * close whatever they open, so the table they each saw was this one. A
 * tree's modules (tree-pipes, tree-sockets, tree-memfds, tree-fifos,
 * tree-checkpoint's held files) read it per process the same way.
 *
 * The readlinks go out together: the agent answers requests in the order
 * they arrive, so n of them cost one round trip's latency, not n.
 */
import { constants } from 'node:os';
import type { AgentClient } from '../agent/client.ts';
import { AgentError } from '../errors.ts';

export interface FdLink {
  fd: number;
  /** readlink of /proc/PID/fd/N: a path, or `pipe:[ino]`, `anon_inode:[eventfd]`… */
  link: string;
}

export type FdTable = readonly FdLink[];

/** A /proc entry that vanished under the read: the descriptor was closed, or the task is gone. */
export const procEntryGone = (error: unknown): boolean =>
  error instanceof AgentError && (error.errno === constants.errno.ENOENT || error.errno === constants.errno.ESRCH);

/** `what`, or undefined where the /proc entry it reads has gone (procEntryGone); any other failure rejects. */
export function unlessGone<T>(what: Promise<T>): Promise<T | undefined> {
  return what.catch((error: unknown) => (procEntryGone(error) ? undefined : Promise.reject(error)));
}

/**
 * The descriptors of `pid` with their links, ascending. A descriptor closed
 * between the listing and its readlink is left out: a stopped process's
 * table changes only through a task outside it that shares the table.
 */
export async function readFdTable(agent: AgentClient, pid: number): Promise<FdTable> {
  const fds = (await agent.call({ op: 'LISTDIR', path: `/proc/${pid}/fd` })).map(Number).sort((a, b) => a - b);
  const links = await Promise.all(fds.map((fd) => unlessGone(agent.call({ op: 'READLINK', path: `/proc/${pid}/fd/${fd}` }))));
  return fds.flatMap((fd, i) => (links[i] === undefined ? [] : [{ fd, link: links[i]! }]));
}

/** The descriptors whose link is `link`, ascending. */
export function descriptorsLinkedTo(table: FdTable, link: string): number[] {
  return table.filter((d) => d.link === link).map((d) => d.fd);
}
