/**
 * CLOCK_MONOTONIC and CLOCK_BOOTTIME across a move to another boot. Both
 * count from the boot of the machine the process runs on: restored in
 * another guest, a process would see them go backwards (the new guest has
 * been up for less time) or jump (by its uptime, by the downtime of the
 * move). The kernel's answer is the time namespace (CONFIG_TIME_NS, 5.6+):
 * per-namespace offsets to those two clocks, honoured by clock_gettime and
 * the other system calls (timens_adjust) and by the vDSO (a namespace's
 * tasks see a vvar page of their own, whose clock mode sends the vDSO to the
 * real data with the namespace's offsets added).
 *
 * What the checkpoint records (clocks.json, format 11): the process's own
 * view of both clocks — clock_gettime injected into the stopped task, so a
 * process already in a time namespace is read through its offsets — and
 * the boot id they count from. In the same boot nothing is done: the clocks
 * go on by themselves, and the downtime is time that passed, as for a
 * stopped process. In another boot the restore reads the fresh target's
 * clocks the same way and puts it, first thing in the plan, into a new time
 * namespace whose offsets are (clock at checkpoint − clock now):
 *
 *   unshare(CLONE_NEWTIME)                     a namespace for its children
 *   write /proc/self/timens_offsets            the offsets, before any task is in it
 *   setns(/proc/self/ns/time_for_children)     the task itself enters it
 *
 * unshare alone moves only the children; since 5.6 setns moves the calling
 * task at once (timens_install → timens_commit → vdso_join_timens zaps its
 * vvar pages, which fault back in as the namespace's). That holds wherever
 * its vvar mapping is — vdso_join_timens finds it by its special-mapping
 * identity — so the vDSO redirect (vdso-redirect.ts), which moves vvar and
 * vdso together, keeps working. Nothing here relies on execve switching
 * namespaces (the fresh target has exec'd already). setns wants a
 * single-threaded task: the plan's threads are created later.
 *
 * The process then sees its clocks go on from the checkpoint's values plus
 * the time the restore took after the target's clocks were read (the plan
 * and the resumption): forward, never backwards, without the downtime.
 * A kernel without time namespaces (no /proc/PID/ns/time) cannot do this:
 * the restore is refused by name unless tried anyway.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError, ImageRejectedError } from '../errors.ts';
import type { ProcessClocks } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';
import type { MissingDependency } from './platform-dependencies.ts';
import { ScratchLayout, withScratchPage } from './scratch.ts';
import { BOOT_ID, BOOT_ID_PATH, timespecNs } from './sleep-deadline.ts';

export type { ProcessClocks } from './image-model.ts';

/** The fresh target's clocks, and whether its kernel has time namespaces. */
export interface TargetClocks extends ProcessClocks {
  timeNamespace: boolean;
}

const NR = { write: 1, close: 3, clock_gettime: 228, openat: 257, unshare: 272, setns: 308 } as const;
export const CLOCK_IDS = { monotonic: 1n, boottime: 7n } as const;
const CLONE_NEWTIME = 0x80n;
const AT_FDCWD = BigInt.asUintN(64, -100n);
const O_RDONLY = 0n;
const O_WRONLY = 1n;
const O_CLOEXEC = 0x80000n;
const ENOENT = 2;
const NS_PER_S = 1_000_000_000n;
/** Clock values a real boot reaches (about 146 years, the kernel's own limit for a namespace's clock): beyond is hostile. */
export const MAX_CLOCK_NS = (1n << 62n) - 1n;

/** Both clocks as the stopped task `pid` reads them (injected clock_gettime: through its time namespace, if it has one), with the boot id. */
export async function readProcessClocks(agent: AgentClient, pid: number): Promise<ProcessClocks> {
  const [monotonicNs, boottimeNs] = await withScratchPage(agent, pid, async (scratch) => {
    const read = async (name: keyof typeof CLOCK_IDS): Promise<bigint> => {
      const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.clock_gettime, args: [CLOCK_IDS[name], scratch] });
      if (r !== 0n)
        throw new CheckpointError(`pid ${pid}: clock_gettime(CLOCK_${name.toUpperCase()}) returned ${BigInt.asIntN(64, r)}`, { target: `pid ${pid}` });
      const ns = timespecNs(await agent.call({ op: 'READ_MEM', pid, address: scratch, length: 16 }));
      if (ns === undefined)
        throw new CheckpointError(`pid ${pid}: clock_gettime(CLOCK_${name.toUpperCase()}) wrote no valid timespec`, { target: `pid ${pid}` });
      return ns;
    };
    return [await read('monotonic'), await read('boottime')];
  });
  const bootId = (await agent.call({ op: 'READ_FILE', path: BOOT_ID_PATH, maxSize: 64 })).toString('latin1').trim();
  return { monotonicNs, boottimeNs, bootId };
}

/** The fresh target's clocks (read as the checkpoint read them) and whether /proc/PID/ns/time exists (CONFIG_TIME_NS). */
export async function readTargetClocks(agent: AgentClient, pid: number): Promise<TargetClocks> {
  const timeNamespace = await agent.call({ op: 'READLINK', path: `/proc/${pid}/ns/time` }).then(
    () => true,
    (error: unknown) => {
      if (error instanceof AgentError && error.errno === ENOENT) return false;
      throw error;
    },
  );
  return { ...(await readProcessClocks(agent, pid)), timeNamespace };
}

/** What the restore does about the clocks: offsets for a new time namespace, a note, or a missing kernel feature. */
export interface ClockDecision {
  /** checkpoint − target, per clock: the new namespace's offsets; absent when none is made */
  offsets?: { monotonicNs: bigint; boottimeNs: bigint };
  note?: string;
  missing?: MissingDependency;
}

const seconds = (ns: bigint): string => `${ns < 0n ? '-' : '+'}${(Number(ns < 0n ? -ns : ns) / 1e9).toFixed(3)} s`;

/**
 * The decision for an image's clocks against the target's: nothing in the
 * same boot; offsets in another; a note when the image recorded none or the
 * policy omits the namespace (omit=timens); `missing` when the target
 * kernel has no time namespaces.
 */
export function clockDecision(image: ProcessClocks | undefined, target: TargetClocks | undefined, omitted: boolean): ClockDecision {
  if (!target) return {};
  if (!image) return { note: "the image records no clocks (format 10 or earlier): CLOCK_MONOTONIC and CLOCK_BOOTTIME are whatever the target boot's are" };
  if (image.bootId === target.bootId) return {};
  const offsets = { monotonicNs: image.monotonicNs - target.monotonicNs, boottimeNs: image.boottimeNs - target.boottimeNs };
  const moved = `checkpointed in boot ${image.bootId}, restored in boot ${target.bootId}`;
  if (omitted)
    return {
      note: `omit=timens: ${moved}, no time namespace: CLOCK_MONOTONIC moves by ${seconds(-offsets.monotonicNs)}, CLOCK_BOOTTIME by ${seconds(-offsets.boottimeNs)} for the process`,
    };
  if (!target.timeNamespace) {
    return {
      missing: {
        feature: 'time namespaces',
        why: `${moved}: without CONFIG_TIME_NS (no /proc/PID/ns/time) its CLOCK_MONOTONIC would move by ${seconds(-offsets.monotonicNs)}`,
      },
    };
  }
  return {
    offsets,
    note: `time namespace: ${moved}; offsets CLOCK_MONOTONIC ${seconds(offsets.monotonicNs)}, CLOCK_BOOTTIME ${seconds(offsets.boottimeNs)}: the process's clocks go on from the checkpoint`,
  };
}

/** "ID SECONDS NANOSECONDS" as /proc/PID/timens_offsets takes it: the nanoseconds 0..999999999, the seconds carrying the sign. */
export function offsetLine(clock: bigint, ns: bigint): string {
  let sec = ns / NS_PER_S;
  let nsec = ns % NS_PER_S;
  if (nsec < 0n) {
    sec -= 1n;
    nsec += NS_PER_S;
  }
  return `${clock} ${sec} ${nsec}\n`;
}

const cString = (s: string): Buffer => Buffer.from(`${s}\0`, 'latin1');

/**
 * The plan steps that put `pid` (fresh, single-threaded, holding `fds`)
 * into a new time namespace with `offsets`. The descriptors it opens are
 * the lowest free one, closed again at once.
 */
export function timeNamespaceSteps(pid: number, offsets: NonNullable<ClockDecision['offsets']>, fds: readonly number[], scratchBase: bigint): PlanStep[] {
  let fd = 0;
  while (fds.includes(fd)) fd++;
  const layout = new ScratchLayout(scratchBase);
  const offsetsPath = layout.place(cString('/proc/self/timens_offsets'));
  const text = Buffer.from(offsetLine(CLOCK_IDS.monotonic, offsets.monotonicNs) + offsetLine(CLOCK_IDS.boottime, offsets.boottimeNs), 'latin1');
  const textAt = layout.place(text);
  const nsPath = layout.place(cString('/proc/self/ns/time_for_children'));
  const call = (nr: number, args: bigint[], expect: bigint, why: string): PlanStep => ({ op: { op: 'INJECT_SYSCALL', pid, nr, args }, why, expect });
  return layout.steps(pid, "the time namespace's offsets and the paths", [
    call(NR.unshare, [CLONE_NEWTIME], 0n, 'unshare(CLONE_NEWTIME): a new time namespace for the children of the target'),
    call(
      NR.openat,
      [AT_FDCWD, offsetsPath, O_WRONLY | O_CLOEXEC, 0n],
      BigInt(fd),
      "open /proc/self/timens_offsets (the new namespace's, as no task is in it yet)",
    ),
    call(
      NR.write,
      [BigInt(fd), textAt, BigInt(text.length)],
      BigInt(text.length),
      `offsets: ${text.toString('latin1').trim().replace('\n', ', ')} (clock at checkpoint − clock now)`,
    ),
    call(NR.close, [BigInt(fd)], 0n, 'close it'),
    call(NR.openat, [AT_FDCWD, nsPath, O_RDONLY | O_CLOEXEC, 0n], BigInt(fd), 'open /proc/self/ns/time_for_children'),
    call(NR.setns, [BigInt(fd), CLONE_NEWTIME], 0n, "setns: the target itself enters the namespace (its vvar pages refault as the namespace's)"),
    call(NR.close, [BigInt(fd)], 0n, 'close it'),
  ]);
}

/** clocks.json: null, or the clocks in hex and the boot id. */
export function clocksJson(clocks: ProcessClocks | undefined): unknown {
  if (!clocks) return null;
  return { monotonicNs: `0x${clocks.monotonicNs.toString(16)}`, boottimeNs: `0x${clocks.boottimeNs.toString(16)}`, bootId: clocks.bootId };
}

const ENTRY = 'clocks.json';
const HEX = /^0x[0-9a-f]{1,16}$/;

/** Validates clocks.json as untrusted input; undefined for null (nothing recorded). Errors name the field. */
export function parseClocks(raw: unknown): ProcessClocks | undefined {
  if (raw === null) return undefined;
  const fail = (field: string, why: string): never => {
    throw new ImageRejectedError(why, ENTRY, field);
  };
  if (typeof raw !== 'object' || Array.isArray(raw)) return fail('(entry)', 'is neither null nor an object');
  const o = raw as Record<string, unknown>;
  const clock = (field: 'monotonicNs' | 'boottimeNs'): bigint => {
    const v = o[field];
    if (typeof v !== 'string' || !HEX.test(v)) return fail(field, `${JSON.stringify(v)?.slice(0, 40)} is not a 0x hex value`);
    const ns = BigInt(v);
    return ns <= MAX_CLOCK_NS ? ns : fail(field, `${v} is beyond any clock a boot reaches`);
  };
  const monotonicNs = clock('monotonicNs');
  const boottimeNs = clock('boottimeNs');
  if (typeof o.bootId !== 'string' || !BOOT_ID.test(o.bootId)) fail('bootId', `${JSON.stringify(o.bootId)?.slice(0, 60)} is not a boot id`);
  return { monotonicNs, boottimeNs, bootId: o.bootId as string };
}
