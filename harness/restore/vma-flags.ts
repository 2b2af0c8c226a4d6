/**
 * Mapping attributes a restore does not give back, refused by name at the
 * checkpoint (read from the VmFlags line of /proc/PID/smaps, mnemonics of
 * fs/proc/task_mmu.c). A restore maps each region again with mmap and
 * mprotect from its perms and file (mappings.ts): what that gives, it gives
 * back; what madvise, mlock or an mmap flag added is lost — and a process
 * that checks it (CRIU's ZDTM maps02 reads its own VmFlags) fails after the
 * restore, far from the cause.
 *
 * Given back, or not the restore's business (RESTORED): the perms (rd wr ex
 * sh), what may be changed to (mr mw me ms; but see the shared file rule
 * below), growsdown (gd: the stack, mapped as before), accounting (ac: a
 * private writable mapping gets it), soft-dirty tracking (sd), denywrite
 * (dw, kernels before 5.15), userfaultfd registrations (um uw ui:
 * userfaultfd.ts decides), and nh: kernels from 6.7 set VM_NOHUGEPAGE on
 * every MAP_STACK mapping — every thread stack glibc makes — so refusing it
 * would refuse every threaded process there, and THP advice changes no
 * content; and nr (MAP_NORESERVE): glibc maps every thread's malloc arena
 * with it (measured: ZDTM's pthread01, four such regions), and without it
 * a restored region is charged to the commit limit — accounting, no
 * content. Every other flag is refused, unknown ones included. The
 * kernel's special mappings ([vdso], [vvar], [vsyscall]) carry flags of
 * their own and are placed by the kernel, not by the restore: skipped.
 *
 * A shared file mapping that may be made writable (mw) but is not writable
 * now (no w in its perms) was mapped from a descriptor open for writing; a
 * restore opens the file read-only for it, so a later mprotect to
 * PROT_WRITE would fail with EACCES where it succeeded before (ZDTM's
 * maps_file_prot). Refused too.
 */
import { hex } from '../x86/registers.ts';
import type { Uncapturable } from './uncapturable.ts';

/** VmFlags a restore gives back or that are not its business (see the module comment). */
export const RESTORED_VMFLAGS: ReadonlySet<string> = new Set([
  'rd',
  'wr',
  'ex',
  'sh',
  'mr',
  'mw',
  'me',
  'ms',
  'gd',
  'ac',
  'sd',
  'dw',
  'um',
  'uw',
  'ui',
  'nh',
  'nr',
]);

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

/** The mappings whose VmFlags a restore would not give back, each named with its range and the flags' meanings. */
export function vmaFlagsProblems(pid: number, smaps: string): Uncapturable[] {
  const problems: Uncapturable[] = [];
  for (const vma of parseSmapsVmFlags(smaps)) {
    if (SPECIAL.has(vma.name)) continue;
    const where = `/proc/${pid}/smaps ${hex(vma.start)}-${hex(vma.end)} ${vma.perms} ${vma.name || 'anonymous'}`;
    const lost = vma.flags.filter((f) => !RESTORED_VMFLAGS.has(f));
    if (lost.length > 0)
      problems.push({
        state: 'mapping attributes',
        where,
        seen: `VmFlags ${lost.map((f) => `${f} (${VMFLAG_MEANING.get(f) ?? 'unknown to crh'})`).join(', ')}: a restore maps the region again without them`,
      });
    // Shared anonymous memory shows as "/dev/zero (deleted)" (and a memfd as "/memfd:… (deleted)"): mapped
    // again read-write whatever its perms; a deleted file is not opened again at all. A file by path only.
    const sharedFile = vma.perms[3] === 's' && vma.name.startsWith('/') && !vma.name.endsWith(' (deleted)');
    if (sharedFile && vma.flags.includes('mw') && vma.perms[1] !== 'w')
      problems.push({
        state: 'writable-later shared file mapping',
        where,
        seen: 'VmFlags mw without w: mapped from a descriptor open for writing, a restore maps it from one opened read-only (a later mprotect to PROT_WRITE would fail)',
      });
  }
  return problems;
}
