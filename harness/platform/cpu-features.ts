/**
 * CPU features C/R state depends on, as the guest sees them: what CPUID
 * reports and what the kernel enabled, measured by guests/probes/cpu-features
 * in a fresh process (the /proc/cpuinfo flags say the first only).
 * - FSGSBASE: CPUID.7.0:EBX bit 0, and HWCAP2_FSGSBASE in AT_HWCAP2 — the
 *   kernel (5.9+) lets user mode run WRFSBASE/WRGSBASE; without it they #UD.
 * - PKU: CPUID.7.0:ECX bit 3, OSPKE (bit 4: the kernel set CR4.PKE) and
 *   whether pkey_alloc hands out a key (PKRU is XSAVE component 9).
 * - rseq: AT_RSEQ_FEATURE_SIZE and AT_RSEQ_ALIGN, in the auxiliary vector
 *   from 6.3 on (mm_cid among the fields): "absent" before.
 * - time namespaces: /proc/self/ns/time exists (CONFIG_TIME_NS, 5.6+); a
 *   restore in another boot continues the process's clocks in one
 *   (time-namespace.ts). Not a CPU feature, but measured by the same probe.
 */
import type { AgentClient } from '../agent/client.ts';
import { CrhError } from '../errors.ts';
import { isRunTimeout, ProbeInconclusiveError, type Probe } from './probe-runner.ts';

export interface CpuFeatures {
  fsgsbase: { cpuid: boolean; hwcap2: boolean };
  pku: { cpuid: boolean; ospke: boolean; /** the key a first pkey_alloc(0, 0) returns, or -errno */ pkeyAlloc: number };
  /** AT_RSEQ_FEATURE_SIZE / AT_RSEQ_ALIGN; null when the kernel puts none in the auxiliary vector */
  rseqFeatureSize: number | null;
  rseqAlign: number | null;
  /** the kernel offers time namespaces (CONFIG_TIME_NS) */
  timeNamespace: boolean;
}

const LINE = /^([a-z0-9_.]+)=(-?\d+|absent)$/;

/** The probe's output; a line missing or malformed is an error naming it. */
export function parseCpuFeatures(text: string): CpuFeatures {
  const values = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = LINE.exec(line.trim());
    if (m) values.set(m[1]!, m[2]!);
  }
  const get = (name: string): string => {
    const v = values.get(name);
    if (v === undefined) throw new CrhError(`cpu-features printed no ${name}= line`, { output: text.slice(0, 2000) });
    return v;
  };
  const flag = (name: string): boolean => {
    const v = get(name);
    if (v !== '0' && v !== '1') throw new CrhError(`cpu-features: ${name}=${v} is not 0 or 1`, { output: text.slice(0, 2000) });
    return v === '1';
  };
  const number = (name: string): number | null => {
    const v = get(name);
    return v === 'absent' ? null : Number(v);
  };
  return {
    fsgsbase: { cpuid: flag('cpuid.fsgsbase'), hwcap2: flag('hwcap2.fsgsbase') },
    pku: { cpuid: flag('cpuid.pku'), ospke: flag('cpuid.ospke'), pkeyAlloc: Number(get('pkey_alloc')) },
    rseqFeatureSize: number('rseq.feature_size'),
    rseqAlign: number('rseq.align'),
    timeNamespace: flag('timens'),
  };
}

/** Runs the probe under the agent (nothing armed) and parses what it printed. */
export function cpuFeaturesProbe(agent: Pick<AgentClient, 'call'>, binary: string): Probe<CpuFeatures> {
  return async (boundMs) => {
    const out = '/tmp/probe-cpu-features.out';
    const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv: [binary], envp: [], stdoutPath: out, noAslr: true });
    try {
      const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: boundMs });
      const text = (await agent.call({ op: 'READ_FILE', path: out, maxSize: 4096 })).toString('utf8');
      if (run.outcome !== 'exited' || run.code !== 0) return { value: null, how: `cpu-features ${run.outcome} ${run.code}: ${text.trim()}` };
      return {
        value: parseCpuFeatures(text),
        how: 'guests/probes/cpu-features: CPUID leaf 7, AT_HWCAP2, pkey_alloc, AT_RSEQ_FEATURE_SIZE/AT_RSEQ_ALIGN, /proc/self/ns/time',
      };
    } catch (error) {
      if (!isRunTimeout(error)) throw error;
      await agent.call({ op: 'KILL', pid }).catch(() => {});
      throw new ProbeInconclusiveError(`cpu-features did not finish within ${boundMs} ms`);
    }
  };
}

const yesNo = (v: boolean): string => (v ? 'yes' : 'no');

/** Profile rows: FSGSBASE, PKU, rseq feature size and alignment. */
export function cpuFeatureRows(f: CpuFeatures | null, how: string): Array<[string, string]> {
  if (!f) return [['CPU features (FSGSBASE, PKU, rseq auxv)', `not measured (${how})`]];
  const pkey = f.pku.pkeyAlloc >= 0 ? `key ${f.pku.pkeyAlloc}` : `errno ${-f.pku.pkeyAlloc}`;
  return [
    ['FSGSBASE (CPUID / kernel HWCAP2)', `${yesNo(f.fsgsbase.cpuid)} / ${yesNo(f.fsgsbase.hwcap2)}`],
    ['PKU (CPUID / OSPKE / pkey_alloc)', `${yesNo(f.pku.cpuid)} / ${yesNo(f.pku.ospke)} / ${pkey}`],
    ['rseq feature size / alignment (auxv)', `${f.rseqFeatureSize ?? 'absent'} / ${f.rseqAlign ?? 'absent'}`],
    ['time namespaces (CONFIG_TIME_NS)', yesNo(f.timeNamespace)],
  ];
}

/** The same facts as flat scalars, for a checkpoint image's platform record. */
export function cpuFeatureFacts(f: CpuFeatures | null): Record<string, string | number | boolean | null> {
  return {
    'features.fsgsbase.cpuid': f?.fsgsbase.cpuid ?? null,
    'features.fsgsbase.hwcap2': f?.fsgsbase.hwcap2 ?? null,
    'features.pku.cpuid': f?.pku.cpuid ?? null,
    'features.pku.ospke': f?.pku.ospke ?? null,
    'features.pku.pkeyAlloc': f?.pku.pkeyAlloc ?? null,
    'features.rseqFeatureSize': f ? (f.rseqFeatureSize ?? 'absent') : null,
    'features.rseqAlign': f ? (f.rseqAlign ?? 'absent') : null,
    // A profile measured before the probe printed timens= has no value: not measured.
    'features.timeNamespace': f?.timeNamespace ?? null,
  };
}
