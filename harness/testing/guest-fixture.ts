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

export interface Guest {
  image: GuestImage;
  machine: QemuMachine;
  agent: AgentClient;
  hello: HelloResult;
  artifactsDir: string;
  platform: PlatformFacts;
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
  machine = await launchMachine({ image, artifactsDir, onEvent: progress });
  const opened = await AgentClient.open(await machine.ssh.transport(image.guestPaths['crh-agent']!));
  agent = opened.client;
  agent.failWhen(machine.failure);
  const platform: PlatformFacts = {
    accel: machine.accel!.accel,
    accelReason: machine.accel!.reason,
    cpuModel: machine.accel!.accel === 'kvm' ? 'host' : 'max',
    kernelRelease: opened.hello.release,
    kernelOrigin: image.kernel.origin,
    imageKey: image.key,
    start: machine.fromSavedState ? 'saved-state' : 'cold-boot',
  };
  return { image, machine, agent, hello: opened.hello, artifactsDir, platform };
}
