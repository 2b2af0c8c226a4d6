/**
 * Restore policies: each switch reproduces one historic behaviour, so a case
 * can show the bug (negative control) and the fix on the same scenario.
 */
import { ImageRejectedError } from '../errors.ts';
import { EFLAGS, hex, type UserRegs } from '../x86/registers.ts';
import type { Restorer } from './restorers.ts';

/**
 * What happens to EFLAGS.RF on restart (containers list, 2009, "c/r: tolerate
 * X86_EFLAGS_RF on restart"):
 * - reject: the original restart check — an image with RF set is refused;
 * - clear: the first patch — RF dropped from the checkpoint (a breakpoint or
 *   fault re-triggers spuriously);
 * - keep: RF restored exactly as checkpointed;
 * - keep-and-preserve: the final policy — RF from the checkpoint, plus RF the
 *   restarting task already has.
 */
export const RF_POLICIES = ['reject', 'clear', 'keep', 'keep-and-preserve'] as const;
export type RfPolicy = (typeof RF_POLICIES)[number];

/**
 * Which general-purpose registers a restore writes:
 * - full: all of them;
 * - partial: all but the callee-saved rbp, rbx, r12–r15, which keep whatever
 *   the restarting task had — the 2015 entry-code bug (pt_regs built without
 *   pushing the callee-saved registers), injected as a fault.
 */
export const REGS_POLICIES = ['full', 'partial'] as const;
export type RegsPolicy = (typeof REGS_POLICIES)[number];

/** The registers the 2015 entry-code bug failed to save: x86-64's callee-saved set. */
export const CALLEE_SAVED = ['rbp', 'rbx', 'r12', 'r13', 'r14', 'r15'] as const;

export interface RestorePolicy {
  rf: RfPolicy;
  /** full when absent */
  regs?: RegsPolicy;
  /** how registers reach the task (restorers.ts); ptrace when absent */
  restorer?: Restorer;
}

export const DEFAULT_POLICY: RestorePolicy = { rf: 'keep-and-preserve', regs: 'full' };

export function parseRegsPolicy(value: string): RegsPolicy {
  if ((REGS_POLICIES as readonly string[]).includes(value)) return value as RegsPolicy;
  throw new RangeError(`unknown regs policy "${value}" (one of ${REGS_POLICIES.join(', ')})`);
}

export function parseRfPolicy(value: string): RfPolicy {
  if ((RF_POLICIES as readonly string[]).includes(value)) return value as RfPolicy;
  throw new RangeError(`unknown rf policy "${value}" (one of ${RF_POLICIES.join(', ')})`);
}

/** Refuses, before any guest operation, an image the policy does not admit. */
export function assertPolicyAdmits(imageEflags: bigint, policy: RestorePolicy): void {
  if (policy.rf === 'reject' && (imageEflags & EFLAGS.RF) !== 0n) {
    throw new ImageRejectedError(
      `${hex(imageEflags)} has RF (resume flag) set, which policy rf=reject refuses (the 2009 restart check)`,
      'regs.json',
      'eflags.RF',
    );
  }
}

/** The registers the restored task gets, given what the restarting task has now. */
export function restoredRegisters(image: UserRegs, target: UserRegs, policy: RestorePolicy): UserRegs {
  const regs = { ...image, eflags: restoredEflags(image.eflags, target.eflags, policy) };
  if ((policy.regs ?? 'full') === 'partial') for (const name of CALLEE_SAVED) regs[name] = target[name];
  return regs;
}

/** The EFLAGS value the restored task gets, given what the restarting task has now. */
export function restoredEflags(imageEflags: bigint, targetEflags: bigint, policy: RestorePolicy): bigint {
  switch (policy.rf) {
    case 'reject':
      assertPolicyAdmits(imageEflags, policy);
      return imageEflags;
    case 'clear':
      return imageEflags & ~EFLAGS.RF;
    case 'keep':
      return imageEflags;
    case 'keep-and-preserve':
      return imageEflags | (targetEflags & EFLAGS.RF);
  }
}
