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
import type { CheckpointImage, ProcessInfo } from '../restore/checkpoint-image.ts';
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
  workload: Workload;
  /** how long the workload runs before it is interrupted */
  afterMs: number;
  /** a run's output in the rows' words (default: trimmed) */
  summary?: (output: string) => string;
  /** the uninterrupted run, when another scenario of the same workload already took it */
  reference?: Reference;
  /** judges a restored run; default: the reference's output exactly, and the same ending */
  judge?: (restored: Restored, reference: Reference) => Judgement;
}

/** One attempt: the interrupted original, and the image and restored run when there were any. */
export interface InterruptedAttempt extends Attempt {
  /** the original's pid and how long its timed run took, or how it ended before the time was up */
  interrupted: { pid: number; elapsedMs: number } | { ended: RunResult };
  image?: CheckpointImage;
  /** the checkpoint refused the process (state no image can hold, restore/uncapturable.ts) */
  refusedAtCheckpoint?: CheckpointError;
  restored?: Restored;
}

export interface InterruptedScenario extends TableScenario<InterruptedAttempt> {
  reference: Reference;
  /** attempt() with the checkpoint's own options (e.g. uncapturable: 'ignore') */
  attemptWith(policy: RestorePolicy, tag: string, checkpoint: CheckpointProcessOptions): Promise<InterruptedAttempt>;
}

/** Prepares the scenario on `guest`: its uninterrupted run, once. */
export async function interruptedScenario(guest: Guest, spec: InterruptedSpec): Promise<InterruptedScenario> {
  const { workload } = spec;
  const summary = spec.summary ?? ((o: string) => o.trim());
  const reference = spec.reference ?? (await uninterrupted(guest, workload, spec.label));
  const { output } = reference;
  const judge =
    spec.judge ??
    ((r: Restored, ref: Reference): Judgement => ({ matched: r.output === ref.output && endedAs(r.run) === ref.ended, observed: summary(r.output) }));
  const notRestored = (why: string) => ({ matched: false, observed: why, witnesses: { notRestored: why } });

  const attemptWith = async (policy: RestorePolicy, tag: string, checkpoint: CheckpointProcessOptions): Promise<InterruptedAttempt> => {
    const stopped = await runThenInterrupt(guest, workload, spec.afterMs, `/tmp/${path.basename(workload.binary)}-${tag}.out`);
    if (stopped.ended) return { interrupted: stopped, ...notRestored(`the workload ended before ${spec.afterMs} ms (${endedAs(stopped.ended)})`) };
    const interrupted = { pid: stopped.pid, elapsedMs: stopped.elapsedMs };
    const process: ProcessInfo = { binary: workload.binary, argv: workload.argv, envp: workload.envp ?? [], noAslr: true, pid: stopped.pid };
    let taken: { file: string; image: CheckpointImage };
    try {
      taken = await checkpointStopped(guest, process, tag, checkpoint);
    } catch (error) {
      // A refusal is the checkpoint's answer, an attempt that did not restore; anything else is the case's error.
      await kill(guest.agent, stopped.pid).catch(() => {});
      if (!(error instanceof CheckpointError)) throw error;
      return { interrupted, refusedAtCheckpoint: error, ...notRestored(`checkpoint refused: ${error.message}`) };
    }
    await kill(guest.agent, stopped.pid);
    const restored = await restoreAndFinish(guest, taken.file, policy, tag, {});
    const j = judge(restored, reference);
    return {
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
