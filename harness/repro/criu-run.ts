/**
 * The checkpointed run with CRIU as the engine: the same program, spawned
 * the same way and stopped at the same checkpoint point by the agent, is
 * handed to CRIU in the guest (criu/handoff.ts, which the cases' criu
 * engine goes through too) — detached in a job-control stop, dumped
 * (which kills it), reaped so its pid is free, restored by `criu restore`
 * detached — and the restored process is taken back under the agent and
 * finished exactly as the crh engine finishes its own (finish signal, run
 * to the end). The comparison with the uninterrupted run is the caller's.
 */
import type { GuestExec } from '../criu/commands.ts';
import { criuFailure, handOffToCriu } from '../criu/handoff.ts';
import { rewindInterruptedSyscall } from '../restore/syscall-restart.ts';
import { debugRegOffset, hex } from '../x86/registers.ts';
import { DR7_EXECUTE_DR0 } from '../agent/breakpoint-spawn.ts';
import {
  describePoint,
  finishRestored,
  GUEST_DIRS,
  readOutput,
  runToCheckpoint,
  spawnAsReference,
  type Checkpointed,
  type Reference,
  type RunContext,
} from './runs.ts';

/** CRIU's images and logs: on the guest's tmpfs, beside the runs' outputs. */
export const CRIU_IMAGES_DIR = `${GUEST_DIRS.root}/criu-img`;

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
  const pid = await spawnAsReference(ctx, before, reference.pid, notes);

  await ctx.phase('run to the checkpoint', describePoint(ctx.point));
  const stoppedBy = await runToCheckpoint(ctx, pid, before);
  const hitsBefore = ctx.point.kind === 'symbol' ? ctx.point.hit : 0;
  const regs = await agent.call({ op: 'GETREGS', pid });
  // CRIU restarts an interrupted system call by its own rules; the note says the process was in one.
  const rewind = rewindInterruptedSyscall(regs);
  if (rewind) notes.push(`${rewind.note} (CRIU restarts it by its own rules)`);

  const handoff = await handOffToCriu(agent, criu, pid, CRIU_IMAGES_DIR, (stage) =>
    stage.name === 'dump'
      ? ctx.phase('criu dump', `${stoppedBy}, rip ${hex(regs.rip)}`)
      : ctx.phase('criu restore', `${stage.imageBytes} bytes of images, pid ${pid}`),
  );
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
  const record: Checkpointed['criu'] = {
    version: criu.version,
    dumpMs: handoff.dumpMs,
    restoreMs: handoff.restoreMs ?? 0,
    imageBytes: handoff.imageBytes ?? 0,
    dumpLog: handoff.dumpLog,
    ...(handoff.restoreLog !== undefined ? { restoreLog: handoff.restoreLog } : {}),
  };
  if (!handoff.ok) return { ...taken, criu: record, restoreError: handoff.reason };
  const restoredPid = handoff.restoredPid;
  let debugRegisters: { dr0: string; dr7: string } | undefined;
  const restoredRegs = await agent.call({ op: 'GETREGS', pid: restoredPid });
  if (ctx.breakAt !== undefined) {
    // The harness's breakpoint stayed in the thread across DETACH, so CRIU dumped a task with DR0/DR7 armed:
    // whether its restore carries them is measured here, then the breakpoint is armed again so hits count on.
    const dr0 = await agent.call({ op: 'PEEKUSER', pid: restoredPid, offset: debugRegOffset(0) });
    const dr7 = await agent.call({ op: 'PEEKUSER', pid: restoredPid, offset: debugRegOffset(7) });
    debugRegisters = { dr0: hex(dr0), dr7: hex(dr7) };
    if (dr0 !== ctx.breakAt || (dr7 & 0xffn) !== DR7_EXECUTE_DR0) {
      notes.push(
        `known engine gap: CRIU ${criu.version} did not restore the debug registers (dumped with DR0 ${hex(ctx.breakAt)}, DR7 ${hex(DR7_EXECUTE_DR0)}; restored DR0 ${hex(dr0)}, DR7 ${hex(dr7)}); the harness armed its breakpoint again`,
      );
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
    criu: { ...record, ...(debugRegisters ? { debugRegisters } : {}) },
    run: { outcome: end.outcome, code: end.code, output, hits: hitsBefore + end.hits },
  };
}

// One reading of CRIU's logs for both the repro engine and the cases (criu/handoff.ts).
export { criuFailure };
