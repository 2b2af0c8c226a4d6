/**
 * Chooses the accelerator by evidence. /dev/kvm existing proves nothing on
 * these machines, and neither does a tiny firmware that runs: on one host
 * QEMU with -accel kvm -cpu host aborts on an MSR (the firmware probe catches
 * that), on another (a paravirtualized nested KVM) the firmware runs and the
 * kernel dies in early boot with "KVM internal error". So KVM is used only
 * when the actual guest kernel and initramfs reach the guest init's ready
 * marker under KVM within a few seconds (boot-probe.ts); otherwise TCG, with
 * the reason and what was seen.
 *
 * The decision is cached per QEMU binary and version, kernel, initramfs and
 * command line (by content), and host CPU model and flags, so the evidence
 * boot runs once per combination. A KVM launch that later stalls rewrites the
 * decision as "kvm failed: <evidence>" (recordKvmFailure).
 */
import { constants } from 'node:fs';
import { access, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { cacheDir } from '../util/cache-dir.ts';
import { sha256, sha256File } from '../util/hash.ts';
import { probeBoot } from './boot-probe.ts';
import { machineArgs, type Accelerator, type BootFiles } from './qemu-args.ts';
import { qemuBinary } from './qemu-binary.ts';
import { qemuVersion } from './qemu-version.ts';
import type { LaunchEvidence } from './stall-watch.ts';
import { makeTempDir, removeTempDir } from '../util/temp-dir.ts';

export interface AccelChoice {
  accel: Accelerator;
  /** why this accelerator was chosen, for the platform profile and doctor */
  reason: string;
  /** what the decision rests on (the KVM evidence boot, or the launch that failed under KVM) */
  evidence?: LaunchEvidence;
  /** when the decision was made (it may come from the cache) */
  decidedAt?: string;
  /** set by the user (CRH_ACCEL): never probed, never overridden by a fallback */
  forced?: boolean;
}

const DECISION_VERSION = 1;
/** A KVM guest reaches its ready marker in about a second; a nested KVM that works may take a few. */
export const KVM_EVIDENCE_TIMEOUT_MS = 10_000;

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
  return [...machineArgs({ accel, memoryMiB: 16, cpus: 1 }), '-bios', firmware, '-device', `isa-debug-exit,iobase=0xf4,iosize=4`];
}

/**
 * Runs the firmware probe under `accel`; resolves to null when it works, else
 * the reason it does not. A cheap first filter (~0.1 s), not evidence: it
 * catches a QEMU that aborts on the CPU model, not a kernel that dies.
 */
export async function probeAccelerator(accel: Accelerator, timeoutMs = 5000): Promise<string | null> {
  const dir = await makeTempDir('crh-probe-');
  try {
    const firmware = path.join(dir, 'probe.rom');
    await writeFile(firmware, probeFirmware());
    const result = await execa(qemuBinary(), probeArgs(accel, firmware), { reject: false, timeout: timeoutMs, forceKillAfterDelay: 500 });
    if (result.timedOut) return `${accel} probe hung for ${timeoutMs} ms`;
    if (result.exitCode === PROBE_EXIT_STATUS) return null;
    const why = (result.stderr.split('\n').find((l) => l.trim().length > 0) ?? '').trim();
    return `${accel} probe exited ${result.exitCode ?? result.signal}${why ? `: ${why}` : ''}`;
  } finally {
    await removeTempDir(dir);
  }
}

export interface ChooseOptions {
  /** the KVM device to require (tests point it elsewhere) */
  kvmDevice?: string;
  evidenceTimeoutMs?: number;
}

/** One decision per cache key per process; concurrent launches share it. */
const decisions = new Map<string, Promise<AccelChoice>>();

async function accessible(device: string): Promise<boolean> {
  return access(device, constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
}

/**
 * The accelerator a person forced (CRH_ACCEL, read by the run configuration
 * alone — flags/run-configuration.ts — and handed down as this value): tcg as
 * it is; kvm without a probe and without fallback, once the device is there.
 * A launch given this choice (MachineConfig.accel) never calls chooseAccelerator.
 */
export async function forcedAccelerator(accel: Accelerator, kvmDevice = '/dev/kvm'): Promise<AccelChoice> {
  if (accel === 'tcg') return { accel: 'tcg', reason: 'CRH_ACCEL=tcg', forced: true };
  if (!(await accessible(kvmDevice))) throw new InfraError(`CRH_ACCEL=kvm but ${kvmDevice} is absent or not accessible`);
  return { accel: 'kvm', reason: 'CRH_ACCEL=kvm (not probed, no fallback)', forced: true };
}

/**
 * KVM when the guest really boots under it, else TCG. The user's override
 * does not reach here: whoever launches a machine passes it as the choice
 * (forcedAccelerator), so this module reads no environment.
 */
export async function chooseAccelerator(boot: BootFiles, options: ChooseOptions = {}): Promise<AccelChoice> {
  const kvmDevice = options.kvmDevice ?? '/dev/kvm';
  if (!(await accessible(kvmDevice))) return { accel: 'tcg', reason: `${kvmDevice} is absent or not accessible` };
  let where: DecisionLocation;
  try {
    where = await decisionLocation(boot);
  } catch (error) {
    // A missing kernel or initramfs: the launch fails on its own with QEMU's words; there is nothing to boot as evidence.
    return { accel: 'tcg', reason: `no evidence for KVM: the boot files cannot be read (${(error as Error).message})` };
  }
  let decision = decisions.get(where.file);
  if (!decision) {
    decision = decide(boot, where, options);
    decisions.set(where.file, decision);
    decision.catch(() => decisions.delete(where.file));
  }
  return decision;
}

/**
 * A launch under KVM stalled: KVM is not usable for this guest after all.
 * The decision becomes TCG, "kvm failed: <what was seen>", in this process
 * and in the cache; returns it.
 */
export async function recordKvmFailure(boot: BootFiles, evidence: LaunchEvidence): Promise<AccelChoice> {
  const where = await decisionLocation(boot);
  const choice: AccelChoice = { accel: 'tcg', reason: `kvm failed: ${evidence.seen}`, evidence, decidedAt: new Date().toISOString() };
  await writeDecision(where, choice);
  decisions.set(where.file, Promise.resolve(choice));
  return choice;
}

async function decide(boot: BootFiles, where: DecisionLocation, options: ChooseOptions): Promise<AccelChoice> {
  const cached = await readDecision(where.file);
  if (cached) return cached;
  const started = Date.now();
  const firmware = await probeAccelerator('kvm');
  let choice: AccelChoice;
  if (firmware !== null) {
    choice = {
      accel: 'tcg',
      reason: `KVM unusable: ${firmware}`,
      evidence: { seen: `firmware probe: ${firmware}`, qmpStatus: '', stderrTail: '', consoleTail: '', elapsedMs: Date.now() - started },
    };
  } else {
    const { booted, evidence } = await probeBoot('kvm', boot, { timeoutMs: options.evidenceTimeoutMs ?? KVM_EVIDENCE_TIMEOUT_MS });
    choice = booted
      ? { accel: 'kvm', reason: `the guest kernel reached its ready marker under KVM in ${evidence.elapsedMs} ms`, evidence }
      : { accel: 'tcg', reason: `kvm failed: ${evidence.seen}`, evidence };
  }
  choice.decidedAt = new Date().toISOString();
  await writeDecision(where, choice);
  return choice;
}

async function readDecision(file: string): Promise<AccelChoice | undefined> {
  try {
    const record = JSON.parse(await readFile(file, 'utf8')) as { version?: number; choice?: AccelChoice };
    if (record.version !== DECISION_VERSION || !record.choice || (record.choice.accel !== 'kvm' && record.choice.accel !== 'tcg')) return undefined;
    return record.choice;
  } catch {
    return undefined; // absent or torn: decide again
  }
}

async function writeDecision(where: DecisionLocation, choice: AccelChoice): Promise<void> {
  // Evidence holds console and stderr text of this host: private to the user.
  await mkdir(path.dirname(where.file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(where.file, `${JSON.stringify({ version: DECISION_VERSION, keyedBy: where.keyedBy, choice }, null, 2)}\n`);
}

interface DecisionLocation {
  file: string;
  /** what the file name hashes, kept in the file for a person to read */
  keyedBy: Record<string, string>;
}

/** The cache file of the decision for these boot files on this host and QEMU. */
export async function decisionLocation(boot: BootFiles): Promise<DecisionLocation> {
  const keyedBy = await decisionKeyParts(boot);
  return { file: cacheDir('accel', `${sha256(JSON.stringify(keyedBy)).slice(0, 20)}.json`), keyedBy };
}

/** Everything the decision depends on. */
async function decisionKeyParts(boot: BootFiles): Promise<Record<string, string>> {
  const cpu = await hostCpu();
  return {
    qemu: `${qemuBinary()} ${await qemuVersion()}`,
    kernel: await contentHash(boot.kernel),
    initramfs: await contentHash(boot.initrd),
    cmdline: boot.cmdline.join(' '),
    hostCpu: cpu.model,
    hostCpuFlags: sha256(cpu.flags).slice(0, 16),
  };
}

const hashes = new Map<string, Promise<string>>();

/** sha256 of a file's content, once per path, size and mtime in this process. */
async function contentHash(file: string): Promise<string> {
  const s = await stat(file);
  const id = `${file}\0${s.size}\0${s.mtimeMs}`;
  let hash = hashes.get(id);
  if (!hash) {
    hash = sha256File(file);
    hashes.set(id, hash);
  }
  return hash;
}

async function hostCpu(): Promise<{ model: string; flags: string }> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8');
  return { model: cpuinfo.match(/model name\s*:\s*(.*)/)?.[1]?.trim() ?? 'unknown', flags: cpuinfo.match(/^flags\s*:\s*(.*)$/m)?.[1]?.trim() ?? '' };
}
