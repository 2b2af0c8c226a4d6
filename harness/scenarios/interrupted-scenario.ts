/**
 * The scenario of a workload with no instruction to stop at: it runs for a
 * while and is interrupted wherever it is (provoke: RUN's timeout stops
 * every thread), checkpointed there and killed (checkpoint), restored under a
 * policy (restore), and run to its end, judged against its uninterrupted run
 * (oracle). The uninterrupted run is taken once, when the scenario is
 * prepared. Also the same stop with no checkpoint at all, continued
 * (continueInterrupted): the kernel's own resumption, which a restore must
 * match.
 */
import path from 'node:path';
import type { RunResult } from '../agent/ops.ts';
import { finishRun, kill, readRegisters, sendSignal } from '../agent/guest-run.ts';
import { CheckpointError, CrhError } from '../errors.ts';
import type { CheckpointProcessOptions } from '../restore/checkpoint.ts';
import { readCheckpointImage, type CheckpointImage, type ProcessInfo } from '../restore/checkpoint-image.ts';
import { restoreWitnessed } from '../testing/restore-witness.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { endedAs } from '../testing/native-reference.ts';
import {
  checkpointStopped,
  readOutput,
  restoreAndFinish,
  RUN_TIMEOUT_MS,
  runThenInterrupt,
  runUninterrupted,
  type Restored,
  type Workload,
} from '../testing/scenario.ts';
import type { UserRegs } from '../x86/registers.ts';
import type { Attempt } from './attempt.ts';
import type { Judgement, Reference } from './breakpoint-scenario.ts';
import type { TableScenario } from './table.ts';

export interface InterruptedSpec {
  /** the rows' scenario column */
  name: string;
  /** names the runs' output files in the guest */
  label: string;
  /** the workload; a function when each run needs its own (e.g. its own log file): `run` is 'reference' or the attempt's tag */
  workload: Workload | ((run: string) => Workload);
  /** how long the workload runs before it is interrupted */
  afterMs: number;
  /** a run's output in the rows' words (default: trimmed) */
  summary?: (output: string) => string;
  /** the uninterrupted run, when another scenario of the same workload already took it */
  reference?: Reference;
  /** judges a restored run; default: the reference's output exactly, and the same ending */
  judge?: (restored: RestoredAndRun, reference: Reference) => Judgement;
  /**
   * How a restored process goes on to its end, and what its output is (e.g.
   * its log, after the signal that wakes it); default: run to its end under
   * the CPU oracle, its stdout
   */
  goOn?: (pid: number, tag: string) => Promise<{ run: RunResult; output: string }>;
}

/** A restored process and its run to the end. */
export interface RestoredAndRun {
  pid: number;
  /** the image as read back (validated as any untrusted image) */
  image: CheckpointImage;
  differences: Restored['differences'];
  run: RunResult;
  output: string;
  /** what the restored process wrote to its stdout (the output itself, unless goOn says otherwise) */
  stdout: string;
  /** the CPU oracle's view, when the run went on under it (no goOn) */
  observation?: Restored['observation'];
}

/** How an attempt takes its checkpoint and restores: the checkpoint's options, and whether the restore keeps the pid (default). */
export interface AttemptOptions {
  checkpoint?: CheckpointProcessOptions;
  samePid?: boolean;
}

/** One attempt: the interrupted original, and the image and restored run when there were any. */
export interface InterruptedAttempt extends Attempt {
  /** the attempt's own workload (its arguments may name its files) */
  workload: Workload;
  /** the original's pid and how long its timed run took, or how it ended before the time was up */
  interrupted: { pid: number; elapsedMs: number } | { ended: RunResult };
  image?: CheckpointImage;
  /** the checkpoint refused the process (state no image can hold, restore/uncapturable.ts) */
  refusedAtCheckpoint?: CheckpointError;
  restored?: RestoredAndRun;
}

export interface InterruptedScenario extends TableScenario<InterruptedAttempt> {
  reference: Reference;
  /** attempt() with the checkpoint's own options (e.g. uncapturable: 'ignore'), or under a new pid */
  attemptWith(policy: RestorePolicy, tag: string, options: AttemptOptions): Promise<InterruptedAttempt>;
}

/** Prepares the scenario on `guest`: its uninterrupted run, once. */
export async function interruptedScenario(guest: Guest, spec: InterruptedSpec): Promise<InterruptedScenario> {
  const workloadOf = (run: string): Workload => (typeof spec.workload === 'function' ? spec.workload(run) : spec.workload);
  const summary = spec.summary ?? ((o: string) => o.trim());
  const reference = spec.reference ?? (await uninterrupted(guest, workloadOf('reference'), spec.label));
  const { output } = reference;
  const judge =
    spec.judge ??
    ((r: RestoredAndRun, ref: Reference): Judgement => ({ matched: r.output === ref.output && endedAs(r.run) === ref.ended, observed: summary(r.output) }));
  const notRestored = (why: string) => ({ matched: false, observed: why, witnesses: { notRestored: why } });

  const attemptWith = async (policy: RestorePolicy, tag: string, options: AttemptOptions): Promise<InterruptedAttempt> => {
    const workload = workloadOf(tag);
    const stopped = await runThenInterrupt(guest, workload, spec.afterMs, `/tmp/${path.basename(workload.binary)}-${tag}.out`);
    if (stopped.ended) return { workload, interrupted: stopped, ...notRestored(`the workload ended before ${spec.afterMs} ms (${endedAs(stopped.ended)})`) };
    const interrupted = { pid: stopped.pid, elapsedMs: stopped.elapsedMs };
    const process: ProcessInfo = { binary: workload.binary, argv: workload.argv, envp: workload.envp ?? [], noAslr: true, pid: stopped.pid };
    let taken: { file: string; image: CheckpointImage };
    try {
      taken = await checkpointStopped(guest, process, tag, options.checkpoint ?? {});
    } catch (error) {
      // A refusal is the checkpoint's answer, an attempt that did not restore; anything else is the case's error.
      await kill(guest.agent, stopped.pid).catch(() => {});
      if (!(error instanceof CheckpointError)) throw error;
      return { workload, interrupted, refusedAtCheckpoint: error, ...notRestored(`checkpoint refused: ${error.message}`) };
    }
    await kill(guest.agent, stopped.pid);
    const restored = await restoreAndGoOn(guest, taken.file, policy, tag, options.samePid ?? true, spec.goOn);
    const j = judge(restored, reference);
    return {
      workload,
      interrupted,
      image: taken.image,
      restored,
      matched: j.matched,
      observed: j.observed,
      witnesses: {
        output: restored.output,
        ended: endedAs(restored.run),
        differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
        ...j.witnesses,
      },
      ...(j.registerDiff?.length ? { registerDiff: j.registerDiff.join('\n') } : {}),
    };
  };

  return {
    name: spec.name,
    reference,
    expected: summary(output),
    attempt: (policy, tag) => attemptWith(policy, tag, {}),
    attemptWith,
  };
}

/** Restores the image in `file` and lets the process go on to its end: `goOn`'s way, or under the CPU oracle. */
async function restoreAndGoOn(
  guest: Guest,
  file: string,
  policy: RestorePolicy,
  tag: string,
  samePid: boolean,
  goOn: InterruptedSpec['goOn'],
): Promise<RestoredAndRun> {
  if (!goOn) {
    const r = await restoreAndFinish(guest, file, policy, tag, {}, samePid);
    return { ...r, stdout: r.output };
  }
  const image = await readCheckpointImage(file);
  const stdoutPath = restoredStdout(image, tag);
  const restored = await restoreWitnessed(guest.agent, image, { policy, stdoutPath, samePid }, tag);
  const { run, output } = await goOn(restored.pid, tag);
  return { pid: restored.pid, image, differences: restored.differences, run, output, stdout: await readOutput(guest, stdoutPath) };
}

/** Where restoreAndFinish sends a restored process's stdout. */
const restoredStdout = (image: CheckpointImage, tag: string): string => `/tmp/${path.basename(image.process.binary)}-${tag}.restored.out`;

/** The workload run to its end with nothing armed: what its attempts are judged against. */
async function uninterrupted(guest: Guest, workload: Workload, label: string): Promise<Reference> {
  const { run, output } = await runUninterrupted(guest, workload, `/tmp/${path.basename(workload.binary)}-${label}.reference.out`);
  return { run, output, ended: endedAs(run) };
}

/** The same stop with no checkpoint: the registers at the stop, and the run the process went on to. */
export interface Continued {
  regs: UserRegs;
  run: RunResult;
  output: string;
}

/**
 * Runs `workload` for `afterMs`, interrupts it as a checkpoint would, queues
 * `signo` if given, and continues the same process to its end — no
 * checkpoint, no restore: the kernel's own resumption from that stop.
 */
export async function continueInterrupted(guest: Guest, workload: Workload, afterMs: number, tag: string, signo?: number): Promise<Continued> {
  const out = `/tmp/${path.basename(workload.binary)}-${tag}.out`;
  const stopped = await runThenInterrupt(guest, workload, afterMs, out);
  if (stopped.ended) throw new CrhError(`${path.basename(workload.binary)} ended before the stop after ${afterMs} ms: ${endedAs(stopped.ended)}`);
  const regs = await readRegisters(guest.agent, stopped.pid);
  if (signo !== undefined) await sendSignal(guest.agent, stopped.pid, signo);
  const run = await finishRun(guest.agent, stopped.pid, RUN_TIMEOUT_MS);
  return { regs, run, output: await readOutput(guest, out) };
}
