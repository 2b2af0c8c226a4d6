/**
 * Chooses the accelerator. /dev/kvm existing proves nothing on these
 * machines (QEMU with -accel kvm aborts on an MSR with -cpu host, and other
 * CPU models hang a booting kernel), so KVM is used only if QEMU, with the
 * very CPU model a guest would get, runs a tiny firmware to completion within
 * a hard timeout. Otherwise TCG.
 */
import { constants } from 'node:fs';
import { access, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { machineArgs, type Accelerator } from './qemu-args.ts';
import { makeTempDir, removeTempDir } from '../util/temp-dir.ts';

export interface AccelChoice {
  accel: Accelerator;
  /** why this accelerator was chosen, for the platform profile and doctor */
  reason: string;
}

export const QEMU_BINARY = 'qemu-system-x86_64';
const PROBE_EXIT_VALUE = 1;
/** isa-debug-exit turns a write of v into exit status (v << 1) | 1. */
const PROBE_EXIT_STATUS = (PROBE_EXIT_VALUE << 1) | 1;

/**
 * 64 KiB firmware image: at the reset vector (0xFFFF0 → offset 0xFFF0),
 * `mov al, 1; out 0xf4, al; hlt` — QEMU exits with status 3 iff the vCPU
 * really executed guest code.
 */
export function probeFirmware(): Buffer {
  const rom = Buffer.alloc(0x10000, 0xf4); // hlt everywhere else
  Buffer.from([0xb0, PROBE_EXIT_VALUE, 0xe6, 0xf4, 0xf4]).copy(rom, 0xfff0);
  return rom;
}

export function probeArgs(accel: Accelerator, firmware: string): string[] {
  return [
    ...machineArgs({ accel, memoryMiB: 16, cpus: 1 }),
    '-bios', firmware,
    '-device', `isa-debug-exit,iobase=0xf4,iosize=4`,
  ];
}

/** Runs the firmware probe under `accel`; resolves to null when it works, else the reason it does not. */
export async function probeAccelerator(accel: Accelerator, timeoutMs = 5000): Promise<string | null> {
  const dir = await makeTempDir('crh-probe-');
  try {
    const firmware = path.join(dir, 'probe.rom');
    await writeFile(firmware, probeFirmware());
    const result = await execa(QEMU_BINARY, probeArgs(accel, firmware), { reject: false, timeout: timeoutMs, forceKillAfterDelay: 500 });
    if (result.timedOut) return `${accel} probe hung for ${timeoutMs} ms`;
    if (result.exitCode === PROBE_EXIT_STATUS) return null;
    const why = (result.stderr.split('\n').find((l) => l.trim().length > 0) ?? '').trim();
    return `${accel} probe exited ${result.exitCode ?? result.signal}${why ? `: ${why}` : ''}`;
  } finally {
    await removeTempDir(dir);
  }
}

let cached: Promise<AccelChoice> | undefined;

/**
 * KVM when it really works, else TCG. CRH_ACCEL=tcg|kvm forces a choice
 * (kvm still has to pass the probe). Probed once per process.
 */
export function chooseAccelerator(): Promise<AccelChoice> {
  cached ??= (async (): Promise<AccelChoice> => {
    const forced = process.env.CRH_ACCEL;
    if (forced === 'tcg') return { accel: 'tcg', reason: 'CRH_ACCEL=tcg' };
    try {
      await access('/dev/kvm', constants.R_OK | constants.W_OK);
    } catch {
      return { accel: 'tcg', reason: '/dev/kvm is absent or not accessible' };
    }
    const failure = await probeAccelerator('kvm');
    if (failure === null) return { accel: 'kvm', reason: 'KVM probe ran guest code' };
    return { accel: 'tcg', reason: `KVM unusable: ${failure}` };
  })();
  return cached;
}
