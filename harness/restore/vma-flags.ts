/**
 * Mapping attributes (the VmFlags line of /proc/PID/smaps, mnemonics of
 * fs/proc/task_mmu.c): captured at the checkpoint, given back by the
 * restore, and refused by name when no restore can give them back. A
 * restore maps each region again with mmap and mprotect from its perms and
 * file (mappings.ts); what madvise, mlock or an mmap flag added comes back
 * only because this module records it and the plan injects the same calls
 * again — a process that checks (CRIU's ZDTM maps02 reads its own VmFlags)
 * would otherwise fail after the restore, far from the cause.
 *
 * Given back (GIVEN_BACK, recorded per region in memory.json `vmFlags`,
 * format 11, written only when a region has one): the madvise advice dc
 * (MADV_DONTFORK), wf (MADV_WIPEONFORK), dd (MADV_DONTDUMP), hg
 * (MADV_HUGEPAGE), mg (MADV_MERGEABLE), sr (MADV_SEQUENTIAL), rr
 * (MADV_RANDOM), each injected once the region is mapped; lo (mlock) and
 * lf (mlock2 MLOCK_ONFAULT; named so by newer kernels — the host's 6.18
 * shows "lo lf" — while the 6.1 guest prints VM_LOCKONFAULT as "??", which
 * is refused as unknown: measured);
 * nr (MAP_NORESERVE) at the region's mmap; and
 * mw on a shared file mapping that is not writable now: it was mapped from
 * a descriptor open for writing, and a later mprotect(PROT_WRITE) succeeds
 * only if the restore opens the file read-write too (ZDTM's
 * maps_file_prot), so the restore does, mapping it with its present
 * protection.
 *
 * Not the restore's business, or given back by the mapping itself
 * (RESTORED): the perms (rd wr ex sh), what may be changed to (mr mw me ms),
 * growsdown (gd: the stack, mapped as before), accounting (ac: a private
 * writable mapping gets it), soft-dirty tracking (sd), denywrite (dw,
 * kernels before 5.15), userfaultfd registrations (um uw ui:
 * userfaultfd.ts decides), and nh: kernels from 6.7 set VM_NOHUGEPAGE on
 * every MAP_STACK mapping — every thread stack glibc makes — and THP advice
 * changes no content. Every other flag is refused, unknown ones included.
 * The kernel's special mappings ([vdso], [vvar], [vsyscall]) carry flags of
 * their own and are placed by the kernel, not by the restore: skipped.
 */
import { hex } from '../x86/registers.ts';
import type { MemoryRegion } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import { omits, type RestorePolicy } from './policy.ts';
import { madviseStep, mlock2Step, MLOCK_ONFAULT } from './syscall-steps.ts';
import type { Uncapturable } from './uncapturable.ts';

/** VmFlags a restore gives back or that are not its business (see the module comment). */
export const RESTORED_VMFLAGS: ReadonlySet<string> = new Set(['rd', 'wr', 'ex', 'sh', 'mr', 'mw', 'me', 'ms', 'gd', 'ac', 'sd', 'dw', 'um', 'uw', 'ui', 'nh']);

/** madvise advice each given-back VmFlag comes from (include/uapi/asm-generic/mman-common.h). */
export const MADVISE_OF_VMFLAG: ReadonlyMap<string, { advice: bigint; name: string }> = new Map([
  ['rr', { advice: 1n, name: 'MADV_RANDOM' }],
  ['sr', { advice: 2n, name: 'MADV_SEQUENTIAL' }],
  ['dc', { advice: 10n, name: 'MADV_DONTFORK' }],
  ['mg', { advice: 12n, name: 'MADV_MERGEABLE' }],
  ['hg', { advice: 14n, name: 'MADV_HUGEPAGE' }],
  ['dd', { advice: 16n, name: 'MADV_DONTDUMP' }],
  ['wf', { advice: 18n, name: 'MADV_WIPEONFORK' }],
]);

/** VmFlags a restore records and gives back (see the module comment); 'mw' only on a shared file mapping without w. */
export const GIVEN_BACK_VMFLAGS: ReadonlySet<string> = new Set([...MADVISE_OF_VMFLAG.keys(), 'lo', 'lf', 'nr', 'mw']);

/** What each refused flag means, for the refusal's text. */
export const VMFLAG_MEANING: ReadonlyMap<string, string> = new Map([
  ['dc', 'MADV_DONTFORK'],
  ['wf', 'MADV_WIPEONFORK'],
  ['dd', 'MADV_DONTDUMP'],
  ['hg', 'MADV_HUGEPAGE'],
  ['mg', 'MADV_MERGEABLE (KSM)'],
  ['sr', 'MADV_SEQUENTIAL'],
  ['rr', 'MADV_RANDOM'],
  ['lo', 'mlock / MAP_LOCKED'],
  ['lf', 'mlock2 MLOCK_ONFAULT'],
  ['ht', 'hugetlb'],
  ['io', 'I/O memory'],
  ['pf', 'pure PFN range'],
  ['de', 'VM_DONTEXPAND'],
  ['ss', 'shadow stack'],
  ['sl', 'mseal'],
  ['sf', 'MAP_SYNC'],
]);

/** Names the kernel gives its special mappings (placed by the kernel on exec, not by a restore's mmap). */
const SPECIAL = new Set(['[vdso]', '[vvar]', '[vvar_vclock]', '[vsyscall]']);

export interface SmapsVma {
  start: bigint;
  end: bigint;
  perms: string;
  name: string;
  /** the VmFlags mnemonics */
  flags: string[];
}

/** Each VMA of /proc/PID/smaps with its VmFlags. */
export function parseSmapsVmFlags(smaps: string): SmapsVma[] {
  const vmas: SmapsVma[] = [];
  for (const line of smaps.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      vmas.push({ start: BigInt(`0x${head[1]}`), end: BigInt(`0x${head[2]}`), perms: head[3]!, name: head[4]!.trim(), flags: [] });
      continue;
    }
    const current = vmas.at(-1);
    if (current && line.startsWith('VmFlags:')) current.flags = line.slice(8).trim().split(/\s+/).filter(Boolean);
  }
  return vmas;
}

/** A shared mapping of a file by its path (a deleted file, a memfd or shared anonymous memory is never opened by path). */
function isSharedFile(vma: Pick<SmapsVma, 'perms' | 'name'>): boolean {
  return vma.perms[3] === 's' && vma.name.startsWith('/') && !vma.name.endsWith(' (deleted)');
}

/** The flags of one VMA a restore gives back: the madvise/mlock/mmap ones, and mw where it decides how the file is opened. */
export function givenBackFlags(vma: Pick<SmapsVma, 'perms' | 'name' | 'flags'>): string[] {
  return vma.flags.filter((f) => GIVEN_BACK_VMFLAGS.has(f) && (f !== 'mw' || (isSharedFile(vma) && vma.perms[1] !== 'w')));
}

/** The given-back VmFlags of every VMA that has one, by start address (the regions' key). */
export function captureVmFlags(smaps: string): Map<bigint, string[]> {
  const flags = new Map<bigint, string[]>();
  for (const vma of parseSmapsVmFlags(smaps)) {
    if (SPECIAL.has(vma.name)) continue;
    const kept = givenBackFlags(vma);
    if (kept.length > 0) flags.set(vma.start, kept);
  }
  return flags;
}

/** Why memory.json's `vmFlags` of a region is not one a restore may apply, or undefined (checked as hostile input). */
export function vmFlagsProblem(raw: unknown, region: { perms: string; file: string | null }): string | undefined {
  if (!Array.isArray(raw) || raw.length === 0 || raw.length > GIVEN_BACK_VMFLAGS.size)
    return `must be a non-empty list of at most ${GIVEN_BACK_VMFLAGS.size} VmFlags mnemonics`;
  for (const f of raw as unknown[]) {
    if (typeof f !== 'string' || !GIVEN_BACK_VMFLAGS.has(f))
      return `${JSON.stringify(f)?.slice(0, 20)} is not a flag a restore gives back (${[...GIVEN_BACK_VMFLAGS].join(' ')})`;
  }
  if (new Set(raw).size !== raw.length) return 'names a flag twice';
  if (raw.includes('mw') && !(region.file !== null && region.perms[3] === 's' && region.perms[1] !== 'w'))
    return 'mw is recorded only for a shared file mapping that is not writable now';
  if (raw.includes('lf') && !raw.includes('lo')) return 'lf (MLOCK_ONFAULT) without lo (locked)';
  if (raw.includes('wf') && (region.file !== null || region.perms[3] === 's')) return 'wf (MADV_WIPEONFORK) applies to private anonymous memory only';
  return undefined;
}

/** The mappings whose VmFlags a restore would not give back, each named with its range and the flags' meanings. */
export function vmaFlagsProblems(pid: number, smaps: string): Uncapturable[] {
  const problems: Uncapturable[] = [];
  for (const vma of parseSmapsVmFlags(smaps)) {
    if (SPECIAL.has(vma.name)) continue;
    const where = `/proc/${pid}/smaps ${hex(vma.start)}-${hex(vma.end)} ${vma.perms} ${vma.name || 'anonymous'}`;
    const lost = vma.flags.filter((f) => !RESTORED_VMFLAGS.has(f) && !GIVEN_BACK_VMFLAGS.has(f));
    if (lost.length > 0)
      problems.push({
        state: 'mapping attributes',
        where,
        seen: `VmFlags ${lost.map((f) => `${f} (${VMFLAG_MEANING.get(f) ?? 'unknown to crh'})`).join(', ')}: a restore maps the region again without them`,
      });
    // Locking a region registered with a userfaultfd would fault its missing pages in (to a server not running yet).
    if (vma.flags.includes('lo') && vma.flags.some((f) => f === 'um' || f === 'uw' || f === 'ui'))
      problems.push({
        state: 'mapping attributes',
        where,
        seen: 'VmFlags lo on a region registered with a userfaultfd: locking it again would fault its absent pages in',
      });
  }
  return problems;
}

/**
 * The calls that give a restored region its recorded VmFlags back, after it
 * is mapped, written and protected: madvise for each piece of advice, then
 * mlock (mlock2 MLOCK_ONFAULT for lf), which faults the pages in (a locked
 * region is resident). nr and mw were given at the mmap and open
 * (mappings.ts). Under omit=vma-flags: none.
 */
export function vmFlagSteps(pid: number, regions: readonly MemoryRegion[], policy: RestorePolicy): PlanStep[] {
  if (omits(policy, 'vma-flags')) return [];
  const steps: PlanStep[] = [];
  for (const region of regions) {
    const flags = region.vmFlags ?? [];
    const length = region.end - region.start;
    const what = `${hex(region.start)}-${hex(region.end)} ${region.name || 'anonymous'}`;
    for (const f of flags) {
      const madvise = MADVISE_OF_VMFLAG.get(f);
      if (madvise) steps.push(madviseStep(pid, region.start, length, madvise.advice, `${madvise.name} on ${what} (VmFlags ${f})`));
    }
    if (flags.includes('lf')) steps.push(mlock2Step(pid, region.start, length, MLOCK_ONFAULT, `mlock2(MLOCK_ONFAULT) ${what} (VmFlags lo lf)`));
    else if (flags.includes('lo')) steps.push(mlock2Step(pid, region.start, length, 0n, `mlock ${what} (VmFlags lo)`));
  }
  return steps;
}
