/**
 * Fast start: the first machine of an image and profile boots cold and saves
 * its state once SSH answers; later machines load that state (about 5× faster
 * than a boot under TCG). The state is cached beside the image, keyed by
 * everything that must match for QEMU to load it, so a new image, QEMU
 * (binary or version) or profile invalidates it.
 *
 * A state is per accelerator profile: its key holds the accelerator the
 * state was saved under, a state is loaded only by a machine pinned to that
 * accelerator, and a cold boot saves under the accelerator it actually ran
 * with — so a KVM launch that fell back to TCG never writes or reads a KVM
 * state as TCG, or the reverse.
 *
 * Machines started from one state share its past: the guest clock is set to
 * the host's and fresh host randomness is mixed into the guest's pool right
 * after the load.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { cacheDir, ensureCacheDir } from '../util/cache-dir.ts';
import { sha256 } from '../util/hash.ts';
import { chooseAccelerator, recordKvmFailure, type AccelChoice } from './accel.ts';
import { bootFilesOf, QemuMachine, type MachineConfig } from './machine.ts';
import type { AgentClient } from '../agent/client.ts';
import { StalledLaunchError } from './stall-watch.ts';
import { qemuBinary } from './qemu-binary.ts';
import { qemuVersion } from './qemu-version.ts';
import { connectAgentPort, type PortTransport } from '../agent/port-transport.ts';
import { InfraError } from '../errors.ts';
import { AGENT_PORT_START_MS, consoleSaysNoPort } from './agent-session.ts';

export interface FastStartConfig extends MachineConfig {
  /** false forces a cold boot (and does not write a state) */
  fastStart?: boolean;
  /**
   * The caller reaches the agent over the agent port: a machine from saved
   * state is returned as soon as it runs (SSH connects when first used)
   * and not yet re-seeded — the caller calls reseedGuest once its agent is
   * open.
   */
  callerReseeds?: boolean;
}

/**
 * Names the device set qemu-args.ts gives every machine; bumped when a
 * device is added or removed, since a state saved with another set does not
 * load (2: the bulk data port; 3: the agent port).
 */
const SAVED_STATE_DEVICES = 3;

/** Where the state of `config`'s image and profile under `accel` (default: the one chosen now) lives. */
export async function savedStatePath(config: MachineConfig, accel?: AccelChoice): Promise<string> {
  accel ??= config.accel ?? (await chooseAccelerator(bootFilesOf(config.image)));
  const key = sha256(
    JSON.stringify({
      image: config.image.key,
      devices: SAVED_STATE_DEVICES,
      memoryMiB: config.memoryMiB ?? 512,
      cpus: config.cpus ?? 1,
      ...(config.cpuModel ? { cpuModel: config.cpuModel } : {}),
      // A machine with RAM in a file saves its RAM apart (saved-state.ts): a state one without it cannot load.
      ramInFile: config.guestRamInFile !== false,
      // Saved with the agent port's session waiting (agent-session.ts): a start that does not connect before the load would lose it.
      agentSessionWaits: true,
      accel: accel.accel,
      qemu: `${qemuBinary()} ${await qemuVersion()}`,
    }),
  ).slice(0, 20);
  return cacheDir('states', `${key}.vmstate`);
}

/** A launched machine, from saved state when one exists, else booted cold (saving the state). */
export async function launchMachine(config: FastStartConfig): Promise<QemuMachine> {
  if (config.fastStart === false) return new QemuMachine(config).launch();
  const accel = config.accel ?? (await chooseAccelerator(bootFilesOf(config.image)));
  const state = await savedStatePath(config, accel);
  if (existsSync(state)) {
    const restored = await launchFromState({ ...config, accel }, state);
    if (restored) return restored;
    // KVM stalled on the saved state: the decision is TCG now, whose own state (if any) is the one to load.
    const now = config.accel ?? (await chooseAccelerator(bootFilesOf(config.image)));
    if (now.accel !== accel.accel) return launchMachine(config);
  }
  // Not pinned unless the caller pinned it: a KVM that stalls falls back to TCG inside launch().
  const machine = await new QemuMachine(config).launch();
  try {
    await ensureCacheDir('states');
    // Saved with a session of the agent port waiting (agent-session.ts): later starts skip its fork; this machine keeps it.
    const session = machine.guestRam?.kind === 'shared-file' ? await openSessionToSave(machine) : undefined;
    if (session) machine.holdAgentSession(session);
    await machine.saveState(await savedStatePath(config, machine.accel), undefined, session?.pid);
  } catch (error) {
    await machine.shutdown();
    throw error;
  }
  return machine;
}

/**
 * A session of `machine`'s agent port, started and waiting for its first
 * request, or undefined when the guest serves no agent port (its console
 * says so; the state is then saved without one, and its starts connect after
 * the load as a cold boot does).
 */
async function openSessionToSave(machine: QemuMachine): Promise<PortTransport | undefined> {
  try {
    return await connectAgentPort(machine.agentSocket, { startTimeoutMs: AGENT_PORT_START_MS, giveUp: consoleSaysNoPort(machine.console) });
  } catch (error) {
    if (error instanceof InfraError && /^agent port /.test(error.message)) return undefined;
    throw error;
  }
}

/**
 * The machine started from `state` under the accelerator it was saved with
 * (config.accel), or undefined when QEMU cannot load that state (it is then
 * deleted) or the accelerator stalled (the decision is then re-made, and the
 * caller boots cold under the new one).
 */
async function launchFromState(config: FastStartConfig & { accel: AccelChoice }, state: string): Promise<QemuMachine | undefined> {
  const machine = new QemuMachine({ ...config, incomingState: state, ...(config.callerReseeds ? { sshInBackground: true } : {}) });
  try {
    await machine.launch();
  } catch (error) {
    if (error instanceof StalledLaunchError && config.accel.accel === 'kvm' && !config.accel.forced) {
      await recordKvmFailure(bootFilesOf(config.image), error.evidence);
      return undefined;
    }
    if (!/load of migration failed|incoming migration|savevm|vmstate/i.test(describe(error))) throw error;
    await rm(state, { recursive: true, force: true });
    return undefined;
  }
  if (config.callerReseeds) return machine;
  try {
    await reseedGuest(machine);
  } catch (error) {
    await machine.shutdown();
    throw error;
  }
  return machine;
}

/**
 * Sets the guest clock to the host's and mixes fresh host randomness into
 * its pool: through the agent (RESEED) when one is given, else over SSH.
 * Nothing to do for a machine that booted cold.
 */
export async function reseedGuest(machine: QemuMachine, agent?: AgentClient): Promise<void> {
  if (!machine.fromSavedState) return;
  const now = Date.now();
  if (agent) await agent.call({ op: 'RESEED', seconds: BigInt(Math.floor(now / 1000)), nanoseconds: (now % 1000) * 1_000_000, entropy: randomBytes(64) });
  else await machine.ssh.run(`date -s @${Math.floor(now / 1000)} >/dev/null && echo ${randomBytes(64).toString('hex')} > /dev/urandom`);
  machine.markPhase('clock set, entropy mixed in');
}

function describe(error: unknown): string {
  if (error && typeof error === 'object' && 'describe' in error && typeof error.describe === 'function') return String(error.describe());
  return String(error);
}
