/**
 * One guest for one request: boot it, copy the program and its files in,
 * run the uninterrupted and the checkpointed run, shut it down whatever
 * happens. Every phase is shown on the host and marked in the guest's
 * console log.
 */
import path from 'node:path';
import { CheckpointError, CrhError, InfraError } from '../errors.ts';
import { openGuest, type OpenedGuest } from '../guest/open-guest.ts';
import { kernelChoiceFromFlags } from '../flags/kernel-flags.ts';
import { describeElsewhere } from './restore-elsewhere.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { injectFault } from './fault-injection.ts';
import { bootstrapHost } from '../host/bootstrap.ts';
import { shellQuote } from '../machine/qemu-args.ts';
import { criuCheckpointedRun } from './criu-run.ts';
import type { PlatformProfile } from '../platform/profile.ts';
import type { PlatformFacts } from '../restore/checkpoint-image.ts';
import { hex } from '../x86/registers.ts';
import { kill, markGuestLog } from '../agent/guest-run.ts';
import { cleanStartCommand, killedPids } from './clean-start.ts';
import { describeStatus } from './compare.ts';
import type { ReproRequest } from './options.ts';
import type { PreparedProgram } from './prepare.ts';
import type { Progress } from './progress.ts';
import type { NativeRun } from '../guest/native-run.ts';
import {
  checkpointedRun,
  GUEST_DIRS,
  nativeReference,
  READY_FILE,
  referenceRun,
  type Checkpointed,
  type GuestProgram,
  type Reference,
  type RestoreElsewhere,
  type RunContext,
} from './runs.ts';

export interface GuestRuns {
  program: GuestProgram;
  /** the program with no tracer and no breakpoint */
  native: NativeRun;
  reference: Reference;
  checkpointed: Checkpointed;
  /** --engine crh,criu: CRIU's checkpointed run, made after crh's against the same uninterrupted run */
  criuAlongside?: Checkpointed;
  /**
   * --engine crh,criu when crh's checkpoint refused the process (state the
   * restore core does not capture, restore/uncapturable.ts): the refusal,
   * crh's verdict; `checkpointed` is then CRIU's run
   */
  crhRefusal?: CheckpointError;
  profile: PlatformProfile;
  platform: PlatformFacts;
  /** the guest the process was restored in, when not this one (--restore-cpu, --restore-kernel) */
  restoredIn?: { profile: PlatformProfile; platform: PlatformFacts };
}

export async function runInGuest(request: ReproRequest, prepared: PreparedProgram, runDir: string, imageFile: string, progress: Progress): Promise<GuestRuns> {
  let phase = 'boot';
  try {
    return await phases(request, prepared, runDir, imageFile, progress, (name) => void (phase = name));
  } catch (error) {
    throw duringPhase(error, phase, runDir);
  }
}

/**
 * An infrastructure failure named by the phase it struck, the root cause
 * after it ("during restore: guest lost: QEMU killed by SIGKILL") and the
 * run directory that keeps the console log beside it. Anything else passes
 * through unchanged.
 */
export function duringPhase(error: unknown, phase: string, runDir: string): unknown {
  if (!isInfraFailure(error)) return error;
  let root = error as Error;
  const seen = new Set<unknown>();
  // The innermost of our errors says what happened; the outer ones say which request it broke.
  for (let e: unknown = error; e instanceof Error && !seen.has(e); e = e.cause) {
    seen.add(e);
    if (e instanceof CrhError) root = e;
  }
  const details = { ...(error instanceof CrhError ? error.details : {}), ...(root instanceof CrhError ? root.details : {}), artifacts: runDir };
  return new InfraError(`during ${phase}: ${root.message}`, details, { cause: error });
}

async function phases(
  request: ReproRequest,
  prepared: PreparedProgram,
  runDir: string,
  imageFile: string,
  progress: Progress,
  entered: (phase: string) => void,
): Promise<GuestRuns> {
  const phase = (name: string, detail?: string): void => {
    entered(name);
    progress.phase(name, detail);
  };
  phase('boot');
  await bootstrapHost((line) => progress.note(line));
  const kernel = kernelChoiceFromFlags(request.kernel);
  const guest = await openGuest({
    artifactsDir: runDir,
    log: (line) => progress.note(line),
    agentCwd: GUEST_DIRS.work,
    ...(kernel ? { kernel } : {}),
    ...(request.engine === 'criu' || request.engines?.includes('criu') ? { criu: true } : {}),
  });
  let fault = request.fault;
  let restoreGuest: OpenedGuest | undefined;
  try {
    const { ssh } = guest.machine;
    const guestBinary = `${GUEST_DIRS.bin}/${prepared.name}`;
    phase('upload', `${prepared.name} (${prepared.program.data.length} bytes)${prepared.files.length ? ` and ${prepared.files.length} file(s)` : ''}`);
    // Console level 7: the kernel's "segfault at ..." lines (KERN_INFO) reach the console log too.
    await ssh.run(`mkdir -p ${GUEST_DIRS.bin} ${GUEST_DIRS.out} ${GUEST_DIRS.work} && echo 7 > /proc/sys/kernel/printk`);
    await ssh.upload(guestBinary, prepared.program.data, 0o755);
    // Each run starts clean (clean-start.ts): nothing the previous one left
    // running, a working directory at the same path holding only the --file
    // inputs, copied again.
    const cleanStart = async (run: string): Promise<void> => {
      const killed = killedPids(await ssh.run(cleanStartCommand(GUEST_DIRS.work)));
      if (killed.length > 0) progress.note(`before the ${run}: killed what the previous run left running (pid ${killed.join(', ')})`);
      for (const f of prepared.files) await ssh.upload(`${GUEST_DIRS.work}/${path.basename(f.file)}`, f.data, f.mode);
    };

    const program: GuestProgram = { binary: guestBinary, argv: [guestBinary, ...request.args], envp: [`CRH_READY_FILE=${READY_FILE}`] };
    const ctx: RunContext = {
      agent: guest.agent,
      program,
      point: request.checkpoint,
      ...(prepared.breakAt !== undefined ? { breakAt: prepared.breakAt } : {}),
      ...(request.finishSignal ? { finishSignal: request.finishSignal } : {}),
      ...(request.pidFile !== undefined ? { pidFile: path.posix.resolve(GUEST_DIRS.work, request.pidFile) } : {}),
      timeoutMs: request.timeoutMs,
      clearReady: async () => void (await ssh.run(`rm -f ${shellQuote(READY_FILE)}`)),
      shell: (command) => ssh.run(command),
      phase: async (name, detail) => {
        phase(name, detail);
        await markGuestLog(guest.agent, `crh ${request.command}: ${name}${detail ? `: ${detail}` : ''}`);
        if (fault?.phase === name) {
          const injected = fault;
          fault = undefined;
          await injectFault(injected, {
            machine: guest.machine,
            agentPid: guest.hello.agentPid,
            dropAgent: () => guest.dropAgentConnection(),
            sessionFailure: guest.sessionFailure,
            log: (line) => progress.note(line),
          });
        }
      },
    };
    await cleanStart('native run');
    await ctx.phase('native run', 'no tracer, no breakpoint');
    const native = await nativeReference(ctx);
    progress.note(`${describeStatus(native)}, ${native.output.length} bytes of output (pid ${native.pid})`);
    await cleanStart('uninterrupted run');
    await ctx.phase('uninterrupted run');
    // As the native run's pid: a native run cannot choose its pid, the agent can (clone3 set_tid).
    const reference = await referenceRun(ctx, native.pid);
    const hits = prepared.breakAt !== undefined ? `, ${reference.hits} executions of ${hex(prepared.breakAt)}` : '';
    progress.note(`${describeStatus(reference)}, ${reference.output.length} bytes of output${hits}, ${reference.elapsedMs} ms (pid ${reference.pid})`);
    let elsewhere: RestoreElsewhere | undefined;
    if (request.elsewhere) {
      // The restore guest: the same image recipe, another CPU model or kernel, the program and its files at the same paths.
      phase('boot the restore guest', describeElsewhere(request.elsewhere));
      restoreGuest = await openGuest({
        artifactsDir: path.join(runDir, 'restore-guest'),
        log: (line) => progress.note(`restore guest: ${line}`),
        agentCwd: GUEST_DIRS.work,
        ...(request.elsewhere.cpu !== undefined ? { cpuModel: request.elsewhere.cpu } : {}),
        ...(request.elsewhere.kernel !== undefined ? { kernel: kernelChoiceFromFlags({ kernel: request.elsewhere.kernel }) } : {}),
      });
      const there = restoreGuest.machine.ssh;
      await there.run(`mkdir -p ${GUEST_DIRS.bin} ${GUEST_DIRS.out} ${GUEST_DIRS.work} && echo 7 > /proc/sys/kernel/printk`);
      await there.upload(guestBinary, prepared.program.data, 0o755);
      for (const f of prepared.files) await there.upload(`${GUEST_DIRS.work}/${path.basename(f.file)}`, f.data, f.mode);
      progress.note(
        `restore guest: -cpu ${restoreGuest.profile.cpuModel}, kernel ${restoreGuest.profile.kernelRelease}, CPU flags ${restoreGuest.profile.cpuFlags.join(' ')}`,
      );
      elsewhere = {
        ctx: {
          ...ctx,
          agent: restoreGuest.agent,
          shell: (command) => there.run(command),
          clearReady: async () => void (await there.run(`rm -f ${shellQuote(READY_FILE)}`)),
        },
        anyway: request.elsewhere.anyway,
      };
    }
    await cleanStart('checkpointed run');
    const criu = guest.image.criu;
    const criuRun = async (): Promise<Checkpointed> => {
      if (!criu) throw new InfraError('the image built for --engine criu has no CRIU');
      return criuCheckpointedRun(ctx, reference, { command: criu.command, version: criu.version, exec: (command) => ssh.exec(command) });
    };
    const sideBySide = request.engines?.includes('criu') === true && request.engine !== 'criu';
    let checkpointed: Checkpointed;
    let crhRefusal: CheckpointError | undefined;
    try {
      checkpointed =
        request.engine === 'criu'
          ? await criuRun()
          : await checkpointedRun(ctx, reference, guest.platform, request.policy, imageFile, request.cycles, elsewhere);
    } catch (error) {
      // Side by side, crh's refusal is crh's verdict, and CRIU still gets the process.
      if (!sideBySide || !(error instanceof CheckpointError)) throw error;
      crhRefusal = error;
      progress.note(`crh refused the checkpoint: ${error.message}`);
      // The refused process is still the agent's, stopped: ended and collected, so CRIU's run gets the pid.
      await kill(guest.agent, reference.pid).catch(() => {});
      await cleanStart('checkpointed run (criu)');
      checkpointed = await criuRun();
    }
    let criuAlongside: Checkpointed | undefined;
    if (sideBySide && !crhRefusal) {
      // The same program from the same clean start, against the same uninterrupted run: only the engine differs.
      await cleanStart('checkpointed run (criu)');
      criuAlongside = await criuRun();
    }
    return {
      program,
      native,
      reference,
      checkpointed,
      ...(criuAlongside ? { criuAlongside } : {}),
      ...(crhRefusal ? { crhRefusal } : {}),
      profile: guest.profile,
      platform: guest.platform,
      ...(restoreGuest ? { restoredIn: { profile: restoreGuest.profile, platform: restoreGuest.platform } } : {}),
    };
  } finally {
    // The failure's phase stays the one that failed: shutting down is no phase of the run's.
    progress.phase('shut down');
    await restoreGuest?.close();
    await guest.close();
  }
}
