// expect: the cpu-features probe's output parses into FSGSBASE, PKU and rseq auxv facts ("absent" before 6.3 becomes null, shown as absent); a missing or malformed line is an error naming it; the profile rows and image facts show each; timens= says whether the kernel has time namespaces.
import t from 'tap';
import { cpuFeatureFacts, cpuFeatureRows, parseCpuFeatures } from '../harness/platform/cpu-features.ts';

const ON_6_1 = 'cpuid.fsgsbase=1\nhwcap2.fsgsbase=1\ncpuid.pku=1\ncpuid.ospke=1\npkey_alloc=1\nrseq.feature_size=absent\nrseq.align=absent\ntimens=1\n';
const ON_6_18_NO_PKU = 'cpuid.fsgsbase=1\nhwcap2.fsgsbase=1\ncpuid.pku=0\ncpuid.ospke=0\npkey_alloc=-22\nrseq.feature_size=28\nrseq.align=32\ntimens=0\n';

t.test('parses what the probe prints', async (t) => {
  t.same(parseCpuFeatures(ON_6_1), {
    fsgsbase: { cpuid: true, hwcap2: true },
    pku: { cpuid: true, ospke: true, pkeyAlloc: 1 },
    rseqFeatureSize: null,
    rseqAlign: null,
    timeNamespace: true,
  });
  t.same(parseCpuFeatures(ON_6_18_NO_PKU), {
    fsgsbase: { cpuid: true, hwcap2: true },
    pku: { cpuid: false, ospke: false, pkeyAlloc: -22 },
    rseqFeatureSize: 28,
    rseqAlign: 32,
    timeNamespace: false,
  });
  t.throws(() => parseCpuFeatures(ON_6_1.replace('cpuid.pku=1\n', '')), /no cpuid.pku= line/);
  t.throws(() => parseCpuFeatures(ON_6_1.replace('hwcap2.fsgsbase=1', 'hwcap2.fsgsbase=2')), /hwcap2.fsgsbase=2 is not 0 or 1/);
  t.throws(() => parseCpuFeatures(''), /no cpuid.fsgsbase= line/);
});

t.test('rows and facts', async (t) => {
  const rows = new Map(cpuFeatureRows(parseCpuFeatures(ON_6_1), ''));
  t.equal(rows.get('FSGSBASE (CPUID / kernel HWCAP2)'), 'yes / yes');
  t.equal(rows.get('PKU (CPUID / OSPKE / pkey_alloc)'), 'yes / yes / key 1');
  t.equal(rows.get('rseq feature size / alignment (auxv)'), 'absent / absent');
  t.equal(rows.get('time namespaces (CONFIG_TIME_NS)'), 'yes');
  t.throws(
    () => parseCpuFeatures(ON_6_1.replace('timens=1\n', '')),
    /no timens= line/,
    'a probe without the timens line is an error, not "no time namespaces"',
  );
  t.equal(new Map(cpuFeatureRows(parseCpuFeatures(ON_6_18_NO_PKU), '')).get('PKU (CPUID / OSPKE / pkey_alloc)'), 'no / no / errno 22');
  t.match(cpuFeatureRows(null, 'timed out')[0]![1], /not measured \(timed out\)/);
  t.same(cpuFeatureFacts(parseCpuFeatures(ON_6_18_NO_PKU)), {
    'features.fsgsbase.cpuid': true,
    'features.fsgsbase.hwcap2': true,
    'features.pku.cpuid': false,
    'features.pku.ospke': false,
    'features.pku.pkeyAlloc': -22,
    'features.rseqFeatureSize': 28,
    'features.rseqAlign': 32,
    'features.timeNamespace': false,
  });
  t.equal(cpuFeatureFacts(null)['features.rseqAlign'], null, 'not measured: null');
});
