/** The restore-policy switches, spelled the same way by every command that restores. */
import {
  DEFAULT_POLICY,
  OMITTABLE,
  parseOmit,
  parseRestorer,
  parseRegsPolicy,
  parseRfPolicy,
  parseRseqFixupPolicy,
  parseSyscallRestartPolicy,
  RF_POLICIES,
  REGS_POLICIES,
  RESTORERS,
  RSEQ_FIXUP_POLICIES,
  SYSCALL_RESTART_POLICIES,
  type RestorePolicy,
} from '../restore/policy.ts';
import { UsageError } from '../errors.ts';

export const policyOptions = {
  rf: { type: 'string' },
  regs: { type: 'string' },
  restorer: { type: 'string' },
  'rseq-fixup': { type: 'string' },
  omit: { type: 'string' },
  'syscall-restart': { type: 'string' },
} as const;

export const POLICY_USAGE =
  `[--rf ${RF_POLICIES.join('|')}] [--regs ${REGS_POLICIES.join('|')}] [--restorer ${RESTORERS.join('|')}]\n` +
  `                 [--rseq-fixup ${RSEQ_FIXUP_POLICIES.join('|')}] [--syscall-restart ${SYSCALL_RESTART_POLICIES.join('|')}] [--omit WHAT,...]`;

/** What --omit takes, wrapped to fit a terminal: printed under every usage that has the policy switches. */
export const OMIT_USAGE = wrapList('  --omit WHAT[,WHAT...], WHAT one of: ', OMITTABLE, 100);

function wrapList(lead: string, items: readonly string[], width: number): string {
  const lines: string[] = [];
  let line = lead;
  for (const [i, item] of items.entries()) {
    const word = `${item}${i < items.length - 1 ? ',' : ''}`;
    if (line.length + word.length + 1 > width && line.trim() !== lead.trim()) {
      lines.push(line.trimEnd());
      line = ' '.repeat(lead.length);
    }
    line += `${word} `;
  }
  lines.push(line.trimEnd());
  return lines.join('\n');
}

/** The policy the flags ask for; the default for every switch not given. Throws UsageError on an unknown value. */
export function policyFromFlags(values: Partial<Record<keyof typeof policyOptions, string | boolean>>): RestorePolicy {
  try {
    return policyOf(values);
  } catch (error) {
    // The policy parsers say which value of which switch they refused.
    if (error instanceof RangeError) throw new UsageError(`${error.message}\nrestore policy switches: ${POLICY_USAGE}\n${OMIT_USAGE}`);
    throw error;
  }
}

function policyOf(values: Partial<Record<keyof typeof policyOptions, string | boolean>>): RestorePolicy {
  const text = (name: keyof typeof policyOptions): string | undefined => (typeof values[name] === 'string' ? (values[name] as string) : undefined);
  const rf = text('rf');
  const regs = text('regs');
  const restorer = text('restorer');
  const rseqFixup = text('rseq-fixup');
  const omit = text('omit');
  const syscallRestart = text('syscall-restart');
  return {
    rf: rf ? parseRfPolicy(rf) : DEFAULT_POLICY.rf,
    regs: regs ? parseRegsPolicy(regs) : DEFAULT_POLICY.regs,
    restorer: restorer ? parseRestorer(restorer) : DEFAULT_POLICY.restorer,
    rseqFixup: rseqFixup ? parseRseqFixupPolicy(rseqFixup) : DEFAULT_POLICY.rseqFixup,
    omit: omit ? parseOmit(omit) : [],
    syscallRestart: syscallRestart ? parseSyscallRestartPolicy(syscallRestart) : DEFAULT_POLICY.syscallRestart,
  };
}
