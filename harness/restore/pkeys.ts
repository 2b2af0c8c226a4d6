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
 * The allocation map is read by asking the kernel: pkey_mprotect of a
 * scratch page is injected into the stopped task with each key 1..15, and
 * the kernel refuses (EINVAL) exactly the keys that are not allocated — or
 * all of them where there is no PKU. The page is unmapped again; nothing else
 * of the process changes (pkey_alloc, the earlier probe, had to be undone
 * with pkey_free and granted rights in PKRU; it took 31 calls, this 17 in
 * one request).
 *
 * On restore (after the memory and protections, before the registers): keys
 * 1..max are allocated in order — pkey_alloc always returns the lowest free
 * key — and the ones the program had freed (the gaps) freed again, so the
 * next pkey_alloc in the program returns what it would have; then each
 * tagged mapping gets its key with pkey_mprotect.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError } from '../errors.ts';
import { hex } from '../x86/registers.ts';
import type { MemoryRegion, PkeyState } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import { protOf } from './proc-maps.ts';
import { withScratchPage } from './scratch.ts';

const NR = { pkey_mprotect: 329, pkey_alloc: 330, pkey_free: 331 } as const;
/** x86 has 16 keys; 0 is every mapping's default and always allocated. */
export const PKEY_COUNT = 16;
const PKEY_DISABLE_ACCESS = 1n;
const EINVAL = 22n;
const PAGE = 4096n;
/** The scratch page's own protection (scratch.ts): pkey_mprotect only changes its key. */
const PROT_READ_WRITE = 3n;

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
 * The allocated keys from what pkey_mprotect returned for keys 1..15, in
 * order: 0 for an allocated key, -EINVAL for one that is not (or for all,
 * without PKU); anything else is not an answer about the key and throws.
 */
export function allocatedFromMprotect(results: readonly bigint[]): number[] {
  if (results.length !== PKEY_COUNT - 1) throw new Error(`pkey_mprotect probe: ${results.length} results for ${PKEY_COUNT - 1} keys`);
  const odd = results.findIndex((r) => r !== 0n && r !== -EINVAL);
  if (odd >= 0) throw new AgentError(`pkey_mprotect with key ${odd + 1} returned ${results[odd]}`, 'INJECT_SYSCALL', Number(-results[odd]!));
  return results.flatMap((r, i) => (r === 0n ? [i + 1] : []));
}

/**
 * For a checkpoint of the stopped task `pid`: the allocated keys and the
 * tagged mappings among `regions`, whose protection keys `smaps`
 * (/proc/PID/smaps, read by the caller) names. The probe's calls go out as
 * one BATCH.
 */
export async function capturePkeys(
  agent: AgentClient,
  pid: number,
  regions: ReadonlyArray<Pick<MemoryRegion, 'start' | 'end'>>,
  smaps: string,
): Promise<PkeyState> {
  const results = await withScratchPage(agent, pid, async (scratch) => {
    const steps = await agent.batch(
      Array.from({ length: PKEY_COUNT - 1 }, (_, i) => ({
        op: 'INJECT_SYSCALL' as const,
        pid,
        nr: NR.pkey_mprotect,
        args: [scratch, PAGE, PROT_READ_WRITE, BigInt(i + 1)],
      })),
    );
    return steps.map((s) => {
      if (!s.ok) throw new AgentError(`pkey probe of pid ${pid}: ${s.message}`, 'INJECT_SYSCALL', s.errno);
      return s.result as bigint;
    });
  });
  const keys = parseSmapsPkeys(smaps);
  const tagged = regions.flatMap((r) => {
    const pkey = keys.get(r.start) ?? 0;
    return pkey === 0 ? [] : [{ start: r.start, end: r.end, pkey }];
  });
  return { allocated: allocatedFromMprotect(results), tagged };
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
