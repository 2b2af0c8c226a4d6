/**
 * A daemon named by a pid file, checkpointed and restored with everything
 * it forked: the tree rooted at the daemon (restore/tree-checkpoint.ts and
 * tree-restore.ts: the same pids, parent links, groups and sessions, shared
 * anonymous memory as one object, pipes with their queued bytes), and each
 * process's descriptors 0-2 given back by path (daemon-stdio.ts). Used by
 * `crh zdtm` and by `--pid-file` on `crh cr` and `crh repro` alike.
 *
 * A daemon with no descendants, no pipe and no socketpair goes through the one-process
 * checkpoint and restore (its image has no tree.json), as before trees
 * existed. A tree the restore core cannot rebuild is refused by name at
 * the checkpoint (a CheckpointError: a C/R limitation, exit 1).
 */
import { stat } from 'node:fs/promises';
import type { AgentClient } from '../agent/client.ts';
import { CrhError } from '../errors.ts';
import { writeCheckpointImage, type PlatformFacts, type ProcessInfo } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { restoreProcess, type RestoreOptions, type RestoreResult } from '../restore/restore.ts';
import { findSharedDescriptions } from '../restore/shared-descriptions.ts';
import { checkpointTree, descendantsOf, scanProcesses } from '../restore/tree-checkpoint.ts';
import { writeTreeImage } from '../restore/tree-image.ts';
import { releaseDescendants, restoreTree } from '../restore/tree-restore.ts';
import type { ProcessTree } from '../restore/tree.ts';
import { uncapturableError } from '../restore/uncapturable.ts';
import { captureStdio, reattachStdio, type StdioFile } from './daemon-stdio.ts';

export interface DaemonCheckpoint {
  tree: ProcessTree;
  /** each process's descriptors 0-2, by pid */
  stdio: Map<number, StdioFile[]>;
}

/** Whether the checkpoint is one process with nothing only a tree holds (a pipe, a socketpair, a memfd, a shared description, a FIFO): restored as one process. */
export function isSingleProcess(tree: ProcessTree): boolean {
  return (
    tree.members.length === 1 &&
    (tree.pipes ?? []).length === 0 &&
    (tree.socketpairs ?? []).length === 0 &&
    (tree.memfds ?? []).length === 0 &&
    (tree.sharedFiles ?? []).length === 0 &&
    (tree.fifos ?? []).length === 0
  );
}

/**
 * Checkpoints the stopped daemon `process.pid` and all its descendants
 * (each stopped too, and left stopped), with every process's descriptors
 * 0-2 except those on `harnessFiles`. On a refusal the caller kills the
 * tree (killDaemonTree): its processes are stopped under the agent.
 */
export async function checkpointDaemon(
  agent: AgentClient,
  process: ProcessInfo,
  platform: PlatformFacts,
  harnessFiles: readonly string[] = [],
): Promise<DaemonCheckpoint> {
  const tree = await checkpointTree(agent, process, platform);
  const stdio = new Map<number, StdioFile[]>();
  for (const m of tree.members) stdio.set(m.pid, await captureStdio(agent, m.pid, harnessFiles));
  // Each process's 0-2 are opened again by path, one description each: refused where the processes could tell.
  const held = [...stdio].flatMap(([pid, files]) => files.flatMap((f) => (f.path === undefined ? [] : [{ pid, fd: f.fd, path: f.path, flags: f.flags }])));
  const shared = await findSharedDescriptions(agent, held);
  if (shared.length > 0) throw uncapturableError(process.pid, shared);
  return { tree, stdio };
}

/** Writes the checkpoint as one image file (a tree image when it is one) and returns its size in bytes. */
export async function writeDaemonImage(checkpoint: DaemonCheckpoint, file: string): Promise<number> {
  if (isSingleProcess(checkpoint.tree)) await writeCheckpointImage(checkpoint.tree.members[0]!.image, file);
  else await writeTreeImage(checkpoint.tree, file);
  return (await stat(file)).size;
}

/**
 * Kills the daemon and every descendant of it still alive, each seized
 * first when the agent does not trace it yet (a refused checkpoint may
 * have stopped only some). Best effort: a process that ended meanwhile is
 * no error. Returns the pids killed.
 */
export async function killDaemonTree(agent: AgentClient, root: number): Promise<number[]> {
  const pids = [root, ...descendantsOf(root, await scanProcesses(agent)).map((p) => p.pid)];
  const killed: number[] = [];
  for (const pid of pids) {
    await agent.call({ op: 'ATTACH', pid }).catch(() => {});
    if (
      await agent.call({ op: 'KILL', pid }).then(
        () => true,
        () => false,
      )
    )
      killed.push(pid);
  }
  return killed;
}

export interface RestoredDaemon extends RestoreResult {
  /** every process of the tree, the root first */
  pids: number[];
}

/**
 * Restores the checkpoint (every process with its own pid), gives each
 * process its descriptors 0-2 back and lets the root's descendants run on
 * untraced; the root is left stopped under the agent. A failure leaves
 * nothing behind (every restored process is killed) and is thrown.
 */
export async function restoreDaemon(
  agent: AgentClient,
  checkpoint: DaemonCheckpoint,
  options: { policy: RestorePolicy; stdoutPath: string; dependencies?: RestoreOptions['dependencies'] },
): Promise<RestoredDaemon> {
  const { tree, stdio } = checkpoint;
  const pids = tree.members.map((m) => m.pid);
  let restored: RestoreResult;
  if (isSingleProcess(tree)) {
    restored = await restoreProcess(agent, tree.members[0]!.image, options);
  } else {
    // A tree is restored in the guest it was taken in or refused where a dependency is missing: no 'try' for trees yet.
    const result = await restoreTree(agent, tree, { policy: options.policy, stdoutPath: options.stdoutPath });
    const root = result.members[0]!;
    restored = { ...root, differences: result.differences };
  }
  try {
    for (const pid of pids) await reattachStdio(agent, pid, stdio.get(pid) ?? []);
  } catch (error) {
    for (const pid of pids) await agent.call({ op: 'KILL', pid }).catch(() => {});
    if (error instanceof CrhError) error.details.target = `pids ${pids.join(', ')} killed`;
    throw error;
  }
  await releaseDescendants(agent, tree);
  return { ...restored, pids };
}

/** What the checkpoint holds, for a progress line: its processes and pipes. */
export function describeTreeShape(tree: ProcessTree): string {
  const count = (n: number, what: string): string => (n > 0 ? `, ${n} ${what}${n === 1 ? '' : 's'}` : '');
  return `${tree.members.length} process${tree.members.length === 1 ? '' : 'es'} (pid ${tree.members.map((m) => m.pid).join(', ')})${count((tree.pipes ?? []).length, 'pipe')}${count((tree.socketpairs ?? []).length, 'socketpair')}${count((tree.memfds ?? []).length, 'memfd')}${count((tree.sharedFiles ?? []).length, 'shared file description')}${count((tree.fifos ?? []).length, 'FIFO')}${count((tree.zombies ?? []).length, 'zombie')}`;
}
