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
import { ImageRejectedError } from '../errors.ts';
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
import type { TableScenario } from './table.ts';

/** The uninterrupted run the attempts are judged against. */
export interface Reference {
  run: RunResult;
  output: string;
  /** "exited 0" */
  ended: string;
  /** with `armedReference`: what the oracle saw of the uninterrupted run */
  observation?: Observation;
}

/** One attempt of a breakpoint scenario: the judged Attempt, and what it is made of for a row's own assertions. */
export interface BreakpointAttempt extends Attempt {
  workload: Workload;
  checkpointed: Checkpointed;
  /** absent when nothing was restored: the workload ended before the stop, or the policy refused the image */
  restored?: Restored;
  /** the policy's refusal, when it refused the image */
  refused?: ImageRejectedError;
}

/** A judge's reading of a restored run: whether it matched the reference, in the row's words. */
export interface Judgement {
  matched: boolean;
  observed: string;
  witnesses?: Witnesses;
  registerDiff?: string;
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
  /** what the oracle watches while the restored process runs (default: nothing but the VM stops) */
  watch?: Omit<WatchOptions, 'log'>;
  /** the reference runs armed and under the oracle with `watch` (its hits and #DB counted), not with nothing armed */
  armedReference?: boolean;
  /** the native run's output in the reference's words, where they differ by design (their own file names); default: as it is */
  nativeAsReference?: (output: string) => string;
  /** the uninterrupted run in the rows' words; default its output, trimmed */
  expected?: (reference: Reference) => string;
  /** judges a restored run; default: the reference's output and ending */
  judge?: (restored: Restored, checkpointed: Checkpointed, reference: Reference) => Judgement;
  /** platform-profile values every row's expectation depends on */
  conditions?: Record<string, string>;
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
  const reference = await takeReference(guest, workloadOf('reference'), spec);
  const native = await nativeReference(guest, workloadOf('native'));
  // The verdicts rest on a traced run: it must be what the program does with no tracer at all.
  t.equal(
    `${reference.ended}\n${reference.output}`,
    `${endedAs(native)}\n${(spec.nativeAsReference ?? ((o) => o))(native.output)}`,
    'the traced reference is the native run (no tracer)',
  );
  const judge = spec.judge ?? sameOutputAndEnding;
  return {
    name: spec.name,
    reference,
    expected: (spec.expected ?? ((r) => r.output.trim()))(reference),
    async attempt(policy: RestorePolicy, tag: string): Promise<BreakpointAttempt> {
      const workload = workloadOf(tag);
      const checkpointed = await checkpointAtHit(guest, workload, hit, tag, spec.checkpoint ?? { disarm: true });
      const base = { workload, checkpointed, ...(spec.conditions ? { conditions: spec.conditions } : {}) };
      if (!checkpointed.image) {
        const why = `the workload ended before stop ${hit} (${endedAs(checkpointed.run)})`;
        return { ...base, matched: false, observed: why, witnesses: { notRestored: why } };
      }
      let restored: Restored;
      try {
        restored = await restoreAndFinish(guest, checkpointed.file, policy, tag, spec.watch ?? {});
      } catch (error) {
        // A policy that refuses the image (rf=reject) is an attempt that failed, not an error of the case.
        if (!(error instanceof ImageRejectedError)) throw error;
        const why = `restore refused: ${error.message}`;
        return { ...base, refused: error, matched: false, observed: why, witnesses: { notRestored: why } };
      }
      const j = judge(restored, checkpointed, reference);
      return {
        ...base,
        restored,
        matched: j.matched,
        observed: j.observed,
        witnesses: {
          output: restored.output,
          ended: endedAs(restored.run),
          differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
          ...j.witnesses,
        },
        ...(j.registerDiff ? { registerDiff: j.registerDiff } : {}),
      };
    },
    assertWitnesses(t: Test, a: BreakpointAttempt, expectation: Expectation): void {
      t.equal(a.checkpointed.run.outcome, 'hit-limit', `the original stopped at hit ${hit}`);
      // What the restore asked, the kernel must hold — where the row expects the uninterrupted run.
      if (expectation.kind === 'resumes') t.same(a.witnesses.differences ?? [a.observed], [], 'read back: as requested');
    },
  };
}

/** The default judge: the reference's output and the same ending ("exited 0"); the ending is said when it differs. */
function sameOutputAndEnding(restored: Restored, _checkpointed: Checkpointed, reference: Reference): Judgement {
  const ended = endedAs(restored.run);
  const output = restored.output.trim();
  return {
    matched: restored.output === reference.output && ended === reference.ended,
    observed: ended === reference.ended ? output : `${ended}: ${output}`,
  };
}

async function takeReference(guest: Guest, workload: Workload, spec: BreakpointScenarioSpec): Promise<Reference> {
  const stdoutPath = `/tmp/${path.basename(workload.binary)}-reference.out`;
  if (!spec.armedReference) {
    const { run, output } = await runUninterrupted(guest, workload, stdoutPath);
    return { run, output, ended: endedAs(run) };
  }
  // Armed, never checkpointed, watched by the oracle as the restored runs are: the counts they are judged by.
  const pid = await spawnArmed(guest, workload, stdoutPath);
  const { result: run, observation } = await observeCpu(guest.machine.gdbSocket, guest.symbols, spec.watch ?? {}, () =>
    guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS }),
  );
  return { run, output: await readOutput(guest, stdoutPath), ended: endedAs(run), observation };
}
