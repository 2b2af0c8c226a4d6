/**
 * The checkpoint image as data: every piece of state a checkpoint records,
 * typed, and nothing else — no I/O, no validation, no capture. It is the
 * ground floor of restore/: the tar codec (image-tar.ts), validation
 * (validate.ts), capture and the plan compiler all build on these types,
 * and it imports nothing of restore/ itself.
 */
import type { PlatformDependencies } from './platform-dependencies.ts';
import type { UserRegs } from '../x86/registers.ts';

export interface ProcessInfo {
  /** guest path of the program, re-exec'd on restore */
  binary: string;
  argv: string[];
  envp: string[];
  noAslr: boolean;
  pid: number;
}

/** Facts about the platform the checkpoint was taken on (the platform profile). */
export type PlatformFacts = Record<string, string | number | boolean | null>;

export interface DebugRegs {
  dr0: bigint;
  dr1: bigint;
  dr2: bigint;
  dr3: bigint;
  dr6: bigint;
  dr7: bigint;
}

/** The debug registers an image records, in its order (dr4 and dr5 alias dr6 and dr7). */
export const DEBUG_REG_NAMES = ['dr0', 'dr1', 'dr2', 'dr3', 'dr6', 'dr7'] as const;

export interface MemoryRegion {
  start: bigint;
  end: bigint;
  /** "rw-p"; an "s" last means shared (MAP_SHARED) */
  perms: string;
  name: string;
  /** the file mapped, opened again on restore; null for anonymous memory (private or shared) */
  file: string | null;
  /** the file offset of `start`; 0 for anonymous memory */
  offset: bigint;
  /** tar entry holding the region's bytes; null for a shared file mapping, whose bytes are the file's */
  entry: string | null;
  /** UFFDIO_REGISTER_MODE_* bits of its userfaultfd registration; absent or 0 when none */
  userfault?: number;
  /**
   * pages of a registered region the fault server had not provided, as
   * sorted [start, end) ranges: zeros in the entry, never written on
   * restore, so that touching them faults to the server again
   */
  absent?: Array<[bigint, bigint]>;
  /**
   * the [start, end) page ranges the entry holds, sorted, concatenated in
   * this order (format 9, stored-pages.ts); every other page reads as the
   * mapping's backing: zeros, or the file. Absent in an image built in
   * memory: every page but the absent ones.
   */
  stored?: Array<[bigint, bigint]>;
  /**
   * the VmFlags mnemonics a restore gives back (vma-flags.ts: madvise
   * advice, mlock, MAP_NORESERVE, mw on a read-only shared file mapping);
   * absent when none (format 11, written only when present)
   */
  vmFlags?: string[];
}

export interface CheckpointImage {
  created: string;
  process: ProcessInfo;
  platform: PlatformFacts;
  regs: UserRegs;
  xstate: Buffer;
  debugRegs: DebugRegs;
  /** the rseq registration; null when the task had none */
  rseq: RseqState | null;
  /** dispositions, mask, alternate stack, pending queues */
  signals: SignalState;
  /** process group, session and open files */
  task: TaskState;
  /** the main thread's clear_child_tid and robust list (its other state is above) */
  links: ThreadLinks;
  /** every other thread, ascending by tid */
  threads: ThreadState[];
  /** the entries installed in the process's LDT, ascending by entry number; [] when it has none */
  ldt: LdtEntry[];
  /** interval timers, POSIX timers, timerfds */
  timers: TimerState;
  /** the deadline of the sleep the checkpoint interrupted (ERESTART_RESTARTBLOCK); null when none */
  sleep: SleepDeadline | null;
  /** the protection keys the process had allocated and the mappings tagged with one (pkeys.ts) */
  pkeys: PkeyState;
  /** what the process may depend on in the platform (platform-dependencies.ts); absent when not recorded (a version 9 image) */
  dependencies?: PlatformDependencies;
  /** the process's own CLOCK_MONOTONIC and CLOCK_BOOTTIME at the checkpoint, and its boot (time-namespace.ts); absent when not recorded (before version 11) */
  clocks?: ProcessClocks;
  /** /proc/PID/maps at checkpoint time */
  maps: string;
  regions: MemoryRegion[];
  memory: Map<string, Buffer>;
}

/** The tar entry of the index-th memory region's bytes. */
export function memoryEntryName(index: number): string {
  return `memory/${String(index).padStart(4, '0')}.bin`;
}

/**
 * What a thread's C library registered with the kernel about itself; 0 =
 * none. `robustList` is the head of a struct robust_list_head (24 bytes on
 * x86-64, the only length the kernel accepts).
 */
export interface ThreadLinks {
  clearChildTid: bigint;
  robustList: bigint;
}

/** A thread other than the main one: what the kernel keeps for it alone. */
export interface ThreadState extends ThreadLinks {
  tid: number;
  regs: UserRegs;
  xstate: Buffer;
  debugRegs: DebugRegs;
  /** its rseq registration; null when it has none */
  rseq: RseqState | null;
  /** blocked mask, bit n-1 = signal n */
  blocked: bigint;
  altstack: AltStack;
  /** its own pending queue, raw 128-byte siginfo records in delivery order (the shared queue is the process's) */
  pending: Buffer[];
}

/** The tar entry of a thread's XSAVE area. */
export function threadXstateEntry(tid: number): string {
  return `threads/${tid}-xstate.bin`;
}

/** A task's rseq registration (PTRACE_GET_RSEQ_CONFIGURATION). */
export interface RseqState {
  area: bigint;
  size: number;
  signature: number;
}

/** struct sigaction as the x86-64 kernel reads it (rt_sigaction). */
export interface SigAction {
  signo: number;
  handler: bigint;
  flags: bigint;
  restorer: bigint;
  mask: bigint;
}

export interface AltStack {
  sp: bigint;
  flags: number;
  size: bigint;
}

export interface SignalState {
  /** bit n-1 = signal n */
  blocked: bigint;
  /** dispositions other than the default, by signal number */
  actions: SigAction[];
  altstack: AltStack;
  /** raw 128-byte siginfo records, in delivery order */
  pending: { thread: Buffer[]; shared: Buffer[] };
}

export type FileKind = 'file' | 'directory' | 'device';

export interface OpenFile {
  fd: number;
  path: string;
  /** open flags as /proc/PID/fdinfo shows them (octal there) */
  flags: number;
  /** file offset */
  pos: bigint;
  kind: FileKind;
}

export interface TaskState {
  pgid: number;
  sid: number;
  files: OpenFile[];
  /** the process's userfaultfds (userfaultfd.ts); absent when none */
  userfaultfds?: UserfaultfdState[];
  /** its file-mode creation mask (umask(2)); absent in images from before it was kept: the restoring agent's */
  umask?: number;
  /** its eventfds (event-fds.ts); absent when none */
  eventfds?: EventfdState[];
  /** its signalfds (event-fds.ts); absent when none */
  signalfds?: SignalfdState[];
  /** the membarrier(2) registrations of its mm (membarrier.ts); absent when none */
  membarrier?: MembarrierRegistration[];
}

export interface EventfdState {
  fd: number;
  /** the counter, 0 to 2^64-2 */
  count: bigint;
  /** O_CLOEXEC and O_NONBLOCK, as eventfd2 takes them */
  flags: number;
  /** EFD_SEMAPHORE: each read takes 1 */
  semaphore: boolean;
}

export interface SignalfdState {
  fd: number;
  /** the signals it reads, bit n-1 = signal n */
  mask: bigint;
  /** O_CLOEXEC and O_NONBLOCK, as signalfd4 takes them */
  flags: number;
}

/** A private expedited membarrier registration (membarrier.ts). */
export type MembarrierRegistration = 'private-expedited' | 'private-expedited-sync-core' | 'private-expedited-rseq';

export interface UserfaultfdState {
  fd: number;
  /** O_CLOEXEC and O_NONBLOCK, as userfaultfd(2) takes them */
  flags: number;
  /** the UFFDIO_API features the server asked for; null when it never called UFFDIO_API */
  features: number | null;
}

/** One installed entry, as struct user_desc spells it (flag fields are 0 or 1, contents 0-3). */
export interface LdtEntry {
  entry_number: number;
  base_addr: number;
  /** 20 bits; in pages when limit_in_pages */
  limit: number;
  seg_32bit: number;
  /** bit 0: expand-down (data) or conforming (code); bit 1: code */
  contents: number;
  read_exec_only: number;
  limit_in_pages: number;
  seg_not_present: number;
  useable: number;
  lm: number;
}

/** The interval timers, in the order an image lists them. */
export const ITIMERS = ['real', 'virtual', 'prof'] as const;
export type ItimerWhich = (typeof ITIMERS)[number];

/** How a POSIX timer notifies: SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID. */
export const POSIX_NOTIFY = ['signal', 'none', 'thread-id'] as const;
export type PosixNotify = (typeof POSIX_NOTIFY)[number];

/** Remaining time and period, in nanoseconds (interval timers keep microseconds: multiples of 1000). */
export interface TimerSetting {
  valueNs: bigint;
  intervalNs: bigint;
}

export interface IntervalTimer extends TimerSetting {
  which: ItimerWhich;
}

export interface PosixTimer extends TimerSetting {
  id: number;
  clock: number;
  /** the signal sent; 0 with notify "none" */
  signo: number;
  /** sigev_value, handed to the handler as si_value */
  sival: bigint;
  notify: PosixNotify;
  /** the thread a "thread-id" timer signals; 0 otherwise */
  tid: number;
  /** timer_getoverrun at checkpoint time: recorded, not settable */
  overrun: number;
}

export interface TimerfdState extends TimerSetting {
  fd: number;
  clock: number;
  /** O_NONBLOCK and O_CLOEXEC of the descriptor */
  flags: number;
  /** expirations not read yet */
  ticks: bigint;
}

export interface TimerState {
  /** armed interval timers only, in ITIMERS order */
  itimers: IntervalTimer[];
  /** ascending by id */
  posix: PosixTimer[];
  /** ascending by fd */
  timerfds: TimerfdState[];
}

/**
 * The clocks as the checkpointed process read them (in its own time
 * namespace), a moment after it stopped: a restore in another boot gives it
 * a time namespace whose offsets continue them (time-namespace.ts).
 */
export interface ProcessClocks {
  monotonicNs: bigint;
  boottimeNs: bigint;
  /** the boot they count from (/proc/sys/kernel/random/boot_id) */
  bootId: string;
}

/** The sleep the checkpoint interrupted: enough to give it its deadline back. */
export interface SleepDeadline {
  /** the interrupted call: 35 (nanosleep) or 230 (clock_nanosleep, relative) */
  nr: number;
  /** where the program asked for the remaining time (the kernel wrote it there at the interruption) */
  rmtp: bigint;
  /** the remaining time the kernel wrote to rmtp, ns */
  remainingNs: bigint;
  /** CLOCK_MONOTONIC in the guest when the checkpoint read rmtp, ns */
  checkpointClockNs: bigint;
  /** checkpointClockNs + remainingNs: when the uninterrupted call would have returned */
  deadlineNs: bigint;
  /** /proc/sys/kernel/random/boot_id of the checkpointed guest: the monotonic clock is one boot's */
  bootId: string;
}

export interface PkeyState {
  /** keys the process had allocated, ascending, 0 left out */
  allocated: number[];
  /** mappings tagged with a key other than 0 */
  tagged: Array<{ start: bigint; end: bigint; pkey: number }>;
}
