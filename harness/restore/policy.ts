/**
 * Restore policies: each switch reproduces one historic behaviour, so a case
 * can show the bug (negative control) and the fix on the same scenario.
 */
import { ImageRejectedError } from '../errors.ts';
import { EFLAGS, hex, type UserRegs } from '../x86/registers.ts';

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

/**
 * rseq-fixup (CRIU wiki): on — a task checkpointed inside an rseq critical
 * section resumes at its abort handler (rseq.ts); off — it resumes at the
 * checkpointed IP, and the section commits as if never interrupted.
 */
export const RSEQ_FIXUP_POLICIES = ['on', 'off'] as const;
export type RseqFixupPolicy = (typeof RSEQ_FIXUP_POLICIES)[number];

/**
 * State a restart forgot, injected as a fault (OpenVZ restart, 2008: debug
 * registers, FPU state and TLS were each missed at some point; CRIU before
 * rseq support never re-registered rseq; signals = dispositions, mask,
 * alternate stack and pending queues; files = descriptors above stdio and
 * the session). An omitted piece keeps whatever the
 * freshly exec'd target has — for a thread the plan creates, whatever
 * clone3 gave it:
 * - thread-xstate: the threads other than the main one get no xstate of
 *   their own and keep the copy of the main thread's they were created
 *   with (under the ptrace and popf restorers the main thread's xstate is
 *   restored before the threads are created): one FPU state per process;
 * - thread-masks: their blocked masks are not set and stay what they were
 *   created with, everything blocked (none when signals are omitted);
 * - thread-links: no clear_child_tid and no robust futex list for any
 *   thread, the main one included (pthread_join then waits for ever, and a
 *   robust mutex of a dead thread is never marked owner-dead);
 * - mapping-kinds: every mapping the target lacks is recreated as private
 *   anonymous memory with the image's contents written in, as this harness
 *   did before shared and file mappings were restored (mappings.ts): shared
 *   anonymous memory is private, a file mapping has lost its file (a write
 *   through a shared one no longer reaches it) and a shared file mapping,
 *   whose contents the image does not hold, reads as zeros; a memfd several
 *   processes of a tree hold or map is made (and mapped) once per holder, a
 *   copy each (tree-memfds.ts): a write by one is not seen by another;
 * - userfaultfd: no userfaultfd is created and nothing registered, and the
 *   pages its server had not provided are written as the zeros the image
 *   holds — a restorer that knows nothing of userfaultfd: a fault the
 *   server held never reaches it, and the access reads zeros.
 * - ldt: no LDT entry is installed (ldt.ts) — the OpenVZ 2008 restart
 *   report's LDT decoding, missing: a selector with TI = 1 in a segment
 *   register is loaded as null when the task first runs, and a program that
 *   loads one of its LDT selectors itself gets #GP (SIGSEGV) — also where
 *   the entry was a not-present one, which raises #NP (SIGBUS).
 * - timers: no interval timer, POSIX timer or timerfd is created or armed
 *   (timers.ts) — a restorer that knows nothing of timers: a program
 *   waiting for its periodic SIGALRM waits for ever, and a timerfd's
 *   descriptor is not there.
 * - pkeys: no protection key allocated and no mapping tagged (pkeys.ts) — a
 *   restorer that knows nothing of PKU: the tagged memory has key 0, so a
 *   write PKRU denies goes through, and pkey_alloc hands out a key the
 *   program still holds. (PKRU itself is in the xstate: omit=xstate.)
 * - string-regs: RCX, RSI and RDI keep the restarting task's values — a
 *   restorer that treats them as scratch, as they are at a call (caller-
 *   saved argument registers, what a save point at a function call need not
 *   keep): a task checkpointed in the middle of a rep string instruction
 *   (RIP at it, RCX the count left, RSI/RDI advanced) resumes the copy from
 *   wherever those registers happen to point. The sweep over a rep movsb
 *   (examples/repro/rep-sweep.c) fails exactly where they are live.
 * - pipe-contents: a tree's pipes, unix socketpairs and FIFOs are created and
 *   their ends placed, but the data queued in them is not written back
 *   (tree-pipes.ts, tree-sockets.ts, tree-fifos.ts) — a restorer that drops pipe and socket
 *   contents: the reader waits for data that never comes, or sees end of
 *   file early.
 * - shared-descriptions: an open file description several processes of a
 *   tree share (a file opened before a fork) is opened once per holding
 *   process instead of once for all (tree-files.ts) — a restorer that opens
 *   every descriptor by path: each process gets an offset of its own, so a
 *   write by one no longer moves where the other writes, and one overwrites
 *   the other's bytes.
 * - vdso: a restore onto a kernel whose vDSO has other offsets leaves it as
 *   it is (vdso-redirect.ts): the functions the process resolved in the old
 *   one are other code there. Refused as a missing dependency unless the
 *   restore is tried anyway.
 * - timens: a restore in another boot does not put the process into a time
 *   namespace (time-namespace.ts): its CLOCK_MONOTONIC and CLOCK_BOOTTIME
 *   are the restoring boot's, backwards or ahead of where they were.
 * - umask: the process's file-mode creation mask is not given back
 *   (files.ts umaskSteps): it gets the restoring agent's (0022), as before
 *   the umask was kept.
 * - vma-flags: the mapping attributes a restore gives back (vma-flags.ts)
 *   are not: no madvise advice, no mlock, no MAP_NORESERVE, and a shared
 *   file mapping that is read-only now is mapped from a read-only open (a
 *   later mprotect to PROT_WRITE fails with EACCES), as before they were kept.
 * - zombies: a tree's zombies (tree-zombies.ts) are not made again: their
 *   parents' waits find no such child (ECHILD), as if they had been reaped.
 * - eventfd: no eventfd is created (event-fds.ts): the descriptor is not
 *   there, and the program's read or write of it fails with EBADF — its
 *   counter is lost.
 * - signalfd: no signalfd is created (event-fds.ts): the descriptor is not
 *   there, and the signals it would have read stay pending.
 * - membarrier: the process is not registered for the private expedited
 *   membarrier commands again (membarrier.ts): its next one fails with
 *   EPERM, as before registrations were kept.
 */
export const OMITTABLE = [
  'debugregs',
  'xstate',
  'tls',
  'rseq',
  'signals',
  'files',
  'thread-xstate',
  'thread-masks',
  'thread-links',
  'mapping-kinds',
  'userfaultfd',
  'ldt',
  'timers',
  'pkeys',
  'string-regs',
  'pipe-contents',
  'shared-descriptions',
  'vdso',
  'timens',
  'umask',
  'vma-flags',
  'zombies',
  'eventfd',
  'signalfd',
  'membarrier',
] as const;
export type Omittable = (typeof OMITTABLE)[number];

/** The registers a string instruction in progress keeps its count and pointers in (omit=string-regs). */
export const STRING_REGISTERS = ['rcx', 'rsi', 'rdi'] as const;

/** The segment registers and bases that make up a 64-bit task's TLS. */
export const TLS_REGISTERS = ['fs_base', 'gs_base', 'fs', 'gs'] as const;

/**
 * syscall-restart: on — a task checkpointed inside an interrupted system
 * call issues it again (syscall-restart.ts); off — its registers are
 * restored verbatim and the raw -ERESTART* reaches the program (a restorer
 * that copies registers without looking at them).
 */
export const SYSCALL_RESTART_POLICIES = ['on', 'off'] as const;
export type SyscallRestartPolicy = (typeof SYSCALL_RESTART_POLICIES)[number];

/** How registers reach the restored task: each mechanism is described, and built, in restorers.ts. */
export const RESTORERS = ['ptrace', 'sigreturn', 'popf'] as const;
export type Restorer = (typeof RESTORERS)[number];

export function parseRestorer(value: string): Restorer {
  if ((RESTORERS as readonly string[]).includes(value)) return value as Restorer;
  throw new RangeError(`unknown restorer "${value}" (one of ${RESTORERS.join(', ')})`);
}

export interface RestorePolicy {
  rf: RfPolicy;
  /** full when absent */
  regs?: RegsPolicy;
  /** how registers reach the task (restorers.ts); ptrace when absent */
  restorer?: Restorer;
  /** on when absent */
  rseqFixup?: RseqFixupPolicy;
  /** fault injection: state not restored; none when absent */
  omit?: readonly Omittable[];
  /** on when absent */
  syscallRestart?: SyscallRestartPolicy;
}

export function omits(policy: RestorePolicy, what: Omittable): boolean {
  return policy.omit?.includes(what) ?? false;
}

/** A policy as the verdict table and the CLI spell it. */
export function describePolicy(policy: RestorePolicy): string {
  const parts = [`rf=${policy.rf}`, `restorer=${policy.restorer ?? 'ptrace'}`, `regs=${policy.regs ?? 'full'}`, `rseq-fixup=${policy.rseqFixup ?? 'on'}`];
  if (policy.syscallRestart === 'off') parts.push('syscall-restart=off');
  if (policy.omit?.length) parts.push(`omit=${policy.omit.join(',')}`);
  return parts.join(' ');
}

export const DEFAULT_POLICY: RestorePolicy = { rf: 'keep-and-preserve', regs: 'full', restorer: 'ptrace', rseqFixup: 'on', syscallRestart: 'on' };

export function parseRegsPolicy(value: string): RegsPolicy {
  if ((REGS_POLICIES as readonly string[]).includes(value)) return value as RegsPolicy;
  throw new RangeError(`unknown regs policy "${value}" (one of ${REGS_POLICIES.join(', ')})`);
}

export function parseSyscallRestartPolicy(value: string): SyscallRestartPolicy {
  if ((SYSCALL_RESTART_POLICIES as readonly string[]).includes(value)) return value as SyscallRestartPolicy;
  throw new RangeError(`unknown syscall-restart policy "${value}" (one of ${SYSCALL_RESTART_POLICIES.join(', ')})`);
}

export function parseRseqFixupPolicy(value: string): RseqFixupPolicy {
  if ((RSEQ_FIXUP_POLICIES as readonly string[]).includes(value)) return value as RseqFixupPolicy;
  throw new RangeError(`unknown rseq-fixup policy "${value}" (one of ${RSEQ_FIXUP_POLICIES.join(', ')})`);
}

/** A comma-separated list of OMITTABLE names; empty means nothing omitted. */
export function parseOmit(value: string): Omittable[] {
  const names = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const name of names) {
    if (!(OMITTABLE as readonly string[]).includes(name)) throw new RangeError(`unknown omit "${name}" (any of ${OMITTABLE.join(', ')})`);
  }
  return names as Omittable[];
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
  if (omits(policy, 'tls')) for (const name of TLS_REGISTERS) regs[name] = target[name];
  if (omits(policy, 'string-regs')) for (const name of STRING_REGISTERS) regs[name] = target[name];
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
