/**
 * What a checkpointed process may depend on in the platform it ran on, so
 * that a restore elsewhere — another CPU model, another kernel — can be
 * refused by name instead of crashing far from the cause (format 10,
 * depends.json):
 * - xstate: the XSAVE features the kernel enabled for user space (XCR0, as
 *   ptrace reports it in the sw_reserved bytes of the xstate regset)
 *   and those the process's threads had in use (XSTATE_BV of each thread's
 *   XSAVE header: a component not in its init state). A thread that used
 *   AVX has YMM (bit 2) set; SETREGSET of it is refused by a kernel whose
 *   XCR0 lacks it, and a process resumed without its upper halves computes
 *   wrongly.
 * - cpuFlags: the CPUID features relevant to user space that the process
 *   could have seen (the checkpoint guest's /proc/cpuinfo flags): glibc
 *   chose its string functions (ifuncs) and sized its xsave buffers for
 *   them at startup, so a CPU without one may meet an instruction it lacks
 *   (SIGILL) long after the restore.
 * - vdso: the kernel's [vdso]/[vvar] mappings (addresses, sizes) and the
 *   vDSO's exported symbols with their offsets: glibc resolved
 *   clock_gettime & co. into it at startup and keeps the addresses; another
 *   kernel's vDSO puts other code there.
 * - rseq: AT_RSEQ_FEATURE_SIZE and AT_RSEQ_ALIGN (6.3+; absent before):
 *   a process may use every field up to the feature size (mm_cid from 28).
 *
 * The same facts are read from the fresh restore target (readPlatformDependencies
 * on its pid), and missingDependencies() names each one the target lacks. A
 * vDSO with the same layout and other offsets is no missing dependency: the
 * plan redirects the old offsets to the new code (vdso-redirect.ts).
 */
import { createHash } from 'node:crypto';
import type { AgentClient } from '../agent/client.ts';
import { ElfFile, STB_GLOBAL, STT_FUNC } from '../elf/elf64.ts';
import { CrhError, ImageRejectedError } from '../errors.ts';
import { hex, NT_X86_XSTATE } from '../x86/registers.ts';
import { isKernelProvided, type Mapping } from './proc-maps.ts';

/** Generous bound for the XSAVE area (AVX-512 needs ~2.7 KiB, AMX ~11 KiB). */
const XSTATE_MAX_BYTES = 16 * 1024;
const VDSO_MAX_BYTES = 64 * 1024;
const AT_RSEQ_FEATURE_SIZE = 27n;
const AT_RSEQ_ALIGN = 28n;
/**
 * Where the xstate regset holds XCR0: ptrace's convention puts the user
 * XSAVE feature mask in the first 8 bytes of the legacy area's sw_reserved
 * (USER_XSTATE_XCR0_WORD), not the signal frame's struct _fpx_sw_bytes.
 */
const XCR0_OFFSET = 464;
const XSAVE_HEADER_OFFSET = 512;

/**
 * CPUID features user-space code can use without the kernel (as
 * /proc/cpuinfo names them): what a C library's ifunc resolvers and a
 * program's own CPUID checks choose code by.
 */
export const USER_CPU_FLAGS: readonly string[] = [
  'sse',
  'sse2',
  'pni',
  'ssse3',
  'sse4_1',
  'sse4_2',
  'sse4a',
  'popcnt',
  'abm',
  'movbe',
  'cx16',
  'lahf_lm',
  'aes',
  'pclmulqdq',
  'vaes',
  'vpclmulqdq',
  'gfni',
  'sha_ni',
  'rdrand',
  'rdseed',
  'rdpid',
  'adx',
  'bmi1',
  'bmi2',
  'f16c',
  'fma',
  'fma4',
  'xop',
  'avx',
  'avx2',
  'avx_vnni',
  'avx512f',
  'avx512dq',
  'avx512cd',
  'avx512bw',
  'avx512vl',
  'avx512ifma',
  'avx512vbmi',
  'avx512_vbmi2',
  'avx512_vnni',
  'avx512_bitalg',
  'avx512_vpopcntdq',
  'avx512_bf16',
  'avx512_fp16',
  'amx_tile',
  'amx_bf16',
  'amx_int8',
  'erms',
  'fsrm',
  'clflushopt',
  'clwb',
  'xsave',
  'xsaveopt',
  'xsavec',
  'xgetbv1',
  'pku',
  'ospke',
  'fsgsbase',
  'hle',
  'rtm',
  'movdiri',
  'movdir64b',
  'waitpkg',
  'serialize',
  '3dnowprefetch',
  'prefetchwt1',
];

/** XSAVE components by bit, as a feature a person recognises. */
const XSTATE_FEATURES: Record<number, string> = {
  0: 'x87',
  1: 'sse',
  2: 'avx',
  3: 'mpx',
  4: 'mpx',
  5: 'avx512',
  6: 'avx512',
  7: 'avx512',
  8: 'pt',
  9: 'pku',
  11: 'cet',
  12: 'cet',
  17: 'amx',
  18: 'amx',
};
/** An XSAVE component bit as a refusal names it: the feature, e.g. avx for YMM, pku for PKRU. */
export function xstateFeatureName(bit: number): string {
  return XSTATE_FEATURES[bit] ?? `xstate bit ${bit}`;
}
const XSTATE_COMPONENTS: Record<number, string> = {
  0: 'x87',
  1: 'SSE',
  2: 'YMM',
  3: 'BNDREGS',
  4: 'BNDCSR',
  5: 'opmask',
  6: 'ZMM_Hi256',
  7: 'Hi16_ZMM',
  8: 'PT',
  9: 'PKRU',
  11: 'CET_U',
  12: 'CET_S',
  17: 'XTILECFG',
  18: 'XTILEDATA',
};

export interface PlatformDependencies {
  xstate: {
    /** the XSAVE features the kernel enables for user space (the regset's sw_reserved word 0); null when the kernel reported none */
    xcr0: bigint | null;
    /** XSTATE_BV of every thread's XSAVE header, or'ed: the components not in their init state */
    inUse: bigint;
  };
  /** USER_CPU_FLAGS present in the guest's /proc/cpuinfo, sorted */
  cpuFlags: string[];
  vdso: {
    /** [vdso], [vvar] (and [vvar_*]) with their ranges, ascending */
    mappings: Array<{ name: string; start: bigint; end: bigint }>;
    /** exported vDSO functions → offset in the vDSO; {} when it has none or it is absent */
    symbols: Record<string, bigint>;
  };
  rseq: { featureSize: number | null; align: number | null };
}

/** One thing the restore target lacks, by name (the feature) and why it matters. */
export interface MissingDependency {
  feature: string;
  why: string;
}

/** The restore target lacks something the checkpointed process depends on; the message names every missing feature. */
export class IncompatibleTargetError extends CrhError {
  override readonly name = 'IncompatibleTargetError';
  constructor(
    readonly missing: MissingDependency[],
    details: Record<string, string> = {},
  ) {
    super(`the restore target lacks what the process depends on: ${describeMissing(missing)} (--restore-anyway tries regardless)`, details);
  }
}

export function describeMissing(missing: readonly MissingDependency[]): string {
  return missing.map((m) => `${m.feature} (${m.why})`).join('; ');
}

/** XCR0 and XSTATE_BV of one thread's xstate regset (standard XSAVE layout, as ptrace gives it). */
export function xstateHeader(xstate: Buffer): { xcr0: bigint | null; xstateBv: bigint } {
  if (xstate.length < XSAVE_HEADER_OFFSET + 64) return { xcr0: null, xstateBv: 0n };
  const xcr0 = xstate.readBigUInt64LE(XCR0_OFFSET);
  return { xcr0: xcr0 === 0n ? null : xcr0, xstateBv: xstate.readBigUInt64LE(XSAVE_HEADER_OFFSET) };
}

/** The USER_CPU_FLAGS on the first flags line of /proc/cpuinfo, sorted. */
export function userCpuFlags(cpuinfo: string): string[] {
  const flags = new Set((cpuinfo.match(/^flags\s*:\s*(.*)$/m)?.[1] ?? '').split(/\s+/));
  return USER_CPU_FLAGS.filter((f) => flags.has(f)).sort();
}

/** AT_RSEQ_FEATURE_SIZE and AT_RSEQ_ALIGN from /proc/PID/auxv (pairs of u64); null where the kernel put none. */
export function auxvRseq(auxv: Buffer): { featureSize: number | null; align: number | null } {
  let featureSize: number | null = null;
  let align: number | null = null;
  for (let at = 0; at + 16 <= auxv.length; at += 16) {
    const type = auxv.readBigUInt64LE(at);
    const value = Number(auxv.readBigUInt64LE(at + 8));
    if (type === 0n) break;
    if (type === AT_RSEQ_FEATURE_SIZE) featureSize = value;
    if (type === AT_RSEQ_ALIGN) align = value;
  }
  return { featureSize, align };
}

/** The vDSO's exported functions and their offsets (its .dynsym); {} when the bytes are no readable ELF. */
export function vdsoSymbols(vdso: Buffer): Record<string, bigint> {
  let elf: ElfFile;
  try {
    elf = ElfFile.parse('[vdso]', vdso);
  } catch {
    return {};
  }
  const dynsym = elf.section('.dynsym');
  const dynstr = elf.section('.dynstr');
  if (!dynsym || !dynstr) return {};
  // No prototype: a symbol named __proto__ is a name like any other.
  const symbols: Record<string, bigint> = Object.create(null) as Record<string, bigint>;
  for (let at = 0; at + 24 <= dynsym.length; at += 24) {
    const info = dynsym[at + 4]!;
    const bind = info >> 4;
    if ((info & 0xf) !== STT_FUNC || (bind !== STB_GLOBAL && bind !== 2) /* STB_WEAK */) continue;
    const nameAt = dynsym.readUInt32LE(at);
    const end = dynstr.indexOf(0, nameAt);
    const name = dynstr.toString('latin1', nameAt, end < 0 ? dynstr.length : end);
    const version = symbols[name];
    const value = dynsym.readBigUInt64LE(at + 8);
    // A name seen twice (two symbol versions) keeps its first offset; they are one function.
    if (version === undefined && /^[A-Za-z_][\w]*$/.test(name)) symbols[name] = value;
  }
  return symbols;
}

/**
 * Reads the dependencies of process `pid` as the kernel of its guest shows
 * them: `xstates` are its threads' xstate regsets (read already), `maps` its
 * /proc/PID/maps. The process must be in a ptrace stop under the agent.
 */
export async function readPlatformDependencies(
  agent: Pick<AgentClient, 'call'>,
  pid: number,
  xstates: readonly Buffer[],
  maps: readonly Mapping[],
): Promise<PlatformDependencies> {
  let xcr0: bigint | null = null;
  let inUse = 0n;
  for (const xstate of xstates) {
    const header = xstateHeader(xstate);
    xcr0 ??= header.xcr0;
    inUse |= header.xstateBv;
  }
  const cpuinfo = (await agent.call({ op: 'READ_FILE', path: '/proc/cpuinfo', maxSize: 1 << 20 })).toString('latin1');
  const auxv = await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/auxv`, maxSize: 4096 });
  const kernels = maps.filter((m) => isKernelProvided(m) && m.name !== '[vsyscall]' && m.name !== '[uprobes]').sort((a, b) => (a.start < b.start ? -1 : 1));
  const vdso = kernels.find((m) => m.name === '[vdso]');
  const size = vdso ? Number(vdso.end - vdso.start) : 0;
  const symbols = vdso && size <= VDSO_MAX_BYTES ? vdsoSymbols(await agent.call({ op: 'READ_MEM', pid, address: vdso.start, length: size })) : {};
  return {
    xstate: { xcr0, inUse },
    cpuFlags: userCpuFlags(cpuinfo),
    vdso: { mappings: kernels.map((m) => ({ name: m.name, start: m.start, end: m.end })), symbols },
    rseq: auxvRseq(auxv),
  };
}

/** The dependencies of a fresh target (stopped at its exec), read as the checkpoint read them. */
export async function readTargetDependencies(agent: Pick<AgentClient, 'call'>, pid: number, maps: readonly Mapping[]): Promise<PlatformDependencies> {
  const xstate = await agent.call({ op: 'GETREGSET', pid, noteType: NT_X86_XSTATE, maxSize: XSTATE_MAX_BYTES });
  return readPlatformDependencies(agent, pid, [xstate], maps);
}

const layout = (d: PlatformDependencies): string => d.vdso.mappings.map((m) => `${m.name} ${hex(m.start)}-${hex(m.end)}`).join(', ');

/**
 * Whether a changed vDSO can be redirected (vdso-redirect.ts): the same layout, and every
 * function the checkpoint's vDSO exported exists in the target's.
 * Undefined when nothing changed.
 */
export function vdsoRedirectable(image: PlatformDependencies, target: PlatformDependencies): boolean | undefined {
  const movable = vdsoMovable(image, target);
  if (movable === undefined) return undefined;
  return movable && Object.keys(image.vdso.symbols).every((name) => target.vdso.symbols[name] !== undefined);
}

/**
 * Whether the plan moves the target's vDSO and puts jumps in the old one's
 * place: the same layout, other offsets. A function the target's vDSO
 * lacks gets none (int3): vdsoRedirectable() says whether any is lacking,
 * which is a missing dependency unless the restore is tried anyway.
 * Undefined when nothing changed.
 */
export function vdsoMovable(image: PlatformDependencies, target: PlatformDependencies): boolean | undefined {
  const changed = Object.entries(image.vdso.symbols).some(([name, at]) => target.vdso.symbols[name] !== at);
  if (!changed) return undefined;
  return layout(image) === layout(target) && image.vdso.mappings.some((m) => m.name === '[vdso]');
}

function bitNames(bits: bigint, names: Record<number, string>): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) if ((bits >> BigInt(bit)) & 1n) out.push(names[bit] ?? `bit ${bit}`);
  return [...new Set(out)];
}

/**
 * Every dependency of the checkpointed process (`image`) that the restore
 * target (`target`) lacks; [] when it has them all. `rseqArea` is the
 * process's registered rseq area, if any: the target's alignment must admit it.
 */
export function missingDependencies(
  image: PlatformDependencies,
  target: PlatformDependencies,
  rseqArea?: bigint,
  { redirectVdso = true } = {},
): MissingDependency[] {
  const missing: MissingDependency[] = [];
  // XSAVE components the process had in use and the target's kernel does not enable.
  if (target.xstate.xcr0 !== null) {
    const lost = image.xstate.inUse & ~target.xstate.xcr0;
    for (let bit = 0; bit < 64; bit++) {
      if (!((lost >> BigInt(bit)) & 1n)) continue;
      const feature = xstateFeatureName(bit);
      if (missing.some((m) => m.feature === feature)) continue;
      missing.push({
        feature,
        why: `in use: ${XSTATE_COMPONENTS[bit] ?? `component ${bit}`} state (XSTATE_BV ${hex(image.xstate.inUse)}), not in the target's XCR0 ${hex(target.xstate.xcr0)} [${bitNames(target.xstate.xcr0, XSTATE_COMPONENTS).join(' ')}]`,
      });
    }
  }
  // CPUID features the process could have seen and chosen code by.
  const targetFlags = new Set(target.cpuFlags);
  for (const flag of image.cpuFlags) {
    if (targetFlags.has(flag) || missing.some((m) => m.feature === flag)) continue;
    missing.push({
      feature: flag,
      why: "could have been seen: CPUID had it at the checkpoint (code chosen by it, e.g. glibc's ifuncs, would meet a missing instruction)",
    });
  }
  const vdsoMoved = image.vdso.mappings.map((m) => `${m.name} ${hex(m.start)}-${hex(m.end)}`).join(', ');
  const vdsoThere = target.vdso.mappings.map((m) => `${m.name} ${hex(m.start)}-${hex(m.end)}`).join(', ');
  // A process without a vDSO (it unmapped it) depends on none: the restore unmaps the target's (plan.ts).
  if (vdsoMoved !== '' && vdsoMoved !== vdsoThere)
    missing.push({ feature: 'vdso layout', why: `the checkpoint's ${vdsoMoved || 'none'}, the target's ${vdsoThere || 'none'}` });
  const changed = Object.entries(image.vdso.symbols)
    .filter(([name, at]) => target.vdso.symbols[name] !== at)
    .map(([name, at]) => `${name} at +${hex(at)}, the target's ${target.vdso.symbols[name] === undefined ? 'absent' : `+${hex(target.vdso.symbols[name]!)}`}`);
  // Other offsets in the same layout are redirected (vdso-redirect.ts) unless the policy says not to.
  const lacking = Object.keys(image.vdso.symbols).filter((name) => target.vdso.symbols[name] === undefined);
  if (redirectVdso && vdsoMovable(image, target) && lacking.length > 0) {
    missing.push({
      feature: 'vdso symbols',
      why: `the target kernel's vDSO lacks ${lacking.join(', ')} (the others are redirected; a call to one of these would meet int3)`,
    });
  } else if (changed.length > 0 && !(redirectVdso && vdsoRedirectable(image, target)))
    missing.push({ feature: 'vdso symbols', why: `the process resolved them in the checkpoint kernel's vDSO: ${changed.join(', ')}` });
  const { featureSize, align } = image.rseq;
  if (featureSize !== null && (target.rseq.featureSize ?? 0) < featureSize) {
    missing.push({
      feature: 'rseq feature size',
      why: `AT_RSEQ_FEATURE_SIZE ${featureSize} at the checkpoint (fields the process may use), the target's ${target.rseq.featureSize ?? 'absent'}`,
    });
  }
  if (rseqArea !== undefined && target.rseq.align !== null && rseqArea % BigInt(target.rseq.align) !== 0n) {
    missing.push({
      feature: 'rseq alignment',
      why: `the registered area ${hex(rseqArea)} is not aligned to the target's AT_RSEQ_ALIGN ${target.rseq.align} (the checkpoint's ${align ?? 'absent'})`,
    });
  }
  return missing;
}

/** A short fingerprint of the vDSO's exported symbols, for notes and reports. */
export function vdsoFingerprint(d: PlatformDependencies): string {
  const text = Object.entries(d.vdso.symbols)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([n, v]) => `${n}=${hex(v)}`)
    .join(',');
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

/** depends.json: bigints as hex strings. */
export function dependenciesJson(d: PlatformDependencies | undefined): unknown {
  if (!d) return null;
  return {
    xstate: { xcr0: d.xstate.xcr0 === null ? null : hex(d.xstate.xcr0), inUse: hex(d.xstate.inUse) },
    cpuFlags: d.cpuFlags,
    vdso: {
      mappings: d.vdso.mappings.map((m) => ({ name: m.name, start: hex(m.start), end: hex(m.end) })),
      symbols: Object.fromEntries(Object.entries(d.vdso.symbols).map(([n, v]) => [n, hex(v)])),
    },
    rseq: d.rseq,
  };
}

const ENTRY = 'depends.json';
const HEX64 = /^0x[0-9a-f]{1,16}$/;
const LIMIT = { flags: 256, mappings: 8, symbols: 64 };

/** Validates depends.json as untrusted input; undefined for null (nothing was recorded). Errors name the field. */
export function parseDependencies(raw: unknown): PlatformDependencies | undefined {
  if (raw === null) return undefined;
  const fail = (field: string, why: string): never => {
    throw new ImageRejectedError(why, ENTRY, field);
  };
  const object = (v: unknown, field: string): Record<string, unknown> =>
    typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : fail(field, 'is not an object');
  const hex64 = (v: unknown, field: string): bigint =>
    typeof v === 'string' && HEX64.test(v) ? BigInt(v) : fail(field, `${JSON.stringify(v)} is not a 0x hex value of at most 64 bits`);
  const size = (v: unknown, field: string): number | null =>
    v === null
      ? null
      : Number.isInteger(v) && (v as number) > 0 && (v as number) <= 4096
        ? (v as number)
        : fail(field, `${JSON.stringify(v)} is neither null nor a size from 1 to 4096`);
  const top = object(raw, '(entry)');
  const xstate = object(top.xstate, 'xstate');
  const xcr0 = xstate.xcr0 === null ? null : hex64(xstate.xcr0, 'xstate.xcr0');
  const inUse = hex64(xstate.inUse, 'xstate.inUse');
  if (!Array.isArray(top.cpuFlags) || top.cpuFlags.length > LIMIT.flags) fail('cpuFlags', `is not a list of at most ${LIMIT.flags} flags`);
  const cpuFlags = (top.cpuFlags as unknown[]).map((f, i) =>
    typeof f === 'string' && /^[a-z0-9_]{1,32}$/.test(f) ? f : fail(`cpuFlags[${i}]`, `${JSON.stringify(f)} is not a /proc/cpuinfo flag name`),
  );
  const vdso = object(top.vdso, 'vdso');
  if (!Array.isArray(vdso.mappings) || vdso.mappings.length > LIMIT.mappings) fail('vdso.mappings', `is not a list of at most ${LIMIT.mappings} mappings`);
  const mappings = (vdso.mappings as unknown[]).map((m, i) => {
    const o = object(m, `vdso.mappings[${i}]`);
    const name =
      typeof o.name === 'string' && /^\[(vdso|vvar[a-z_]*)\]$/.test(o.name)
        ? o.name
        : fail(`vdso.mappings[${i}].name`, `${JSON.stringify(o.name)} is not [vdso] or [vvar…]`);
    const start = hex64(o.start, `vdso.mappings[${i}].start`);
    const end = hex64(o.end, `vdso.mappings[${i}].end`);
    if (end <= start || start % 4096n !== 0n || end % 4096n !== 0n) fail(`vdso.mappings[${i}]`, `${hex(start)}-${hex(end)} is not a page-aligned range`);
    return { name, start, end };
  });
  const symbolsRaw = object(vdso.symbols, 'vdso.symbols');
  if (Object.keys(symbolsRaw).length > LIMIT.symbols) fail('vdso.symbols', `more than ${LIMIT.symbols} symbols`);
  const symbols: Record<string, bigint> = Object.create(null) as Record<string, bigint>;
  for (const [name, value] of Object.entries(symbolsRaw)) {
    if (!/^[A-Za-z_]\w{0,63}$/.test(name)) fail('vdso.symbols', `${JSON.stringify(name)} is not a symbol name`);
    symbols[name] = hex64(value, `vdso.symbols.${name}`);
  }
  const rseq = object(top.rseq, 'rseq');
  return {
    xstate: { xcr0, inUse },
    cpuFlags,
    vdso: { mappings, symbols },
    rseq: { featureSize: size(rseq.featureSize, 'rseq.featureSize'), align: size(rseq.align, 'rseq.align') },
  };
}
