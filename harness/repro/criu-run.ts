/**
 * The checkpointed run with CRIU as the engine: the same program, spawned
 * the same way and stopped at the same checkpoint point by the agent, is
 * handed to CRIU in the guest — detached in a job-control stop, dumped
 * (which kills it), reaped so its pid is free, restored by `criu restore`
 * detached — and the restored process is taken back under the agent and
 * finished exactly as the crh engine finishes its own (finish signal, run
 * to the end). The comparison with the uninterrupted run is the caller's.
 */
import { CrhError } from '../errors.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { criuDumpArgs, criuRestoreArgs, runCriu, type GuestExec } from '../criu/commands.ts';
import { criuFailure } from '../criu/handoff.ts';
import { rewindInterruptedSyscall } from '../restore/syscall-restart.ts';
import { debugRegOffset, hex } from '../x86/registers.ts';
import { DR7_EXECUTE_DR0 } from '../agent/breakpoint-spawn.ts';
import { describePoint, finishRestored, GUEST_DIRS, readOutput, runToCheckpoint, spawnAsReference, type Checkpointed, type Reference, type RunContext } from './runs.ts';

/** CRIU's images and logs: on the guest's tmpfs, beside the runs' outputs. */
export const CRIU_IMAGES_DIR = `${GUEST_DIRS.root}/criu-img`;
const CRIU_PIDFILE = `${GUEST_DIRS.out}/criu-restored.pid`;
const LOG_MAX_BYTES = 256 * 1024;
/** How long a dumped process may take to be reported dead (it is SIGKILLed by criu before it exits). */
const REAP_TIMEOUT_MS = 10_000;

export interface CriuEngine {
  /** the guest command (the wrapper at /usr/sbin/criu) */
  command: string;
  version: string;
  exec: GuestExec;
}

export async function criuCheckpointedRun(ctx: RunContext, reference: Reference, criu: CriuEngine): Promise<Checkpointed> {
  const { agent } = ctx;
  const before = `${GUEST_DIRS.out}/checkpointed.out`;
  const notes: string[] = [];
  await ctx.clearReady();
  await ctx.shell(`rm -rf ${CRIU_IMAGES_DIR} ${CRIU_PIDFILE} && mkdir -p ${CRIU_IMAGES_DIR}`);
  const pid = await spawnAsReference(ctx, before, reference.pid, notes);

  await ctx.phase('run to the checkpoint', describePoint(ctx.point));
  const stoppedBy = await runToCheckpoint(ctx, pid, before);
  const hitsBefore = ctx.point.kind === 'symbol' ? ctx.point.hit : 0;
  const regs = await agent.call({ op: 'GETREGS', pid });
  // CRIU restarts an interrupted system call by its own rules; the note says the process was in one.
  const rewind = rewindInterruptedSyscall(regs);
  if (rewind) notes.push(`${rewind.note} (CRIU restarts it by its own rules)`);

  await ctx.phase('criu dump', `${stoppedBy}, rip ${hex(regs.rip)}`);
  await agent.call({ op: 'DETACH', pid });
  const dump = await runCriu(criu.exec, criuDumpArgs(criu.command, pid, CRIU_IMAGES_DIR));
  const dumpLog = await readOutput(agent, `${CRIU_IMAGES_DIR}/dump.log`).catch(() => '(no dump.log)');
  const outputBefore = await readOutput(agent, before);
  const taken = {
    engine: 'criu' as const,
    pid,
    stoppedBy,
    regsAtCheckpoint: regs,
    notes,
    ...(rewind ? { rewind } : {}),
    restoreDifferences: [],
    run: { outcome: 'killed' as const, code: 9, output: outputBefore, hits: hitsBefore },
    // One checkpoint: a chain (--cycles) is crh's alone (refused with --engine criu in options.ts).
    cycles: [],
    cyclesAsked: 1,
  };
  const record = (restore?: { ms: number; log: string }, imageBytes = 0): Checkpointed['criu'] => ({
    version: criu.version,
    dumpMs: dump.wallMs,
    restoreMs: restore?.ms ?? 0,
    imageBytes,
    dumpLog: tail(dumpLog),
    ...(restore ? { restoreLog: tail(restore.log) } : {}),
  });
  if (!dump.ok) {
    // CRIU refused or failed: the process may still be there, stopped; it is the agent's child, so end it.
    await ctx.shell(`kill -9 ${pid} 2>/dev/null; true`);
    await agent.call({ op: 'REAP', pid, timeoutMs: REAP_TIMEOUT_MS }).catch(() => {});
    return { ...taken, criu: record(), restoreError: `criu dump failed (exit ${dump.code}): ${criuFailure(dumpLog || dump.stderr)}` };
  }
  // The dump killed it; its zombie holds the pid the restore needs.
  await agent.call({ op: 'REAP', pid, timeoutMs: REAP_TIMEOUT_MS });
  const imageBytes = Number((await ctx.shell(`du -sk ${CRIU_IMAGES_DIR} | cut -f1`)).trim()) * 1024;

  await ctx.phase('criu restore', `${imageBytes} bytes of images, pid ${pid}`);
  const restore = await runCriu(criu.exec, criuRestoreArgs(criu.command, CRIU_IMAGES_DIR, CRIU_PIDFILE));
  const restoreLog = await readOutput(agent, `${CRIU_IMAGES_DIR}/restore.log`).catch(() => '(no restore.log)');
  if (!restore.ok) {
    return { ...taken, criu: record({ ms: restore.wallMs, log: restoreLog }, imageBytes), restoreError: `criu restore failed (exit ${restore.code}): ${criuFailure(restoreLog || restore.stderr)}` };
  }
  const restoredPid = Number((await readOutput(agent, CRIU_PIDFILE)).trim());
  let debugRegisters: { dr0: string; dr7: string } | undefined;
  if (!Number.isInteger(restoredPid) || restoredPid <= 0) throw new CrhError(`criu restore wrote no pid to ${CRIU_PIDFILE}`, { restoreLog: tail(restoreLog) });
  try {
    await agent.call({ op: 'ATTACH', pid: restoredPid });
  } catch (error) {
    if (!(error instanceof CrhError) || isInfraFailure(error)) throw error;
    await ctx.shell(`kill -9 ${restoredPid} 2>/dev/null; true`);
    return { ...taken, criu: record({ ms: restore.wallMs, log: restoreLog }, imageBytes), restoreError: `the restored process ${restoredPid} could not be attached: ${error.message}` };
  }
  const restoredRegs = await agent.call({ op: 'GETREGS', pid: restoredPid });
  if (ctx.breakAt !== undefined) {
    // The harness's breakpoint stayed in the thread across DETACH, so CRIU dumped a task with DR0/DR7 armed:
    // whether its restore carries them is measured here, then the breakpoint is armed again so hits count on.
    const dr0 = await agent.call({ op: 'PEEKUSER', pid: restoredPid, offset: debugRegOffset(0) });
    const dr7 = await agent.call({ op: 'PEEKUSER', pid: restoredPid, offset: debugRegOffset(7) });
    debugRegisters = { dr0: hex(dr0), dr7: hex(dr7) };
    if (dr0 !== ctx.breakAt || (dr7 & 0xffn) !== DR7_EXECUTE_DR0) {
      notes.push(`known engine gap: CRIU ${criu.version} did not restore the debug registers (dumped with DR0 ${hex(ctx.breakAt)}, DR7 ${hex(DR7_EXECUTE_DR0)}; restored DR0 ${hex(dr0)}, DR7 ${hex(dr7)}); the harness armed its breakpoint again`);
    }
    await agent.call({ op: 'POKEUSER', pid: restoredPid, offset: debugRegOffset(0), value: ctx.breakAt });
    await agent.call({ op: 'POKEUSER', pid: restoredPid, offset: debugRegOffset(7), value: DR7_EXECUTE_DR0 });
  }
  await ctx.phase('finish the restored process', ctx.finishSignal ? `${ctx.finishSignal.name} once it runs` : undefined);
  const end = await finishRestored(ctx, restoredPid);
  // CRIU restored the file descriptors as they were: the restored process writes on where the original stopped.
  const output = await readOutput(agent, before);
  return {
    ...taken,
    restoredPid,
    restoredRegs,
    criu: { ...record({ ms: restore.wallMs, log: restoreLog }, imageBytes)!, ...(debugRegisters ? { debugRegisters } : {}) },
    run: { outcome: end.outcome, code: end.code, output, hits: hitsBefore + end.hits },
  };
}

function tail(log: string): string {
  return log.length > LOG_MAX_BYTES ? `(first ${log.length - LOG_MAX_BYTES} bytes cut)\n${log.slice(-LOG_MAX_BYTES)}` : log;
}

// One reading of CRIU's logs for both the repro engine and the cases (criu/handoff.ts).
export { criuFailure };
