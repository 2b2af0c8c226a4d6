/**
 * The platform profile: what this host, QEMU, CPU model and guest kernel
 * actually do, measured rather than assumed. QEMU TCG is not hardware, and
 * kernels change semantics between versions; cases read their expectations
 * from this profile and print the value each expectation depends on. Every
 * checkpoint image carries it.
 *
 * Probes:
 * - rfOnUserPageFault: the EFLAGS the CPU pushed in the exception frame of a
 *   user-mode page fault, read at the kernel's page-fault entry through the
 *   gdbstub. The architecture pushes RF=1 for fault-class exceptions.
 * - rfAtHwBreakpointStop: EFLAGS.RF in the registers ptrace reports at a
 *   hardware-breakpoint SIGTRAP stop (the kernel's hw_breakpoint handler sets it).
 * - rseqDeprecatedFlagsRejected: whether the kernel kills a task whose active
 *   rseq_cs carries RSEQ_CS_FLAG_NO_RESTART_ON_* flags (6.0 and later) instead
 *   of honouring them; flags=0 is run first as the control.
 * - cpuFeatures: FSGSBASE (CPUID and the kernel's HWCAP2), PKU (CPUID, OSPKE,
 *   pkey_alloc) and the rseq feature size and alignment in the auxiliary
 *   vector (6.3+; absent on 6.1), and whether the kernel has time
 *   namespaces, measured in the guest (cpu-features.ts).
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../util/atomic-write.ts';
import type { AgentClient } from '../agent/client.ts';
import type { RunResult } from '../agent/ops.ts';
import type { GuestImage } from '../image/build.ts';
import type { QemuMachine } from '../machine/machine.ts';
import type { AccelChoice } from '../machine/accel.ts';
import { qemuVersion } from '../machine/qemu-version.ts';
import { cacheDir } from '../util/cache-dir.ts';
import { sha256 } from '../util/hash.ts';
import { EFLAGS, NT_X86_XSTATE, hex } from '../x86/registers.ts';
import { spawnWithBreakpoint } from '../agent/breakpoint-spawn.ts';
import { xstateFeatures } from '../restore/validate.ts';
import { ElfFile } from '../elf/elf64.ts';
import { CASE_OPTIONS, optionState } from './kernel-config.ts';
import { guestKernelConfig } from './guest-kernel-config.ts';
import { measureRfOnUserPageFault } from './page-fault-probe.ts';
import { cpuFeatureFacts, cpuFeatureRows, cpuFeaturesProbe, type CpuFeatures } from './cpu-features.ts';
import { inconclusiveProbes, isRunTimeout, PROBE_BOUND_MS, ProbeInconclusiveError, runBoundedProbe, type Measured, type Probe } from './probe-runner.ts';

/** 2: cpuFeatures (FSGSBASE, PKU, rseq auxv); 3: cpuFeatures.timeNamespace (CONFIG_TIME_NS). */
export const PROFILE_VERSION = 3;

export type { Measured } from './probe-runner.ts';

export interface PlatformProfile {
  version: number;
  measuredAt: string;
  qemu: string;
  accel: string;
  accelReason: string;
  /** what the accelerator decision rests on (absent in profiles written before it was recorded) */
  accelEvidence?: AccelEvidence;
  cpuModel: string;
  guestCpu: string;
  cpuFlags: string[];
  xcr0: string;
  xsaveBytes: number;
  kernelRelease: string;
  kernelOrigin: string;
  kernelConfig: Record<string, string>;
  kernelSymbols: string;
  probes: {
    rfOnUserPageFault: Measured<boolean>;
    rfAtHwBreakpointStop: Measured<boolean>;
    rseqDeprecatedFlagsRejected: Measured<boolean>;
  };
  cpuFeatures: Measured<CpuFeatures>;
}

/** The accelerator decision's evidence, short enough for a table row and a checkpoint image. */
export interface AccelEvidence {
  seen: string;
  elapsedMs: number;
  qmpStatus: string;
  /** first non-empty line of QEMU's stderr */
  stderr: string;
  /** last non-empty console line */
  console: string;
  decidedAt: string;
}

function accelEvidence(choice: AccelChoice | undefined): AccelEvidence | undefined {
  const e = choice?.evidence;
  if (!e) return undefined;
  const lines = (text: string): string[] =>
    text
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.length > 0);
  return {
    seen: e.seen,
    elapsedMs: e.elapsedMs,
    qmpStatus: e.qmpStatus,
    stderr: lines(e.stderrTail)[0] ?? '',
    console: lines(e.consoleTail).at(-1) ?? '',
    decidedAt: choice.decidedAt ?? '',
  };
}

/** The accelerator facts of the machine now: a KVM that failed after the profile was measured shows here. */
function currentAccel(machine: QemuMachine): Pick<PlatformProfile, 'accel' | 'accelReason' | 'accelEvidence'> {
  const evidence = accelEvidence(machine.accel);
  return { accel: machine.accel?.accel ?? 'unknown', accelReason: machine.accel?.reason ?? '', ...(evidence ? { accelEvidence: evidence } : {}) };
}

/** CPU flags worth recording: the ones C/R state depends on. */
const INTERESTING_FLAGS = ['xsave', 'xsaveopt', 'xsavec', 'xsaves', 'avx', 'avx2', 'avx512f', 'fsgsbase', 'pku', 'ospke', 'rdrand', 'sse4_2', 'fxsr'];

export interface ProfileContext {
  image: GuestImage;
  machine: QemuMachine;
  agent: AgentClient;
  log?: (line: string) => void;
  /** how long a probe may wait for the guest (probe-runner.ts) */
  probeBoundMs?: number;
}

/** Cache file of the profile for this image, QEMU, accelerator and host CPU. */
export async function profilePath(ctx: Pick<ProfileContext, 'image' | 'machine'>): Promise<string> {
  const hostCpu = (await readFile('/proc/cpuinfo', 'utf8')).match(/model name\s*:\s*(.*)/)?.[1] ?? 'unknown';
  // A CPU model other than the default (--restore-cpu) is another platform; the default keeps the keys profiles were cached under.
  const model = ctx.machine.cpuModel;
  const cpuModel = model && model !== 'max' && model !== 'host' ? { cpuModel: model } : {};
  const key = sha256(
    JSON.stringify({ v: PROFILE_VERSION, image: ctx.image.key, accel: ctx.machine.accel?.accel, qemu: await qemuVersion(), hostCpu, ...cpuModel }),
  ).slice(0, 20);
  return cacheDir('profiles', `${key}.json`);
}

/** The cached profile when there is one, else a fresh measurement (cached). */
export async function platformProfile(ctx: ProfileContext, options: { fresh?: boolean } = {}): Promise<PlatformProfile> {
  const file = await profilePath(ctx);
  // The probes depend on the accelerator (in the key), not on why it was chosen: the reason is always today's.
  if (!options.fresh && existsSync(file)) return { ...(JSON.parse(await readFile(file, 'utf8')) as PlatformProfile), ...currentAccel(ctx.machine) };
  const profile = await measurePlatformProfile(ctx);
  // A probe that could not conclude may have met a loaded host rather than the kernel: measured again by the next guest, not kept.
  const inconclusive = inconclusiveProbes({ ...profile.probes, cpuFeatures: profile.cpuFeatures });
  if (inconclusive.length > 0) ctx.log?.(`profile not cached, inconclusive: ${inconclusive.join('; ')}`);
  // Guests started in parallel (crh run --jobs) read this file while another may write it.
  else await writeFileAtomic(file, `${JSON.stringify(profile, null, 2)}\n`);
  return profile;
}

export async function measurePlatformProfile(ctx: ProfileContext): Promise<PlatformProfile> {
  const { image, machine, agent } = ctx;
  const log = ctx.log ?? (() => {});
  const cpuinfo = await machine.ssh.run('cat /proc/cpuinfo');
  const flags = new Set((cpuinfo.match(/^flags\s*:\s*(.*)$/m)?.[1] ?? '').split(/\s+/));
  // The same config the cases' skip decisions read: a config file, or the one embedded in the bzImage.
  const { config } = await guestKernelConfig(image.kernel);
  const release = (await machine.ssh.run('uname -r')).trim();

  log('probe: RF at a hardware-breakpoint stop');
  const hw = await probeHwBreakpointStop(ctx);
  log('probe: rseq with deprecated flags');
  const rseq = await runBoundedProbe('rseq probe', rseqDeprecatedFlagsProbe(agent, image.guestPaths['rseq-flags']!), ctx.probeBoundMs ?? PROBE_BOUND_MS);
  log('probe: RF in the exception frame of a user page fault (gdbstub)');
  const pf = await measureRfOnUserPageFault(ctx);
  log('probe: CPU features (FSGSBASE, PKU, rseq auxv)');
  const cpuFeatures = await runBoundedProbe(
    'cpu-features probe',
    cpuFeaturesProbe(agent, image.guestPaths['cpu-features']!),
    ctx.probeBoundMs ?? PROBE_BOUND_MS,
  );

  return {
    version: PROFILE_VERSION,
    measuredAt: new Date().toISOString(),
    qemu: await qemuVersion(),
    ...currentAccel(machine),
    cpuModel: machine.cpuModel ?? (machine.accel?.accel === 'kvm' ? 'host' : 'max'),
    guestCpu: cpuinfo.match(/model name\s*:\s*(.*)/)?.[1] ?? 'unknown',
    cpuFlags: INTERESTING_FLAGS.filter((f) => flags.has(f)),
    xcr0: hex(hw.xcr0),
    xsaveBytes: hw.xsaveBytes,
    kernelRelease: release,
    kernelOrigin: image.kernel.origin,
    kernelConfig: Object.fromEntries(Object.keys(CASE_OPTIONS).map((o) => [o, optionState(config, o)])),
    kernelSymbols: pf.symbolsOrigin,
    probes: { rfOnUserPageFault: pf.measured, rfAtHwBreakpointStop: hw.measured, rseqDeprecatedFlagsRejected: rseq },
    cpuFeatures,
  };
}

async function probeHwBreakpointStop(ctx: ProfileContext): Promise<{ measured: Measured<boolean>; xcr0: bigint; xsaveBytes: number }> {
  const { agent, image } = ctx;
  const binary = image.guestPaths.hwbreak!;
  const target = (await ElfFile.open(image.binaries.hwbreak!)).symbolAddress('target');
  const pid = await spawnWithBreakpoint(agent, { binary, argv: [binary, '1'], breakAt: target }, '/tmp/probe-hwbreak.out');
  try {
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    const xstate = await agent.call({ op: 'GETREGSET', pid, noteType: NT_X86_XSTATE, maxSize: 16384 });
    const hit = run.hits[0];
    return {
      measured: hit
        ? { value: (hit.eflags & EFLAGS.RF) !== 0n, how: `ptrace GETREGS at the SIGTRAP stop of DR0 on hwbreak:target: eflags ${hex(hit.eflags)}` }
        : { value: null, how: `no breakpoint hit (${run.outcome} ${run.code})` },
      xcr0: xstateFeatures(xstate),
      xsaveBytes: xstate.length,
    };
  } finally {
    await agent.call({ op: 'KILL', pid }).catch(() => {});
  }
}

/**
 * rseq-flags with flags=0 (the control: one abort by the 5 ms timer's
 * signal), then flags=4. A kernel whose rseq never aborts leaves the control
 * spinning: after `boundMs` it is killed and the probe says so.
 */
export function rseqDeprecatedFlagsProbe(agent: Pick<AgentClient, 'call'>, binary: string): Probe<boolean> {
  return (boundMs) => probeRseqDeprecatedFlags(agent, binary, boundMs);
}

async function probeRseqDeprecatedFlags(agent: Pick<AgentClient, 'call'>, binary: string, boundMs: number): Promise<Measured<boolean>> {
  const runWith = async (flags: string): Promise<string> => {
    const out = `/tmp/probe-rseq-${flags}.out`;
    const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv: [binary, flags], envp: [], stdoutPath: out, noAslr: true });
    let run: RunResult;
    try {
      run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: boundMs });
    } catch (error) {
      if (!isRunTimeout(error)) throw error;
      await agent.call({ op: 'KILL', pid }).catch(() => {});
      throw new ProbeInconclusiveError(
        `no rseq abort within ${boundMs} ms (rseq-flags ${flags}: a critical section spinning under 5 ms timer signals was still running; killed)`,
      );
    }
    // RUN records and delivers signals; the timer's SIGALRMs show up there too.
    if (run.outcome === 'killed') return `signal ${run.code}`;
    return `exit ${run.code}: ${(await agent.call({ op: 'READ_FILE', path: out, maxSize: 4096 })).toString().trim()}`;
  };
  const control = await runWith('0');
  if (control !== 'exit 0: outcome=abort') return { value: null, how: `control (flags=0) did not abort once: ${control}` };
  const deprecated = await runWith('4');
  if (deprecated === 'signal 11') return { value: true, how: 'flags=0 aborted; flags=4 (NO_RESTART_ON_MIGRATE) killed by SIGSEGV' };
  if (deprecated === 'exit 0: outcome=abort') return { value: false, how: 'flags=0 and flags=4 both aborted to the abort handler' };
  return { value: null, how: `flags=4 gave ${deprecated}` };
}

/** The profile as flat scalars, as checkpoint images record it. */
export function profileFacts(p: PlatformProfile): Record<string, string | number | boolean | null> {
  return {
    profileVersion: p.version,
    qemu: p.qemu,
    accel: p.accel,
    accelReason: p.accelReason,
    accelEvidence: p.accelEvidence ? describeAccelEvidence(p.accelEvidence) : null,
    cpuModel: p.cpuModel,
    guestCpu: p.guestCpu,
    cpuFlags: p.cpuFlags.join(' '),
    xcr0: p.xcr0,
    xsaveBytes: p.xsaveBytes,
    kernelRelease: p.kernelRelease,
    kernelOrigin: p.kernelOrigin,
    ...Object.fromEntries(Object.entries(p.kernelConfig).map(([k, v]) => [`kernelConfig.${k}`, v])),
    ...Object.fromEntries(Object.entries(p.probes).map(([k, m]) => [`probes.${k}`, m.value])),
    ...cpuFeatureFacts(p.cpuFeatures?.value ?? null),
  };
}

/** The profile as name/value rows for a table. */
export function profileRows(p: PlatformProfile): Array<[string, string]> {
  const measured = (m: Measured<boolean>): string => `${m.value === null ? 'not measured' : m.value ? 'yes' : 'no'} (${m.how})`;
  return [
    ['QEMU', p.qemu],
    ['accelerator', `${p.accel} (${p.accelReason})`],
    ['accelerator evidence', p.accelEvidence ? describeAccelEvidence(p.accelEvidence) : 'none recorded (forced, or no KVM device)'],
    ['CPU model', `${p.cpuModel}: ${p.guestCpu}`],
    ['CPU flags', p.cpuFlags.join(' ')],
    ['XCR0 / XSAVE area', `${p.xcr0} / ${p.xsaveBytes} bytes`],
    ['guest kernel', `${p.kernelRelease} (${p.kernelOrigin})`],
    ...Object.entries(p.kernelConfig).map(([k, v]): [string, string] => [k, v]),
    ['kernel symbols', p.kernelSymbols],
    ['RF pushed on a user page fault', measured(p.probes.rfOnUserPageFault)],
    ['RF at a hw-breakpoint ptrace stop', measured(p.probes.rfAtHwBreakpointStop)],
    ['deprecated rseq_cs flags rejected', measured(p.probes.rseqDeprecatedFlagsRejected)],
    ...cpuFeatureRows(p.cpuFeatures?.value ?? null, p.cpuFeatures?.how ?? 'a profile measured before cpu-features'),
  ];
}

/** "seen …; QMP status …; 812 ms; stderr: …; console: …; decided …" — the parts that are known. */
export function describeAccelEvidence(e: AccelEvidence): string {
  return [
    e.seen,
    e.qmpStatus && `QMP status ${e.qmpStatus}`,
    `${e.elapsedMs} ms`,
    e.stderr && `stderr: ${e.stderr}`,
    // No QMP status means nothing was booted (the firmware probe decided): no console to speak of.
    e.console ? `console: ${e.console}` : e.qmpStatus && 'console empty',
    e.decidedAt && `decided ${e.decidedAt}`,
  ]
    .filter((part) => part)
    .join('; ');
}
