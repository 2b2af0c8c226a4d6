// expect: a user kernel is named by the release in its header, its SHA-256, its config's SHA-256 and
// the label given to it; a --kernel-config that contradicts the kernel's embedded config stops
// `crh run` with exit 2 naming the option, before any guest boots.
import t from 'tap';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { kernelIdentity } from '../harness/cli/kernel-identity.ts';
import { resolveKernel } from '../harness/image/kernel.ts';
import { configurationFromUserEnvironment } from '../harness/flags/run-configuration.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { sha256 } from '../harness/util/hash.ts';
import { syntheticBzImage } from './support/synthetic-bzimage.ts';

const CONFIG = 'CONFIG_64BIT=y\nCONFIG_IKCONFIG=y\nCONFIG_RSEQ=y\nCONFIG_VIRTIO_NET=y\n';

/** A synthetic bzImage with CONFIG embedded and kernel_version pointing at `version`. */
async function kernelWithVersion(dir: string, version: string): Promise<{ file: string; bytes: Buffer }> {
  const bytes = await syntheticBzImage(CONFIG, 'gzip');
  bytes[0x1f1] = 1; // as syntheticBzImage builds it: 2 sectors of setup code
  bytes.writeUInt16LE(0x380 - 0x200, 0x20e);
  bytes.write(`${version}\0`, 0x380, 'latin1');
  const file = path.join(dir, 'bzImage');
  await writeFile(file, bytes);
  return { file, bytes };
}

t.test('identity of a user kernel: label, release, image and config hashes', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-identity-'));
  process.env.CRH_CACHE_DIR = path.join(dir, 'cache');
  t.teardown(() => void delete process.env.CRH_CACHE_DIR);
  const { file, bytes } = await kernelWithVersion(dir, '6.1.0-crh-rf (me@host) #7 SMP');
  const kernel = (await resolveKernel(configurationFromUserEnvironment({ CRH_KERNEL: `patched=${file}` }).kernel))!;
  const id = await kernelIdentity(kernel);
  t.match(id, {
    label: 'patched',
    release: '6.1.0-crh-rf',
    kernelVersion: '6.1.0-crh-rf (me@host) #7 SMP',
    origin: `file:${file}`,
    sha256: sha256(bytes),
    configSha256: sha256(CONFIG),
  });
  t.match(id.configSource, /IKCONFIG embedded in the bzImage/);
});

t.test('crh run: a --kernel-config contradicting IKCONFIG is a usage error naming the option', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-identity-run-'));
  const { file } = await kernelWithVersion(dir, '6.1.0-crh (me@host) #1 SMP');
  const wrong = path.join(dir, 'config-no-rseq');
  await writeFile(wrong, CONFIG.replace('CONFIG_RSEQ=y', '# CONFIG_RSEQ is not set'));
  const r = await execa(
    process.execPath,
    [path.join(REPO_ROOT, 'bin', 'crh.js'), 'run', '--kernel', file, '--kernel-config', wrong, '--artifacts', path.join(dir, 'artifacts')],
    {
      cwd: REPO_ROOT,
      reject: false,
      env: { CRH_CACHE_DIR: path.join(dir, 'cache') },
      timeout: 120_000,
    },
  );
  t.equal(r.exitCode, 2, 'exit 2: usage');
  t.match(
    r.stderr,
    /config-no-rseq contradicts the config embedded in the kernel \(IKCONFIG\) on 1 option\(s\): CONFIG_RSEQ \(.*config-no-rseq: n, embedded: y\)/,
  );
  t.notMatch(r.stderr, /launch|booting/i, 'no guest was started');
});
