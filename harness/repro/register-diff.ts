/**
 * The register diff of a bundle: every register as the checkpoint recorded
 * it beside what the restored process holds at its restore stop, each
 * difference explained when the policy accounts for it, then what the
 * kernel accepted differently from the restore plan's request.
 */
import { CALLEE_SAVED, describePolicy, omits, TLS_REGISTERS, type RestorePolicy } from '../restore/policy.ts';
import type { Difference } from '../restore/restore.ts';
import { EFLAGS, hex, USER_REGS_FIELDS, type UserRegs } from '../x86/registers.ts';

export interface RegisterDiffInput {
  image: UserRegs;
  /** ptrace view of the restored process at its restore stop; absent when the restore failed */
  restored?: UserRegs;
  policy: RestorePolicy;
  /** RestoreResult.differences */
  kernel: readonly Difference[];
  /** what the checkpoint rewound (an interrupted system call), if anything */
  rewound?: string;
}

export function formatRegisterDiff(input: RegisterDiffInput): string {
  const { image, restored, policy } = input;
  const restorer = policy.restorer ?? 'ptrace';
  const lines = [`# registers: checkpoint image vs the restored process at its restore stop (ptrace GETREGS)`, `# policy: ${describePolicy(policy)}`];
  if (input.rewound) lines.push(`# the image holds the registers after the checkpoint rewound it: ${input.rewound}`);
  if (restorer === 'sigreturn')
    lines.push('# restorer=sigreturn: the registers reach the task through an rt_sigframe when it runs; at the restore stop ptrace shows the trampoline entry');
  if (restorer === 'popf')
    lines.push("# restorer=popf: the task enters a popfq; ret trampoline, so rip, rsp and eflags at the restore stop are the trampoline's");
  if (!restored) lines.push('# the restore did not produce a process: image values only');
  lines.push(['register'.padEnd(9), 'image'.padEnd(20), 'restored'.padEnd(20), 'note'].join(' ').trimEnd());
  for (const name of USER_REGS_FIELDS) {
    const want = image[name];
    const got = restored?.[name];
    let note = '';
    if (got !== undefined && got !== want) note = `differs${explain(name, want, got, policy)}`;
    lines.push([name.padEnd(9), hex(want).padEnd(20), (got === undefined ? '-' : hex(got)).padEnd(20), note].join(' ').trimEnd());
  }
  lines.push('', "# what the kernel accepted differently from the plan's request (RestoreResult.differences)");
  if (input.kernel.length === 0) lines.push(restored ? 'none' : '(no restore)');
  for (const d of input.kernel) lines.push(`${d.what}: requested ${d.requested}, accepted ${d.accepted}`);
  return `${lines.join('\n')}\n`;
}

function explain(name: string, want: bigint, got: bigint, policy: RestorePolicy): string {
  if ((policy.regs ?? 'full') === 'partial' && (CALLEE_SAVED as readonly string[]).includes(name))
    return " (regs=partial: callee-saved registers keep the fresh target's values)";
  if (omits(policy, 'tls') && (TLS_REGISTERS as readonly string[]).includes(name)) return " (omit=tls: the fresh target's TLS)";
  if (name === 'eflags' && (want ^ got) === EFLAGS.RF) return ` (only RF differs: rf=${policy.rf})`;
  return '';
}

/**
 * The registers a restored process does not hold as its image recorded them,
 * at its restore stop — the check each cycle of a chain (--cycles) gets, so
 * that the verdict names the cycle that first lost state. Left out: RF alone
 * in eflags (the rf policy decides it), rip and rax when the checkpoint
 * rewound a system call (the plan issues it again), and everything when the
 * restorer is not ptrace (the stop shows its trampoline, not the registers).
 * Undefined when no comparison is possible.
 */
export function differingRegisters(image: UserRegs, restored: UserRegs, policy: RestorePolicy, rewound: boolean): string[] | undefined {
  if ((policy.restorer ?? 'ptrace') !== 'ptrace') return undefined;
  return USER_REGS_FIELDS.filter((name) => {
    const want = image[name];
    const got = restored[name];
    if (got === want) return false;
    if (name === 'eflags' && (want ^ got) === EFLAGS.RF) return false;
    if (rewound && (name === 'rip' || name === 'rax' || name === 'orig_rax')) return false;
    return true;
  });
}
