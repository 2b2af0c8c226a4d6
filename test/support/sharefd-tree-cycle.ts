/**
 * One run of a sharefd tree mode through the real agent on the host kernel: spawned with a breakpoint on
 * sharefd_checkpoint, stopped there, then run to its end — through a checkpoint, a kill and a restore of the whole tree
 * under `policy` when one is given, straight on when not (the reference). The host tests of shared objects in trees
 * (FIFOs, memfd mappings) each take their rows from it.
 */
import path from 'node:path';
import { spawnWithBreakpoint } from '../../harness/agent/breakpoint-spawn.ts';
import type { AgentClient } from '../../harness/agent/client.ts';
import type { RestorePolicy } from '../../harness/restore/policy.ts';
import type { ProcessTree } from '../../harness/restore/tree.ts';
import { checkpointTree } from '../../harness/restore/tree-checkpoint.ts';
import { readTreeImage, writeTreeImage } from '../../harness/restore/tree-image.ts';
import { releaseDescendants, restoreTree, type TreeRestoreResult } from '../../harness/restore/tree-restore.ts';
import { killDaemonTree } from '../../harness/repro/daemon-tree.ts';

export interface SharefdCycle {
  /** "<outcome> <code> <the program's output>" */
  line: string;
  /** set when the run went through a checkpoint and restore */
  tree?: ProcessTree;
  restored?: TreeRestoreResult;
  checkpointed?: ProcessTree;
  timing?: string;
}

export interface SharefdTree {
  agent: AgentClient;
  binary: string;
  breakAt: bigint;
  /** where the outputs and images go */
  dir: string;
  /** registers each spawned tree's cleanup */
  teardown: (fn: () => Promise<unknown>) => void;
}

/** Runs `argv` (sharefd's mode and its arguments after the binary) once per call; see the module comment. */
export function sharefdTreeCycle(s: SharefdTree, mode: string[]): (tag: string, policy?: RestorePolicy) => Promise<SharefdCycle> {
  const { agent, binary, breakAt, dir } = s;
  const read = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 4096 })).toString();
  return async (tag, policy) => {
    const out = path.join(dir, `${tag}.out`);
    const argv = [binary, ...mode];
    const pid = await spawnWithBreakpoint(agent, { binary, argv, breakAt }, out);
    s.teardown(() => killDaemonTree(agent, pid));
    const hit = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    if (hit.outcome !== 'hit-limit') throw new Error(`sharefd ${mode[0]} never reached sharefd_checkpoint: ${hit.outcome} ${hit.code}`);
    if (!policy) {
      const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
      return { line: `${end.outcome} ${end.code} ${(await read(out)).trim()}` };
    }
    const started = Date.now();
    const checkpointed = await checkpointTree(agent, { binary, argv, envp: [], noAslr: true, pid }, { host: true });
    const checkpointMs = Date.now() - started;
    const imageFile = path.join(dir, `${tag}.img`);
    await writeTreeImage(checkpointed, imageFile);
    for (const m of checkpointed.members) await agent.call({ op: 'KILL', pid: m.pid });
    const tree = await readTreeImage(imageFile);
    const restoredOut = path.join(dir, `${tag}.restored.out`);
    const restoreStarted = Date.now();
    const restored = await restoreTree(agent, tree, { policy, stdoutPath: restoredOut });
    const restoreMs = Date.now() - restoreStarted;
    await releaseDescendants(agent, tree);
    const end = await agent.call({ op: 'RUN', pid: tree.members[0]!.pid, stopAfterHits: 0, timeoutMs: 30_000 });
    return {
      line: `${end.outcome} ${end.code} ${(await read(restoredOut)).trim()}`,
      tree,
      restored,
      checkpointed,
      timing: `checkpoint ${checkpointMs} ms, restore ${restoreMs} ms`,
    };
  };
}
