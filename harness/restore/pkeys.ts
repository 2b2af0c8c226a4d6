/**
 * Memory protection keys (x86 PKU). Three pieces of state:
 * - PKRU, the per-thread access rights register: XSAVE component 9, in the
 *   xstate every thread's image already holds (restored with it);
 * - the key each mapping is tagged with (pkey_mprotect): /proc/PID/smaps
 *   "ProtectionKey:";
 * - which keys the process has allocated (pkey_alloc): a bitmap in the
 *   kernel's mm that nothing in /proc shows. A fresh process has key 0
 *   only, so a restored one would hand out a key its program still uses.
 *
 * The allocation map is read by asking the kernel: pkey_alloc is injected
 * into the stopped task until it fails, each key it hands out is a free one,
 * and all of them are freed again. pkey_alloc also grants the new key's
 * rights in the caller's PKRU: it is asked for PKEY_DISABLE_ACCESS, which is
 * what a free key's PKRU bits hold in a new process, and the checkpoint has
 * already read the xstate anyway.
 *
 * On restore (after the memory and protections, before the registers): keys
 * 1..max are allocated in order — pkey_alloc always returns the lowest free
 * key — and the ones the program had freed (the gaps) freed again, so the
 * next pkey_alloc in the program returns what it would have; then each
 * tagged mapping gets its key with pkey_mprotect.
 */
import type { AgentClient } from '../agent/client.ts';
import { hex } from '../x86/registers.ts';
import type { MemoryRegion, PkeyState } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import { protOf } from './proc-maps.ts';

const NR = { pkey_mprotect: 329, pkey_alloc: 330, pkey_free: 331 } as const;
/** x86 has 16 keys; 0 is every mapping's default and always allocated. */
export const PKEY_COUNT = 16;
const PKEY_DISABLE_ACCESS = 1n;
const EINVAL = 22n;

/** Each smaps VMA's "ProtectionKey:", by its start; VMAs without the line are left out. */
export function parseSmapsPkeys(smaps: string): Map<bigint, number> {
  const keys = new Map<bigint, number>();
  let current: bigint | undefined;
  for (const line of smaps.split('\n')) {
    const head = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line);
    if (head) current = BigInt(`0x${head[1]}`);
    const key = /^ProtectionKey:\s+(\d+)$/.exec(line);
    if (key && current !== undefined) keys.set(current, Number(key[1]));
  }
  return keys;
}

/**
 * The allocated keys from what a run of injected pkey_alloc calls returned
 * (`results`, in order, the last one the failure): every key not handed out
 * is allocated — unless the first call failed with EINVAL (no PKU: none).
 */
export function allocatedFromProbe(results: readonly bigint[]): number[] {
  if (results[0] === -EINVAL) return [];
  const free = new Set(results.filter((r) => r > 0n).map(Number));
  return Array.from({ length: PKEY_COUNT - 1 }, (_, i) => i + 1).filter((k) => !free.has(k));
}

/**
 * For a checkpoint of the stopped task `pid` (after its xstate was read):
 * the allocated keys and the tagged mappings among `regions`, whose
 * protection keys `smaps` (/proc/PID/smaps, read by the caller) names.
 * The probe's pkey_alloc calls go out together: once one fails (ENOSPC, or
 * EINVAL where there are no keys) the rest fail alike, as they would one by
 * one, since nothing is freed before the last.
 */
export async function capturePkeys(
  agent: AgentClient,
  pid: number,
  regions: ReadonlyArray<Pick<MemoryRegion, 'start' | 'end'>>,
  smaps: string,
): Promise<PkeyState> {
  const settled = await Promise.allSettled(
    Array.from({ length: PKEY_COUNT }, () => agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.pkey_alloc, args: [0n, PKEY_DISABLE_ACCESS] })),
  );
  const granted = settled.flatMap((s) => (s.status === 'fulfilled' && s.value > 0n ? [s.value] : []));
  await Promise.all(granted.map((key) => agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.pkey_free, args: [key] })));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  const values = settled.map((s) => (s as PromiseFulfilledResult<bigint>).value);
  const firstRefusal = values.findIndex((r) => r < 0n);
  const results = firstRefusal < 0 ? values : values.slice(0, firstRefusal + 1);
  const keys = parseSmapsPkeys(smaps);
  const tagged = regions.flatMap((r) => {
    const pkey = keys.get(r.start) ?? 0;
    return pkey === 0 ? [] : [{ start: r.start, end: r.end, pkey }];
  });
  return { allocated: allocatedFromProbe(results), tagged };
}

/** What is wrong with `pkeys` against the image's regions (undefined when nothing). */
export function pkeysProblem(pkeys: PkeyState, regions: readonly MemoryRegion[]): { field: string; why: string } | undefined {
  for (const [i, k] of pkeys.allocated.entries()) {
    if (!Number.isInteger(k) || k < 1 || k >= PKEY_COUNT) return { field: `allocated[${i}]`, why: `${k} is not a key 1..${PKEY_COUNT - 1}` };
    if (i > 0 && k <= pkeys.allocated[i - 1]!) return { field: `allocated[${i}]`, why: 'keys must be ascending, each once' };
  }
  for (const [i, t] of pkeys.tagged.entries()) {
    if (!pkeys.allocated.includes(t.pkey)) return { field: `tagged[${i}].pkey`, why: `${t.pkey} is not among the allocated keys` };
    if (!regions.some((r) => r.start === t.start && r.end === t.end))
      return { field: `tagged[${i}]`, why: `${hex(t.start)}-${hex(t.end)} is not a mapping in memory.json` };
    if (i > 0 && t.start <= pkeys.tagged[i - 1]!.start) return { field: `tagged[${i}]`, why: 'mappings must be ascending, each once' };
  }
  return undefined;
}

/**
 * The plan's steps: allocate 1..max in order (each pkey_alloc must return
 * that very key: the fresh target has none but 0), free the gaps, tag the
 * mappings. The rights pkey_alloc grants in PKRU do not matter: the
 * registers' xstate, set later, carries the checkpointed PKRU.
 */
export function pkeySteps(pid: number, pkeys: PkeyState, regions: readonly MemoryRegion[]): PlanStep[] {
  const steps: PlanStep[] = [];
  const max = pkeys.allocated.at(-1) ?? 0;
  for (let k = 1; k <= max; k++)
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.pkey_alloc, args: [0n, PKEY_DISABLE_ACCESS] },
      why: `pkey_alloc: key ${k}${pkeys.allocated.includes(k) ? '' : ' (a gap: freed again below)'}`,
      expect: BigInt(k),
    });
  for (let k = 1; k <= max; k++) {
    if (!pkeys.allocated.includes(k))
      steps.push({ op: { op: 'INJECT_SYSCALL', pid, nr: NR.pkey_free, args: [BigInt(k)] }, why: `pkey_free ${k}: the program had freed it`, expect: 0n });
  }
  for (const t of pkeys.tagged) {
    const region = regions.find((r) => r.start === t.start && r.end === t.end)!;
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.pkey_mprotect, args: [t.start, t.end - t.start, BigInt(protOf(region.perms)), BigInt(t.pkey)] },
      why: `pkey_mprotect ${hex(t.start)}-${hex(t.end)} ${region.perms} with key ${t.pkey}`,
      expect: 0n,
    });
  }
  return steps;
}

/** pkeys.json: the allocated keys and the tagged mappings, addresses in hex. */
export function pkeysJson(pkeys: PkeyState): unknown {
  return { allocated: pkeys.allocated, tagged: pkeys.tagged.map((t) => ({ start: hex(t.start), end: hex(t.end), pkey: t.pkey })) };
}
