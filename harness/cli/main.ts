/**
 * `crh`: the command-line front door.
 *
 *   crh bootstrap [--test]        install missing host packages (root) or say which;
 *                                 --test adds what only the tests need (chromium)
 *   crh image [kernel options]    build the guest image, print where it is
 *   crh boot  [kernel options]    boot a guest and print a ready ssh command line
 *   crh ssh [-- COMMAND]          a shell (or one command) in the guest crh boot runs
 *   crh verdicts [--reset|--check] the verdict rows the cases recorded; --check exits 1 on any not as expected
 *   crh doctor [--json] [kernel options]
 *                                 measure and print the platform profile
 *   crh restore --dry-run IMAGE [--rf P] [--regs P] [--restorer R] [--rseq-fixup on|off] [--omit LIST]
 *                                 validate an image and print its restore plan
 *   crh run   [--grep RE] [kernel options] [--jobs N] [--artifacts DIR] [--junit FILE] [--json FILE] [--html FILE] [--cases DIR]
 *                                 run the cases (N case files at once), print the verdict table;
 *                                 the HTML report is always written (default artifacts/report.html).
 *                                 --kernel repeated: the suite once per kernel, in
 *                                 artifacts/<kernel>/, then the verdicts side by side
 *   crh repro FILE.c [--checkpoint-at SYMBOL | --checkpoint-after MS | --when-ready] [policy] [-- ARGS]
 *   crh repro --bundle BUNDLE.tar
 *   crh cr --binary PATH [--file PATH]... [the same switches] [-- ARGS]
 *                                 checkpoint, restore and compare one program with an
 *                                 uninterrupted run; write a bundle (docs/reproducing.md)
 *
 * Kernel options: --kernel BZIMAGE|debian:PACKAGE [--system-map FILE] [--kernel-config FILE] [--modules DIR]
 * Exit codes: 0 all as expected, 1 a case failed, 69 infrastructure failure
 * (QEMU, image, a kernel that cannot boot), 2 usage.
 */
import { parseArgs } from 'node:util';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { CrhError } from '../errors.ts';
import { bootstrapHost } from '../host/bootstrap.ts';
import { buildImage } from '../image/build.ts';
import { kernelFromEnvironment } from '../image/kernel.ts';
import { QemuMachine } from '../machine/machine.ts';
import { launchMachine } from '../machine/fast-start.ts';
import { AgentClient } from '../agent/client.ts';
import { platformProfile, profileRows, type PlatformProfile } from '../platform/profile.ts';
import { readCheckpointImage } from '../restore/checkpoint-image.ts';
import { dryRunPlan, formatPlan } from '../restore/dry-run.ts';
import { describePolicy } from '../restore/policy.ts';
import { policyFromFlags, policyOptions, POLICY_USAGE } from './policy-flags.ts';
import { readInfraFailures, recordInfraFailure } from '../report/infra-failures.ts';
import { junitXml } from '../report/junit.ts';
import { writeHtmlReport } from '../report/html-inputs.ts';
import { writeFile } from 'node:fs/promises';
import { artifactsRoot, formatVerdictTable, outcome, readVerdicts, verdictsFile, type Verdict } from '../report/verdicts.ts';
import { REPO_ROOT } from '../util/cache-dir.ts';
import { installSignalCleanup } from '../util/cleanup.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { applyKernelOptions, kernelOptions } from './kernel-flags.ts';
import { readBootSession, removeBootSession, sshArgs, writeBootSession } from './boot-session.ts';
import { reproCommand } from '../repro/command.ts';
import { UsageError } from '../repro/usage-error.ts';
import { kernelRuns, runKernelMatrix, runKernelOptions } from './kernel-matrix.ts';

export const EXIT = { ok: 0, failed: 1, usage: 2, infra: 69 } as const;

const log = (line: string): void => void process.stderr.write(`crh: ${line}\n`);


async function imageCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: kernelOptions });
  applyKernelOptions(values);
  await bootstrapHost(log);
  const image = await buildImage({ kernel: await kernelFromEnvironment(), log });
  process.stdout.write(`${JSON.stringify({ key: image.key, dir: image.dir, kernel: image.kernel.bzImage, initramfs: image.initramfs, origin: image.kernel.origin }, null, 2)}\n`);
  return EXIT.ok;
}

async function bootCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: kernelOptions });
  applyKernelOptions(values);
  await bootstrapHost(log);
  const image = await buildImage({ kernel: await kernelFromEnvironment(), log });
  const artifactsDir = path.join(artifactsRoot(), 'boot');
  const machine = new QemuMachine({ image, artifactsDir, name: 'crh-boot', onEvent: (e) => e.type === 'ready' && log(`ready in ${e.elapsedMs} ms`) });
  await machine.launch();
  try {
    const session = await writeBootSession(artifactsDir, { sshPort: machine.sshPort, clientKey: image.clientKey, qemuPid: machine.pid!, ownerPid: process.pid }, image.hostPublicKey);
    process.stdout.write(
      `ssh ${sshArgs(session).join(' ')}\n` +
        `(or: crh ssh [-- COMMAND])\nconsole log: ${path.join(artifactsDir, 'console.log')}\nCtrl-C shuts the guest down.\n`,
    );
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
      void machine.failure.then(resolve, resolve);
    });
  } finally {
    removeBootSession(artifactsDir);
    await machine.shutdown();
  }
  return EXIT.ok;
}

/**
 * The verdict rows the cases recorded (artifacts/verdicts.jsonl): --reset
 * empties the file before a run, --check prints the table and exits 1 when
 * a row is not as expected — so the test command fails on a case whose tap
 * assertions passed but whose verdict row (say, a negative control recorded
 * the wrong way round) did not.
 */
async function verdictsCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { reset: { type: 'boolean' }, check: { type: 'boolean' } } });
  const file = verdictsFile();
  if (values.reset) {
    rmSync(file, { force: true });
    return EXIT.ok;
  }
  const verdicts = readVerdicts(file);
  const failed = verdicts.filter((v) => outcome(v) === 'FAIL');
  process.stdout.write(`${formatVerdictTable(verdicts)}\n\n${verdicts.length - failed.length} as expected or skipped, ${failed.length} not (${file})\n`);
  if (!values.check) return EXIT.ok;
  for (const v of failed) log(`not as expected: ${v.case}: ${v.scenario} under ${v.policy}${v.control ? ' (negative control)' : ''}: expected ${v.expected}, observed ${v.observed}`);
  return failed.length > 0 || verdicts.length === 0 ? EXIT.failed : EXIT.ok;
}

/** A shell (or one command) in the guest `crh boot` is running; exits with ssh's code. */
async function sshCommand(args: string[]): Promise<number> {
  const dash = args.indexOf('--');
  const command = dash >= 0 ? args.slice(dash + 1) : args;
  const session = readBootSession(path.join(artifactsRoot(), 'boot'));
  const ssh = await execa('ssh', sshArgs(session, command), { stdio: 'inherit', reject: false });
  return ssh.exitCode ?? EXIT.failed;
}

async function doctorCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { ...kernelOptions, json: { type: 'boolean' } } });
  applyKernelOptions(values);
  await bootstrapHost(log);
  const image = await buildImage({ kernel: await kernelFromEnvironment(), log });
  const machine = await launchMachine({ image, artifactsDir: path.join(artifactsRoot(), 'doctor') });
  try {
    const { client: agent } = await AgentClient.open(await machine.ssh.transport(image.guestPaths['crh-agent']!));
    agent.failWhen(machine.failure);
    try {
      const profile = await platformProfile({ image, machine, agent, log }, { fresh: true });
      if (values.json) {
        process.stdout.write(`${JSON.stringify(profile, null, 2)}\n`);
      } else {
        const rows = profileRows(profile);
        const width = Math.max(...rows.map(([k]) => k.length));
        process.stdout.write(`${rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n')}\n`);
      }
    } finally {
      await agent.close();
    }
  } finally {
    await machine.shutdown();
  }
  return EXIT.ok;
}

async function restoreCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { 'dry-run': { type: 'boolean' }, ...policyOptions },
  });
  if (!values['dry-run'] || positionals.length !== 1) {
    process.stderr.write(`usage: crh restore --dry-run IMAGE ${POLICY_USAGE}\n(a live restore runs inside a case, against a booted guest)\n`);
    return EXIT.usage;
  }
  const policy = policyFromFlags(values);
  const image = await readCheckpointImage(positionals[0]!);
  process.stdout.write(`image ${positionals[0]}: valid (${image.process.binary}, pid ${image.process.pid}, ${image.regions.length} memory regions, ${1 + image.threads.length} thread${image.threads.length ? 's' : ''}, taken ${image.created})\n`);
  process.stdout.write(`policy: ${describePolicy(policy)}\n`);
  process.stdout.write(`${formatPlan(dryRunPlan(image, policy))}\n`);
  return EXIT.ok;
}

/** The profile a case's guest measured (every guest of one image and platform measures the same). */
function measuredProfile(artifacts: string, verdicts: readonly Verdict[]): { file: string; profile: PlatformProfile } | undefined {
  for (const name of new Set(verdicts.map((v) => v.case))) {
    const file = path.join(artifacts, name, 'profile.json');
    if (existsSync(file)) return { file, profile: JSON.parse(readFileSync(file, 'utf8')) as PlatformProfile };
  }
  return undefined;
}

async function runCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { ...kernelOptions, ...runKernelOptions, jobs: { type: 'string' }, grep: { type: 'string' }, artifacts: { type: 'string' }, junit: { type: 'string' }, json: { type: 'string' }, html: { type: 'string' }, cases: { type: 'string' } } });
  if (values.jobs !== undefined && !/^[1-9][0-9]*$/.test(values.jobs)) throw new UsageError(`--jobs takes a number of case files to run at once, not ${values.jobs}`);
  const jobs = values.jobs ? ['--jobs', values.jobs] : [];
  const runs = kernelRuns(values);
  if (runs.length > 1) {
    if (values.html) throw new UsageError('--html names one file: with several kernels each kernel has its report in <artifacts>/<kernel>/report.html');
    const passThrough = [...(values.grep ? ['--grep', values.grep] : []), ...jobs, ...(values.cases ? ['--cases', path.resolve(values.cases)] : [])];
    const junit = values.junit ? path.resolve(values.junit) : undefined;
    const json = values.json ? path.resolve(values.json) : undefined;
    const root = values.artifacts ? path.resolve(values.artifacts) : artifactsRoot();
    return (await runKernelMatrix({ runs, artifactsRoot: root, passThrough, ...(junit ? { junit } : {}), ...(json ? { json } : {}), log })).exitCode;
  }
  applyKernelOptions(runs[0]!.flags);
  if (values.artifacts) process.env.CRH_ARTIFACTS_DIR = path.resolve(values.artifacts);
  const artifacts = artifactsRoot();
  const startedMs = Date.now();
  const htmlFile = path.resolve(values.html ?? path.join(artifacts, 'report.html'));
  process.env.CRH_VERDICTS_FILE = path.join(artifacts, 'verdicts.jsonl');
  rmSync(process.env.CRH_VERDICTS_FILE, { force: true });
  rmSync(path.join(artifacts, 'infra-failures.jsonl'), { force: true });

  await bootstrapHost(log);
  // Build once up front so the cases (run in parallel) find it cached; a
  // kernel or image that cannot be had is infrastructure, reported as such.
  let kernel: { origin: string; release: string } | undefined;
  try {
    const image = await buildImage({ kernel: await kernelFromEnvironment(process.env, log), log });
    log(`guest image ${image.key} (${image.kernel.origin})`);
    kernel = { origin: image.kernel.origin, release: image.kernel.release };
  } catch (error) {
    recordInfraFailure('(image)', error);
    const infra = readInfraFailures();
    if (values.junit) await writeFile(values.junit, junitXml([], infra));
    if (values.json) await writeFile(values.json, `${JSON.stringify({ verdicts: [], infrastructureFailures: infra }, null, 2)}\n`);
    await writeHtmlReport(htmlFile, { verdicts: [], infra, artifactsRoot: artifacts, sinceMs: startedMs });
    log(`HTML report: ${htmlFile}`);
    throw error;
  }

  const grep = values.grep ? new RegExp(values.grep) : undefined;
  const casesDir = path.resolve(REPO_ROOT, values.cases ?? 'cases');
  // cases/ and its folders (cases/reports/: the mailing-list catalog); --grep matches the relative path.
  const cases = readdirSync(casesDir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.test.ts') && (!grep || grep.test(f)))
    .sort()
    .map((f) => path.join(casesDir, f));
  if (cases.length === 0) {
    log(`no case matches ${values.grep}`);
    return EXIT.usage;
  }
  const tap = await execa(path.join(REPO_ROOT, 'node_modules', '.bin', 'tap'), [...jobs, ...cases], {
    cwd: REPO_ROOT,
    stdio: 'inherit',
    reject: false,
  });
  const verdicts = readVerdicts();
  const profile = measuredProfile(artifacts, verdicts);
  if (profile) process.stdout.write(`\nplatform profile the expectations were conditioned on (${profile.file}):\n${profileRows(profile.profile).map(([k, v]) => `  ${k.padEnd(34)} ${v}`).join('\n')}\n`);
  process.stdout.write(`\n${formatVerdictTable(verdicts)}\n`);
  const infra = readInfraFailures();
  if (values.junit) await writeFile(values.junit, junitXml(verdicts, infra));
  if (values.json) await writeFile(values.json, `${JSON.stringify({ kernel, verdicts, infrastructureFailures: infra }, null, 2)}\n`);
  // The HTML report knows pass and fail only: a skipped case is left out of it rather than shown as a failure.
  await writeHtmlReport(htmlFile, { verdicts: verdicts.filter((v) => outcome(v) !== 'SKIP'), infra, artifactsRoot: artifacts, sinceMs: startedMs });
  for (const f of infra) log(`infrastructure failure in ${f.case}:\n${f.error}`);
  const count = (o: string): number => verdicts.filter((v) => outcome(v) === o).length;
  process.stdout.write(`\n${count('PASS')} passed, ${count('FAIL')} failed${count('SKIP') > 0 ? `, ${count('SKIP')} skipped` : ''}\n`);
  process.stdout.write(`artifacts: ${artifacts}\nHTML report: ${htmlFile}\n`);
  if (infra.length > 0) return EXIT.infra;
  if (tap.exitCode !== 0 || count('FAIL') > 0 || verdicts.length === 0) return EXIT.failed;
  return EXIT.ok;
}

async function main(argv: string[]): Promise<number> {
  installSignalCleanup(); // SIGINT/SIGTERM: remove temp dirs and records, stop QEMUs, then die of the signal
  const [command, ...rest] = argv;
  switch (command) {
    case 'bootstrap': {
      const { values } = parseArgs({ args: rest, options: { test: { type: 'boolean' } } });
      const report = await bootstrapHost(log, { test: values.test ?? false });
      log(report.installed.length > 0 ? `installed ${report.installed.join(' ')}` : 'host packages present');
      return EXIT.ok;
    }
    case 'image':
      return imageCommand(rest);
    case 'ssh':
      return sshCommand(rest);
    case 'verdicts':
      return verdictsCommand(rest);
    case 'boot':
      return bootCommand(rest);
    case 'run':
      return runCommand(rest);
    case 'doctor':
      return doctorCommand(rest);
    case 'repro':
    case 'cr':
      return reproCommand(command, rest);
    case 'restore':
      return restoreCommand(rest);
    default:
      process.stderr.write('usage: crh bootstrap [--test] | image | boot | ssh [-- COMMAND] | verdicts [--reset|--check] | doctor [--json] | restore --dry-run IMAGE | repro FILE.c | cr --binary PATH | run [--grep RE] [--kernel BZIMAGE|debian:PACKAGE [--system-map FILE]]... [--jobs N] [--artifacts DIR] [--junit FILE] [--json FILE] [--html FILE] [--cases DIR]\n');
      return EXIT.usage;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`${error instanceof CrhError ? error.describe() : error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = isInfraFailure(error) ? EXIT.infra : error instanceof UsageError ? EXIT.usage : EXIT.failed;
}
