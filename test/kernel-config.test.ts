// expect: kernel configs parse "=y", "=m", values and "is not set"; the Debian cloud kernel has every option the cases need.
import t from 'tap';
import { CASE_OPTIONS, optionState, parseKernelConfig, readKernelConfig } from '../harness/platform/kernel-config.ts';
import { buildImage } from '../harness/image/build.ts';

t.test('parsing', async (t) => {
  const config = parseKernelConfig('CONFIG_RSEQ=y\nCONFIG_VIRTIO_NET=m\n# CONFIG_IKCONFIG is not set\nCONFIG_LOCALVERSION="-crh"\n# comment\n');
  t.equal(optionState(config, 'CONFIG_RSEQ'), 'y');
  t.equal(optionState(config, 'CONFIG_VIRTIO_NET'), 'm');
  t.equal(optionState(config, 'CONFIG_IKCONFIG'), 'n');
  t.equal(optionState(config, 'CONFIG_ABSENT'), 'n');
  t.equal(config.get('CONFIG_LOCALVERSION'), '-crh');
  t.equal(optionState(undefined, 'CONFIG_RSEQ'), 'unknown');
});

t.test('the default Debian cloud kernel', async (t) => {
  const image = await buildImage();
  const config = await readKernelConfig(image.kernel.config);
  for (const option of Object.keys(CASE_OPTIONS)) t.not(optionState(config, option), 'n', `${option} = ${optionState(config, option)}`);
});
