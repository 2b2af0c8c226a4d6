/**
 * A booted guest with an open agent session: built from the cached image,
 * started from saved VM state when there is one, its platform profile and
 * symbols at hand. Cases get it through testing/guest-fixture.ts (released
 * in tap teardown), the CLI directly (released by close()).
 */
import path from 'node:path';
import type { AgentClient } from '../agent/client.ts';
import { BulkChannel } from '../agent/bulk-channel.ts';
import { describeGuestRam, GuestRam, type GuestRamSource } from '../agent/guest-ram.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import type { HelloResult } from '../agent/ops.ts';
import { buildImage, type GuestImage } from '../image/build.ts';
import { resolveKernel, type KernelChoice } from '../image/kernel.ts';
import { forcedAccelerator } from '../machine/accel.ts';
import { runConfiguration } from '../flags/run-configuration.ts';
import type { MachineEvent, QemuMachine } from '../machine/machine.ts';
import { launchMachine, reseedGuest } from '../machine/fast-start.ts';
import { BULK_PORT_NAME } from '../machine/qemu-args.ts';
import { guestOrSessionFailure } from './session-loss.ts';
import { openAgentChannel } from './agent-channel.ts';
import { platformProfile, profileFacts, type PlatformProfile } from '../platform/profile.ts';
import type { PlatformFacts } from '../restore/checkpoint-image.ts';
import { kernelSymbolFile } from '../symbols/kernel-symbols.ts';
import { SymbolTable } from '../symbols/symbols.ts';

export interface Guest {
  image: GuestImage;
  machine: QemuMachine;
  agent: AgentClient;
  hello: HelloResult;
  /** how the agent is reached: its virtio-serial port, or SSH (agent-channel.ts) */
  agentVia: 'port' | 'ssh';
  /** Drops the agent's connection as a lost link would (fault injection). */
  dropAgentConnection(): void;
  /** rejects when the agent session fails, the machine's loss first (what the agent client's requests fail with) */
  sessionFailure: Promise<never>;
  artifactsDir: string;
  /** the measured platform profile cases take their expectations from */
  profile: PlatformProfile;
  /** the profile flattened, as written into checkpoint images */
  platform: PlatformFacts;
  /** kernel and guest-program symbols, for the oracle and for reports */
  symbols: SymbolTable;
}

export interface OpenedGuest extends Guest {
  /** Closes the agent session and shuts the machine down; idempotent. */
  close(): Promise<void>;
}

export interface OpenGuestOptions {
  /** console log, QMP log and whatever the caller adds */
  artifactsDir: string;
  log?: (line: string) => void;
  /**
   * Guest directory the agent runs in, created first: every process it
   * spawns — an original and its restored copy alike — inherits it as its
   * working directory.
   */
  agentCwd?: string;
  /** boot the image variant with CRIU (harness/image/criu.ts) */
  criu?: boolean;
  /** the QEMU CPU model (`-cpu`), e.g. `max,-avx`: a guest to restore in elsewhere (default: host under KVM, max under TCG) */
  cpuModel?: string;
  /** a kernel instead of the run configuration's (a command's --kernel, a restore guest's other kernel) */
  kernel?: KernelChoice;
  /** measure the platform profile anew rather than take the cached one (crh doctor) */
  freshProfile?: boolean;
}

/** Builds (or finds) the image, launches a machine and opens the agent; on any failure what was started is released. */
export async function openGuest(options: OpenGuestOptions): Promise<OpenedGuest> {
  const log = options.log ?? (() => {});
  const configuration = runConfiguration();
  const kernel = await resolveKernel(options.kernel ?? configuration.kernel, log);
  const image = await buildImage({ kernel, log, ...(options.criu ? { criu: true } : {}) });
  // A forced accelerator is given as the choice (no probe, no fallback); otherwise the machine decides by evidence.
  const accel = configuration.accel ? await forcedAccelerator(configuration.accel) : undefined;
  const progress = (event: MachineEvent): void => {
    if (event.type === 'launch') log(`launch ${event.name} (${event.accel.accel}: ${event.accel.reason})`);
    else if (event.type === 'ready') log(`${event.name} ready in ${event.elapsedMs} ms`);
    else if (event.type === 'reaped') log(event.message);
    else if (event.type === 'accel-fallback') log(`${event.name}: KVM launch stalled (${event.failure}); falling back to ${event.accel.accel} once`);
  };
  let machine: QemuMachine | undefined;
  let agent: AgentClient | undefined;
  let bulk: BulkChannel | undefined;
  let ram: GuestRam | undefined;
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await agent?.close().catch(() => {});
    bulk?.close();
    ram?.close();
    await machine?.shutdown();
  };
  try {
    // Guest programs now, kernel symbols once the guest is up (they may come from its /proc/kallsyms).
    const symbols = new SymbolTable();
    for (const [name, file] of Object.entries(image.binaries)) await symbols.addProgram(name, file);
    machine = await launchMachine({
      image,
      artifactsDir: options.artifactsDir,
      onEvent: progress,
      diagnosisSymbols: symbols,
      callerReseeds: true,
      ...(options.cpuModel ? { cpuModel: options.cpuModel } : {}),
      ...(accel ? { accel } : {}),
    });
    // The agent over its port (no SSH handshake), else over SSH; the log says which.
    const channel = await openAgentChannel(machine, image.guestPaths['crh-agent']!, options.agentCwd, log);
    agent = channel.client;
    // A dropped connection (the agent's or SSH's) or a killed agent is infrastructure too, unless the machine has a better explanation.
    const sessionFailure = guestOrSessionFailure(machine.failure, [machine.ssh.lost, ...channel.losses]);
    agent.failWhen(sessionFailure);
    // A guest from saved state shares its past with every other: its clock and entropy, renewed through the agent.
    await reseedGuest(machine, agent);
    const m = machine;
    agent.diagnose = async () => `${await m.diagnose()}\n--- console tail ---\n${m.console.tail()}`;
    // Page data over the virtio-serial port, not SSH; a guest without it keeps to SSH, and says so.
    bulk = await BulkChannel.connect(machine.bulkSocket);
    if (!(await agent.attachBulk(bulk, BULK_PORT_NAME))) log(`no bulk data port (${agent.bulkUnavailable}): page data goes over SSH`);
    // Whole pages straight from and into guest RAM when it is a file we share; the port (or SSH) stays for the rest.
    const ramSource = machine.guestRam;
    if (ramSource) {
      ram = openGuestRam(ramSource, (why) => (agent!.guestRamUnavailable = why));
      if (ram) agent.attachGuestRam(ram);
    } else {
      agent.guestRamUnavailable = machine.guestRamUnavailable ?? 'no guest RAM file';
    }
    log(`page data: ${agent.dataPath}${agent.guestRamUnavailable ? ` (guest RAM: ${agent.guestRamUnavailable})` : ` (${describeGuestRam(ramSource!)})`}`);
    const profile = await platformProfile({ image, machine, agent, log }, { fresh: options.freshProfile === true });
    // The profile this guest's expectations came from, beside its artifacts: crh run prints it with the verdicts.
    await writeFileAtomic(path.join(options.artifactsDir, 'profile.json'), `${JSON.stringify(profile, null, 2)}\n`);
    const platform: PlatformFacts = { ...profileFacts(profile), imageKey: image.key, start: machine.fromSavedState ? 'saved-state' : 'cold-boot' };
    await symbols.addSystemMap((await kernelSymbolFile(image, machine.ssh)).file);
    return {
      image,
      machine,
      agent,
      hello: channel.hello,
      agentVia: channel.via,
      dropAgentConnection: () => channel.drop(),
      sessionFailure,
      artifactsDir: options.artifactsDir,
      profile,
      platform,
      symbols,
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}

/**
 * Guest RAM opened where `source` says, or undefined (with `unavailable`
 * told why) when the host may not open it: QEMU's private mapping is read
 * through /proc/PID/mem, which a kernel can deny (ptrace access mode); page
 * data then takes the port, and the log says so.
 */
function openGuestRam(source: GuestRamSource, unavailable: (why: string) => void): GuestRam | undefined {
  try {
    return GuestRam.of(source);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (source.kind !== 'private-mapping' || (code !== 'EACCES' && code !== 'EPERM')) throw error;
    unavailable(`${describeGuestRam(source)}: ${(error as Error).message}`);
    return undefined;
  }
}
