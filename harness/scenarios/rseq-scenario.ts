/**
 * The rseq scenario: rseqcs counts per-CPU increments in rseq critical
 * sections and is stopped at a label around one (a breakpoint), or in a long
 * section by RUN's timeout. It is checkpointed there and restored, and it
 * runs to its end while the CPU oracle watches for the first execution of
 * the abort handler. Here are the stops (each taken again when a preemption
 * spoiled it, bounded), the restored runs, the original continued from the
 * very stop, and rseqcs's output read as data. The case judges each attempt
 * against what the stop owes.
 */
import type { RunResult } from '../agent/ops.ts';
import type { CheckpointImage, ProcessInfo } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { activeCriticalSection, inCriticalSection, rseqCsAddress, type RseqCriticalSection } from '../restore/rseq.ts';
import { CrhError } from '../errors.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../testing/native-reference.ts';
import {
  checkpointAtHit,
  checkpointRseqArmed,
  checkpointStopped,
  readOutput,
  restoreAndFinish,
  RUN_TIMEOUT_MS,
  runThenInterrupt,
} from '../testing/scenario.ts';
import { runUninterrupted, spawnArmed, type Restored, type Workload } from '../testing/scenario.ts';
import { debugRegOffset, hex } from '../x86/registers.ts';

/** rseqcs's summary line: `rseqcs mode=M iterations=N sum=S aborts=A reregister=R`. */
export interface Summary {
  sum: number;
  aborts: number;
  reregister: string;
}

export function summary(output: string): Summary | undefined {
  const m = /^rseqcs mode=\S+ iterations=\d+ sum=(\d+) aborts=(\d+) reregister=(\S+)$/m.exec(output);
  return m ? { sum: Number(m[1]), aborts: Number(m[2]), reregister: m[3]! } : undefined;
}

export const show = (s: Summary | undefined): string => (s ? `sum=${s.sum} aborts=${s.aborts} reregister=${s.reregister}` : 'no summary line');

/** The long section's own abort count (`rseqcs long spin=L aborts=A`). */
export function longAborts(output: string): number | undefined {
  const m = /^rseqcs long spin=\d+ aborts=(\d+)$/m.exec(output);
  return m ? Number(m[1]) : undefined;
}

/** Aborts of the increments after the first (`rseqcs later-aborts=K`): preemptions inside them, no restore's doing. */
export function laterAborts(output: string): number | undefined {
  const m = /^rseqcs later-aborts=(\d+)$/m.exec(output);
  return m ? Number(m[1]) : undefined;
}

/**
 * A summary without its abort count, for the long section: its own count
 * is on its own line, and the short retry after its abort may be preempted
 * too on a busy host (an abort no restore decides).
 */
export const withoutAborts = (s: Summary | undefined) => s && { sum: s.sum, reregister: s.reregister };

/**
 * The output with its abort counts masked: how often a section aborts on its own depends on preemption (docs/platform.md),
 * so two runs agree on everything else — mode, iterations, sum, re-registration, spin — but not necessarily on those.
 */
const withoutAbortCounts = (output: string): string => output.replace(/(^|\s)(aborts|later-aborts)=\d+/gm, '$1$2=*');

/** How a run ended in the rows' words: "killed by signal 11", "exit 0, aborts=0". */
export const outcome = (run: { outcome: string; code: number }, s: Summary | undefined): string =>
  run.outcome === 'killed' ? `killed by signal ${run.code}` : `exit ${run.code}, aborts=${s?.aborts ?? '?'}`;

/** A restored run to its end under the oracle, with rseqcs's summary. */
export type RseqRestored = Restored & { summary?: Summary };

/**
 * What the oracle saw of the abort handler, as far as it speaks for the
 * first increment: the CPU ran the handler, never ran it, or `undefined`
 * when later increments aborted on their own (their handler runs count too).
 */
export function abortHandlerRan(r: Restored): boolean | undefined {
  const ran = r.observation.first !== undefined;
  return ran && laterAborts(r.output) !== 0 ? undefined : ran;
}

/**
 * The first increment's aborts the program had already counted when it was
 * checkpointed, read from the image: the run to the breakpoint is a real run
 * on a busy CPU, and a preemption inside the first section before the stop
 * aborts it there (flake run 4 of 10, 2026-12-05: `aborts=1` after a stop at
 * rseq_post_commit, the CPU never running the abort handler after the
 * restore). No restore decides those; the restore must add exactly the
 * point's own.
 */
export function abortsAtCheckpoint(image: CheckpointImage, at: bigint): number {
  const region = image.regions.find((r) => r.entry !== null && r.start <= at && at + 8n <= r.end);
  const bytes = region ? image.memory.get(region.entry!) : undefined;
  if (!region || !bytes) throw new CrhError(`rseqcs's aborts counter (${hex(at)}) is in no region the image stores`);
  return Number(bytes.readBigUInt64LE(Number(at - region.start)));
}

/** A stop inside the long section, checkpointed, the original left stopped there. */
export interface InsideStop {
  process: ProcessInfo;
  stdoutPath: string;
  file: string;
  image: CheckpointImage;
  cs: RseqCriticalSection;
  /** which try landed inside */
  tries: number;
  /** the timed RUN's wall time, host side */
  elapsedMs: number;
}

/** Tries of stopArmed, as checkpointRseqArmed's. */
const ARMED_STOP_TRIES = 5;

export interface RseqScenario {
  /** the uninterrupted run, asserted by the caller against the native run through `nativeMatches` */
  reference(w: Workload, tag: string): Promise<{ code: number; summary?: Summary; output: string; nativeMatches: [string, string] }>;
  /**
   * Checkpoints `w` at its breakpoint (label `armed`: after the store to rseq_cs, taken again when a preemption
   * cleared it), restores under `policy` and runs it to its end under the oracle
   */
  checkpointAndRestore(
    w: Workload,
    armed: boolean,
    policy: RestorePolicy,
    tag: string,
  ): Promise<{ checkpointRun: RunResult; misses: string[]; restored: RseqRestored }>;
  /** restores an image file under `policy` and runs it to its end under the oracle */
  restore(file: string, policy: RestorePolicy, tag: string): Promise<RseqRestored>;
  /**
   * Runs `w` to its breakpoint and leaves it stopped there with rseq_cs still set; a stop whose rseq_cs the kernel
   * already cleared (a preemption between the store and start_ip) is killed and taken again, at most
   * ARMED_STOP_TRIES times, each miss reported. A run that ends before the stop is returned as it ended.
   */
  stopArmed(w: Workload, tag: string): Promise<{ pid: number; stopped: RunResult; stdoutPath: string; misses: string[] }>;
  /**
   * Runs `w` for `ms` and checkpoints it wherever RUN's timeout stopped it; keeps the try (the process left stopped)
   * when the image's rip is inside [start_ip, start_ip + post_commit_offset) of the rseq_cs the image's registration
   * points at, else kills it and tries again, at most `tries` times. Every miss is reported.
   */
  interruptInside(
    w: Workload,
    tag: string,
    sectionStart: bigint,
    ms: number,
    tries: number,
  ): Promise<(InsideStop & { misses: string[] }) | { misses: string[] }>;
  /** lets a stopped original go on to its end (DR7 cleared first when `disarm`): its run and its output */
  continueOriginal(pid: number, stdoutPath: string, disarm?: boolean): Promise<{ run: RunResult; output: string }>;
  /** a stopped process's rseq_cs now (the word its registration's area holds) */
  rseqCs(pid: number): Promise<bigint>;
  /** a stopped process's 8-byte counter at `address` */
  readCounter(pid: number, address: bigint): Promise<number>;
}

export function rseqScenario(guest: Guest, abortHandler: bigint): RseqScenario {
  const { agent } = guest;
  const rseqCsOf = async (pid: number): Promise<bigint> => {
    const config = await agent.call({ op: 'RSEQ_CONFIG', pid });
    return (await agent.call({ op: 'READ_MEM', pid, address: rseqCsAddress(config), length: 8 })).readBigUInt64LE(0);
  };
  const restore = async (file: string, policy: RestorePolicy, tag: string): Promise<RseqRestored> => {
    const r = await restoreAndFinish(guest, file, policy, tag, { firstExecutionAt: abortHandler });
    return { ...r, summary: summary(r.output) };
  };
  return {
    async reference(w, tag) {
      const { run, output } = await runUninterrupted(guest, w, `/tmp/rseqcs-reference-${tag}.out`);
      const native = await nativeReference(guest, w);
      return {
        code: run.code,
        summary: summary(output),
        output,
        nativeMatches: [`${endedAs(run)}\n${withoutAbortCounts(output)}`, `${endedAs(native)}\n${withoutAbortCounts(native.output)}`],
      };
    },
    async checkpointAndRestore(w, armed, policy, tag) {
      const checkpointed = armed
        ? await checkpointRseqArmed(guest, w, tag, { disarm: true })
        : { ...(await checkpointAtHit(guest, w, 1, tag, { disarm: true })), misses: [] };
      if (!checkpointed.image) throw new CrhError(`rseqcs ended before its breakpoint (${endedAs(checkpointed.run)})`);
      return { checkpointRun: checkpointed.run, misses: checkpointed.misses, restored: await restore(checkpointed.file, policy, tag) };
    },
    restore,
    async stopArmed(w, tag) {
      const misses: string[] = [];
      for (let attempt = 1; ; attempt++) {
        const stdoutPath = `/tmp/rseqcs-${tag}-original-try${attempt}.out`;
        const pid = await spawnArmed(guest, w, stdoutPath);
        const stopped = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
        if (stopped.outcome !== 'hit-limit') return { pid, stopped, stdoutPath, misses };
        if ((await rseqCsOf(pid)) !== 0n) return { pid, stopped, stdoutPath, misses };
        misses.push(`try ${attempt}: rseq_cs was already 0 at the stop (the kernel cleared it after a preemption before start_ip)`);
        if (attempt === ARMED_STOP_TRIES) return { pid, stopped, stdoutPath, misses };
        await agent.call({ op: 'KILL', pid });
      }
    },
    async interruptInside(w, tag, sectionStart, ms, tries) {
      const misses: string[] = [];
      for (let attempt = 1; attempt <= tries; attempt++) {
        const stdoutPath = `/tmp/rseqcs-${tag}-try${attempt}.original.out`;
        const r = await runThenInterrupt(guest, w, ms, stdoutPath);
        if (r.ended) {
          const out = await readOutput(guest, stdoutPath);
          misses.push(`try ${attempt}: ${r.ended.outcome} (${r.ended.code}) before the stop, long section aborts=${longAborts(out) ?? '?'}`);
          continue;
        }
        const process: ProcessInfo = { binary: w.binary, argv: w.argv, envp: w.envp ?? [], noAslr: true, pid: r.pid };
        // A failed checkpoint must not leave the program behind: running on, it would compete for the guest's one CPU
        // with the next subtests' workloads and preempt them where they expect none.
        const { file, image } = await checkpointStopped(guest, process, `${tag}-try${attempt}`).catch(async (error: unknown) => {
          await agent.call({ op: 'KILL', pid: r.pid }).catch(() => {});
          throw error;
        });
        const cs = image.rseq ? activeCriticalSection(image) : undefined;
        if (cs && cs.startIp === sectionStart && inCriticalSection(image.regs.rip, cs))
          return { process, stdoutPath, file, image, cs, tries: attempt, elapsedMs: r.elapsedMs, misses };
        misses.push(
          `try ${attempt}: stopped (RUN took ${r.elapsedMs} ms), rip ${hex(image.regs.rip)} ${cs ? `outside [${hex(cs.startIp)}, +${hex(cs.postCommitOffset)})` : 'with rseq_cs 0'}`,
        );
        await agent.call({ op: 'KILL', pid: r.pid });
      }
      return { misses };
    },
    async continueOriginal(pid, stdoutPath, disarm = false) {
      if (disarm) await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
      const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
      return { run, output: await readOutput(guest, stdoutPath) };
    },
    rseqCs: rseqCsOf,
    async readCounter(pid, address) {
      return Number((await agent.call({ op: 'READ_MEM', pid, address, length: 8 })).readBigUInt64LE(0));
    },
  };
}
