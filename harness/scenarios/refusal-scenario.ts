/**
 * The scenario whose right outcome is a refusal: a workload stopped at a
 * breakpoint while it holds state the restore core does not capture
 * (restore/uncapturable.ts). Its checkpoint must be refused there, with a
 * CheckpointError that names each kind of that state, and must leave no
 * stopped process behind. Nothing is restored. The row expects that refusal
 * (it is not a negative control). As in runner.ts, one judgement of the
 * Attempt makes both the tap assertion and the verdict row.
 */
import type { Test } from 'tap';
import path from 'node:path';
import { CheckpointError } from '../errors.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { checkpointAtHit, type Workload } from '../testing/scenario.ts';
import { recordRow } from '../testing/verdict-rows.ts';
import { resumes, verdictOf, type Attempt, type RowKey } from './attempt.ts';

export interface RefusalSpec {
  /** the rows' scenario column */
  name: string;
  workload: Workload;
  /** the kinds of state the refusal must name, in the order the checkpoint finds them */
  names: readonly string[];
  /** the breakpoint hit to checkpoint at (default 1) */
  hit?: number;
}

/** One attempt at a refused checkpoint: the judged Attempt, and what it is made of for the row's own assertions. */
export interface RefusalAttempt extends Attempt {
  /** what the checkpoint threw; undefined when it was taken */
  error: unknown;
  /** the kinds of state the CheckpointError named (its details.state) */
  named: string[];
  /** pids of the workload's binary still alive after the attempt (pidof), empty when none */
  leftBehind: string;
  /** spawn, run to the breakpoint and the checkpoint, host wall time */
  ms: number;
}

export interface RefusalScenario {
  name: string;
  /** what the row expects: "refused at checkpoint, naming …" */
  expected: string;
  attempt(tag: string): Promise<RefusalAttempt>;
}

export function refusalScenario(guest: Guest, spec: RefusalSpec): RefusalScenario {
  const expected = `refused at checkpoint, naming ${spec.names.join(', ')}`;
  return {
    name: spec.name,
    expected,
    async attempt(tag) {
      const started = Date.now();
      const error = await checkpointAtHit(guest, spec.workload, spec.hit ?? 1, tag).then(
        () => undefined,
        (e: unknown) => e,
      );
      const ms = Date.now() - started;
      const named = error instanceof CheckpointError ? (error.details.state?.split(', ') ?? []) : [];
      const leftBehind = (await guest.machine.ssh.exec(`pidof ${path.basename(spec.workload.binary)} || true`)).stdout.trim();
      const refused = error instanceof CheckpointError;
      return {
        error,
        named,
        leftBehind,
        ms,
        matched: refused && JSON.stringify(named) === JSON.stringify(spec.names),
        observed: refused ? `refused: ${error.message}` : error === undefined ? 'checkpoint taken' : `failed otherwise: ${String(error)}`,
        witnesses: { notRestored: refused ? 'checkpoint refused' : 'not refused' },
      };
    },
  };
}

/**
 * Asserts and records a refusal attempt (at checkpoint, or a restore's: move-scenario.ts): PASS when it was refused
 * naming what the scenario says (the attempt's `matched`).
 */
export function settleRefusal(t: Test, key: RowKey, scenario: Pick<RefusalScenario, 'expected'>, a: Attempt): boolean {
  const { verdict } = verdictOf(key, resumes(scenario.expected), a);
  t.ok(verdict.pass, verdict.pass ? `as expected: ${a.observed}` : `${a.observed} (expected ${scenario.expected})`);
  recordRow(t, verdict);
  return verdict.pass;
}
