/**
 * Builds a guest image — kernel plus initramfs (cpio newc) holding busybox,
 * dropbear with its library closure, the network modules, SSH keys, the
 * agent and the workloads — into a cache directory keyed by a hash of every
 * input. Unchanged inputs mean no work.
 */
import { copyFile, chmod, mkdir, readFile, stat, writeFile, symlink } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { ensureCacheDir } from '../util/cache-dir.ts';
import { sha256, sha256File } from '../util/hash.ts';
import { buildOnce } from '../util/build-once.ts';
import { debianCloudRecipe, type Recipe } from '../../images/debian-cloud/recipe.ts';
import { debianKernel, type GuestKernel } from './kernel.ts';
import { moduleLoadOrder } from './modules.ts';
import { buildGuestBinaries, guestPath } from './guest-binaries.ts';
import { sharedLibraryClosure } from './shared-libs.ts';
import { CRIU_GUEST_COMMAND, CRIU_MODULES, debianCriu, type GuestCriu } from './criu.ts';

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
  /** CRIU in the guest, in the variant built with `criu: true` */
  criu?: { version: string; suite: string; command: string };
}

export interface BuildImageOptions {
  recipe?: Recipe;
  /** a kernel to use instead of the recipe's Debian kernel */
  kernel?: GuestKernel;
  log?: (line: string) => void;
  /**
   * The variant with CRIU (harness/image/criu.ts): its binary, library
   * closure and kernel modules, under a key of its own. Only runs that ask
   * for the criu engine build it; the default image stays as it is.
   */
  criu?: boolean;
}

// 2: the key no longer depends on the checkout's path.
const IMAGE_FORMAT = 2;

export interface ImageInputs {
  recipe: Recipe;
  /** sha256 of the kernel package (.deb) or of the user's bzImage */
  kernelSha256: string;
  /** the guest programs' key: a hash of their sources, flags and compiler */
  binariesKey: string;
  /** guest path -> host path of the host programs and their libraries */
  hostFiles: ReadonlyMap<string, string>;
  modules: readonly { name: string; file: string }[];
  /** the CRIU variant's wrapper script (its files are in hostFiles) */
  criuWrapper?: string;
}

/**
 * The image's cache key: a hash of what goes into the image — file bytes,
 * guest paths, the kernel package's hash — and never of where this checkout
 * or the kernel lies on disk, so clones of the repository in different
 * directories share one image (and its saved VM state, keyed by this key).
 */
export async function imageKey(inputs: ImageInputs): Promise<string> {
  const { recipe } = inputs;
  // The recipe's own files are named by guest path here and counted by content below.
  const recipeIdentity = { ...recipe, files: Object.keys(recipe.files).sort() };
  const keyParts: string[] = [`format ${IMAGE_FORMAT}`, JSON.stringify(recipeIdentity), inputs.kernelSha256, inputs.binariesKey];
  for (const [guest, host] of [...inputs.hostFiles].sort()) keyParts.push(guest, await sha256File(host));
  for (const [guest, file] of Object.entries(recipe.files).sort()) keyParts.push(guest, sha256(await readFile(file)));
  for (const m of inputs.modules) keyParts.push(m.name, await sha256File(m.file));
  // Absent for the default image, so its key is what it was before the variant existed.
  if (inputs.criuWrapper !== undefined) keyParts.push('criu', inputs.criuWrapper);
  return sha256(keyParts.join('\0')).slice(0, 20);
}

export async function buildImage(options: BuildImageOptions = {}): Promise<GuestImage> {
  const recipe = options.recipe ?? debianCloudRecipe;
  const log = options.log ?? (() => {});
  const kernel = options.kernel ?? (await debianKernel(recipe.kernelMetapackage, log));
  const binaries = await buildGuestBinaries(log);
  // A user kernel without a modules directory must have virtio built in;
  // Debian's modules would not load into it (vermagic).
  const criu: GuestCriu | undefined = options.criu ? await debianCriu(log) : undefined;
  const wantedModules = criu ? [...recipe.modules, ...CRIU_MODULES] : recipe.modules;
  const modules = kernel.modulesDir ? await moduleLoadOrder(kernel.modulesDir, wantedModules) : [];

  const hostFiles = new Map<string, string>(); // guest path -> host path
  for (const [guest, host] of Object.entries(recipe.hostPrograms)) {
    hostFiles.set(guest, host);
    for (const lib of await sharedLibraryClosure(host)) hostFiles.set(lib, lib);
  }
  // CRIU's closure lives under its own prefix (criu.ts says why), never on the guest's library path.
  for (const [guest, host] of criu?.files ?? []) hostFiles.set(guest, host);

  const key = await imageKey({
    recipe,
    kernelSha256: kernel.sha256,
    binariesKey: binaries.key,
    hostFiles,
    modules,
    ...(criu ? { criuWrapper: criu.wrapper } : {}),
  });
  const dir = path.join(await ensureCacheDir('images'), key);

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
    if (criu) await writeFile(path.join(root, CRIU_GUEST_COMMAND), criu.wrapper, { mode: 0o755 });
    await symlink('/bin/busybox', path.join(root, 'bin/sh'));
    await writeFile(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    await writeFile(path.join(root, 'etc/group'), 'root:x:0:\ntty:x:5:\n');
    await writeFile(path.join(root, 'etc/shells'), '/bin/sh\n');

    // Keys are generated per image: the host pins the guest's host key, and
    // only the matching client key logs in.
    await execa('dropbearkey', ['-t', 'ed25519', '-f', path.join(root, 'etc/dropbear/host_key')]);
    const hostPub = (await execa('dropbearkey', ['-y', '-f', path.join(root, 'etc/dropbear/host_key')])).stdout;
    const hostPublicKey = hostPub
      .split('\n')
      .find((l) => l.startsWith('ssh-'))
      ?.split(' ')
      .slice(0, 2)
      .join(' ');
    if (!hostPublicKey) throw new InfraError('dropbearkey printed no public key', { output: hostPub });
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'cr-harness', '-f', path.join(staging, 'id_ed25519')]);
    await chmod(path.join(staging, 'id_ed25519'), 0o600);
    await copyFile(path.join(staging, 'id_ed25519.pub'), path.join(root, 'root/.ssh/authorized_keys'));
    await chmod(path.join(root, 'root/.ssh/authorized_keys'), 0o600);
    await writeFile(path.join(staging, 'host_key.pub'), `${hostPublicKey}\n`);

    await packCpio(root, path.join(staging, 'initramfs.cpio'));
    // It holds the guest's SSH host key.
    await chmod(path.join(staging, 'initramfs.cpio'), 0o600);
    await execa('rm', ['-rf', root]);
    await writeFile(
      path.join(staging, 'image.json'),
      JSON.stringify(
        {
          format: IMAGE_FORMAT,
          key,
          recipe: recipe.name,
          kernel,
          modules: modules.map((m) => m.name),
          ...(criu ? { criu: { version: criu.version, suite: criu.suite } } : {}),
          built: new Date().toISOString(),
        },
        null,
        2,
      ),
    );
  });

  await tightenPrivateFiles(dir);
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
    ...(criu ? { criu: { version: criu.version, suite: criu.suite, command: CRIU_GUEST_COMMAND } } : {}),
  };
}

/**
 * The client's private key and the initramfs (which holds the guest's host
 * key) readable by this user only; an image built by an older crh with a
 * wider mode is tightened.
 */
async function tightenPrivateFiles(dir: string): Promise<void> {
  await chmod(dir, 0o700);
  for (const name of ['id_ed25519', 'initramfs.cpio']) {
    const file = path.join(dir, name);
    if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
  }
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
