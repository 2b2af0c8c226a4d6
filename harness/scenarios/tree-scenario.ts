/**
 * The scenario of a process tree: a workload of several processes stopped
 * where it is checkpointed (provoke: most often its root at its first
 * breakpoint hit, the others wherever they are), checkpointed as a tree,
 * written as an image and killed (checkpoint), read back and restored under a
 * policy (restore), its descendants let go and its root run to the end,
 * under the CPU oracle where the scenario watches something (oracle). The
 * uninterrupted run is taken once, from the same stop, and checked against
 * the program's native run; each attempt is an Attempt the table runner
 * judges once (table.ts, runner.ts).
 */
import type { Test } from 'tap';
import { appendFileSync, writeFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { AgentClient } from '../agent/client.ts';
import { finishRun, kill } from '../agent/guest-run.ts';
import type { RunResult } from '../agent/ops.ts';
import { CrhError } from '../errors.ts';
import { observeCpu, type Observation, type WatchOptions } from '../oracle/cpu-oracle.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { checkpointTree } from '../restore/tree-checkpoint.ts';
import { readTreeImage, writeTreeImage } from '../restore/tree-image.ts';
import { releaseDescendants, type TreeRestoreResult } from '../restore/tree-restore.ts';
import type { ProcessTree } from '../restore/tree.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../testing/native-reference.ts';
import { restoreTreeWitnessed } from '../testing/restore-witness.ts';
import { readOutput, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../testing/scenario.ts';
import type { Attempt } from './attempt.ts';
import type { TableScenario } from './table.ts';

type Agent = Pick<AgentClient, 'call'>;

/** Where provoke left the tree: its root in a ptrace stop where it is checkpointed, and the file its output goes to. */
export interface TreeStop {
  pid: number;
  out: string;
  /** lets go what provoke attached besides the root, before the uninterrupted run goes on to its end */
  release?(): Promise<void>;
}

/** An image as the restore gets it, changed (a negative control's wrong parent links); default: as written. */
export type Doctor = (tree: ProcessTree) => ProcessTree;

export interface TreeScenarioSpec<S extends TreeStop> {
  /** the rows' scenario column */
  name: string;
  /** a short name for messages and artifact names: "memfd", "FIFO" */
  label: string;
  workload: Workload;
  /** provoke: stops the tree, its output in `out` (rootAtBreakpoint: the root at its first breakpoint hit) */
  stop(out: string): Promise<S>;
  /** what the oracle watches while the restored tree runs; default: no oracle */
  watch?: Omit<WatchOptions, 'log'>;
  /** what the oracle must have seen of the restored run, read against the checkpointed tree; default: nothing */
  oracleMatches?(observation: Observation, checkpointed: ProcessTree): boolean;
}

/** One attempt of a tree scenario: the judged Attempt, and what it is made of for a row's own assertions. */
export interface TreeAttempt<S extends TreeStop = TreeStop> extends Attempt {
  stop: S;
  /** the tree as checkpointed, before its processes were killed */
  checkpointed: ProcessTree;
  /** the tree as it was restored: read back from the image (and doctored) */
  tree: ProcessTree;
  restored: TreeRestoreResult;
  /** "exited 0 <output>": how the restored root ended and what the tree printed */
  line: string;
  observation?: Observation;
  /** "checkpoint N ms, image N bytes, restore N ms" */
  timing: string;
}

export interface TreeScenario<S extends TreeStop> extends TableScenario<TreeAttempt<S>> {
  /** the uninterrupted run's line: "exited 0 <output>" */
  reference: string;
  /** the same scenario with each image changed by `doctor` before its restore */
  doctored(doctor: Doctor): TableScenario<TreeAttempt<S>>;
}

/** RUNs `pid` to its next breakpoint hit; a run that ends or stops otherwise is an error saying `what` (and the output in `out`, if given). */
export async function runToBreakpoint(guest: Guest, pid: number, what: string, out?: string): Promise<RunResult> {
  const run = await finishRun(guest.agent, pid, RUN_TIMEOUT_MS, 1);
  if (run.outcome !== 'hit-limit') throw new CrhError(`${what} (${run.outcome} ${run.code})${out ? `: ${await readOutput(guest, out)}` : ''}`);
  return run;
}

/** Makes the agent the tracer of `pid` (a process it did not spawn, e.g. a grandchild), leaving it stopped. */
export async function attachProcess(agent: Agent, pid: number): Promise<void> {
  await agent.call({ op: 'ATTACH', pid });
}

/** Lets traced `pid` run on untraced. */
export async function releaseProcess(agent: Agent, pid: number): Promise<void> {
  await agent.call({ op: 'RELEASE', pid });
}

/** The common provoke: the workload spawned armed and its root run to its first breakpoint hit, the others wherever they are. */
export async function rootAtBreakpoint(guest: Guest, workload: Workload, out: string): Promise<TreeStop> {
  const pid = await spawnArmed(guest, workload, out);
  await runToBreakpoint(guest, pid, `${workload.argv.join(' ')} never reached its checkpoint point`, out);
  return { pid, out };
}

/**
 * Prepares the scenario on `guest`: the uninterrupted run, once, from the
 * same stop, asserted in `t` to be the native run.
 */
export async function treeScenario<S extends TreeStop>(t: Test, guest: Guest, spec: TreeScenarioSpec<S>): Promise<TreeScenario<S>> {
  const { agent } = guest;
  const { workload } = spec;
  const stop = (out: string): Promise<S> => spec.stop(out);
  const lineOf = async (run: RunResult, out: string): Promise<string> => `${endedAs(run)} ${(await readOutput(guest, out)).trim()}`;

  const reference = await (async () => {
    const s = await stop(`/tmp/tree-${spec.label.replace(/\W+/g, '-')}-reference.original.out`);
    await s.release?.();
    return lineOf(await finishRun(agent, s.pid, RUN_TIMEOUT_MS), s.out);
  })();
  const native = await nativeReference(guest, workload);
  t.equal(reference, `${endedAs(native)} ${native.output.trim()}`, `${spec.label}: the traced reference is the native run (no tracer)`);

  /** The restored tree's descendants let go and its root run to the end, under the oracle if the scenario watches something. */
  const finish = async (tree: ProcessTree, tag: string): Promise<{ run: RunResult; observation?: Observation }> => {
    const root = tree.members[0]!.pid;
    const release = async (): Promise<RunResult> => {
      await releaseDescendants(agent, tree);
      return finishRun(agent, root, RUN_TIMEOUT_MS);
    };
    if (!spec.watch) return { run: await release() };
    const oracleLog = path.join(guest.artifactsDir, `oracle-${tag}.log`);
    writeFileSync(oracleLog, '');
    const log = (line: string): void => appendFileSync(oracleLog, `${new Date().toISOString()} ${line}\n`);
    // Released inside the watch: a descendant let go before the oracle's breakpoint is in place could pass it unseen.
    const { result: run, observation } = await observeCpu(guest.machine.gdbSocket, guest.symbols, { ...spec.watch, log }, release);
    return { run, observation };
  };

  const attempt = async (policy: RestorePolicy, tag: string, doctor: Doctor = (x) => x): Promise<TreeAttempt<S>> => {
    const s = await stop(`/tmp/tree-${tag}.original.out`);
    const started = Date.now();
    const checkpointed = await checkpointTree(agent, { binary: workload.binary, argv: workload.argv, envp: [], noAslr: true, pid: s.pid }, guest.platform);
    const checkpointMs = Date.now() - started;
    const file = path.join(guest.artifactsDir, `checkpoint-${tag}.tar`);
    await writeTreeImage(checkpointed, file);
    // The root first: its children go to the agent (a subreaper), which reaps them as it kills them.
    for (const m of checkpointed.members) await kill(agent, m.pid);
    const tree = doctor(await readTreeImage(file));
    const out = `/tmp/tree-${tag}.restored.out`;
    const restoreStarted = Date.now();
    const restored = await restoreTreeWitnessed(agent, tree, { policy, stdoutPath: out }, tag);
    const restoreMs = Date.now() - restoreStarted;
    const { run, observation } = await finish(tree, tag);
    const line = await lineOf(run, out);
    const oracleHeld = observation && spec.oracleMatches ? spec.oracleMatches(observation, checkpointed) : true;
    return {
      stop: s,
      checkpointed,
      tree,
      restored,
      line,
      ...(observation ? { observation } : {}),
      timing: `checkpoint ${checkpointMs} ms, image ${(await stat(file)).size} bytes, restore ${restoreMs} ms`,
      matched: line === reference && restored.differences.length === 0 && oracleHeld,
      observed: line,
      witnesses: {
        output: line,
        ended: endedAs(run),
        differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
        ...(observation ? { oracle: { debugTraps: observation.debugTraps.length, firstReached: observation.first !== undefined } } : {}),
      },
    };
  };

  const assertWitnesses = (t: Test, a: TreeAttempt<S>): void => {
    const clones = a.restored.skeleton.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 435).length;
    const steps = a.restored.members.reduce((n, m) => n + m.plan.length, 0);
    t.comment(`${spec.label}, ${a.tree.members.length} processes (${clones} clone3 in the skeleton, ${steps} plan steps): ${a.timing}`);
  };
  const scenario = (doctor?: Doctor): TableScenario<TreeAttempt<S>> => ({
    name: spec.name,
    expected: reference,
    attempt: (policy, tag) => attempt(policy, tag, doctor),
    assertWitnesses,
  });
  return { ...scenario(), reference, doctored: (doctor) => scenario(doctor) };
}
