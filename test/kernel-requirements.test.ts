// expect: a case runs when the kernel has every option it needs, is skipped naming each missing option when it lacks
// one, runs saying so when the config is unknown, and refuses option names that are not CONFIG_…; the kernel a
// `debian:` spec names is found in the cache by its own flavour only.
import t from 'tap';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { cachedKernelMatches } from '../harness/image/kernel.ts';
import { parseKernelConfig } from '../harness/platform/kernel-config.ts';
import { decideRequirements } from '../harness/platform/kernel-requirements.ts';
import { readVerdicts } from '../harness/report/verdicts.ts';
import { EVERY_CASE_NEEDS, recordSkip } from '../harness/testing/kernel-needs.ts';
import { adoptRunConfiguration } from '../harness/flags/run-configuration.ts';

const config = parseKernelConfig('CONFIG_RSEQ=y\nCONFIG_VIRTIO_NET=m\n# CONFIG_USERFAULTFD is not set\nCONFIG_HZ=250\n');
const known = { config, source: '/boot/config-test' };

t.test('the skip decision', async (t) => {
  t.same(
    decideRequirements(known, ['CONFIG_RSEQ', 'CONFIG_VIRTIO_NET', 'CONFIG_HZ']),
    {
      run: true,
      missing: [],
      reason: 'CONFIG_RSEQ=y CONFIG_VIRTIO_NET=m CONFIG_HZ=250; config: /boot/config-test',
    },
    '"y", "m" and a value all count as present',
  );
  t.same(
    decideRequirements(known, ['CONFIG_RSEQ', 'CONFIG_USERFAULTFD', 'CONFIG_HAVE_HW_BREAKPOINT', 'CONFIG_USERFAULTFD']),
    {
      run: false,
      missing: ['CONFIG_USERFAULTFD', 'CONFIG_HAVE_HW_BREAKPOINT'],
      reason: 'the guest kernel lacks CONFIG_USERFAULTFD (not set), CONFIG_HAVE_HW_BREAKPOINT (not set); config: /boot/config-test',
    },
    '"is not set" and absent both skip; each missing option is named once',
  );
  const unknown = decideRequirements({ config: undefined, source: 'unknown: no --kernel-config; no IKCFG_ST marker' }, ['CONFIG_RSEQ']);
  t.same(unknown, { run: true, missing: [], reason: 'kernel config unknown, CONFIG_RSEQ not checked (unknown: no --kernel-config; no IKCFG_ST marker)' });
  t.throws(() => decideRequirements(known, ['RSEQ']), /not kernel option names: RSEQ/, 'a misspelt name is an error, not a skip forever');
  t.same(decideRequirements(known, []).missing, []);
  t.ok(EVERY_CASE_NEEDS.includes('CONFIG_VIRTIO_NET'), 'every case needs the guest network');
});

t.test('a skipped case leaves one skip row naming the option', async (t) => {
  // This process's run configuration, as crh run's case processes have theirs: the rows go to a fresh directory.
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-skip-'));
  adoptRunConfiguration({ engines: ['crh'], artifactsDir: dir, verdictsFile: path.join(dir, 'verdicts.jsonl') });
  recordSkip('rseq', decideRequirements(known, ['CONFIG_VIRTIO_NET', 'CONFIG_USERFAULTFD']));
  const [row, ...rest] = readVerdicts();
  t.same(rest, []);
  t.match(row, { case: 'rseq', pass: false, observed: 'lacks CONFIG_USERFAULTFD', skipped: /lacks CONFIG_USERFAULTFD \(not set\)/ });
});

t.test('cached Debian kernels are matched by flavour', async (t) => {
  const cloud = 'linux-image-6.1.0-56-cloud-amd64_6.1.192-2';
  const generic = 'linux-image-6.1.0-56-amd64_6.1.192-2';
  t.ok(cachedKernelMatches(cloud, 'linux-image-cloud-amd64'));
  t.notOk(cachedKernelMatches(generic, 'linux-image-cloud-amd64'));
  t.ok(cachedKernelMatches(generic, 'linux-image-amd64'));
  t.notOk(cachedKernelMatches(cloud, 'linux-image-amd64'), 'cloud-amd64 is not the amd64 flavour');
  t.ok(cachedKernelMatches(generic, 'linux-image-6.1.0-56-amd64'), 'a versioned package names itself');
  t.notOk(cachedKernelMatches('linux-image-6.1.0-54-amd64_6.1.170-3', 'linux-image-6.1.0-56-amd64'));
  t.notOk(cachedKernelMatches(`${generic}.partial-1-ab`, 'linux-image-amd64'), 'never a half-fetched one');
});
