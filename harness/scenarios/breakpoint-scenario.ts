/**
 * The scenario most cases are: a workload stopped at a breakpoint hit
 * (provoke), checkpointed there and killed (checkpoint), restored under a
 * policy (restore), and run to its end under the CPU oracle, judged against
 * its uninterrupted run (oracle). The uninterrupted run is taken once, when
 * the scenario is prepared, and checked against the program's native run;
 * each attempt is one checkpoint → restore → run, as an Attempt whose
 * witnesses the table runner judges (table.ts).
 */
import type { Test } from 'tap';
import path from 'node:path';
import type { RunResult } from '../agent/ops.ts';
import { CrhError, ImageRejectedError } from '../errors.ts';
import { observeCpu, type Observation, type WatchOptions } from '../oracle/cpu-oracle.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../testing/native-reference.ts';
import {
  checkpointAtHit,
  readOutput,
  restoreAndFinish,
  RUN_TIMEOUT_MS,
  runUninterrupted,
  spawnArmed,
  type CheckpointOptions,
  type Checkpointed,
  type Restored,
  type Workload,
} from '../testing/scenario.ts';
import type { Attempt, Expectation, Witnesses } from './attempt.ts';
import type { Engine, EngineGap } from '../report/verdicts.ts';
import type { UserRegs } from '../x86/registers.ts';
import { criuAtHit, generalRegisterDifferences, lostDebugRegisters, type CriuAttempt } from '../testing/criu-engine.ts';
import type { CriuRowOptions, TableScenario } from './table.ts';

/** The uninterrupted run the attempts are judged against. */
export interface Reference {
  run: RunResult;
  output: string;
  /** "exited 0" */
  ended: string;
  /** taken 'armed-under-oracle': what the oracle saw of the uninterrupted run */
  observation?: Observation;
}

/** A restored process's run to its end, whichever engine restored it: what a judge reads. */
export interface RestoredRun {
  /** the original's run up to the checkpoint */
  checkpointRun: RunResult;
  /** the registers the process had at the checkpoint: the image's (crh), or ptrace's at the dump (criu) */
  regsAtCheckpoint: UserRegs;
  run: RunResult;
  output: string;
  observation: Observation;
}

/** One attempt of a breakpoint scenario: the judged Attempt, and what it is made of for a row's own assertions. */
export interface BreakpointAttempt extends Attempt {
  engine: Engine;
  workload: Workload;
  /** the original's run up to the stop */
  checkpointRun: RunResult;
  /** the restored process's run; absent when nothing was restored (the workload ended first, or the restore was refused) */
  restoredRun?: RestoredRun;
  /** crh: the checkpoint image and where it was written */
  checkpointed?: Checkpointed;
  /** crh: the restore and the run after it */
  restored?: Restored;
  /** crh: the policy's refusal, and how many agent requests the refused restore sent */
  refused?: { error: ImageRejectedError; requestsSent: number };
  /** criu: what CRIU dumped and gave back */
  criu?: Extract<CriuAttempt, { kind: 'restored' }>;
}

/** A judge's reading of a restored run: whether it matched the reference, in the row's words. */
export interface Judgement {
  matched: boolean;
  observed: string;
  witnesses?: Witnesses;
  /** registers the CPU (oracle) showed differently from the checkpoint, one line each */
  registerDiff?: string[];
}

export interface BreakpointScenarioSpec {
  /** the rows' scenario column */
  name: string;
  /** the armed workload; a function when each run needs its own (e.g. its own file names): `run` is 'reference', 'native' or the attempt's tag */
  workload: Workload | ((run: string) => Workload);
  /** the hit to checkpoint at (default 1) */
  hit?: number;
  /** default { disarm: true }: the breakpoint only chose where to stop */
  checkpoint?: CheckpointOptions;
  /** what the oracle watches while the restored process runs (default: nothing but the VM stops); a function when it is read off the reference */
  watch?: Omit<WatchOptions, 'log'> | ((reference: Reference) => Omit<WatchOptions, 'log'>);
  /**
   * How the uninterrupted run is taken: with nothing armed (default), armed
   * (its hits counted), or armed and under the oracle with `watch` (its #DB
   * counted too; `watch` then an object)
   */
  reference?: 'unarmed' | 'armed' | 'armed-under-oracle';
  /** the native run's output in the reference's words, where they differ by design (their own file names); default: as it is */
  nativeAsReference?: (output: string) => string;
  /** the uninterrupted run in the rows' words; default its output, trimmed */
  expected?: (reference: Reference) => string;
  /** judges a restored run, by either engine; default: the reference's output and ending */
  judge?: (run: RestoredRun, reference: Reference) => Judgement;
  /**
   * Engine criu: the documented gap of CRIU's that is the whole difference of
   * this attempt, if it is (asked only when the attempt did not match and
   * CRIU gave every general register back)
   */
  criuGap?: (criu: Extract<CriuAttempt, { kind: 'restored' }>, run: RestoredRun, reference: Reference) => EngineGap | undefined;
  /** Engine criu: the documented gap of CRIU's that its refusal (to dump or to restore) is, if it is — by CRIU's own words */
  criuRefusalGap?: (refusal: Extract<CriuAttempt, { kind: 'refused' }>) => EngineGap | undefined;
  /** platform-profile values every row's expectation depends on; a function when the reference shows them */
  conditions?: Record<string, string> | ((reference: Reference) => Record<string, string>);
}

export interface BreakpointScenario extends TableScenario<BreakpointAttempt> {
  reference: Reference;
}

/**
 * Prepares the scenario on `guest`: the uninterrupted run, once, asserted in
 * `t` to exit as the native run does with the same output.
 */
export async function breakpointScenario(t: Test, guest: Guest, spec: BreakpointScenarioSpec): Promise<BreakpointScenario> {
  const workloadOf = (run: string): Workload => (typeof spec.workload === 'function' ? spec.workload(run) : spec.workload);
  const hit = spec.hit ?? 1;
  const checkpointOptions = spec.checkpoint ?? { disarm: true };
  const reference = await takeReference(guest, workloadOf('reference'), spec);
  const watch = typeof spec.watch === 'function' ? spec.watch(reference) : (spec.watch ?? {});
  const conditions = typeof spec.conditions === 'function' ? spec.conditions(reference) : spec.conditions;
  const native = await nativeReference(guest, workloadOf('native'));
  // The verdicts rest on a traced run: it must be what the program does with no tracer at all.
  t.equal(
    `${reference.ended}\n${reference.output}`,
    `${endedAs(native)}\n${(spec.nativeAsReference ?? ((o) => o))(native.output)}`,
    'the traced reference is the native run (no tracer)',
  );
  const judge = spec.judge ?? sameOutputAndEnding;
  const judged = (run: RestoredRun): Pick<Attempt, 'matched' | 'observed' | 'witnesses' | 'registerDiff'> & { judgement: Judgement } => {
    const j = judge(run, reference);
    return {
      judgement: j,
      matched: j.matched,
      observed: j.observed,
      witnesses: { hits: run.checkpointRun.hits.length + run.run.hits.length, output: run.output, ended: endedAs(run.run), ...j.witnesses },
      ...(j.registerDiff?.length ? { registerDiff: j.registerDiff.join('\n') } : {}),
    };
  };
  const notRestored = (why: string): Pick<Attempt, 'matched' | 'observed' | 'witnesses'> => ({
    matched: false,
    observed: why,
    witnesses: { notRestored: why },
  });
  return {
    name: spec.name,
    reference,
    expected: (spec.expected ?? ((r) => r.output.trim()))(reference),
    async attempt(policy: RestorePolicy, tag: string): Promise<BreakpointAttempt> {
      const workload = workloadOf(tag);
      const checkpointed = await checkpointAtHit(guest, workload, hit, tag, checkpointOptions);
      const base = {
        engine: 'crh' as const,
        workload,
        checkpointRun: checkpointed.run,
        checkpointed,
        ...(conditions ? { conditions } : {}),
      };
      if (!checkpointed.image) return { ...base, ...notRestored(`the workload ended before stop ${hit} (${endedAs(checkpointed.run)})`) };
      let restored: Restored;
      const before = guest.agent.requestsSent;
      try {
        restored = await restoreAndFinish(guest, checkpointed.file, policy, tag, watch);
      } catch (error) {
        // A policy that refuses the image (rf=reject) is an attempt that failed, not an error of the case.
        if (!(error instanceof ImageRejectedError)) throw error;
        return { ...base, refused: { error, requestsSent: guest.agent.requestsSent - before }, ...notRestored(`restore refused: ${error.message}`) };
      }
      const restoredRun: RestoredRun = { checkpointRun: checkpointed.run, regsAtCheckpoint: restored.image.regs, ...restored };
      const { judgement: _, ...j } = judged(restoredRun);
      return {
        ...base,
        restored,
        restoredRun,
        ...j,
        witnesses: { ...j.witnesses, differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`) },
      };
    },
    async attemptThroughCriu(options: CriuRowOptions, tag: string): Promise<BreakpointAttempt> {
      const workload = workloadOf(tag);
      const version = guest.image.criu?.version ?? '?';
      const dr7 = checkpointOptions.dr7 ?? (checkpointOptions.disarm ? 0n : undefined);
      const a = await criuAtHit(guest, workload, hit, tag, { watch, ...(dr7 !== undefined ? { dr7BeforeDump: dr7 } : {}), ...options });
      const base = { engine: 'criu' as const, workload, checkpointRun: a.checkpointRun, conditions: { ...conditions, 'criu.version': version } };
      if (a.kind === 'refused') {
        const gap = spec.criuRefusalGap?.(a);
        return { ...base, ...notRestored(`CRIU ${version}: ${a.reason}`), ...(gap ? { gap } : {}) };
      }
      if (a.kind === 'ended') return { ...base, ...notRestored(`the workload ended before stop ${hit} (${endedAs(a.checkpointRun)})`) };
      t.comment(
        `CRIU: ${a.handoff.dumpMs} ms dump, ${a.handoff.restoreMs} ms restore, ${a.handoff.imageBytes} bytes of images; debug registers ${lostDebugRegisters(a) || 'as dumped'}`,
      );
      const restoredRun: RestoredRun = {
        checkpointRun: a.checkpointRun,
        regsAtCheckpoint: a.regsAtDump,
        run: a.run,
        output: a.output,
        observation: a.observation,
      };
      const { judgement, ...j } = judged(restoredRun);
      // General registers CRIU gave back differently are a finding whatever the judge saw; debug registers are the known gap, said in the observation.
      const registers = [...generalRegisterDifferences(a), ...(judgement.registerDiff ?? [])];
      const lost = lostDebugRegisters(a);
      const gap = !j.matched && registers.length === 0 ? spec.criuGap?.(a, restoredRun, reference) : undefined;
      return {
        ...base,
        criu: a,
        restoredRun,
        ...j,
        matched: j.matched && registers.length === 0,
        observed: `${j.observed}${lost ? `; restored ${lost}` : ''}`,
        witnesses: { ...j.witnesses, differences: a.differences.map((d) => `${d.what}: dumped ${d.requested}, restored ${d.accepted}`) },
        ...(registers.length > 0 ? { registerDiff: registers.join('\n') } : {}),
        ...(gap ? { gap } : {}),
      };
    },
    assertWitnesses(t: Test, a: BreakpointAttempt, expectation: Expectation): void {
      t.equal(a.checkpointRun.outcome, 'hit-limit', `the original stopped at hit ${hit}`);
      // What the restore asked, the kernel must hold — where the row expects the uninterrupted run (crh; CRIU's is in its verdict).
      if (expectation.kind === 'resumes' && a.engine === 'crh') t.same(a.witnesses.differences ?? [a.observed], [], 'read back: as requested');
    },
  };
}

/** The default judge: the reference's output and the same ending ("exited 0"); the ending is said when it differs. */
function sameOutputAndEnding(restored: RestoredRun, reference: Reference): Judgement {
  const ended = endedAs(restored.run);
  const output = restored.output.trim();
  return {
    matched: restored.output === reference.output && ended === reference.ended,
    observed: ended === reference.ended ? output : `${ended}: ${output}`,
  };
}

async function takeReference(guest: Guest, workload: Workload, spec: BreakpointScenarioSpec): Promise<Reference> {
  const stdoutPath = `/tmp/${path.basename(workload.binary)}-reference.out`;
  if ((spec.reference ?? 'unarmed') === 'unarmed') {
    const { run, output } = await runUninterrupted(guest, workload, stdoutPath);
    return { run, output, ended: endedAs(run) };
  }
  const pid = await spawnArmed(guest, workload, stdoutPath);
  const runToEnd = () => guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  if (spec.reference === 'armed') {
    const run = await runToEnd();
    return { run, output: await readOutput(guest, stdoutPath), ended: endedAs(run) };
  }
  // Armed, never checkpointed, watched by the oracle as the restored runs are: the counts they are judged by.
  if (typeof spec.watch === 'function') throw new CrhError(`${spec.name}: a reference under the oracle needs its watch before the reference`);
  const { result: run, observation } = await observeCpu(guest.machine.gdbSocket, guest.symbols, spec.watch ?? {}, runToEnd);
  return { run, output: await readOutput(guest, stdoutPath), ended: endedAs(run), observation };
}
