/**
 * `crh`: the command-line front door.
 *
 *   crh bootstrap                 install missing host packages (root) or say which
 *   crh image [kernel options]    build the guest image, print where it is
 *   crh boot  [kernel options]    boot a guest and print a ready ssh command line
 *   crh doctor [--json] [kernel options]
 *                                 measure and print the platform profile
 *   crh restore --dry-run IMAGE [--rf P] [--regs P] [--restorer R]
 *                                 validate an image and print its restore plan
 *   crh run   [--grep RE] [kernel options] [--artifacts DIR] [--junit FILE] [--json FILE] [--cases DIR]
 *                                 run the cases, print the verdict table
 *
 * Kernel options: --kernel BZIMAGE [--system-map FILE] [--kernel-config FILE] [--modules DIR]
 * Exit codes: 0 all as expected, 1 a case failed, 69 infrastructure failure
 * (QEMU, image, a kernel that cannot boot), 2 usage.
 */
import { parseArgs } from 'node:util';
import { readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { CrhError } from '../errors.ts';
import { bootstrapHost } from '../host/bootstrap.ts';
import { buildImage } from '../image/build.ts';
import { kernelFromEnvironment } from '../image/kernel.ts';
import { QemuMachine } from '../machine/machine.ts';
import { launchMachine } from '../machine/fast-start.ts';
import { AgentClient } from '../agent/client.ts';
import { platformProfile, profileRows } from '../platform/profile.ts';
import { readCheckpointImage } from '../restore/checkpoint-image.ts';
import { dryRunPlan, formatPlan } from '../restore/dry-run.ts';
import { DEFAULT_POLICY, parseRegsPolicy, parseRfPolicy } from '../restore/policy.ts';
import { parseRestorer } from '../restore/restorers.ts';
import { readInfraFailures, recordInfraFailure } from '../report/infra-failures.ts';
import { junitXml } from '../report/junit.ts';
import { writeFile } from 'node:fs/promises';
import { artifactsRoot, formatVerdictTable, readVerdicts } from '../report/verdicts.ts';
import { REPO_ROOT } from '../util/cache-dir.ts';
import { isInfraFailure } from '../report/infra-failures.ts';

export const EXIT = { ok: 0, failed: 1, usage: 2, infra: 69 } as const;

const log = (line: string): void => void process.stderr.write(`crh: ${line}\n`);

const kernelOptions = {
  kernel: { type: 'string' },
  'system-map': { type: 'string' },
  'kernel-config': { type: 'string' },
  modules: { type: 'string' },
} as const;

/** Kernel flags become the CRH_* variables that cases (separate processes) read. */
function applyKernelOptions(values: Record<string, string | boolean | undefined>): void {
  const map: Record<string, string> = { kernel: 'CRH_KERNEL', 'system-map': 'CRH_SYSTEM_MAP', 'kernel-config': 'CRH_KERNEL_CONFIG', modules: 'CRH_MODULES_DIR' };
  for (const [flag, env] of Object.entries(map)) {
    const value = values[flag];
    if (typeof value === 'string') process.env[env] = path.resolve(value);
  }
}

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
  process.stdout.write(
    `ssh -i ${image.clientKey} -p ${machine.sshPort} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1\n` +
      `console log: ${path.join(artifactsDir, 'console.log')}\nCtrl-C shuts the guest down.\n`,
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await machine.shutdown();
  return EXIT.ok;
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
    options: { 'dry-run': { type: 'boolean' }, rf: { type: 'string' }, regs: { type: 'string' }, restorer: { type: 'string' } },
  });
  if (!values['dry-run'] || positionals.length !== 1) {
    process.stderr.write('usage: crh restore --dry-run IMAGE [--rf reject|clear|keep|keep-and-preserve] [--regs full|partial] [--restorer ptrace|sigreturn|popf]\n(a live restore runs inside a case, against a booted guest)\n');
    return EXIT.usage;
  }
  const policy = {
    rf: values.rf ? parseRfPolicy(values.rf) : DEFAULT_POLICY.rf,
    regs: values.regs ? parseRegsPolicy(values.regs) : DEFAULT_POLICY.regs,
    restorer: values.restorer ? parseRestorer(values.restorer) : 'ptrace' as const,
  };
  const image = await readCheckpointImage(positionals[0]!);
  process.stdout.write(`image ${positionals[0]}: valid (${image.process.binary}, pid ${image.process.pid}, ${image.regions.length} memory regions, taken ${image.created})\n`);
  process.stdout.write(`policy: rf=${policy.rf} regs=${policy.regs} restorer=${policy.restorer}\n`);
  process.stdout.write(`${formatPlan(dryRunPlan(image, policy))}\n`);
  return EXIT.ok;
}

async function runCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { ...kernelOptions, grep: { type: 'string' }, artifacts: { type: 'string' }, junit: { type: 'string' }, json: { type: 'string' }, cases: { type: 'string' } } });
  applyKernelOptions(values);
  if (values.artifacts) process.env.CRH_ARTIFACTS_DIR = path.resolve(values.artifacts);
  const artifacts = artifactsRoot();
  process.env.CRH_VERDICTS_FILE = path.join(artifacts, 'verdicts.jsonl');
  rmSync(process.env.CRH_VERDICTS_FILE, { force: true });
  rmSync(path.join(artifacts, 'infra-failures.jsonl'), { force: true });

  await bootstrapHost(log);
  // Build once up front so the cases (run in parallel) find it cached; a
  // kernel or image that cannot be had is infrastructure, reported as such.
  try {
    const image = await buildImage({ kernel: await kernelFromEnvironment(), log });
    log(`guest image ${image.key} (${image.kernel.origin})`);
  } catch (error) {
    recordInfraFailure('(image)', error);
    const infra = readInfraFailures();
    if (values.junit) await writeFile(values.junit, junitXml([], infra));
    if (values.json) await writeFile(values.json, `${JSON.stringify({ verdicts: [], infrastructureFailures: infra }, null, 2)}\n`);
    throw error;
  }

  const grep = values.grep ? new RegExp(values.grep) : undefined;
  const casesDir = path.resolve(REPO_ROOT, values.cases ?? 'cases');
  const cases = readdirSync(casesDir)
    .filter((f) => f.endsWith('.test.ts') && (!grep || grep.test(f)))
    .map((f) => path.join(casesDir, f));
  if (cases.length === 0) {
    log(`no case matches ${values.grep}`);
    return EXIT.usage;
  }
  const tap = await execa(path.join(REPO_ROOT, 'node_modules', '.bin', 'tap'), cases, {
    cwd: REPO_ROOT,
    stdio: 'inherit',
    reject: false,
  });
  const verdicts = readVerdicts();
  process.stdout.write(`\n${formatVerdictTable(verdicts)}\n`);
  const infra = readInfraFailures();
  if (values.junit) await writeFile(values.junit, junitXml(verdicts, infra));
  if (values.json) await writeFile(values.json, `${JSON.stringify({ verdicts, infrastructureFailures: infra }, null, 2)}\n`);
  for (const f of infra) log(`infrastructure failure in ${f.case}:\n${f.error}`);
  process.stdout.write(`\n${verdicts.filter((v) => v.pass).length} passed, ${verdicts.filter((v) => !v.pass).length} failed\n`);
  process.stdout.write(`artifacts: ${artifacts}\n`);
  if (infra.length > 0) return EXIT.infra;
  if (tap.exitCode !== 0 || verdicts.some((v) => !v.pass) || verdicts.length === 0) return EXIT.failed;
  return EXIT.ok;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'bootstrap': {
      const report = await bootstrapHost(log);
      log(report.installed.length > 0 ? `installed ${report.installed.join(' ')}` : 'host packages present');
      return EXIT.ok;
    }
    case 'image':
      return imageCommand(rest);
    case 'boot':
      return bootCommand(rest);
    case 'run':
      return runCommand(rest);
    case 'doctor':
      return doctorCommand(rest);
    case 'restore':
      return restoreCommand(rest);
    default:
      process.stderr.write('usage: crh bootstrap | image | boot | doctor [--json] | restore --dry-run IMAGE | run [--grep RE] [--kernel BZIMAGE --system-map FILE] [--artifacts DIR] [--junit FILE] [--json FILE] [--cases DIR]\n');
      return EXIT.usage;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`${error instanceof CrhError ? error.describe() : error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = isInfraFailure(error) ? EXIT.infra : EXIT.failed;
}
