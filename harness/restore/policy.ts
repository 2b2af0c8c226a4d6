/**
 * Restore policies: each switch reproduces one historic behaviour, so a case
 * can show the bug (negative control) and the fix on the same scenario.
 */
import { ImageRejectedError } from '../errors.ts';
import { EFLAGS, hex } from '../x86/registers.ts';

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

export interface RestorePolicy {
  rf: RfPolicy;
}

export const DEFAULT_POLICY: RestorePolicy = { rf: 'keep-and-preserve' };

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
