/**
 * A booted guest with an open agent session, for cases: built from the
 * cached image, released in tap teardown whatever happens.
 */
import path from 'node:path';
import { mkdir } from 'node:fs/promises';
import { AgentClient } from '../agent/client.ts';
import type { HelloResult } from '../agent/ops.ts';
import { buildImage, type GuestImage } from '../image/build.ts';
import type { QemuMachine, MachineEvent } from '../machine/machine.ts';
import { launchMachine } from '../machine/fast-start.ts';
import { artifactsRoot } from '../report/verdicts.ts';
import { isInfraFailure, recordInfraFailure } from '../report/infra-failures.ts';
import { kernelFromEnvironment } from '../image/kernel.ts';
import type { PlatformFacts } from '../restore/checkpoint-image.ts';
import { SymbolTable } from '../symbols/symbols.ts';
import { kernelSymbolFile } from '../symbols/kernel-symbols.ts';
import { platformProfile, profileFacts, type PlatformProfile } from '../platform/profile.ts';

export interface Guest {
  image: GuestImage;
  machine: QemuMachine;
  agent: AgentClient;
  hello: HelloResult;
  artifactsDir: string;
  /** the measured platform profile cases take their expectations from */
  profile: PlatformProfile;
  /** the profile flattened, as written into checkpoint images */
  platform: PlatformFacts;
  /** kernel and guest-program symbols, for the oracle and for reports */
  symbols: SymbolTable;
}

interface Teardownable {
  teardown(fn: () => unknown): void;
  comment(...args: unknown[]): void;
}

export async function startGuest(t: Teardownable, caseName: string): Promise<Guest> {
  const artifactsDir = path.join(artifactsRoot(), caseName);
  await mkdir(artifactsDir, { recursive: true });
  try {
    return await launchGuest(t, caseName, artifactsDir);
  } catch (error) {
    if (isInfraFailure(error)) recordInfraFailure(caseName, error);
    throw error;
  }
}

async function launchGuest(t: Teardownable, caseName: string, artifactsDir: string): Promise<Guest> {
  const image = await buildImage({ kernel: await kernelFromEnvironment(), log: (line) => t.comment(`${caseName}: ${line}`) });
  const progress = (event: MachineEvent): void => {
    if (event.type === 'launch') t.comment(`launch ${event.name} (${event.accel.accel}: ${event.accel.reason})`);
    else if (event.type === 'ready') t.comment(`${event.name} ready in ${event.elapsedMs} ms`);
    else if (event.type === 'reaped') t.comment(event.message);
  };
  let machine: QemuMachine | undefined;
  let agent: AgentClient | undefined;
  t.teardown(async () => {
    await agent?.close().catch(() => {});
    await machine?.shutdown();
  });
  // Guest programs now, kernel symbols once the guest is up (they may come from its /proc/kallsyms).
  const symbols = new SymbolTable();
  for (const [name, file] of Object.entries(image.binaries)) await symbols.addProgram(name, file);
  machine = await launchMachine({ image, artifactsDir, onEvent: progress, diagnosisSymbols: symbols });
  const opened = await AgentClient.open(await machine.ssh.transport(image.guestPaths['crh-agent']!));
  agent = opened.client;
  agent.failWhen(machine.failure);
  agent.diagnose = async () => `${await machine!.diagnose()}\n--- console tail ---\n${machine!.console.tail()}`;
  const profile = await platformProfile({ image, machine, agent, log: (line) => t.comment(`${caseName}: ${line}`) });
  const platform: PlatformFacts = { ...profileFacts(profile), imageKey: image.key, start: machine.fromSavedState ? 'saved-state' : 'cold-boot' };
  await symbols.addSystemMap((await kernelSymbolFile(image, machine.ssh)).file);
  return { image, machine, agent, hello: opened.hello, artifactsDir, profile, platform, symbols };
}
