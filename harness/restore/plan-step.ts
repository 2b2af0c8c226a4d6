/** The pieces of a restore plan, shared by the plan compiler and the restorers. */
import type { AgentOp } from '../agent/ops.ts';
import { CrhError } from '../errors.ts';
import type { UserRegs } from '../x86/registers.ts';
import type { Mapping } from './proc-maps.ts';
import type { PlatformDependencies } from './platform-dependencies.ts';

export interface TargetProbe {
  pid: number;
  regs: UserRegs;
  maps: Mapping[];
  /** descriptors the fresh target has open; 0-2 when absent */
  fds?: number[];
  /** what the target sees at each path the image's file mappings name (mappings.ts probeMappedFiles) */
  files?: Map<string, MappedFileState>;
  /** the restoring guest's boot id: an interrupted sleep's deadline is absolute only in its own boot (sleep-deadline.ts) */
  bootId?: string;
  /**
   * Set when the target is one process of a tree being restored
   * (tree-restore.ts): its session and process group are already the
   * image's, and `inheritedShared` are shared anonymous mappings it holds
   * already — the tree's shared objects, created once by an ancestor and
   * inherited — which the plan neither maps again nor refuses as occupants.
   */
  tree?: { inheritedShared: Mapping[] };
  /** what the target's platform offers (platform-dependencies.ts): a vDSO with other offsets is redirected (vdso-redirect.ts) */
  dependencies?: PlatformDependencies;
  /** checkpoint − target clocks when the restore is in another boot: the offsets of the time namespace the target enters first (time-namespace.ts) */
  clockOffsets?: { monotonicNs: bigint; boottimeNs: bigint };
}

/** What the target sees at a mapped file's path: null when there is nothing (ENOENT, ENOTDIR). */
export type MappedFileState = { size: bigint; regular: boolean } | null;

export interface PlanStep {
  op: AgentOp;
  /** why the step is there, for --dry-run and errors */
  why: string;
  /** for INJECT_SYSCALL: the result that means success */
  expect?: bigint;
}

export class PlanError extends CrhError {
  override readonly name = 'PlanError';
}
