/**
 * What CRIU is documented or measured not to restore, each with where that
 * is written down or measured. A CRIU row whose difference from the
 * uninterrupted run is exactly one of these is a "known engine gap"
 * (report/verdicts.ts EngineGap): neither a harness failure nor a finding.
 * Anything else CRIU does differently is a finding.
 */
import type { EngineGap } from '../report/verdicts.ts';

export const CRIU_GAPS = {
  debugRegisters: {
    what: "the task's own debug registers (DR0-DR3, DR7) are not restored: a hardware breakpoint or watchpoint set on the task is gone",
    reference:
      "CRIU's x86 core image (images/core-x86.proto) has no debug-register field, and compel's ptrace_set_breakpoint/ptrace_flush_breakpoints " +
      '(compel/arch/x86) arm DR0/DR7 of the restored task to stop it at sigreturn, then clear DR7; measured with CRIU 4.1.1 on the Debian 6.1 guest: ' +
      'dumped with DR0 = the breakpoint, DR7 = 0x1, restored with DR7 = 0 (docs/reproducing.md, harness/repro/criu-run.ts)',
  },
  userfaultfd: {
    what: "a task's own userfaultfd is not dumped: CRIU refuses the process",
    reference:
      "CRIU's images/fdinfo.proto fd_types has no userfaultfd kind (CRIU uses userfaultfd itself only for --lazy-pages), and an anon inode no dumper " +
      'claims goes to criu/files-ext.c, which asks the plugins (DUMP_EXT_FILE) and, none taking it, fails the dump; measured with CRIU 4.1.1 on the ' +
      'Debian 6.1 guest: "Error (criu/files-ext.c:94): Can\'t dump file 3 of that type [600] (anon anon_inode:[userfaultfd])" (cases/uffd.test.ts)',
  },
} as const satisfies Record<string, EngineGap>;

/**
 * Why a policy row of the crh engine has no CRIU counterpart: the switches
 * describe crh's restore core (which historic behaviour it reproduces), and
 * CRIU restores by its own rules.
 */
export const POLICY_NOT_FOR_CRIU = 'policy switches that describe the TS core do not apply to CRIU';
