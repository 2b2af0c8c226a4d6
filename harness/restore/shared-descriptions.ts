/**
 * One open file description held by several processes of a tree (an fd
 * inherited across fork): one offset, one set of status flags. The restore
 * opens a file by path once per process, which makes as many descriptions
 * — harmless only where nothing can tell them apart:
 * - a directory (its offset is a file-system cookie the restore does not
 *   keep in any case: files.ts);
 * - one of the restorable devices (/dev/null and the like: no offset);
 * - a regular file opened write-only with O_APPEND (every write goes to the
 *   end of the file, whoever makes it: a ZDTM test's outfile, a log).
 * Any other shared description (a file read or written at an offset) is
 * one object of the tree: sharedDescriptionGroups finds each, with every
 * descriptor on it, and tree-files.ts restores it as one description (a
 * daemon's descriptors 0-2, which the harness gives back one per process,
 * are refused by name instead: findSharedDescriptions). Two restored offsets
 * that moved apart would be silent divergence.
 *
 * Which descriptors share a description is asked of the kernel: kcmp(2)
 * KCMP_FILE, injected into one of the two stopped processes, compares the
 * two descriptors' struct file. Only descriptors with the same path are
 * compared.
 */
import type { AgentClient } from '../agent/client.ts';
import { O, RESTORABLE_DEVICES } from './files.ts';
import { sameOpenFile } from './kcmp.ts';
import type { Uncapturable } from './uncapturable.ts';

/** A descriptor as /proc shows it. */
export interface HeldFile {
  pid: number;
  fd: number;
  /** readlink /proc/PID/fd/FD */
  path: string;
  /** fdinfo flags */
  flags: number;
}

/** Why a description shared by several processes cannot be restored as one description per process; undefined when it can. Pure. */
export function sharedDescriptionProblem(path: string, flags: number): string | undefined {
  if ((flags & O.DIRECTORY) !== 0) return undefined;
  if (RESTORABLE_DEVICES.includes(path)) return undefined;
  if ((flags & 3) === O.WRONLY && (flags & O.APPEND) !== 0) return undefined;
  return `flags 0o${flags.toString(8)}: one offset the processes share, and a restore opens the file once per process`;
}

/** Pairs of descriptors of different processes with the same path, in a stable order: the candidates to compare. */
export function candidatePairs(files: readonly HeldFile[]): Array<[HeldFile, HeldFile]> {
  const byPath = new Map<string, HeldFile[]>();
  for (const f of files) byPath.set(f.path, [...(byPath.get(f.path) ?? []), f]);
  const pairs: Array<[HeldFile, HeldFile]> = [];
  for (const held of byPath.values()) {
    for (const [i, a] of held.entries()) for (const b of held.slice(i + 1)) if (a.pid !== b.pid) pairs.push([a, b]);
  }
  return pairs;
}

/**
 * The descriptions several of the stopped processes share that a restore
 * cannot give back as one per process (sharedDescriptionProblem), each
 * named by its path and the descriptors that hold it.
 */
export async function findSharedDescriptions(agent: AgentClient, files: readonly HeldFile[]): Promise<Uncapturable[]> {
  const found: Uncapturable[] = [];
  const reported = new Set<string>();
  for (const [a, b] of candidatePairs(files)) {
    const why = sharedDescriptionProblem(a.path, a.flags);
    if (why === undefined) continue;
    if (!(await sameDescription(agent, a, b))) continue;
    const key = `${a.pid}/${a.fd}`;
    if (reported.has(key)) continue;
    reported.add(key);
    found.push({ state: 'shared open file description', where: `pid ${a.pid} fd ${a.fd} and pid ${b.pid} fd ${b.fd}`, seen: `${a.path}, ${why}` });
  }
  return found;
}

/** Whether `a` and `b` are one open file description (kcmp.ts). */
function sameDescription(agent: AgentClient, a: HeldFile, b: HeldFile): Promise<boolean> {
  return sameOpenFile(agent, a, b, a.path);
}

/**
 * The open file descriptions several of the stopped processes share that
 * one description per process could not stand for (sharedDescriptionProblem):
 * each as every descriptor on it (a dup within one process is paired with
 * the other process's descriptors too, so it joins), in the order of `files`.
 */
export async function sharedDescriptionGroups(agent: AgentClient, files: readonly HeldFile[]): Promise<HeldFile[][]> {
  // Each descriptor's group, by its first descriptor: merged as kcmp finds pairs.
  const groupOf = new Map<HeldFile, HeldFile[]>();
  for (const [a, b] of candidatePairs(files)) {
    if (sharedDescriptionProblem(a.path, a.flags) === undefined) continue;
    if (groupOf.get(a) !== undefined && groupOf.get(a) === groupOf.get(b)) continue;
    if (!(await sameDescription(agent, a, b))) continue;
    const merged = [...new Set([...(groupOf.get(a) ?? [a]), ...(groupOf.get(b) ?? [b])])];
    for (const f of merged) groupOf.set(f, merged);
  }
  const order = new Map(files.map((f, i) => [f, i]));
  return [...new Set(groupOf.values())].map((g) => [...g].sort((x, y) => order.get(x)! - order.get(y)!)).sort((x, y) => order.get(x[0]!)! - order.get(y[0]!)!);
}
