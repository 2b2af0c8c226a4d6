/** /proc/PID/maps, parsed. */

export interface Mapping {
  start: bigint;
  end: bigint;
  /** "rw-p" */
  perms: string;
  offset: bigint;
  /** "08:01" */
  device: string;
  inode: number;
  /** file path, "[heap]", "[stack]", "[vdso]", ... or "" */
  name: string;
}

const LINE = /^([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][ps]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+)\s*(.*)$/;

export function parseMaps(text: string): Mapping[] {
  return text
    .split('\n')
    .filter((l) => l.trim().length > 0)
    .map((line, i) => {
      const m = LINE.exec(line);
      if (!m) throw new SyntaxError(`maps line ${i + 1} is malformed: ${JSON.stringify(line.slice(0, 120))}`);
      return {
        start: BigInt(`0x${m[1]}`),
        end: BigInt(`0x${m[2]}`),
        perms: m[3]!,
        offset: BigInt(`0x${m[4]}`),
        device: m[5]!,
        inode: Number(m[6]),
        name: m[7]!.trim(),
      };
    });
}

/** PROT_* bits of a perms string. */
export function protOf(perms: string): number {
  return (perms[0] === 'r' ? 1 : 0) | (perms[1] === 'w' ? 2 : 0) | (perms[2] === 'x' ? 4 : 0);
}

/**
 * The kernel's own special mappings: they cannot be written or moved by the
 * process. Newer kernels split vvar ("[vvar_vclock]", 6.13+), so every
 * "[vvar...]" counts.
 */
const KERNEL_PROVIDED = /^\[(vdso|vvar[a-z_]*|vsyscall|uprobes)\]$/;

/**
 * What /proc/PID/maps calls shared anonymous memory (MAP_SHARED |
 * MAP_ANONYMOUS): a shmem object named "/dev/zero (deleted)" up to 6.1,
 * "[anon_shmem...]" where a kernel names it so.
 */
export function isSharedAnonymous(m: Mapping): boolean {
  return m.perms[3] === 's' && (m.name === '/dev/zero (deleted)' || m.name.startsWith('[anon_shmem'));
}

/** The file a mapping maps (its path in maps), or undefined for anonymous memory and the kernel's own mappings. */
export function mappedFile(m: Mapping): string | undefined {
  if (isSharedAnonymous(m) || !m.name.startsWith('/')) return undefined;
  return m.name;
}

/**
 * Whether a mapping belongs in a checkpoint: every mapping but the
 * binary's executable text (restored by exec'ing the same binary; `binary`
 * is its path, and without it every executable file mapping is taken for
 * the binary's) and the kernel's own vdso/vvar/vsyscall (they must sit at
 * the same address instead). Read-only data is kept: startup code writes
 * relocations and then mprotects them read-only (RELRO), so "r--" is not
 * "unchanged". Private and shared anonymous memory and private file
 * mappings are dumped with their contents; a shared file mapping's contents
 * are the file's (hasContents).
 */
export function isDumped(m: Mapping, binary?: string): boolean {
  if (KERNEL_PROVIDED.test(m.name)) return false;
  if (m.perms[2] === 'x' && m.perms[3] === 'p' && m.name.startsWith('/') && (binary === undefined || m.name === binary)) return false;
  return true;
}

/** Whether a dumped mapping's bytes go into the image: all but shared file mappings, whose bytes are the file's. */
export function hasContents(m: Mapping): boolean {
  return !(m.perms[3] === 's' && mappedFile(m) !== undefined);
}

export function isKernelProvided(m: Mapping): boolean {
  return KERNEL_PROVIDED.test(m.name);
}

/** Sub-ranges of [start, end) not covered by any of `mappings`. */
export function uncovered(start: bigint, end: bigint, mappings: readonly Mapping[]): Array<[bigint, bigint]> {
  const holes: Array<[bigint, bigint]> = [];
  let cursor = start;
  for (const m of [...mappings].sort((a, b) => (a.start < b.start ? -1 : 1))) {
    if (m.end <= cursor || m.start >= end) continue;
    if (m.start > cursor) holes.push([cursor, m.start]);
    cursor = m.end > cursor ? m.end : cursor;
    if (cursor >= end) break;
  }
  if (cursor < end) holes.push([cursor, end]);
  return holes;
}
