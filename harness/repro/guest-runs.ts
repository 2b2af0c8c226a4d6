/**
 * One guest for one request: boot it, copy the program and its files in,
 * run the uninterrupted and the checkpointed run, shut it down whatever
 * happens. Every phase is shown on the host and marked in the guest's
 * console log.
 */
import path from 'node:path';
import { openGuest } from '../guest/open-guest.ts';
import { bootstrapHost } from '../host/bootstrap.ts';
import { shellQuote } from '../machine/qemu-args.ts';
import { InfraError } from '../errors.ts';
import { criuCheckpointedRun } from './criu-run.ts';
import type { PlatformProfile } from '../platform/profile.ts';
import type { PlatformFacts } from '../restore/checkpoint-image.ts';
import { hex } from '../x86/registers.ts';
import { cleanStartCommand, killedPids } from './clean-start.ts';
import { describeStatus } from './compare.ts';
import type { ReproRequest } from './options.ts';
import type { PreparedProgram } from './prepare.ts';
import type { Progress } from './progress.ts';
import type { NativeRun } from '../guest/native-run.ts';
import { checkpointedRun, GUEST_DIRS, nativeReference, READY_FILE, referenceRun, type Checkpointed, type GuestProgram, type Reference, type RunContext } from './runs.ts';

export interface GuestRuns {
  program: GuestProgram;
  /** the program with no tracer and no breakpoint */
  native: NativeRun;
  reference: Reference;
  checkpointed: Checkpointed;
  profile: PlatformProfile;
  platform: PlatformFacts;
}

export async function runInGuest(request: ReproRequest, prepared: PreparedProgram, runDir: string, imageFile: string, progress: Progress): Promise<GuestRuns> {
  progress.phase('boot');
  await bootstrapHost((line) => progress.note(line));
  const guest = await openGuest({ artifactsDir: runDir, log: (line) => progress.note(line), agentCwd: GUEST_DIRS.work, ...(request.engine === 'criu' ? { criu: true } : {}) });
  try {
    const { ssh } = guest.machine;
    const guestBinary = `${GUEST_DIRS.bin}/${prepared.name}`;
    progress.phase('upload', `${prepared.name} (${prepared.program.data.length} bytes)${prepared.files.length ? ` and ${prepared.files.length} file(s)` : ''}`);
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
      timeoutMs: request.timeoutMs,
      clearReady: async () => void (await ssh.run(`rm -f ${shellQuote(READY_FILE)}`)),
      shell: (command) => ssh.run(command),
      phase: async (phase, detail) => {
        progress.phase(phase, detail);
        const text = `crh ${request.command}: ${phase}${detail ? `: ${detail}` : ''}`;
        await ssh.run(`echo ${shellQuote(`<5>${text}`)} > /dev/kmsg`);
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
    await cleanStart('checkpointed run');
    const criu = guest.image.criu;
    if (request.engine === 'criu' && !criu) throw new InfraError('the image built for --engine criu has no CRIU');
    const checkpointed =
      request.engine === 'criu'
        ? await criuCheckpointedRun(ctx, reference, { command: criu!.command, version: criu!.version, exec: (command) => ssh.exec(command) })
        : await checkpointedRun(ctx, reference, guest.platform, request.policy, imageFile);
    return { program, native, reference, checkpointed, profile: guest.profile, platform: guest.platform };
  } finally {
    progress.phase('shut down');
    await guest.close();
  }
}
