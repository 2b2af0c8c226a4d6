/**
 * The kernel's answer to each restore a case makes — what the restore core
 * asked, what the kernel holds after it (restore.ts's read-back), or the
 * refusal — kept until the case records its next verdict row, which carries
 * them (verdict-rows.ts). A case process runs its subtests one at a time, so
 * "the restores since the previous row" are the row's own.
 */
import type { AgentClient } from '../agent/client.ts';
import type { CheckpointImage } from '../restore/checkpoint-image.ts';
import { restoreProcess, type RestoreOptions, type RestoreResult } from '../restore/restore.ts';
import type { RestoreWitness } from '../report/verdicts.ts';
import { restoreTree, type TreeRestoreOptions, type TreeRestoreResult } from '../restore/tree-restore.ts';
import type { ProcessTree } from '../restore/tree.ts';

const pending: RestoreWitness[] = [];

/** Notes one restore's outcome for the next row. */
export function noteRestore(witness: RestoreWitness): void {
  pending.push(witness);
}

/** Adds what the CPU oracle counted to the pending restore `tag` (the latest of that tag). */
export function noteOracle(tag: string, counts: string): void {
  const witness = pending.findLast((w) => w.tag === tag);
  if (witness) witness.oracle = counts;
}

/** The restores noted since the last call, oldest first. */
export function takeRestores(): RestoreWitness[] {
  return pending.splice(0);
}

/**
 * restoreProcess, its read-back (or its refusal) noted for the next verdict
 * row under `tag` — or handed to `note`, for restores made ahead of their row
 * (a sweep restoring under a policy and its control in one go), which the row
 * notes itself when its turn comes.
 */
export async function restoreWitnessed(
  agent: AgentClient,
  image: CheckpointImage,
  options: RestoreOptions,
  tag: string,
  note: (witness: RestoreWitness) => void = noteRestore,
): Promise<RestoreResult> {
  try {
    const restored = await restoreProcess(agent, image, options);
    note({ tag, differences: restored.differences });
    return restored;
  } catch (error) {
    note({ tag, differences: [], refused: error instanceof Error ? error.message : String(error) });
    throw error;
  }
}

/** restoreTree (tree-restore.ts), its read-back (every process's, and the tree's) or its refusal noted for the next verdict row under `tag`. */
export async function restoreTreeWitnessed(agent: AgentClient, tree: ProcessTree, options: TreeRestoreOptions, tag: string): Promise<TreeRestoreResult> {
  try {
    const restored = await restoreTree(agent, tree, options);
    noteRestore({ tag, differences: restored.differences });
    return restored;
  } catch (error) {
    noteRestore({ tag, differences: [], refused: error instanceof Error ? error.message : String(error) });
    throw error;
  }
}
