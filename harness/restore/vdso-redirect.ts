/**
 * A restore onto another kernel finds another vDSO at the same address: the
 * same exported functions at other offsets (6.1 → 6.12: clock_gettime at
 * +0x960, then +0xbc0). The process resolved them at startup (glibc keeps
 * the addresses) and would jump into the middle of other code — measured:
 * killed by SIGSEGV at its first clock_gettime. So, as CRIU does, the
 * target's own [vvar] and [vdso] are moved away together (mremap keeps the
 * distance the vDSO's RIP-relative reads of vvar rely on; the kernel follows
 * the vDSO's move), and the old vDSO range gets a page of its own: int3
 * everywhere but at each function the process could have resolved, where a
 * `jmp *0(%rip)` sends it to the same function in the moved vDSO.
 *
 * Only for the same layout (the kernel put vvar and vdso where the image
 * had them, as with ASLR off on these kernels) and a process stopped
 * outside the vDSO; anything else stays refused by name
 * (platform-dependencies.ts).
 */
import { hex } from '../x86/registers.ts';
import { PlanError, type PlanStep } from './plan-step.ts';
import type { PlatformDependencies } from './platform-dependencies.ts';
import type { Mapping } from './proc-maps.ts';
import { mapFixedStep, PROT, protectStep } from './syscall-steps.ts';

const NR_MREMAP = 25;
const MREMAP_MAYMOVE = 1n;
const MREMAP_FIXED = 2n;
/** jmp *0(%rip) followed by the 8-byte target: 14 bytes, no register touched. */
const JMP_ABSOLUTE = Buffer.from([0xff, 0x25, 0x00, 0x00, 0x00, 0x00]);
const JMP_BYTES = JMP_ABSOLUTE.length + 8;
const INT3 = 0xcc;
/** Where the moved vDSO goes: far from programs, the kernel's choices and the restorer's scratch pages (restorers.ts). */
const MOVED_CANDIDATES = [0x4000_0000_0000n, 0x5000_0000_0000n, 0x6000_0000_0000n];

/** The page(s) put at the old vDSO's place: int3, and a jump at each old function's offset. */
export function trampolinePage(image: PlatformDependencies, target: PlatformDependencies, oldSize: number, movedVdso: bigint): Buffer {
  const page = Buffer.alloc(oldSize, INT3);
  const taken: Array<[number, number, string]> = [];
  for (const [name, offset] of Object.entries(image.vdso.symbols)) {
    const there = target.vdso.symbols[name];
    // A function the new vDSO lacks keeps int3: a call traps (SIGTRAP) rather than running other code.
    if (there === undefined) continue;
    const at = Number(offset);
    const destination = movedVdso + there;
    if (at + JMP_BYTES > oldSize) throw new PlanError(`vDSO redirect: ${name} at +${hex(offset)} leaves no room for a jump in a ${oldSize}-byte vDSO`);
    // Aliases (clock_gettime, __vdso_clock_gettime) share an offset and a destination; anything else may not overlap.
    const clash = taken.find(([start, , other]) => start !== at && at < start + JMP_BYTES && start < at + JMP_BYTES && other !== name);
    if (clash) throw new PlanError(`vDSO redirect: ${name} at +${hex(offset)} and ${clash[2]} at +${hex(BigInt(clash[0]))} are too close for two jumps`);
    JMP_ABSOLUTE.copy(page, at);
    page.writeBigUInt64LE(destination, at + JMP_ABSOLUTE.length);
    taken.push([at, at + JMP_BYTES, name]);
  }
  return page;
}

/**
 * The plan steps that move the target's vvar and vdso away and put the
 * jumps at the old vDSO's place, with a note saying so. `rips` are the
 * image's threads' instruction pointers: one inside the old vDSO cannot be
 * redirected (PlanError).
 */
export function vdsoRedirectSteps(
  pid: number,
  image: PlatformDependencies,
  target: PlatformDependencies,
  rips: readonly bigint[],
  occupied: readonly Mapping[],
): { steps: PlanStep[]; note: string } {
  const special = [...target.vdso.mappings].sort((a, b) => (a.start < b.start ? -1 : 1));
  const oldVdso = image.vdso.mappings.find((m) => m.name === '[vdso]')!;
  const inside = rips.find((rip) => rip >= oldVdso.start && rip < oldVdso.end);
  if (inside !== undefined)
    throw new PlanError(`vDSO redirect: the process was stopped inside the checkpoint kernel's vDSO (rip ${hex(inside)}), whose code the target does not have`);
  const low = special[0]!.start;
  const high = special.at(-1)!.end;
  const base = MOVED_CANDIDATES.find((c) => occupied.every((m) => m.end <= c || m.start >= c + (high - low)));
  if (base === undefined) throw new PlanError('vDSO redirect: no free range for the moved vDSO');
  const delta = base - low;
  const steps: PlanStep[] = special.map((m) => ({
    op: { op: 'INJECT_SYSCALL', pid, nr: NR_MREMAP, args: [m.start, m.end - m.start, m.end - m.start, MREMAP_MAYMOVE | MREMAP_FIXED, m.start + delta] },
    why: `move the target's ${m.name} to ${hex(m.start + delta)} (with the rest of the kernel's mappings, same distances): its code is not the checkpoint's`,
    expect: m.start + delta,
  }));
  const size = oldVdso.end - oldVdso.start;
  const movedVdso = special.find((m) => m.name === '[vdso]')!.start + delta;
  steps.push(mapFixedStep(pid, oldVdso.start, size, PROT.READ | PROT.WRITE, "a page at the old vDSO's place for the jumps to the moved one"));
  steps.push({
    op: { op: 'WRITE_MEM', pid, address: oldVdso.start, data: trampolinePage(image, target, Number(size), movedVdso) },
    why: 'a jump at each function the process resolved in the old vDSO, int3 elsewhere',
  });
  steps.push(protectStep(pid, oldVdso.start, size, PROT.READ | PROT.EXEC, 'the jumps read-only and executable, as the vDSO was'));
  const functions = Object.keys(image.vdso.symbols).filter((name) => target.vdso.symbols[name] !== undefined).length;
  return {
    steps,
    note: `vDSO redirected: the target kernel's vDSO differs (same layout, other offsets); moved to ${hex(movedVdso)}, ${functions} functions of the old one jump there`,
  };
}
