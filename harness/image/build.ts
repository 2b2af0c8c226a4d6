/**
 * Builds a guest image — kernel plus initramfs (cpio newc) holding busybox,
 * dropbear with its library closure, the network modules, SSH keys, the
 * agent and the workloads — into a cache directory keyed by a hash of every
 * input. Unchanged inputs mean no work.
 */
import { copyFile, chmod, mkdir, readFile, writeFile, symlink } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { cacheDir } from '../util/cache-dir.ts';
import { sha256, sha256File } from '../util/hash.ts';
import { buildOnce } from '../util/build-once.ts';
import { debianCloudRecipe, type Recipe } from '../../images/debian-cloud/recipe.ts';
import { debianKernel, type GuestKernel } from './kernel.ts';
import { moduleLoadOrder } from './modules.ts';
import { buildGuestBinaries, guestPath } from './guest-binaries.ts';
import { sharedLibraryClosure } from './shared-libs.ts';

export interface GuestImage {
  key: string;
  dir: string;
  kernel: GuestKernel;
  initramfs: string;
  cmdline: string[];
  /** private key the host logs in with (OpenSSH format) */
  clientKey: string;
  /** the guest's SSH host public key line ("ssh-ed25519 AAAA..."), pinned by the client */
  hostPublicKey: string;
  /** host copies of the guest programs (for symbols), by name */
  binaries: Record<string, string>;
  /** guest path of each guest program, by name */
  guestPaths: Record<string, string>;
}

export interface BuildImageOptions {
  recipe?: Recipe;
  /** a kernel to use instead of the recipe's Debian kernel */
  kernel?: GuestKernel;
  log?: (line: string) => void;
}

const IMAGE_FORMAT = 1;

export async function buildImage(options: BuildImageOptions = {}): Promise<GuestImage> {
  const recipe = options.recipe ?? debianCloudRecipe;
  const log = options.log ?? (() => {});
  const kernel = options.kernel ?? (await debianKernel(recipe.kernelMetapackage, log));
  const binaries = await buildGuestBinaries(log);
  // A user kernel without a modules directory must have virtio built in;
  // Debian's modules would not load into it (vermagic).
  const modules = kernel.modulesDir ? await moduleLoadOrder(kernel.modulesDir, recipe.modules) : [];

  const hostFiles = new Map<string, string>(); // guest path -> host path
  for (const [guest, host] of Object.entries(recipe.hostPrograms)) {
    hostFiles.set(guest, host);
    for (const lib of await sharedLibraryClosure(host)) hostFiles.set(lib, lib);
  }

  const keyParts: string[] = [`format ${IMAGE_FORMAT}`, JSON.stringify(recipe), kernel.sha256, binaries.key];
  for (const [guest, host] of [...hostFiles].sort()) keyParts.push(guest, await sha256File(host));
  for (const [guest, file] of Object.entries(recipe.files)) keyParts.push(guest, sha256(await readFile(file)));
  for (const m of modules) keyParts.push(m.name, await sha256File(m.file));
  const key = sha256(keyParts.join('\0')).slice(0, 20);
  const dir = cacheDir('images', key);

  await buildOnce(dir, async (staging) => {
    log(`building guest image ${key}`);
    const root = path.join(staging, 'rootfs');
    const put = async (guest: string, host: string, mode?: number): Promise<void> => {
      const dest = path.join(root, guest);
      await mkdir(path.dirname(dest), { recursive: true });
      await copyFile(host, dest);
      if (mode !== undefined) await chmod(dest, mode);
    };
    for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'proc', 'sys', 'dev', 'tmp', 'run', 'root/.ssh', 'etc/dropbear', 'var/log']) {
      await mkdir(path.join(root, d), { recursive: true });
    }
    await chmod(path.join(root, 'root'), 0o700);
    for (const [guest, host] of hostFiles) await put(guest, host, 0o755);
    for (const [guest, file] of Object.entries(recipe.files)) await put(guest, file, 0o755);
    for (const [name, host] of Object.entries(binaries.hostPath)) await put(guestPath(name), host, 0o755);
    for (const m of modules) await put(`/lib/modules/crh/${m.name}.ko`, m.file, 0o644);
    if (modules.length > 0) {
      await writeFile(path.join(root, 'lib/modules/crh/load-order'), modules.map((m) => `${m.name}\n`).join(''));
    }
    await symlink('/bin/busybox', path.join(root, 'bin/sh'));
    await writeFile(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    await writeFile(path.join(root, 'etc/group'), 'root:x:0:\ntty:x:5:\n');
    await writeFile(path.join(root, 'etc/shells'), '/bin/sh\n');

    // Keys are generated per image: the host pins the guest's host key, and
    // only the matching client key logs in.
    await execa('dropbearkey', ['-t', 'ed25519', '-f', path.join(root, 'etc/dropbear/host_key')]);
    const hostPub = (await execa('dropbearkey', ['-y', '-f', path.join(root, 'etc/dropbear/host_key')])).stdout;
    const hostPublicKey = hostPub.split('\n').find((l) => l.startsWith('ssh-'))?.split(' ').slice(0, 2).join(' ');
    if (!hostPublicKey) throw new InfraError('dropbearkey printed no public key', { output: hostPub });
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'cr-harness', '-f', path.join(staging, 'id_ed25519')]);
    await copyFile(path.join(staging, 'id_ed25519.pub'), path.join(root, 'root/.ssh/authorized_keys'));
    await chmod(path.join(root, 'root/.ssh/authorized_keys'), 0o600);
    await writeFile(path.join(staging, 'host_key.pub'), `${hostPublicKey}\n`);

    await packCpio(root, path.join(staging, 'initramfs.cpio'));
    await execa('rm', ['-rf', root]);
    await writeFile(
      path.join(staging, 'image.json'),
      JSON.stringify({ format: IMAGE_FORMAT, key, recipe: recipe.name, kernel, modules: modules.map((m) => m.name), built: new Date().toISOString() }, null, 2),
    );
  });

  return {
    key,
    dir,
    kernel,
    initramfs: path.join(dir, 'initramfs.cpio'),
    cmdline: [...recipe.cmdline],
    clientKey: path.join(dir, 'id_ed25519'),
    hostPublicKey: (await readFile(path.join(dir, 'host_key.pub'), 'utf8')).trim(),
    binaries: binaries.hostPath,
    guestPaths: Object.fromEntries(Object.keys(binaries.hostPath).map((n) => [n, guestPath(n)])),
  };
}

/** cpio newc of `root`, owned by root, sorted, with reproducible metadata. */
async function packCpio(root: string, out: string): Promise<void> {
  const list = await execa('find', ['.', '-mindepth', '1', '-print0'], { cwd: root, stripFinalNewline: false });
  const names = list.stdout.split('\0').filter(Boolean).sort();
  const result = await execa('cpio', ['--null', '--create', '--format=newc', '--owner=0:0', '--reproducible', '--quiet', `--file=${out}`], {
    cwd: root,
    input: names.join('\0') + '\0',
    reject: false,
  });
  if (result.exitCode !== 0) throw new InfraError('cpio failed packing the initramfs', { output: result.stderr });
}
