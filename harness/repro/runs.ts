/**
 * The two runs a reproducer gets in one guest: the uninterrupted reference,
 * and the checkpointed run — run to the checkpoint point, checkpointed,
 * killed, restored under a policy, run to its end. Both start from the same
 * binary, arguments, environment, working directory and pid, so what the
 * program prints may depend on any of them and still compare equal.
 */
import { stat } from 'node:fs/promises';
import { OUTPUT_MAX_BYTES, readOutput as readGuestOutput, runFor, runToEnd as runGuestToEnd, runToHit, spawnArmed } from '../agent/guest-run.ts';
import { constants } from 'node:os';
import type { AgentClient } from '../agent/client.ts';
import { CheckpointError, CrhError, AgentError, InfraError } from '../errors.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { checkpointProcess } from '../restore/checkpoint.ts';
import { writeCheckpointImage, type CheckpointImage, type PlatformFacts, type ProcessInfo } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { restoreProcess, type Difference, type RestoreResult } from '../restore/restore.ts';
import { rewindInterruptedSyscall, type SyscallRewind } from '../restore/syscall-restart.ts';
import { hex, type UserRegs } from '../x86/registers.ts';
import { runNatively, type NativeRun } from '../guest/native-run.ts';
import type { CheckpointPoint } from './options.ts';
import { checkpointDaemon, describeTreeShape, killDaemonTree, restoreDaemon, writeDaemonImage } from './daemon-tree.ts';
import { runLauncherToDaemon } from './pid-file.ts';
import { differingRegisters } from './register-diff.ts';
import { CheckpointNotReachedError, UsageError } from './usage-error.ts';

const EEXIST = constants.errno.EEXIST;
/** How long a restored process runs before it is sent the finish signal. */
const RESUME_SLICE_MS = 50;
/** A line a program prints (and flushes) to say it is ready to be checkpointed. */
export const READY_MARKER = 'CRH-READY';

/** Where things live in the guest; fixed, so that a rerun sees the same paths. */
export const GUEST_DIRS = {
  root: '/tmp/crh-repro',
  bin: '/tmp/crh-repro/bin',
  /** the program's working directory (the agent runs there) */
  work: '/tmp/crh-repro/work',
  out: '/tmp/crh-repro/out',
} as const;
export const READY_FILE = `${GUEST_DIRS.out}/ready`;

export interface GuestProgram {
  /** guest path */
  binary: string;
  argv: string[];
  envp: string[];
}

export interface RunContext {
  agent: AgentClient;
  program: GuestProgram;
  point: CheckpointPoint;
  /** the DR0 address for a symbol checkpoint */
  breakAt?: bigint;
  finishSignal?: { name: string; number: number };
  /** --pid-file (guest path): the spawned program is a launcher, the process this file names the one checkpointed */
  pidFile?: string;
  timeoutMs: number;
  /** removes the ready file between runs (a guest shell command) */
  clearReady: () => Promise<void>;
  /** runs a guest shell command over its own SSH exec channel (no agent, no ptrace) and returns its stdout */
  shell: (command: string) => Promise<string>;
  /** a new phase: shown on the host and marked in the guest's console log */
  phase: (name: string, detail?: string) => Promise<void>;
}

export interface RunRecord {
  outcome: 'exited' | 'killed' | 'timed-out';
  /** exit code, or signal number when killed */
  code: number;
  output: string;
  /** breakpoint hits at the checkpoint address over the whole run */
  hits: number;
}

export interface Reference extends RunRecord {
  /** the spawned program's (with --pid-file, the launcher's) */
  pid: number;
  /** --pid-file: the daemon's */
  daemonPid?: number;
  elapsedMs: number;
}

/**
 * The program with no tracer and no breakpoint, in the same guest, from the
 * same binary, arguments, environment and working directory, ASLR off:
 * what the uninterrupted traced run must print, or the harness perturbs the
 * program (its breakpoint, its tracing) and no verdict about the restore can
 * rest on that run. Its pid is whatever fork gives.
 */
export async function nativeReference(ctx: RunContext): Promise<NativeRun> {
  const { program } = ctx;
  await ctx.clearReady();
  const finish = ctx.point.kind === 'ready' && ctx.finishSignal ? { signal: ctx.finishSignal.number, readyFile: READY_FILE } : undefined;
  return runNatively(
    { shell: ctx.shell, readFile: (file) => readOutput(ctx.agent, file) },
    {
      binary: program.binary,
      argv: program.argv,
      envp: program.envp,
      cwd: GUEST_DIRS.work,
      stdoutPath: `${GUEST_DIRS.out}/native.out`,
      timeoutMs: ctx.timeoutMs,
      ...(finish ? { finish } : {}),
      ...(ctx.pidFile ? { pidFile: ctx.pidFile } : {}),
    },
  );
}

/**
 * The uninterrupted run: what the checkpointed run must reproduce. With
 * `pid` (the native run's, free again once it ended) it runs as that pid,
 * so that output showing the pid compares equal to the native run's; if
 * something took the pid meanwhile, it runs as whatever fork gives.
 */
export async function referenceRun(ctx: RunContext, pid?: number): Promise<Reference> {
  const { agent } = ctx;
  const out = `${GUEST_DIRS.out}/reference.out`;
  await ctx.clearReady();
  const started = Date.now();
  pid = await spawn(ctx, out, pid).catch((error: unknown) => {
    if (pid === undefined || !(error instanceof AgentError && error.errno === EEXIST)) throw error;
    return spawn(ctx, out);
  });
  const spawned = pid;
  if (ctx.point.kind === 'ready') {
    if (ctx.pidFile) {
      pid = (await runLauncherToDaemon(agent, pid, ctx.pidFile, ctx.timeoutMs)).pid;
    } else {
      const ready = await runUntilReady(ctx, pid, out);
      if ('ended' in ready) throw notReached(ctx, ready.ended, 'the uninterrupted run', await readOutput(agent, out));
    }
    if (ctx.finishSignal) await agent.call({ op: 'SIGNAL', pid, signo: ctx.finishSignal.number });
  }
  const end = await runGuestToEnd(agent, pid, ctx.timeoutMs);
  const output = await readOutput(agent, out);
  if (end.outcome === 'timed-out') throw new UsageError(`the uninterrupted run did not finish within ${ctx.timeoutMs} ms; raise --timeout`, { output });
  if (ctx.point.kind === 'symbol' && end.hits < ctx.point.hit) {
    throw new CheckpointNotReachedError(
      `${ctx.point.symbol} was executed ${end.hits} times in the uninterrupted run; --hit ${ctx.point.hit} is never reached`,
      { output },
    );
  }
  return { ...end, output, pid: spawned, ...(spawned !== pid ? { daemonPid: pid } : {}), elapsedMs: Date.now() - started };
}

/**
 * A restore in another guest than the checkpoint's (--restore-cpu,
 * --restore-kernel): its run context (agent, shell) and whether a target
 * lacking what the process depends on is tried anyway (--restore-anyway).
 */
export interface RestoreElsewhere {
  ctx: RunContext;
  anyway: boolean;
}

/** One checkpoint → kill → restore of a chain (--cycles). */
export interface CycleRecord {
  /** 1 for the first */
  cycle: number;
  stoppedBy: string;
  rip: string;
  /** the checkpoint rewound an interrupted system call */
  rewound?: string;
  /** capturing the image and writing it to the host */
  checkpointMs: number;
  /** the image file's size */
  imageBytes: number;
  /** restoring it, up to the restore stop; absent when the restore failed */
  restoreMs?: number;
  /** registers the restored process did not hold as the image recorded them (differingRegisters); absent when not comparable */
  registersDiffer?: string[];
  restoreError?: string;
}

export interface Checkpointed {
  /** which checkpoint/restore ran: crh's restore core or CRIU */
  engine: 'crh' | 'criu';
  /** the original's pid, and the restored process's when it got one */
  pid: number;
  restoredPid?: number;
  /** how the original was stopped for the (first) checkpoint */
  stoppedBy: string;
  rewind?: SyscallRewind;
  /** registers of the original at the (first) checkpoint point (ptrace view) */
  regsAtCheckpoint: UserRegs;
  /** the last image crh took (the one in the bundle; engine crh) */
  image?: CheckpointImage;
  /** what CRIU did and how long it took (engine criu) */
  criu?: CriuRecord;
  /** registers of the last restored process at its restore stop (ptrace view) */
  restoredRegs?: UserRegs;
  /** what the kernel accepted differently from the restore plan (the last restore) */
  restoreDifferences: Difference[];
  /** a restore was refused or failed: the C/R under test did not even resume the process */
  restoreError?: string;
  /** the original up to the first checkpoint, then each restored process up to the next, the last to its end */
  run: RunRecord;
  /** every cycle, in order; one for a single checkpoint */
  cycles: CycleRecord[];
  /** the cycles asked for (--cycles) */
  cyclesAsked: number;
  /** the restored process of this cycle ended before the next checkpoint point */
  endedAfterCycle?: number;
  /** what a reader of the verdict should know: a rewound system call, a pid that could not be kept */
  notes: string[];
}

export interface CriuRecord {
  version: string;
  dumpMs: number;
  restoreMs: number;
  /** bytes of CRIU's image directory */
  imageBytes: number;
  dumpLog: string;
  restoreLog?: string;
  /** DR0 and DR7 of the restored process, read before the harness armed its breakpoint again (symbol checkpoints) */
  debugRegisters?: { dr0: string; dr7: string };
}

/**
 * Where the checkpoints of a chain fall (docs/repro.md, --cycles): the
 * first where --checkpoint-at/--after/--when-ready says; each later one
 * counted from the restore before it —
 *   symbol:  the next execution of the address (hits hit, hit+1, …);
 *   after:   MS more of the program's own running (MS, 2·MS, … of running;
 *            the time it spends stopped for a checkpoint is not counted);
 *   ready:   a short slice after the restore (the program is still waiting);
 *            the finish signal goes to the last restored process.
 */
export function describeNextPoint(point: CheckpointPoint): string {
  if (point.kind === 'symbol') return `the next execution of ${point.symbol}`;
  if (point.kind === 'after') return `${point.ms} ms more of running`;
  return `${RESUME_SLICE_MS} ms after the restore, still waiting`;
}

/**
 * The checkpointed run, with the reference's pid, checkpointed and restored
 * `cycles` times in a chain. A failure of a restore itself (refused image,
 * failing plan step, pid taken) is a result, returned as restoreError and
 * ending the chain; a failure of the infrastructure is thrown.
 */
export async function checkpointedRun(
  ctx: RunContext,
  reference: Reference,
  platform: PlatformFacts,
  policy: RestorePolicy,
  imageFile: string,
  cycles = 1,
  elsewhere?: RestoreElsewhere,
): Promise<Checkpointed> {
  const { agent } = ctx;
  // Where the restore happens: this guest, or another (--restore-cpu, --restore-kernel) holding the same program and files.
  const there = elsewhere?.ctx ?? ctx;
  if (elsewhere && cycles > 1)
    throw new UsageError('a restore in another guest moves the process once: --cycles goes without --restore-cpu and --restore-kernel');
  const before = `${GUEST_DIRS.out}/checkpointed.out`;
  const notes: string[] = [];
  if (ctx.point.kind === 'symbol' && cycles > 1 && reference.hits < ctx.point.hit + cycles - 1) {
    throw new CheckpointNotReachedError(
      `${ctx.point.symbol} was executed ${reference.hits} times in the uninterrupted run; ${cycles} cycles from --hit ${ctx.point.hit} need ${ctx.point.hit + cycles - 1}`,
    );
  }
  await ctx.clearReady();
  const spawned = await spawnAsReference(ctx, before, reference.pid, notes);

  const tag = (cycle: number): string => (cycles > 1 ? `cycle ${cycle}/${cycles}: ` : '');
  await ctx.phase('run to the checkpoint', `${tag(1)}${describePoint(ctx.point)}`);
  const { pid, stoppedBy: firstStop } = ctx.pidFile
    ? await runToDaemon(ctx, spawned, before, reference, notes)
    : { pid: spawned, stoppedBy: await runToCheckpoint(ctx, spawned, before) };
  const records: CycleRecord[] = [];
  let output = '';
  let hits = ctx.point.kind === 'symbol' ? ctx.point.hit : 0;
  let current = { pid, out: before, stoppedBy: firstStop };
  let firstRewind: SyscallRewind | undefined;
  let firstRegs: UserRegs | undefined;
  let last: { image: CheckpointImage; restored?: RestoreResult; restoredRegs?: UserRegs; restoreError?: string } | undefined;

  for (let cycle = 1; ; cycle++) {
    const regs = await agent.call({ op: 'GETREGS', pid: current.pid });
    firstRegs ??= regs;
    // The image keeps the registers as they are; the restore plan issues the call again (policy syscall-restart).
    const rewind = rewindInterruptedSyscall(regs);
    if (rewind && !firstRewind) {
      firstRewind = rewind;
      notes.push(cycles > 1 ? `cycle ${cycle}: ${rewind.note}` : rewind.note);
    }

    await ctx.phase('checkpoint', `${tag(cycle)}${current.stoppedBy}, rip ${hex(regs.rip)}`);
    const checkpointStarted = Date.now();
    const process: ProcessInfo = { binary: ctx.program.binary, argv: ctx.program.argv, envp: ctx.program.envp, noAslr: true, pid: current.pid };
    const refused = (error: unknown): never => {
      // Something the image cannot express (a socket, a pipe), or a checkpoint
      // that failed: a limitation of the C/R under test, never the user's
      // mistake — crh exits 1 with the reason, not 2.
      if (!(error instanceof CrhError) || isInfraFailure(error)) throw error;
      throw new CheckpointError(
        `the program could not be checkpointed at this point${cycles > 1 ? ` (cycle ${cycle})` : ''}: ${error.message}`,
        error.details,
        { cause: error },
      );
    };
    // A daemon is checkpointed with its descendants, each process's own descriptors 0-2 (not crh's output file)
    // given back after the restore (daemon-tree.ts).
    const daemon = ctx.pidFile
      ? await checkpointDaemon(agent, process, platform, [current.out]).catch(async (error: unknown) => {
          await killDaemonTree(agent, current.pid).catch(() => {});
          return refused(error);
        })
      : undefined;
    const image = daemon ? daemon.tree.members[0]!.image : await checkpointProcess(agent, process, platform).catch(refused);
    const imageBytes = await writeImageFile(imageFile, () => (daemon ? writeDaemonImage(daemon, imageFile) : writeCheckpointImage(image, imageFile)));
    const checkpointMs = Date.now() - checkpointStarted;
    output += await readOutput(agent, current.out);
    for (const pid of daemon ? daemon.tree.members.map((m) => m.pid) : [current.pid]) await agent.call({ op: 'KILL', pid });
    const record: CycleRecord = {
      cycle,
      stoppedBy: current.stoppedBy,
      rip: hex(regs.rip),
      ...(rewind ? { rewound: rewind.note } : {}),
      checkpointMs,
      imageBytes,
    };
    records.push(record);

    const out = cycles > 1 ? `${GUEST_DIRS.out}/restored-${cycle}.out` : `${GUEST_DIRS.out}/restored.out`;
    await ctx.phase('restore', `${tag(cycle)}${daemon ? `${describeTreeShape(daemon.tree)}; ` : ''}${image.regions.length} memory regions, pid ${current.pid}`);
    const restoreStarted = Date.now();
    let restored: RestoreResult;
    try {
      // --pid-file goes without a restore elsewhere (options.ts): a daemon is restored in this guest.
      restored = daemon
        ? await restoreDaemon(agent, daemon, { policy, stdoutPath: out })
        : await restoreProcess(there.agent, image, { policy, stdoutPath: out, ...(elsewhere?.anyway ? { dependencies: 'try' as const } : {}) });
      notes.push(...restored.dependencyNotes);
    } catch (error) {
      // restoreProcess and restoreDaemon leave nothing behind when they fail.
      if (!(error instanceof CrhError) || isInfraFailure(error)) throw error;
      record.restoreError = error.describe();
      last = { image, restoreError: record.restoreError };
      // Until a restore succeeds, the run is the last process's: killed at its checkpoint.
      return finished({ outcome: 'killed', code: 9, output, hits });
    }
    record.restoreMs = Date.now() - restoreStarted;
    const restoredRegs = await there.agent.call({ op: 'GETREGS', pid: restored.pid });
    const differ = differingRegisters(image.regs, restoredRegs, policy, rewind !== undefined);
    if (differ) record.registersDiffer = differ;
    last = { image, restored, restoredRegs };

    if (cycle === cycles) break;
    await ctx.phase('run to the checkpoint', `${tag(cycle + 1)}${describeNextPoint(ctx.point)}`);
    const next = await runToNextCheckpoint(ctx, restored.pid);
    if ('ended' in next) {
      // Ended before the next point: its run is over; the verdict says after which cycle.
      const run: RunRecord = {
        outcome: next.ended.outcome,
        code: next.ended.code,
        output: output + (await readOutput(agent, out)),
        hits: hits + next.ended.hits,
      };
      if (run.outcome === reference.outcome && run.code === reference.code && run.output === reference.output) {
        throw new CheckpointNotReachedError(
          `the program ended after cycle ${cycle} of ${cycles}, with the uninterrupted run's result: the chain needs a longer run (${ctx.point.kind === 'after' ? 'a smaller --checkpoint-after, ' : ''}fewer --cycles)`,
          { output: run.output },
        );
      }
      return finished(run, cycle);
    }
    hits += next.hits;
    current = { pid: restored.pid, out, stoppedBy: next.stoppedBy };
  }

  const final = last.restored!;
  await ctx.phase('finish the restored process', ctx.finishSignal ? `${ctx.finishSignal.name} once it runs` : undefined);
  const end = await finishRestored(there, final.pid);
  const finalOut = cycles > 1 ? `${GUEST_DIRS.out}/restored-${cycles}.out` : `${GUEST_DIRS.out}/restored.out`;
  return finished({ outcome: end.outcome, code: end.code, output: output + (await readOutput(there.agent, finalOut)), hits: hits + end.hits });

  function finished(run: RunRecord, endedAfterCycle?: number): Checkpointed {
    return {
      engine: 'crh',
      pid,
      ...(last!.restored ? { restoredPid: last!.restored.pid } : {}),
      stoppedBy: firstStop,
      regsAtCheckpoint: firstRegs!,
      ...(firstRewind ? { rewind: firstRewind } : {}),
      image: last!.image,
      ...(last!.restoredRegs ? { restoredRegs: last!.restoredRegs } : {}),
      restoreDifferences: last!.restored?.differences ?? [],
      ...(last!.restoreError !== undefined ? { restoreError: last!.restoreError } : {}),
      run,
      cycles: records,
      cyclesAsked: cycles,
      ...(endedAfterCycle !== undefined ? { endedAfterCycle } : {}),
      notes,
    };
  }
}

/**
 * Writes the image to the host (`write`: one process's, or a daemon's tree) and returns its size. The artifacts disk
 * filling up (or failing) is infrastructure: an InfraError naming the file;
 * writeCheckpointImage removes its partial file.
 */
async function writeImageFile(file: string, write: () => Promise<unknown>): Promise<number> {
  try {
    await write();
    return (await stat(file)).size;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EIO' || code === 'EROFS') {
      throw new InfraError(`cannot write the checkpoint image ${file}: ${(error as Error).message}`, {}, { cause: error });
    }
    throw error;
  }
}

/** Runs a restored process of a chain on to the next checkpoint point (describeNextPoint), leaving it stopped there. */
async function runToNextCheckpoint(ctx: RunContext, pid: number): Promise<{ stoppedBy: string; hits: number } | { ended: Ended }> {
  const { agent, point } = ctx;
  if (point.kind === 'symbol') {
    const next = await runToHit(agent, pid, 1, ctx.timeoutMs);
    if (next.kind === 'interrupted')
      throw new CheckpointNotReachedError(`a restored process did not execute ${point.symbol} again within ${ctx.timeoutMs} ms (--timeout)`);
    const { run } = next;
    if (run.outcome !== 'hit-limit') return { ended: { outcome: run.outcome, code: run.code, hits: run.hits.length } };
    return { stoppedBy: `the next execution of ${point.symbol}`, hits: 1 };
  }
  const ms = point.kind === 'after' ? point.ms : RESUME_SLICE_MS;
  const ended = await interruptibleRun(agent, pid, ms);
  if (ended) return { ended };
  return { stoppedBy: `interrupted ${ms} ms after the restore`, hits: 0 };
}

/**
 * Runs the restored process to its end. The finish signal is sent as in the
 * uninterrupted run: to a process interrupted while running, not to one that
 * has not resumed yet. The difference matters for a process checkpointed in
 * a blocking call (rewound to issue it again): a signal pending before the
 * call is reissued runs the handler first and leaves the call waiting, where
 * the same signal arriving during the call interrupts it.
 */
export async function finishRestored(ctx: RunContext, pid: number): Promise<Omit<RunRecord, 'output'>> {
  if (ctx.finishSignal) {
    const ended = await interruptibleRun(ctx.agent, pid, RESUME_SLICE_MS);
    if (ended) return ended;
    await ctx.agent.call({ op: 'SIGNAL', pid, signo: ctx.finishSignal.number });
  }
  return runGuestToEnd(ctx.agent, pid, ctx.timeoutMs);
}

export function describePoint(point: CheckpointPoint): string {
  if (point.kind === 'symbol') return `execution ${point.hit} of ${point.symbol}`;
  if (point.kind === 'after') return `${point.ms} ms after the start`;
  return `readiness (${READY_FILE} or a ${READY_MARKER} line)`;
}

/**
 * Spawns the checkpointed run with the uninterrupted run's pid (clone3
 * set_tid) so output showing the pid compares; when that pid was taken
 * meanwhile, with another, and a note saying so.
 */
export async function spawnAsReference(ctx: RunContext, stdoutPath: string, referencePid: number, notes: string[]): Promise<number> {
  try {
    return await spawn(ctx, stdoutPath, referencePid);
  } catch (error) {
    if (!(error instanceof AgentError && error.errno === EEXIST)) throw error;
    const pid = await spawn(ctx, stdoutPath);
    notes.push(`pid ${referencePid} of the uninterrupted run was taken; this run has pid ${pid}, so output that shows the pid differs`);
    return pid;
  }
}

export async function spawn(ctx: RunContext, stdoutPath: string, pid?: number): Promise<number> {
  const { program } = ctx;
  const armed = { binary: program.binary, argv: program.argv, envp: program.envp, ...(ctx.breakAt !== undefined ? { breakAt: ctx.breakAt } : {}) };
  return spawnArmed(ctx.agent, armed, stdoutPath, pid !== undefined ? { pid } : {});
}

/**
 * --pid-file: runs the launcher to its exit and seizes the daemon its pid
 * file names (pid-file.ts), lets it run one slice (as a ready program is
 * checkpointed at most a slice after it announced itself), and leaves it
 * stopped there.
 */
async function runToDaemon(ctx: RunContext, launcher: number, out: string, reference: Reference, notes: string[]): Promise<{ pid: number; stoppedBy: string }> {
  const { pid, how } = await runLauncherToDaemon(ctx.agent, launcher, ctx.pidFile!, ctx.timeoutMs);
  if (reference.daemonPid !== undefined && pid !== reference.daemonPid) {
    notes.push(
      `the daemon has pid ${pid}, the uninterrupted run's had ${reference.daemonPid} (a launcher's child cannot be given its pid), so output that shows the pid differs`,
    );
  }
  const ended = await interruptibleRun(ctx.agent, pid, RESUME_SLICE_MS);
  if (ended) throw notReached(ctx, ended, 'the checkpointed run', await readOutput(ctx.agent, out));
  return { pid, stoppedBy: `interrupted once ready (${how})` };
}

/** Leaves the original stopped at the checkpoint point and says how it got there. */
export async function runToCheckpoint(ctx: RunContext, pid: number, out: string): Promise<string> {
  const { agent, point } = ctx;
  if (point.kind === 'symbol') {
    const reached = await runToHit(agent, pid, point.hit, ctx.timeoutMs);
    if (reached.kind === 'interrupted') {
      throw new CheckpointNotReachedError(
        `the checkpoint point was not reached: ${point.symbol} was not executed ${point.hit} times within ${ctx.timeoutMs} ms (--timeout)`,
      );
    }
    const { run } = reached;
    if (run.outcome !== 'hit-limit')
      throw notReached(ctx, { outcome: run.outcome, code: run.code, hits: run.hits.length }, 'the checkpointed run', await readOutput(agent, out));
    return `breakpoint hit ${point.hit} at ${point.symbol}`;
  }
  if (point.kind === 'after') {
    const ended = await interruptibleRun(agent, pid, point.ms);
    if (ended) throw notReached(ctx, ended, 'the checkpointed run', await readOutput(agent, out));
    return `interrupted ${point.ms} ms after it started`;
  }
  const ready = await runUntilReady(ctx, pid, out);
  if ('ended' in ready) throw notReached(ctx, ready.ended, 'the checkpointed run', await readOutput(agent, out));
  return `interrupted once ready (${ready.how})`;
}

export interface Ended {
  outcome: 'exited' | 'killed';
  code: number;
  hits: number;
}

/** RUN for `ms` (guest-run.ts runFor): undefined when the time ran out (the process is then interrupted and stopped), else how it ended. */
export async function interruptibleRun(agent: AgentClient, pid: number, ms: number): Promise<Ended | undefined> {
  const timed = await runFor(agent, pid, ms);
  if (timed.kind === 'interrupted') return undefined;
  return { outcome: timed.run.outcome as Ended['outcome'], code: timed.run.code, hits: timed.run.hits.length };
}

/**
 * Runs in short slices, looking for the announcement between them, until
 * the program is ready (left interrupted) or ends. Slices grow from 10 ms to
 * 50 ms: a program that announces at once is caught close to it, one that
 * takes long costs a few round trips a second, and the checkpoint comes at
 * most one slice after the announcement.
 */
async function runUntilReady(ctx: RunContext, pid: number, out: string): Promise<{ how: string } | { ended: Ended }> {
  const deadline = Date.now() + ctx.timeoutMs;
  let sliceMs = 10;
  for (;;) {
    const ended = await interruptibleRun(ctx.agent, pid, sliceMs);
    if (ended) return { ended };
    const how = await announcement(ctx.agent, out, pid);
    if (how) return { how };
    if (Date.now() > deadline) {
      await ctx.agent.call({ op: 'KILL', pid }).catch(() => {});
      throw new CheckpointNotReachedError(
        `the program did not announce readiness within ${ctx.timeoutMs} ms: it should write its pid to the file named by $CRH_READY_FILE, or print and flush a line ${READY_MARKER}`,
      );
    }
    sliceMs = Math.min(sliceMs * 2, 50);
  }
}

/** How the program announced readiness, if it has: the ready file holding a pid, or the marker line. */
async function announcement(agent: AgentClient, out: string, pid: number): Promise<string | undefined> {
  const steps = await agent.batch([
    { op: 'READ_FILE', path: out, maxSize: OUTPUT_MAX_BYTES },
    { op: 'READ_FILE', path: READY_FILE, maxSize: 64 },
  ]);
  const [stdout, ready] = steps;
  if (stdout?.ok && new RegExp(`^${READY_MARKER}$`, 'm').test((stdout.result as Buffer).toString('utf8'))) return `${READY_MARKER} on its output`;
  const written = ready?.ok ? (ready.result as Buffer).toString('utf8').trim() : '';
  if (/^\d+$/.test(written)) return `wrote ${written === String(pid) ? 'its pid' : `"${written}" (not its pid ${pid})`} to ${READY_FILE}`;
  return undefined;
}

function notReached(ctx: RunContext, ended: Ended, which: string, output: string): CheckpointNotReachedError {
  const how = ended.outcome === 'exited' ? `exited with status ${ended.code}` : `was killed by signal ${ended.code}`;
  const point = ctx.point;
  const what =
    point.kind === 'symbol'
      ? `${point.symbol} was executed ${ended.hits} times, never ${point.hit}`
      : point.kind === 'after'
        ? `it ended before ${point.ms} ms (choose a smaller --checkpoint-after)`
        : `it never announced readiness (write the pid to $CRH_READY_FILE, or print and flush ${READY_MARKER})`;
  return new CheckpointNotReachedError(`the checkpoint point was not reached: in ${which} the program ${how}; ${what}`, { output });
}

export async function readOutput(agent: AgentClient, file: string): Promise<string> {
  return readGuestOutput(agent, file);
}

export function signalName(sig: number): string {
  const name = Object.entries(constants.signals).find(([, n]) => n === sig)?.[0];
  return name ?? (sig >= 34 ? `SIGRTMIN+${sig - 34}` : `signal ${sig}`);
}
