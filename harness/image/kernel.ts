/**
 * Guest kernels. The default is Debian's cloud kernel, fetched with
 * `apt-get download` and unpacked with `dpkg-deb -x` into the cache — never
 * installed into the host's /boot. A user's own bzImage (with System.map)
 * can stand in for it.
 */
import { existsSync } from 'node:fs';
import { open, readdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { InfraError } from '../errors.ts';
import { ensureCacheDir } from '../util/cache-dir.ts';
import { sha256File } from '../util/hash.ts';
import { buildOnce } from '../util/build-once.ts';
import { parseBzImageHeader, SETUP_MAX_BYTES } from './bzimage-header.ts';
import { privateApt } from './private-apt.ts';
import { rememberedAptAnswer } from './apt-memo.ts';

export interface GuestKernel {
  /**
   * e.g. "6.1.0-56-cloud-amd64": a Debian package's, or the one a user's
   * bzImage names in its setup header (bzimage-header.ts); "unknown" when
   * the header names none (`kernelVersion` then says why)
   */
  release: string;
  /** the bzImage's whole kernel_version string ("6.1.0-… (builder) #1 SMP …"), or why it has none */
  kernelVersion?: string;
  /** the name the user gave it (`--kernel NAME=PATH`) */
  label?: string;
  bzImage: string;
  systemMap?: string;
  /** the kernel's .config when known */
  config?: string;
  /** root of lib/modules/<release>, when modules ship with the kernel */
  modulesDir?: string;
  /** where the kernel came from, e.g. "debian:linux-image-6.1.0-56-cloud-amd64=6.1.192-2" */
  origin: string;
  /** sha256 of the .deb, or of the bzImage for a user kernel */
  sha256: string;
}

/**
 * A versioned Debian kernel package, as opposed to a metapackage that
 * points at one: bookworm's linux-image-6.1.0-56-amd64 (ABI number),
 * trixie's linux-image-6.12.117+deb13-amd64 and backports'
 * linux-image-6.12.12+bpo-amd64 (a suffix instead).
 */
const VERSIONED_KERNEL_PACKAGE = /^linux-image-\d+\.\d+\.\d+(?:-\d+|\+[a-z0-9.~]+)-/;

/** `debian:PACKAGE@SUITE`: the package from another Debian suite, through crh's private apt configuration for it (private-apt.ts). */
export function splitDebianSpec(spec: string): { name: string; suite?: string } {
  const at = spec.indexOf('@');
  return at < 0 ? { name: spec } : { name: spec.slice(0, at), suite: spec.slice(at + 1) };
}

/** apt-get/apt-cache options for `suite` (its private configuration), or none for the host's own sources. */
async function aptOptions(suite: string | undefined, log: (line: string) => void): Promise<string[]> {
  return suite === undefined ? [] : privateApt(suite, log);
}

/**
 * Resolves a Debian metapackage (linux-image-cloud-amd64) to the versioned
 * kernel package; a versioned package name (one ABI build, e.g.
 * linux-image-6.1.0-54-cloud-amd64) stands for itself.
 */
export async function resolveKernelPackage(metapackage: string, apt: string[] = []): Promise<{ name: string; version: string }> {
  let name = metapackage;
  if (!VERSIONED_KERNEL_PACKAGE.test(metapackage)) {
    const depends = await execa('apt-cache', [...apt, 'depends', metapackage], { reject: false });
    const target = depends.stdout.match(/Depends:\s+(linux-image-\S+)/)?.[1];
    if (depends.exitCode !== 0 || !target) {
      throw new InfraError(`cannot resolve kernel package ${metapackage} with apt-cache`, {
        command: `apt-cache depends ${metapackage}`,
        output: `${depends.stdout}\n${depends.stderr}`,
        hint: 'run `apt-get update` as root',
      });
    }
    name = target;
  }
  const policy = await execa('apt-cache', [...apt, 'policy', name], { reject: false });
  const version = policy.stdout.match(/Candidate:\s+(\S+)/)?.[1];
  if (!version || version === '(none)')
    throw new InfraError(`no candidate version for ${name}`, { command: `apt-cache policy ${name}`, output: `${policy.stdout}\n${policy.stderr}` });
  return { name, version };
}

/** Debian's package-name and version syntax (policy 5.6.1, 5.6.12): neither can hold a '/', so neither can leave the kernels directory. */
const DEBIAN_PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;
const DEBIAN_VERSION = /^[0-9][A-Za-z0-9.+~:-]*$/;

/**
 * A resolved kernel package, as apt-cache gives it or as a remembered answer
 * holds it (apt-memo.ts): a versioned kernel package name and a Debian
 * version, both used in a cache path and an apt-get argument.
 */
export const isKernelPackageVersion = (v: unknown): v is { name: string; version: string } => {
  if (typeof v !== 'object' || v === null) return false;
  const { name, version } = v as { name?: unknown; version?: unknown };
  return (
    typeof name === 'string' &&
    typeof version === 'string' &&
    DEBIAN_PACKAGE_NAME.test(name) &&
    VERSIONED_KERNEL_PACKAGE.test(name) &&
    DEBIAN_VERSION.test(version)
  );
};

/**
 * The Debian kernel for `metapackage`, downloaded and unpacked on first use.
 * When apt cannot resolve the package (no lists, offline) an already cached
 * kernel is used instead, and `log` says so.
 */
export async function debianKernel(spec: string, log: (line: string) => void = () => {}): Promise<GuestKernel> {
  const { name: metapackage, suite } = splitDebianSpec(spec);
  const root = await ensureCacheDir('kernels');
  let pkg: { name: string; version: string };
  let apt: string[] = [];
  try {
    apt = await aptOptions(suite, log);
    pkg = await rememberedAptAnswer(`kernel package ${metapackage}`, apt, isKernelPackageVersion, () => resolveKernelPackage(metapackage, apt));
  } catch (error) {
    // A kernel from another suite has no stand-in: the cache does not say which suite a kernel came from.
    if (suite !== undefined) throw error;
    // Only a kernel of the flavour asked for: with several cached, the newest of any flavour would be the wrong kernel.
    const cached = existsSync(root) ? (await readdir(root)).filter((d) => cachedKernelMatches(d, metapackage)).sort() : [];
    const newest = cached.at(-1);
    if (!newest) throw error;
    log(`apt cannot resolve ${metapackage}; using cached ${newest}`);
    const [name, version] = newest.split('_') as [string, string];
    pkg = { name, version };
  }
  const dir = path.join(root, `${pkg.name}_${pkg.version}`);
  if (!existsSync(path.join(dir, 'complete'))) log(`fetching ${pkg.name} ${pkg.version}`);
  await fetchDebianPackage(pkg.name, pkg.version, dir, apt);
  const debs = (await readdir(dir)).filter((f) => f.endsWith('.deb'));
  const release = pkg.name.replace(/^linux-image-/, '');
  const tree = path.join(dir, 'tree');
  return {
    release,
    bzImage: path.join(tree, 'boot', `vmlinuz-${release}`),
    systemMap: path.join(tree, 'boot', `System.map-${release}`),
    config: path.join(tree, 'boot', `config-${release}`),
    modulesDir: path.join(tree, MODULE_ROOTS.find((root) => existsSync(path.join(tree, root, release))) ?? MODULE_ROOTS[0], release),
    kernelVersion: (await bzImageVersion(path.join(tree, 'boot', `vmlinuz-${release}`))).kernelVersion,
    origin: `debian:${pkg.name}=${pkg.version}${suite ? `@${suite}` : ''}`,
    sha256: await sha256File(path.join(dir, debs[0]!)),
  };
}

/** Whether a cache directory `<package>_<version>` holds a kernel `metapackage` (or the versioned package itself) names. */
export function cachedKernelMatches(dir: string, metapackage: string): boolean {
  if (dir.includes('.partial-')) return false;
  if (VERSIONED_KERNEL_PACKAGE.test(metapackage)) return dir.startsWith(`${metapackage}_`);
  const flavour = metapackage.replace(/^linux-image-/, '');
  return VERSIONED_KERNEL_PACKAGE.test(dir) && dir.replace(VERSIONED_KERNEL_PACKAGE, '').startsWith(`${flavour}_`);
}

async function fetchDebianPackage(name: string, version: string, dir: string, apt: string[]): Promise<void> {
  await buildOnce(dir, async (staging) => {
    const download = await execa('apt-get', [...apt, 'download', `${name}=${version}`], { cwd: staging, reject: false });
    const debs = (await readdir(staging)).filter((f) => f.endsWith('.deb'));
    if (download.exitCode !== 0 || debs.length !== 1) {
      throw new InfraError(`apt-get download ${name}=${version} failed`, { output: `${download.stdout}\n${download.stderr}` });
    }
    const tree = path.join(staging, 'tree');
    await execa('dpkg-deb', ['-x', path.join(staging, debs[0]!), tree]);
    for (const root of MODULE_ROOTS) await decompressModules(path.join(tree, root));
  });
}

/** Where a kernel package puts its modules: lib/modules up to bookworm, usr/lib/modules in trixie (merged /usr). */
const MODULE_ROOTS = [path.join('lib', 'modules'), path.join('usr', 'lib', 'modules')] as const;

/**
 * Newer Debian kernels (6.12: trixie, bookworm-backports) ship their
 * modules xz-compressed (.ko.xz), which the guest's busybox insmod cannot
 * load and modules.ts cannot read: unpacked once, here, into plain .ko.
 */
async function decompressModules(modulesRoot: string): Promise<void> {
  if (!existsSync(modulesRoot)) return;
  const compressed = (await readdir(modulesRoot, { recursive: true })).filter((f) => f.endsWith('.ko.xz')).map((f) => path.join(modulesRoot, f));
  // In batches: one xz per few hundred files, not one per file.
  for (let i = 0; i < compressed.length; i += 256) {
    const batch = compressed.slice(i, i + 256);
    const xz = await execa('xz', ['--decompress', '--', ...batch], { reject: false });
    if (xz.exitCode !== 0)
      throw new InfraError(`xz could not decompress the kernel's modules (${batch[0]} …)`, { output: xz.stderr.slice(-4000), hint: 'install xz-utils' });
  }
}

/** A user's own kernel: a bzImage, optionally its System.map, config and modules directory. */
export async function userKernel(options: { bzImage: string; systemMap?: string; config?: string; modulesDir?: string }): Promise<GuestKernel> {
  for (const [what, file] of Object.entries(options)) {
    if (file !== undefined && !existsSync(file)) throw new InfraError(`kernel ${what} not found: ${file}`);
  }
  const bzImage = path.resolve(options.bzImage);
  const version = await bzImageVersion(bzImage);
  return {
    release: version.release ?? 'unknown',
    kernelVersion: version.kernelVersion,
    bzImage,
    ...(options.systemMap ? { systemMap: path.resolve(options.systemMap) } : {}),
    ...(options.config ? { config: path.resolve(options.config) } : {}),
    ...(options.modulesDir ? { modulesDir: path.resolve(options.modulesDir) } : {}),
    origin: `file:${bzImage}`,
    sha256: await sha256File(bzImage),
  };
}

/** `--kernel debian:<package>[@<suite>]`: a Debian kernel package (metapackage or one ABI build), from the host's sources or another suite, instead of a file. */
export const DEBIAN_KERNEL_PREFIX = 'debian:';

/** The release and version string a bzImage's setup header names; when it names none, `kernelVersion` says why. */
export async function bzImageVersion(bzImage: string): Promise<{ release?: string; kernelVersion: string }> {
  const handle = await open(bzImage, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(SETUP_MAX_BYTES), 0, SETUP_MAX_BYTES, 0);
    const parsed = parseBzImageHeader(buffer.subarray(0, bytesRead));
    return parsed.ok ? { release: parsed.header.release, kernelVersion: parsed.header.kernelVersion } : { kernelVersion: `none: ${parsed.reason}` };
  } finally {
    await handle.close();
  }
}

/** A name the user may give a kernel: a folder name, and not a path or a package spec. */
export const KERNEL_LABEL = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * `--kernel NAME=PATH` (or `NAME=debian:PACKAGE`): the name and the kernel.
 * A value that is an existing file as a whole is a path, `=` and all.
 */
export function splitKernelSpec(value: string): { label?: string; spec: string } {
  const at = value.indexOf('=');
  if (at <= 0 || existsSync(value) || value.startsWith(DEBIAN_KERNEL_PREFIX)) return { spec: value };
  const label = value.slice(0, at);
  return KERNEL_LABEL.test(label) ? { label, spec: value.slice(at + 1) } : { spec: value };
}

/**
 * A kernel as a run names it (`crh run --kernel NAME=PATH --system-map …`,
 * or the CRH_KERNEL variables when no run configuration was handed down):
 * `spec` is an absolute bzImage path or `debian:PACKAGE[@SUITE]`; the
 * companion files are absolute paths. Plain data, so it travels in the run
 * configuration (flags/run-configuration.ts).
 */
export interface KernelChoice {
  spec: string;
  label?: string;
  systemMap?: string;
  config?: string;
  modulesDir?: string;
}

/**
 * The kernel a choice names: a user's bzImage with its companion files, or
 * a Debian package fetched as the default kernel is; undefined for no
 * choice (the recipe's default kernel).
 */
export async function resolveKernel(choice: KernelChoice | undefined, log: (line: string) => void = () => {}): Promise<GuestKernel | undefined> {
  if (choice === undefined) return undefined;
  const named = (kernel: GuestKernel): GuestKernel => (choice.label ? { ...kernel, label: choice.label } : kernel);
  if (choice.spec.startsWith(DEBIAN_KERNEL_PREFIX)) {
    const kernel = await debianKernel(choice.spec.slice(DEBIAN_KERNEL_PREFIX.length), log);
    return named(choice.config ? { ...kernel, config: choice.config } : kernel);
  }
  return named(
    await userKernel({
      bzImage: choice.spec,
      ...(choice.systemMap ? { systemMap: choice.systemMap } : {}),
      ...(choice.config ? { config: choice.config } : {}),
      ...(choice.modulesDir ? { modulesDir: choice.modulesDir } : {}),
    }),
  );
}
