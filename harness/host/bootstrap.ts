/**
 * Installs the Debian packages the harness needs, when run as root; otherwise
 * names what is missing and the one command that installs it. Idempotent and
 * near-instant when everything is present (one dpkg-query).
 */
import { execa } from 'execa';
import { MissingDependencyError, InfraError } from '../errors.ts';

/** Debian packages and why each is needed. */
export const HOST_PACKAGES: Readonly<Record<string, string>> = {
  'qemu-system-x86': 'qemu-system-x86_64 runs the guests',
  'busybox-static': 'the guest userland',
  'dropbear-bin': 'the guest SSH server and its host-key generator',
  cpio: 'packs the initramfs (newc)',
  gcc: 'builds the static agent and workloads',
  'libc6-dev': 'static libc for the guest binaries',
  'openssh-client': 'ssh-keygen for the client key, ssh for `crh ssh`',
  'util-linux': 'setpriv ties QEMU to the life of the harness',
};

/**
 * Packages only the test command needs. Kept out of HOST_PACKAGES so that
 * `npm start` (`crh run`, which writes the HTML report but never renders it)
 * does not pull a browser (23 packages, ~108 MiB download, ~393 MiB
 * installed on Debian 12) onto a machine that only runs cases.
 */
export const TEST_PACKAGES: Readonly<Record<string, string>> = {
  chromium: 'a real headless browser renders and screenshots the HTML report (test/html-report.test.ts)',
};

export interface BootstrapOptions {
  /** also install TEST_PACKAGES (`crh bootstrap --test`, run by `npm test`) */
  test?: boolean;
  /** packages only one script needs (name → why), e.g. a kernel build's */
  extra?: Readonly<Record<string, string>>;
}

export interface BootstrapReport {
  missing: string[];
  installed: string[];
}

export async function missingPackages(packages: readonly string[]): Promise<string[]> {
  const result = await execa('dpkg-query', ['-W', '-f=${Package} ${db:Status-Status}\n', ...packages], { reject: false });
  const installed = new Set(
    result.stdout
      .split('\n')
      .map((line) => line.trim().split(' '))
      .filter(([, status]) => status === 'installed')
      .map(([name]) => name),
  );
  return packages.filter((p) => !installed.has(p));
}

export function installCommand(packages: readonly string[]): string {
  return `sudo apt-get update && sudo apt-get install -y --no-install-recommends ${packages.join(' ')}`;
}

/**
 * Ensures every package in HOST_PACKAGES (and TEST_PACKAGES with `test`) is
 * installed. As root it runs apt-get (updating the package lists once if the
 * first try cannot find a package); as anyone else it throws
 * MissingDependencyError with the command.
 */
export async function bootstrapHost(log: (line: string) => void = () => {}, options: BootstrapOptions = {}): Promise<BootstrapReport> {
  const wanted: Readonly<Record<string, string>> = { ...HOST_PACKAGES, ...(options.test ? TEST_PACKAGES : {}), ...options.extra };
  const packages = Object.keys(wanted);
  const missing = await missingPackages(packages);
  await ensurePackageLists(log);
  if (missing.length === 0) return { missing, installed: [] };

  if (process.getuid?.() !== 0) {
    throw new MissingDependencyError(`missing host packages: ${missing.join(', ')}`, {
      why: missing.map((p) => `${p}: ${wanted[p]}`).join('\n'),
      'install with': installCommand(missing),
    });
  }
  log(`installing ${missing.join(' ')}`);
  const env = { DEBIAN_FRONTEND: 'noninteractive' };
  const install = (): Promise<{ exitCode?: number; stderr: string; stdout: string }> =>
    execa('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...missing], { env, reject: false, all: false });
  let result = await install();
  if (result.exitCode !== 0) {
    log('apt-get install failed; updating package lists and retrying');
    await execa('apt-get', ['update', '-q'], { env, reject: false });
    result = await install();
  }
  if (result.exitCode !== 0) {
    throw new InfraError(`apt-get install failed (exit ${result.exitCode})`, {
      command: `apt-get install -y --no-install-recommends ${missing.join(' ')}`,
      output: result.stderr.slice(-4000),
    });
  }
  const still = await missingPackages(missing);
  if (still.length > 0) throw new InfraError(`apt-get reported success but ${still.join(', ')} are not installed`);
  return { missing, installed: missing };
}

/** The package that proves apt's lists are present: the guest kernel is resolved through it. */
const LIST_PROBE_PACKAGE = 'linux-image-cloud-amd64';

/**
 * A brand-new machine may have empty apt lists; the guest kernel is fetched
 * with apt-get download, so as root update them once when they are.
 */
async function ensurePackageLists(log: (line: string) => void): Promise<void> {
  const probe = await execa('apt-cache', ['show', LIST_PROBE_PACKAGE], { reject: false });
  if (probe.exitCode === 0 && probe.stdout.includes('Package:')) return;
  if (process.getuid?.() !== 0) {
    throw new MissingDependencyError(`apt does not know ${LIST_PROBE_PACKAGE}: package lists are missing`, { 'fix with': 'sudo apt-get update' });
  }
  log('apt package lists are empty; running apt-get update');
  const update = await execa('apt-get', ['update', '-q'], { env: { DEBIAN_FRONTEND: 'noninteractive' }, reject: false });
  if (update.exitCode !== 0) throw new InfraError('apt-get update failed', { output: update.stderr.slice(-4000) });
}
