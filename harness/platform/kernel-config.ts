/** A kernel .config, parsed: option name → "y" | "m" | a value, or "n" when "is not set". */
import { readFile } from 'node:fs/promises';

export type KernelConfig = Map<string, string>;

export function parseKernelConfig(text: string): KernelConfig {
  const config: KernelConfig = new Map();
  for (const line of text.split('\n')) {
    const set = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (set) config.set(set[1]!, set[2]!.replace(/^"(.*)"$/, '$1'));
    const unset = /^# (CONFIG_[A-Za-z0-9_]+) is not set$/.exec(line);
    if (unset) config.set(unset[1]!, 'n');
  }
  return config;
}

export async function readKernelConfig(file: string | undefined): Promise<KernelConfig | undefined> {
  return file ? parseKernelConfig(await readFile(file, 'utf8')) : undefined;
}

/** The options the cases depend on, and what each is for. */
export const CASE_OPTIONS: Readonly<Record<string, string>> = {
  CONFIG_RSEQ: 'restartable sequences (rseq cases)',
  CONFIG_USERFAULTFD: 'faults held open by userfaultfd',
  CONFIG_HAVE_HW_BREAKPOINT: 'ptrace hardware breakpoints and watchpoints',
  CONFIG_CHECKPOINT_RESTORE:
    'checkpoint/restore interfaces (prctl PR_GET_TID_ADDRESS); clone3 set_tid needs only CAP_CHECKPOINT_RESTORE, PTRACE_GET_RSEQ_CONFIGURATION only CONFIG_RSEQ',
  CONFIG_FUTEX: 'futexes (the daemon case blocks in FUTEX_WAIT)',
  CONFIG_MODIFY_LDT_SYSCALL: 'modify_ldt, the LDT a process installs for itself (ldt case)',
  CONFIG_POSIX_TIMERS: 'setitimer, alarm and timer_create (timers case)',
  CONFIG_TIMERFD: 'timerfd_create (timers case)',
  CONFIG_VIRTIO_NET: 'the guest network (SSH)',
};

/** "y", "m", "n", or "unknown" when no config is known. */
export function optionState(config: KernelConfig | undefined, option: string): string {
  if (!config) return 'unknown';
  return config.get(option) ?? 'n';
}
