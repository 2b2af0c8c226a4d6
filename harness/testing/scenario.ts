/**
 * The steps every case repeats: start a workload stopped under the agent with
 * an execute breakpoint armed, run it to the Nth hit, checkpoint it there
 * (image written to the case's artifacts), kill it, restore the image under a
 * policy, and run the restored process to its end under the CPU oracle. Or,
 * with no breakpoint at all, run it for a while and interrupt it wherever it
 * is (runThenInterrupt), then checkpoint it there (checkpointStopped).
 */
import { armDebugRegisters, disarm, finishRun, readOutput as readGuestOutput, runFor, spawnArmed as spawnArmedProgram } from '../agent/guest-run.ts';
import { appendFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { RunResult } from '../agent/ops.ts';
import { observeCpu, type Observation, type WatchOptions } from '../oracle/cpu-oracle.ts';
import { checkpointProcess, type CheckpointProcessOptions } from '../restore/checkpoint.ts';
import { readCheckpointImage, writeCheckpointImage, type CheckpointImage, type ProcessInfo } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import type { Difference, RestoreResult } from '../restore/restore.ts';
import { noteOracle, restoreWitnessed } from './restore-witness.ts';
import type { ArmedProgram } from '../agent/breakpoint-spawn.ts';
import type { Guest } from './guest-fixture.ts';
import { hex } from '../x86/registers.ts';
import { rseqCsPointer } from '../restore/rseq.ts';

export const RUN_TIMEOUT_MS = 60_000;
/** A case's workloads print a few lines: 64 KiB is plenty, and a cut file says so. */
const CASE_OUTPUT_MAX_BYTES = 65536;

export type Workload = ArmedProgram;

/** Spawns the workload (ASLR off) stopped before its first instruction, DR0 armed. */
export function spawnArmed(guest: Guest, w: Workload, stdoutPath: string): Promise<number> {
  return spawnArmedProgram(guest.agent, w, stdoutPath);
}

export async function readOutput(guest: Guest, file: string): Promise<string> {
  return readGuestOutput(guest.agent, file, CASE_OUTPUT_MAX_BYTES);
}

/** Runs the workload (ASLR off) to its end with nothing armed — its breakpoints ignored: the uninterrupted reference. */
export async function runUninterrupted(guest: Guest, w: Workload, stdoutPath: string): Promise<{ run: RunResult; output: string }> {
  const pid = await spawnArmedProgram(guest.agent, { binary: w.binary, argv: w.argv, envp: w.envp ?? [] }, stdoutPath);
  const run = await finishRun(guest.agent, pid, RUN_TIMEOUT_MS);
  return { run, output: await readOutput(guest, stdoutPath) };
}

export interface Checkpointed {
  /** the image file in the case's artifacts */
  file: string;
  /** the run of the original up to the checkpoint */
  run: RunResult;
  process: ProcessInfo;
  /** the image as written to `file`; undefined when the run ended before the stop */
  image?: CheckpointImage;
}

export interface CheckpointOptions {
  /**
   * Clear DR7 before the checkpoint: the breakpoint only chose where to stop,
   * and must not fire again in the restored process.
   */
  disarm?: boolean;
  /** Instead of disarm: the DR7 to leave (e.g. keep one breakpoint, drop the one that chose the stop). */
  dr7?: bigint;
  /**
   * The leave-running variant: the original is not killed but left stopped
   * where it was checkpointed, for the caller to let it go on (its pid is in
   * `process.pid`); a copy is then restored beside it, under a new pid.
   */
  leaveRunning?: boolean;
  /** refuse (default) or ignore state no image can hold (checkpoint.ts) */
  uncapturable?: CheckpointProcessOptions['uncapturable'];
}

/** Runs the workload to its `hit`-th breakpoint hit, checkpoints it there and kills it (unless leaveRunning). */
export async function checkpointAtHit(
  guest: Guest,
  w: Workload,
  hit: number | { at: bigint },
  tag: string,
  options: CheckpointOptions = {},
): Promise<Checkpointed> {
  const { agent } = guest;
  const pid = await spawnArmed(guest, w, `/tmp/${path.basename(w.binary)}-${tag}.original.out`);
  const run = typeof hit === 'number' ? await finishRun(agent, pid, RUN_TIMEOUT_MS, hit) : await runToHitAt(guest, pid, hit.at);
  const process: ProcessInfo = { binary: w.binary, argv: w.argv, envp: w.envp ?? [], noAslr: true, pid };
  if (run.outcome !== 'hit-limit') {
    await agent.call({ op: 'KILL', pid }).catch(() => {});
    return { file: '', run, process };
  }
  if (options.dr7 !== undefined) await armDebugRegisters(agent, pid, { 7: options.dr7 });
  else if (options.disarm) await disarm(agent, pid);
  let taken: { file: string; image: CheckpointImage };
  try {
    taken = await checkpointStopped(guest, process, tag, { uncapturable: options.uncapturable });
  } catch (error) {
    // A refused checkpoint leaves no stopped original behind.
    await agent.call({ op: 'KILL', pid }).catch(() => {});
    throw error;
  }
  const { file, image } = taken;
  if (!options.leaveRunning) await agent.call({ op: 'KILL', pid });
  return { file, run, process, image };
}

/**
 * checkpointAtHit(…, 1, …) at a stop where the workload has already stored
 * its rseq_cs (armed before start_ip, or inside the section). A preemption
 * between that store and start_ip makes the kernel clear rseq_cs on the way
 * back to user mode (the IP is outside the section then), and the section
 * owes no abort any more — right, but not the scenario. (An interrupt can
 * land between any two instructions: on hardware always, under QEMU TCG in a
 * page that holds a breakpoint, which it runs an instruction at a time; seen
 * under load.) Such a checkpoint is taken again, at most `tries` times; the
 * misses are returned for the case to report, and after the last the case
 * sees the cleared rseq_cs and fails.
 */
export async function checkpointRseqArmed(
  guest: Guest,
  w: Workload,
  tag: string,
  options: CheckpointOptions = {},
  tries = 5,
): Promise<Checkpointed & { misses: string[] }> {
  const misses: string[] = [];
  for (let attempt = 1; ; attempt++) {
    const checkpointed = await checkpointAtHit(guest, w, 1, tag, options);
    const image = checkpointed.image;
    if (!image || attempt === tries) return { ...checkpointed, misses };
    if (!image.rseq || rseqCsPointer(image) !== 0n) return { ...checkpointed, misses };
    misses.push(`try ${attempt}: rseq_cs was already 0 at the stop at ${hex(image.regs.rip)} (the kernel cleared it after a preemption before start_ip)`);
  }
}

/** Checkpoints a process whose every thread is in a ptrace stop; the image goes to the case's artifacts. */
export async function checkpointStopped(
  guest: Guest,
  process: ProcessInfo,
  tag: string,
  options: CheckpointProcessOptions = {},
): Promise<{ file: string; image: CheckpointImage }> {
  const image = await checkpointProcess(guest.agent, process, guest.platform, options);
  const file = path.join(guest.artifactsDir, `checkpoint-${tag}.tar`);
  await writeCheckpointImage(image, file);
  return { file, image };
}

/** `elapsedMs`: the timed RUN's wall time, host side (the agent's timeout, its interrupt and the round trip). */
export type Interrupted = { pid: number; elapsedMs: number; ended?: undefined } | { ended: RunResult };

/**
 * Spawns the workload (ASLR off) and RUNs it for `ms`: RUN's timeout
 * interrupts every thread (PTRACE_INTERRUPT) wherever it is and leaves it
 * stopped, answering ETIMEDOUT — the process is then ready for a
 * checkpoint. With `breakAt` the clock starts at its first hit instead of at
 * the first instruction: run to it, disarm (DR7 = 0), then the `ms`.
 * `ended` when the workload finished (or died) first.
 */
export async function runThenInterrupt(guest: Guest, w: Workload, ms: number, stdoutPath: string): Promise<Interrupted> {
  const { agent } = guest;
  const pid = await spawnArmed(guest, w, stdoutPath);
  if (w.breakAt !== undefined) {
    const first = await finishRun(agent, pid, RUN_TIMEOUT_MS, 1);
    if (first.outcome !== 'hit-limit') return { ended: first };
    await disarm(agent, pid);
  }
  const timed = await runFor(agent, pid, ms);
  return timed.kind === 'interrupted' ? { pid, elapsedMs: timed.elapsedMs } : { ended: timed.run };
}

/**
 * Runs to the first hit at `address`, one hit at a time, when other armed
 * breakpoints make the hit's number unpredictable; the hits on the way are
 * all in the result.
 */
async function runToHitAt(guest: Guest, pid: number, address: bigint): Promise<RunResult> {
  const deadline = Date.now() + RUN_TIMEOUT_MS;
  let seen: RunResult | undefined;
  for (;;) {
    const step = await finishRun(guest.agent, pid, Math.max(1, deadline - Date.now()), 1);
    seen = seen ? { ...step, hits: [...seen.hits, ...step.hits], signals: [...seen.signals, ...step.signals] } : step;
    if (step.outcome !== 'hit-limit' || step.hits.at(-1)?.rip === address) return seen;
  }
}

export interface Restored {
  image: CheckpointImage;
  /** the restore plan that ran (restore/plan.ts), and how long the restore took up to its stop */
  plan?: RestoreResult['plan'];
  restoreMs?: number;
  /** what the kernel accepted differently from the plan's request */
  differences: Difference[];
  run: RunResult;
  output: string;
  observation: Observation;
}

/**
 * Reads the image back (validated as any untrusted image), restores it under
 * `policy`, and runs the restored process to its end while the oracle watches.
 */
export async function restoreAndFinish(
  guest: Guest,
  file: string,
  policy: RestorePolicy,
  tag: string,
  watch: Omit<WatchOptions, 'log'>,
  samePid = true,
): Promise<Restored & { pid: number }> {
  const image = await readCheckpointImage(file);
  const out = `/tmp/${path.basename(image.process.binary)}-${tag}.restored.out`;
  const started = Date.now();
  const restored = await restoreWitnessed(guest.agent, image, { policy, stdoutPath: out, samePid }, tag);
  const restoreMs = Date.now() - started;
  const { run, observation } = await runUnderOracle(guest, restored.pid, tag, watch);
  return {
    pid: restored.pid,
    image,
    plan: restored.plan,
    restoreMs,
    differences: restored.differences,
    run,
    output: await readOutput(guest, out),
    observation,
  };
}

/**
 * Runs a restored process (by any engine) to its end while the CPU oracle
 * watches; every VM stop the oracle services goes to the case's artifacts
 * (oracle-TAG.log) and its counts to the pending restore `tag`.
 */
export async function runUnderOracle(
  guest: Guest,
  pid: number,
  tag: string,
  watch: Omit<WatchOptions, 'log'>,
): Promise<{ run: RunResult; observation: Observation }> {
  const oracleLog = path.join(guest.artifactsDir, `oracle-${tag}.log`);
  writeFileSync(oracleLog, '');
  const log = (line: string): void => appendFileSync(oracleLog, `${new Date().toISOString()} ${line}\n`);
  const { result: run, observation } = await observeCpu(guest.machine.gdbSocket, guest.symbols, { ...watch, log }, () =>
    finishRun(guest.agent, pid, RUN_TIMEOUT_MS),
  );
  noteOracle(tag, oracleCounts(guest, watch, observation));
  return { run, observation };
}

/** The oracle's counts in one line, for the row: "first execution of regcheck:regcheck_resumed reached; 3 #DB at hwbreak:target; 14 VM stops". */
function oracleCounts(guest: Guest, watch: Omit<WatchOptions, 'log'>, observation: Observation): string {
  const parts: string[] = [];
  if (watch.firstExecutionAt !== undefined)
    parts.push(`first execution of ${guest.symbols.symbolize(watch.firstExecutionAt)} ${observation.first ? 'reached' : 'never reached'}`);
  if (watch.countDebugTrapsAt !== undefined) parts.push(`${observation.debugTraps.length} #DB at ${guest.symbols.symbolize(watch.countDebugTrapsAt)}`);
  parts.push(`${observation.stops} VM stops`);
  return parts.join('; ');
}
