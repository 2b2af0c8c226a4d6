/**
 * The scenario of a checkpoint that moves: a workload stopped at a
 * breakpoint in one guest (provoke), checkpointed there and killed
 * (checkpoint), restored in another guest — another CPU model, another
 * kernel — or in the same one (restore), with the image's platform
 * dependencies refused when the target lacks them or tried regardless, and
 * run to its end there, judged against its uninterrupted run (oracle). A
 * refusal is an outcome of the attempt, not an error of the case: the
 * attempt carries it, what it named, and whether anything was left running
 * in the target. The uninterrupted run is taken once, when the scenario is
 * prepared, and checked against the program's native run.
 */
import type { Test } from 'tap';
import path from 'node:path';
import type { RunResult } from '../agent/ops.ts';
import { finishRun, readOutput } from '../agent/guest-run.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { readCheckpointImage } from '../restore/checkpoint-image.ts';
import { IncompatibleTargetError, type PlatformDependencies } from '../restore/platform-dependencies.ts';
import { describePolicy, type RestorePolicy } from '../restore/policy.ts';
import type { Difference } from '../restore/restore.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../testing/native-reference.ts';
import { restoreWitnessed } from '../testing/restore-witness.ts';
import { checkpointAtHit, runUnderOracle, runUninterrupted, RUN_TIMEOUT_MS, type Checkpointed, type Workload } from '../testing/scenario.ts';
import type { Attempt } from './attempt.ts';

/** The uninterrupted run in the checkpoint guest: what every attempt is judged against. */
export interface MoveReference {
  run: RunResult;
  output: string;
  /** "exited 0" */
  ended: string;
}

export interface MoveSpec {
  /** the rows' scenario column */
  name: string;
  /** the checkpoint guest */
  from: Guest;
  /** the armed workload, its breakpoint where the checkpoint is taken (its first hit) */
  workload: Workload;
  /** names the reference's output file (/tmp/LABEL-reference.out) and its assertions */
  label: string;
  /** the same program's uninterrupted run taken already (in a guest whose run it is too): not taken again */
  reference?: MoveReference;
}

/** Where and how an attempt restores. */
export interface Move {
  to: Guest;
  policy: RestorePolicy;
  /** names the checkpoint and the restore's artifacts */
  tag: string;
  /** what a target lacking the image's platform dependencies gets: a refusal (default), or the restore tried regardless */
  dependencies?: 'refuse' | 'try';
  /** run the restored process under the CPU oracle (its VM stops logged), as a restore in the checkpoint guest is */
  underOracle?: boolean;
  /** a checkpoint taken already (scenario.checkpoint) to restore again; default: a new one, tagged `tag` */
  checkpointed?: Checkpointed;
}

/** The restored process's run to its end in the target. */
export interface MovedRun {
  differences: Difference[];
  /** the restore's dependency notes: what was redirected, re-registered, or missing and tried anyway */
  notes: string[];
  run: RunResult;
  /** "exited 0", "killed 11" */
  ended: string;
  output: string;
}

/** One attempt: the judged Attempt, and what it is made of for a row's own assertions. */
export interface MoveAttempt extends Attempt {
  checkpointed: Checkpointed;
  /** the image's platform dependencies */
  dependencies: PlatformDependencies;
  /** the restored run; absent when the restore was refused or failed */
  moved?: MovedRun;
  /** the refusal naming what the target lacks */
  refused?: IncompatibleTargetError;
  /** a restore that failed otherwise (a kernel's refusal of the state, tried anyway) */
  failed?: Error;
  /** after a refusal: pids of the workload's binary alive in the target ('' when none) */
  leftBehind: string;
}

export interface MoveScenario {
  name: string;
  reference: MoveReference;
  /** the uninterrupted run in the rows' words: its output, trimmed */
  expected: string;
  /** provoke and checkpoint: the workload run to its breakpoint's first hit in the checkpoint guest, checkpointed there and killed */
  checkpoint(tag: string): Promise<Checkpointed>;
  attempt(move: Move): Promise<MoveAttempt>;
}

/**
 * The pid a checkpoint's workload is spawned as: the restore keeps it, and a
 * low pid may be taken in the other guest (on 6.12 monoclock's 148 was:
 * PidInUseError, docs/platform.md). Well above what a guest hands out in a
 * case, and a new one for each checkpoint, so no two checkpoints share one.
 */
const MOVE_PID_BASE = 20000;
let movePids = 0;
function nextMovePid(): number {
  return MOVE_PID_BASE + movePids++;
}

/** The policy column of a move's row: the policy, and "dependencies=try" when the restore was tried regardless. */
export function movePolicy(policy: RestorePolicy, dependencies: 'refuse' | 'try' = 'refuse'): string {
  return `${describePolicy(policy)}${dependencies === 'try' ? ' dependencies=try' : ''}`;
}

/**
 * Prepares the scenario: the uninterrupted run in `spec.from` (unless given),
 * asserted in `t` to exit 0 as the native run does with the same output.
 */
export async function moveScenario(t: Test, spec: MoveSpec): Promise<MoveScenario> {
  const { from, workload, label } = spec;
  const reference = spec.reference ?? (await takeReference(t, from, workload, label));
  const checkpoint = (tag: string): Promise<Checkpointed> => checkpointAtHit(from, { ...workload, pid: nextMovePid() }, 1, tag, { disarm: true });
  return {
    name: spec.name,
    reference,
    expected: reference.output.trim(),
    checkpoint,
    async attempt(move: Move): Promise<MoveAttempt> {
      const checkpointed = move.checkpointed ?? (await checkpoint(move.tag));
      const base = { checkpointed, dependencies: checkpointed.image!.dependencies!, leftBehind: '' };
      const restored = await restoreIn(move, checkpointed.file).then(
        (moved) => ({ kind: 'moved' as const, moved }),
        (error: unknown) => {
          if (isInfraFailure(error) || !(error instanceof Error)) throw error;
          return error instanceof IncompatibleTargetError ? { kind: 'refused' as const, refused: error } : { kind: 'failed' as const, failed: error };
        },
      );
      if (restored.kind === 'moved') {
        const { moved } = restored;
        const tried = move.dependencies === 'try' ? moved.notes : [];
        return {
          ...base,
          moved,
          matched: moved.output === reference.output && moved.ended === reference.ended,
          observed: [`${moved.ended}: ${moved.output.trim()}`, ...tried].join('; '),
          witnesses: {
            output: moved.output,
            ended: moved.ended,
            differences: moved.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
          },
        };
      }
      if (restored.kind === 'refused') {
        const binary = path.basename(workload.binary);
        const leftBehind = (await move.to.machine.ssh.exec(`pidof ${binary} || true`)).stdout.trim();
        const why = `refused: ${restored.refused.message}`;
        return { ...base, refused: restored.refused, leftBehind, matched: false, observed: why, witnesses: { notRestored: why } };
      }
      const why = `restore failed: ${restored.failed.message.split('\n')[0]}`;
      return { ...base, failed: restored.failed, matched: false, observed: why, witnesses: { notRestored: why } };
    },
  };
}

/**
 * The attempt judged as the refusal a row expects: refused naming `features`
 * (every one, and with `exactly` nothing else), nothing left running.
 */
export function asRefusal(a: MoveAttempt, features: readonly string[], exactly: boolean): MoveAttempt {
  const named = a.refused?.missing.map((m) => m.feature) ?? [];
  const names = features.every((f) => named.includes(f)) && (!exactly || named.length === features.length);
  return { ...a, matched: a.refused !== undefined && names && a.leftBehind === '', observed: a.refused ? `refused: ${named.join(', ')}` : a.observed };
}

/** What the refusal named (its features), [] when the restore was not refused. */
export function namedMissing(a: MoveAttempt): string[] {
  return a.refused?.missing.map((m) => m.feature) ?? [];
}

async function takeReference(t: Test, from: Guest, workload: Workload, label: string): Promise<MoveReference> {
  const { run, output } = await runUninterrupted(from, workload, `/tmp/${label}-reference.out`);
  t.equal(run.code, 0, `${label} uninterrupted on ${from.profile.kernelRelease}: ${output.trim()}`);
  const native = await nativeReference(from, workload);
  // The verdicts rest on a traced run: it must be what the program does with no tracer at all.
  t.equal(`${endedAs(native)}\n${native.output}`, `${endedAs(run)}\n${output}`, `${label}: the traced reference is the native run (no tracer)`);
  return { run, output, ended: endedAs(run) };
}

/** Restores the image in `move.to` and runs it to its end there. */
async function restoreIn(move: Move, file: string): Promise<MovedRun> {
  const image = await readCheckpointImage(file);
  const out = `/tmp/${move.tag}.restored.out`;
  const { to, policy, tag } = move;
  const restored = await restoreWitnessed(to.agent, image, { policy, stdoutPath: out, dependencies: move.dependencies ?? 'refuse' }, tag);
  const run = move.underOracle ? (await runUnderOracle(to, restored.pid, tag, {})).run : await finishRun(to.agent, restored.pid, RUN_TIMEOUT_MS);
  return { differences: restored.differences, notes: restored.dependencyNotes, run, ended: endedAs(run), output: await readOutput(to.agent, out) };
}
