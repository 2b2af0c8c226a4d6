/**
 * Compiles a validated checkpoint image into a restore plan: plain data, a
 * list of primitive agent operations with the result each must produce,
 * shipped to the agent in one BATCH. The target is a fresh instance of the
 * same binary, stopped before its first instruction; `probe` is what it
 * looks like there.
 */
import { debugRegOffset, hex } from '../x86/registers.ts';
import { DEBUG_REG_NAMES, type CheckpointImage } from './checkpoint-image.ts';
import { PlanError, type PlanStep, type TargetProbe } from './plan-step.ts';
import type { RestorePolicy } from './policy.ts';
import { isKernelProvided, parseMaps, protOf, uncovered, type Mapping } from './proc-maps.ts';
import { registerSteps } from './restorers.ts';
import { brkStep, mapFixedStep, PROT, protectStep } from './syscall-steps.ts';

export { PlanError, type PlanStep, type TargetProbe };

/** Memory is written in slices so no single frame gets large. */
export const WRITE_CHUNK_BYTES = 1024 * 1024;

export function compileRestorePlan(image: CheckpointImage, probe: TargetProbe, policy: RestorePolicy): PlanStep[] {
  const pid = probe.pid;
  const steps: PlanStep[] = [];
  const imageMaps = parseMaps(image.maps);

  // The kernel's own mappings cannot be moved; with ASLR off they coincide.
  for (const m of imageMaps.filter(isKernelProvided)) {
    const there = probe.maps.find((t) => t.name === m.name);
    if (!there || there.start !== m.start || there.end !== m.end) {
      throw new PlanError(`${m.name} is at ${hex(m.start)}-${hex(m.end)} in the image but ${there ? `${hex(there.start)}-${hex(there.end)}` : 'absent'} in the target`);
    }
  }

  const covered: Mapping[] = [...probe.maps];
  // The kernel may show the heap as several adjacent [heap] VMAs; brk() must
  // reach the end of the last one, or later sbrk() calls would collide.
  const heaps = imageMaps.filter((m) => m.name === '[heap]');
  if (heaps.length > 0 && !probe.maps.some((m) => m.name === '[heap]')) {
    const start = heaps[0]!.start;
    const end = heaps.at(-1)!.end;
    steps.push(brkStep(pid, end, `grow the heap to ${hex(end)}`));
    covered.push({ ...heaps[0]!, start, end });
  }

  for (const region of image.regions) {
    for (const [start, end] of uncovered(region.start, region.end, covered)) {
      steps.push(mapFixedStep(pid, start, end - start, PROT.READ | PROT.WRITE, `map ${hex(start)}-${hex(end)} (absent in the target) for ${region.name || 'anonymous memory'}`));
    }
  }

  for (const region of image.regions) {
    const data = image.memory.get(region.entry)!;
    for (let off = 0; off < data.length; off += WRITE_CHUNK_BYTES) {
      const slice = data.subarray(off, Math.min(off + WRITE_CHUNK_BYTES, data.length));
      steps.push({ op: { op: 'WRITE_MEM', pid, address: region.start + BigInt(off), data: slice }, why: `contents of ${region.name || 'anonymous'} (${region.entry})` });
    }
  }

  for (const region of image.regions) {
    steps.push(protectStep(pid, region.start, region.end - region.start, BigInt(protOf(region.perms)), `protections ${region.perms} on ${hex(region.start)}-${hex(region.end)}`));
  }

  steps.push(...registerSteps(image, probe, imageMaps, policy));

  // Addresses before control: DR7 enables a breakpoint only once its address is in place.
  for (const name of DEBUG_REG_NAMES) {
    const index = Number(name.slice(2));
    steps.push({ op: { op: 'POKEUSER', pid, offset: debugRegOffset(index), value: image.debugRegs[name] }, why: `debug register ${name.toUpperCase()}` });
  }
  return steps;
}
