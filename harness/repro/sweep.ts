/**
 * The sweep: one process run to the first execution of a symbol, then
 * single-stepped through the next N instruction boundaries in execution
 * order (into calls, out of returns; a system call is one boundary), a
 * checkpoint taken at every K-th boundary while the process stays stopped
 * there, the process then run to its end — all in one pass. Afterwards each
 * checkpoint is restored in a fresh process, one after another, and run to
 * its end. Each restored run is compared with the uninterrupted run as the
 * repro verdict compares them (compare.ts): the first boundary where they
 * differ is where the restore under test goes wrong.
 *
 * The stepping must not be felt by the program. The breakpoint is disarmed
 * once it has brought the process to the symbol (DR7 0: from then on RUN
 * delivers every signal as the kernel would). STEP swallows every SIGTRAP
 * stop as a step, so a SIGTRAP the program would have had natively is
 * handed back to it at once, with one more step: the trap its own TF raises after
 * the instruction it set TF for, and an int3's. A signal of any other kind
 * stops STEP and is delivered with the next step, its delivery stop no
 * boundary of its own. Inside the program's own SIGTRAP handler a step's
 * forced SIGTRAP would reset the handler; sweep-sigtrap.ts undoes that.
 *
 * rseq is the one state a step stop changes by itself: every ptrace stop
 * goes through schedule(), which the kernel counts as a preemption, and on
 * the way back to user mode its rseq fixup either aborts a task inside the
 * critical section its rseq_cs names (IP to abort_ip) or, outside it,
 * clears rseq_cs. So the first step taken from a boundary where rseq_cs is
 * set changes what every later boundary would be natively: stepped from
 * before start_ip the section is disarmed (rseq_cs 0 inside it), stepped
 * from inside it aborts. The walk reads rseq_cs at every boundary; from the
 * first step off an armed boundary on, a boundary's checkpoint is not taken
 * in the walk but by a fresh run of the program stopped at that boundary by
 * a breakpoint alone (its address, the k-th execution after the sweep
 * symbol's hit: no step stop before it), and that run, continued to its end
 * without a restore, is the boundary's reference — what a stop there does
 * natively (the kernel aborts a section stopped inside). The restore must
 * do what the stop does.
 */
import { isRunTimeout, readOutput, runToEnd, runToHit as runToHitWithin, spawnArmed as spawnArmedProgram } from '../agent/guest-run.ts';
import { constants } from 'node:os';
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CrhError } from '../errors.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { checkpointProcess } from '../restore/checkpoint.ts';
import { readCheckpointImage, writeCheckpointImage, type CheckpointImage, type PlatformFacts, type ProcessInfo } from '../restore/checkpoint-image.ts';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { RestorePolicy } from '../restore/policy.ts';
import { rseqCsAddress } from '../restore/rseq.ts';
import { restoreProcess, type Difference, type RestoreOptions, type RestoreResult } from '../restore/restore.ts';
import { debugRegOffset, EFLAGS, hex, type UserRegs } from '../x86/registers.ts';
import { compareRuns, type Mismatch } from './compare.ts';
import { exposedSigtrapHandler, giveBackTf, sigreturnRestoresTf, undoSigtrapReset } from './sweep-sigtrap.ts';
import { GUEST_DIRS, type GuestProgram, type Reference, type RunRecord } from './runs.ts';
import type { SweepRequest } from './sweep-options.ts';
import { CheckpointNotReachedError, UsageError } from './usage-error.ts';

const EEXIST = constants.errno.EEXIST;
const SIGTRAP = constants.signals.SIGTRAP;
const INT3 = 0xcc;
/** Bound on one step: a step into a call that blocks (a read of a pipe no one writes) ends the walk there. */
const STEP_TIMEOUT_MS = 10_000;

export interface SweepContext {
  agent: AgentClient;
  program: GuestProgram;
  /** the DR0 address of the sweep symbol, and which execution of it starts the walk */
  breakAt: bigint;
  hit: number;
  sweep: SweepRequest;
  timeoutMs: number;
  platform: PlatformFacts;
  phase: (name: string, detail?: string) => Promise<void>;
  /** the restore under test: restoreProcess unless a case witnesses it (testing/restore-witness.ts) */
  restore?: (agent: AgentClient, image: CheckpointImage, options: RestoreOptions, tag: string) => Promise<RestoreResult>;
  /**
   * keep (the default): the program's own SIGTRAPs stay its own (above).
   * ignore: plain stepping — the negative control that shows what keeping
   * them prevents (a self-stepping program loses its traps or is killed).
   */
  programSigtraps?: 'keep' | 'ignore';
  /** a host directory the checkpoint images are written to as they are taken (one file each; a matching boundary's is removed once restored) */
  imageDir: string;
}

/** One boundary the walk passed: where the process stood before its next instruction. */
export interface Boundary {
  index: number;
  rip: bigint;
  /** rseq_cs was set there (in the walk: the step off it let the kernel's rseq fixup act, see above; by breakpoint: in the fresh run's stop) */
  rseqArmed?: boolean;
}

/** How a checkpoint's boundary was reached: in the walk, or by a fresh run to a breakpoint there (rseq, above). */
export type Reached = 'step' | 'breakpoint';

/** A boundary checkpointed in the walk. */
export interface TakenCheckpoint extends Boundary {
  /** the image, written at once: N images of a process do not stay in memory */
  imageFile: string;
  regs: UserRegs;
  /** what the original had written when it was checkpointed there */
  outputBefore: string;
  checkpointMs: number;
  reached: Reached;
  /** reached by breakpoint: the fresh run continued from that stop to its end, no restore — the boundary's reference */
  continued?: RunRecord;
}

export interface BoundaryVerdict extends Boundary {
  pass: boolean;
  reached: Reached;
  /** what the restored run is compared with: the continued fresh run when reached by breakpoint, else the uninterrupted run */
  against: RunRecord;
  /** reached by breakpoint: how the continued run differs from the uninterrupted one (the stop itself is felt), empty when not */
  stopFelt: Mismatch[];
  run: RunRecord;
  mismatches: Mismatch[];
  /** the restore was refused or failed */
  restoreError?: string;
  /** the checkpoint image of a failing boundary (a matching one's is removed) */
  imageFile?: string;
  imageRegs: UserRegs;
  /** the restored process at its restore stop */
  restoredRegs?: UserRegs;
  restoreDifferences: Difference[];
  checkpointMs: number;
  /** restore plus the run to the end */
  restoreRunMs: number;
}

export interface SweepResult {
  pid: number;
  /** every boundary walked, in execution order (may be fewer than asked: the program ended) */
  boundaries: Boundary[];
  verdicts: BoundaryVerdict[];
  /** the stepped original, run to its end after the walk: stepping must not change it */
  stepped: RunRecord;
  steppedMismatches: Mismatch[];
  /** SIGTRAPs handed back to the program, other signals passed through, where the walk ended early */
  notes: string[];
  walkMs: number;
  /** the fresh runs to the boundaries reached by breakpoint: to the stop, the checkpoint, on to the end */
  freshRunsMs: number;
  freshRuns: number;
}

/**
 * The sweep against `reference` (the uninterrupted traced run, whose pid
 * the walked process asks for). A failed restore is a verdict; an
 * infrastructure failure is thrown.
 */
export async function sweepRuns(ctx: SweepContext, reference: Reference, policy: RestorePolicy): Promise<SweepResult> {
  return (await sweepRunsUnder(ctx, reference, [policy]))[0]!;
}

/**
 * One walk, its checkpoints restored under each of `policies` in turn: one
 * result per policy, the walk's fields shared. The checkpoints do not depend
 * on the policy (it is the restore's), so a policy and its negative control
 * are judged on the same images; an image is removed once every policy
 * restored it exactly.
 */
export async function sweepRunsUnder(ctx: SweepContext, reference: Reference, policies: readonly RestorePolicy[]): Promise<SweepResult[]> {
  const { agent } = ctx;
  const out = `${GUEST_DIRS.out}/sweep-original.out`;
  const notes: string[] = [];
  const pid = await spawnArmed(ctx, out, reference.pid).catch((error: unknown) => {
    if (!(error instanceof AgentError && error.errno === EEXIST)) throw error;
    notes.push(`pid ${reference.pid} of the uninterrupted run was taken; the walked process has another, so output that shows the pid differs`);
    return spawnArmed(ctx, out);
  });
  await ctx.phase('run to the sweep symbol', `execution ${ctx.hit} of ${ctx.sweep.symbol}`);
  const reached = await runToHitWithin(agent, pid, ctx.hit, ctx.timeoutMs);
  if (reached.kind === 'interrupted')
    throw new CheckpointNotReachedError(`${ctx.sweep.symbol} was not executed ${ctx.hit} times within ${ctx.timeoutMs} ms (--timeout)`);
  const { run } = reached;
  if (run.outcome !== 'hit-limit') {
    throw new CheckpointNotReachedError(
      `the sweep never started: the program ended (${run.outcome} ${run.code}) after ${run.hits.length} executions of ${ctx.sweep.symbol}, never ${ctx.hit}`,
      { output: await readOutput(agent, out) },
    );
  }
  // From here the process is stepped: the breakpoint would only stop it again at the next call.
  await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });

  const walkStarted = Date.now();
  await ctx.phase('walk', `${ctx.sweep.count} boundaries, a checkpoint every ${ctx.sweep.every}`);
  const process: ProcessInfo = { binary: ctx.program.binary, argv: ctx.program.argv, envp: ctx.program.envp, noAslr: true, pid };
  const boundaries: Boundary[] = [];
  const taken: TakenCheckpoint[] = [];
  let regs = await agent.call({ op: 'GETREGS', pid });
  /** boundaries after which the program's own SIGTRAP was handed to it; steps whose forced SIGTRAP reset its handler (put back) */
  const ownTraps: number[] = [];
  const handlerResets: number[] = [];
  /** rt_sigreturns whose restored TF the kernel took for the tracer's (stale TIF_FORCED_TF); given back as the program's */
  const tfGivenBack: number[] = [];
  let ended: RunRecord | undefined;
  const rseqCs = await rseqCsWord(agent, pid, notes);
  /** the first boundary stepped off with rseq_cs set: the later ones are reached by breakpoint */
  let armedAt: number | undefined;
  const byBreakpoint: number[] = [];
  for (let index = 0; ; index++) {
    const armed = await rseqCsSet(agent, pid, rseqCs);
    boundaries.push({ index, rip: regs.rip, ...(armed ? { rseqArmed: true } : {}) });
    if (index % ctx.sweep.every === 0) {
      if (armedAt === undefined) taken.push(await checkpointAt(ctx, process, boundaries[index]!, out));
      else byBreakpoint.push(index);
    }
    if (armed) armedAt ??= index;
    if (index + 1 >= ctx.sweep.count) break;
    // What the program itself gets after this instruction: its own TF's trap, an int3's.
    const keep = (ctx.programSigtraps ?? 'keep') === 'keep';
    const ownTrap = keep && ((regs.eflags & EFLAGS.TF) !== 0n || (await agent.call({ op: 'READ_MEM', pid, address: regs.rip, length: 1 }))[0] === INT3);
    const exposed = keep && !ownTrap ? await exposedSigtrapHandler(agent, pid) : undefined;
    const tfBack = keep && (await sigreturnRestoresTf(agent, pid, regs));
    let step = await stepOnce(ctx, pid, 0, index, notes);
    if (!('ended' in step) && exposed && (await undoSigtrapReset(agent, pid, exposed))) handlerResets.push(index);
    if (!('ended' in step) && tfBack && (await giveBackTf(agent, pid))) tfGivenBack.push(index);
    if (!('ended' in step) && ownTrap) {
      // The stop after that instruction is no boundary of the program's: it never stands there without its SIGTRAP
      // pending. The SIGTRAP goes to it now (the kernel keeps the trap's siginfo); its delivery stop is the next boundary.
      ownTraps.push(index);
      step = await stepOnce(ctx, pid, SIGTRAP, index, notes);
    }
    if ('ended' in step) {
      ended = { ...step.ended, output: await readOutput(agent, out), hits: 0 };
      notes.push(`the program ended after boundary ${index} (${describeEnd(step.ended)}): the walk has ${index + 1} boundaries, not ${ctx.sweep.count}`);
      break;
    }
    regs = await agent.call({ op: 'GETREGS', pid });
  }
  const stepped = ended ?? { ...(await runToEnd(agent, pid, ctx.timeoutMs)), output: await readOutput(agent, out), hits: 0 };
  const walkMs = Date.now() - walkStarted;
  if (ownTraps.length > 0)
    notes.push(
      `the program's own SIGTRAP (its TF or an int3) was delivered to it with the step after boundar${ownTraps.length === 1 ? 'y' : 'ies'} ${ownTraps.join(', ')}`,
    );
  if (tfGivenBack.length > 0)
    notes.push(
      `the rt_sigreturn after boundar${tfGivenBack.length === 1 ? 'y' : 'ies'} ${tfGivenBack.join(', ')} restored the program's TF, which the kernel took for the tracer's (TIF_FORCED_TF left from stepping the handler); given back as the program's`,
    );
  if (handlerResets.length > 0)
    notes.push(
      `inside the program's SIGTRAP handler (SIGTRAP blocked) the step's forced SIGTRAP reset the handler to SIG_DFL after boundar${handlerResets.length === 1 ? 'y' : 'ies'} ${handlerResets.join(', ')}; each time it was put back, SIGTRAP blocked again`,
    );

  if (armedAt !== undefined) {
    const armedList = boundaries.filter((b) => b.rseqArmed).map((b) => b.index);
    notes.push(
      `in the walk rseq_cs was set at boundar${armedList.length === 1 ? 'y' : 'ies'} ${armedList.join(', ')}: a step stop is a preemption to the kernel, whose rseq fixup on the resume from boundary ${armedAt} ${armedLeftNote(boundaries[armedAt]!)}; so the checkpoints after it (${byBreakpoint.join(', ') || 'none'}) were taken by fresh runs stopped there by a breakpoint, each compared with that run continued without a restore`,
    );
  }
  const freshStarted = Date.now();
  for (const index of byBreakpoint) {
    await ctx.phase('fresh run to a boundary', `boundary ${index} at ${hex(boundaries[index]!.rip)} by breakpoint`);
    taken.push(await checkpointByBreakpoint(ctx, reference, boundaries, index, notes));
  }
  const freshRunsMs = Date.now() - freshStarted;

  const under: BoundaryVerdict[][] = [];
  for (const [p, policy] of policies.entries()) {
    const verdicts: BoundaryVerdict[] = [];
    for (const checkpoint of taken) {
      const of = policies.length > 1 ? ` (policy ${p + 1} of ${policies.length})` : '';
      await ctx.phase('restore', `boundary ${checkpoint.index} of ${boundaries.length} at ${hex(checkpoint.rip)}${of}`);
      verdicts.push(await restoreAndCompare(ctx, checkpoint, reference, policy));
    }
    under.push(verdicts);
  }
  // A failing boundary's image stays for its report, whichever policy failed there.
  for (const [i, checkpoint] of taken.entries()) if (under.every((verdicts) => verdicts[i]!.pass)) await rm(checkpoint.imageFile, { force: true });
  const steppedMismatches = compareRuns(reference, stepped);
  return under.map((verdicts) => ({ pid, boundaries, verdicts, stepped, steppedMismatches, notes, walkMs, freshRunsMs, freshRuns: byBreakpoint.length }));
}

async function spawnArmed(ctx: SweepContext, stdoutPath: string, pid?: number): Promise<number> {
  const { agent, program } = ctx;
  return spawnArmedProgram(
    agent,
    { binary: program.binary, argv: program.argv, envp: program.envp, breakAt: ctx.breakAt },
    stdoutPath,
    pid !== undefined ? { pid } : {},
  );
}

/** A checkpoint of the stopped process, which stays stopped where it was (the leave-running mode: it is not killed). */
async function checkpointAt(ctx: SweepContext, process: ProcessInfo, at: Boundary, out: string): Promise<TakenCheckpoint> {
  const started = Date.now();
  const image = await checkpointProcess(ctx.agent, process, ctx.platform).catch((error: unknown) => {
    if (!(error instanceof CrhError) || isInfraFailure(error)) throw error;
    throw new UsageError(`the program cannot be checkpointed at boundary ${at.index} (${hex(at.rip)}): ${error.message}`, error.details, { cause: error });
  });
  const imageFile = path.join(ctx.imageDir, `checkpoint-boundary-${at.index}.tar`);
  await writeCheckpointImage(image, imageFile);
  const outputBefore = await readOutput(ctx.agent, out);
  return { ...at, imageFile, regs: image.regs, outputBefore, checkpointMs: Date.now() - started, reached: 'step' };
}

/**
 * Where the process's rseq_cs word is, or undefined when it has no rseq
 * registration — or the kernel cannot say (PTRACE_GET_RSEQ_CONFIGURATION
 * is 5.13+; a user's older kernel answers EIO), noted once.
 */
async function rseqCsWord(agent: AgentClient, pid: number, notes?: string[]): Promise<bigint | undefined> {
  try {
    const config = await agent.call({ op: 'RSEQ_CONFIG', pid });
    return config.area === 0n ? undefined : rseqCsAddress({ area: config.area, size: config.size, signature: config.signature });
  } catch (error) {
    if (!(error instanceof AgentError)) throw error;
    notes?.push(`the kernel did not report the rseq registration (${error.message}): rseq_cs not watched, every boundary stepped`);
    return undefined;
  }
}

/** Whether the rseq_cs word (rseqCsWord) holds a descriptor now; false without a registration. */
async function rseqCsSet(agent: AgentClient, pid: number, word: bigint | undefined): Promise<boolean> {
  if (word === undefined) return false;
  return (await agent.call({ op: 'READ_MEM', pid, address: word, length: 8 })).readBigUInt64LE(0) !== 0n;
}

function armedLeftNote(b: Boundary): string {
  return `at ${hex(b.rip)} either cleared rseq_cs (outside the section it names: the walk then ran the section disarmed) or aborted the section (inside it)`;
}

/**
 * Boundary `index` reached without a step: a fresh process of the program,
 * run to the sweep symbol's hit, then to the k-th execution of the
 * boundary's address after it (k counted in the walk), checkpointed there,
 * and continued to its end — the boundary's reference.
 */
async function checkpointByBreakpoint(
  ctx: SweepContext,
  reference: Reference,
  boundaries: readonly Boundary[],
  index: number,
  notes: string[],
): Promise<TakenCheckpoint> {
  const { agent } = ctx;
  const at = boundaries[index]!;
  const earlier = boundaries.slice(1, index).filter((b) => b.rip === at.rip);
  const k = earlier.length + 1;
  if (earlier.some((b) => b.rseqArmed))
    notes.push(
      `boundary ${index}: the breakpoint at ${hex(at.rip)} also stops at ${earlier
        .filter((b) => b.rseqArmed)
        .map((b) => b.index)
        .join(', ')}, where rseq_cs was set; those stops are felt too`,
    );
  const out = `${GUEST_DIRS.out}/sweep-fresh-${index}.out`;
  const pid = await spawnArmed(ctx, out, reference.pid).catch((error: unknown) => {
    if (!(error instanceof AgentError && error.errno === EEXIST)) throw error;
    return spawnArmed(ctx, out);
  });
  const unreached = async (what: string): Promise<never> => {
    await agent.call({ op: 'KILL', pid }).catch(() => undefined);
    throw new CheckpointNotReachedError(`boundary ${index} (${hex(at.rip)}) was not reached by a fresh run: ${what}`, {
      output: await readOutput(agent, out),
    });
  };
  const runToHit = async (hits: number): Promise<string | undefined> => {
    const r = await runToHitWithin(agent, pid, hits, ctx.timeoutMs);
    if (r.kind === 'interrupted') return `not within ${ctx.timeoutMs} ms (--timeout)`;
    return r.run.outcome === 'hit-limit' ? undefined : `${r.run.outcome} ${r.run.code}`;
  };
  const toSymbol = await runToHit(ctx.hit);
  if (toSymbol !== undefined) return unreached(`the run to ${ctx.sweep.symbol} ended: ${toSymbol}`);
  await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(0), value: at.rip });
  const toBoundary = await runToHit(k);
  if (toBoundary !== undefined) return unreached(`execution ${k} of ${hex(at.rip)} after the symbol never came: ${toBoundary}`);
  const regs = await agent.call({ op: 'GETREGS', pid });
  if (regs.rip !== at.rip) return unreached(`the breakpoint stopped it at ${hex(regs.rip)}`);
  // From here the fresh run is the boundary's reference: no breakpoint may stop it again.
  await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
  const process: ProcessInfo = { binary: ctx.program.binary, argv: ctx.program.argv, envp: ctx.program.envp, noAslr: true, pid };
  const armed = await rseqCsSet(agent, pid, await rseqCsWord(agent, pid));
  const checkpoint = await checkpointAt(ctx, process, { index, rip: at.rip }, out);
  const end = await runToEnd(agent, pid, ctx.timeoutMs);
  const continued: RunRecord = { ...end, output: await readOutput(agent, out), hits: 0 };
  return { ...checkpoint, ...(armed ? { rseqArmed: true } : {}), reached: 'breakpoint', continued };
}

type Ended = { outcome: 'exited' | 'killed'; code: number };

/**
 * One instruction boundary further. A signal of the program's that stops
 * the step is delivered with a new step (its delivery builds the handler's
 * frame; the step then reports at the handler's first instruction, the
 * boundary).
 */
async function stepOnce(ctx: SweepContext, pid: number, deliver: number, index: number, notes: string[]): Promise<{ rip: bigint } | { ended: Ended }> {
  let signo = deliver;
  for (let tries = 0; tries < 64; tries++) {
    const step = await ctx.agent.call({ op: 'STEP', pid, count: 1, signo, timeoutMs: STEP_TIMEOUT_MS }).catch((error: unknown) => {
      if (!isRunTimeout(error)) throw error;
      throw new UsageError(
        `the step after boundary ${index} did not end within ${STEP_TIMEOUT_MS} ms: the program blocks there; sweep fewer boundaries (--count ${index + 1})`,
      );
    });
    if (step.outcome === 'stepped') return { rip: step.rip };
    if (step.outcome === 'exited' || step.outcome === 'killed') return { ended: { outcome: step.outcome, code: step.code } };
    notes.push(`after boundary ${index}: signal ${step.code} stopped the step; delivered with the next one`);
    signo = step.code;
  }
  throw new CrhError(`STEP pid ${pid}: 64 signals in a row after boundary ${index}`);
}

async function restoreAndCompare(ctx: SweepContext, checkpoint: TakenCheckpoint, reference: Reference, policy: RestorePolicy): Promise<BoundaryVerdict> {
  const { agent } = ctx;
  const after = `${GUEST_DIRS.out}/sweep-restored-${checkpoint.index}.out`;
  const started = Date.now();
  const against = checkpoint.continued ?? reference;
  const stopFelt = checkpoint.continued ? compareRuns(reference, checkpoint.continued) : [];
  const base = {
    index: checkpoint.index,
    rip: checkpoint.rip,
    ...(checkpoint.rseqArmed ? { rseqArmed: true } : {}),
    reached: checkpoint.reached,
    against,
    stopFelt,
    imageFile: checkpoint.imageFile,
    imageRegs: checkpoint.regs,
    checkpointMs: checkpoint.checkpointMs,
  };
  const image = await readCheckpointImage(checkpoint.imageFile);
  let restored;
  try {
    restored = await (ctx.restore ?? restoreProcess)(agent, image, { policy, stdoutPath: after }, `sweep-boundary-${checkpoint.index}`);
  } catch (error) {
    if (!(error instanceof CrhError) || isInfraFailure(error)) throw error;
    const run: RunRecord = { outcome: 'killed', code: 9, output: checkpoint.outputBefore, hits: 0 };
    return {
      ...base,
      pass: false,
      run,
      mismatches: compareRuns(against, run),
      restoreError: error.describe(),
      restoreDifferences: [],
      restoreRunMs: Date.now() - started,
    };
  }
  const restoredRegs = await agent.call({ op: 'GETREGS', pid: restored.pid });
  const end = await runToEnd(agent, restored.pid, ctx.timeoutMs);
  const run: RunRecord = { ...end, output: checkpoint.outputBefore + (await readOutput(agent, after)), hits: 0 };
  const mismatches = compareRuns(against, run);
  if (mismatches.length === 0) {
    const { imageFile: _kept, ...matching } = base;
    return { ...matching, pass: true, run, mismatches, restoredRegs, restoreDifferences: restored.differences, restoreRunMs: Date.now() - started };
  }
  return { ...base, pass: false, run, mismatches, restoredRegs, restoreDifferences: restored.differences, restoreRunMs: Date.now() - started };
}

function describeEnd(end: Ended): string {
  return end.outcome === 'exited' ? `exit ${end.code}` : `killed by signal ${end.code}`;
}
