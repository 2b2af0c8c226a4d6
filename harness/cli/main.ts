/**
 * `crh`: the command-line front door. Each subcommand's options and its one
 * usage text live in command-line.ts (COMMANDS) — `crh COMMAND --help`
 * prints it, every usage error repeats it; this file runs the commands.
 *
 * Exit codes (exit-codes.ts; docs/ci.md has what produces each): 0 all as
 * expected, 1 a case failed or none gave a verdict, 2 usage, 3 the harness
 * perturbs the program (repro/cr: traced and native references differ), 69
 * infrastructure (QEMU, image, a kernel that cannot boot, the guest lost
 * mid-run).
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { CrhError, UsageError } from '../errors.ts';
import { bootstrapHost } from '../host/bootstrap.ts';
import { buildImage } from '../image/build.ts';
import { resolveKernel, type GuestKernel } from '../image/kernel.ts';
import { QemuMachine } from '../machine/machine.ts';
import { forcedAccelerator } from '../machine/accel.ts';
import { openGuest } from '../guest/open-guest.ts';
import { profileRows } from '../platform/profile.ts';
import { readTreeImage } from '../restore/tree-image.ts';
import { dryRunTreePlan } from '../restore/tree-dry-run.ts';
import { dryRunPlan, formatPlan } from '../restore/dry-run.ts';
import { describePolicy } from '../restore/policy.ts';
import { policyFromFlags } from '../flags/policy-flags.ts';
import { artifactsRoot, formatVerdictTable, outcome, readVerdicts, verdictsFile } from '../report/verdicts.ts';
import { EXIT, verdictsExitCode } from './exit-codes.ts';
import { installSignalCleanup } from '../util/cleanup.ts';
import { isInfraFailure } from '../report/infra-failures.ts';
import { kernelChoiceFromFlags } from '../flags/kernel-flags.ts';
import { runConfiguration } from '../flags/run-configuration.ts';
import { COMMANDS, CRH_USAGE, isCommand, parseCommandLine, usageError, wantsHelp } from './command-line.ts';
import { readBootSession, removeBootSession, sshArgs, writeBootSession } from './boot-session.ts';
import { reproCommand } from '../repro/command.ts';
import { zdtmCommand } from '../zdtm/command.ts';
import { criuCheck } from '../criu/commands.ts';
import { escapeControl } from '../util/terminal-text.ts';
import { reportCommand, runCommand } from './run-command.ts';

const log = (line: string): void => void process.stderr.write(`crh: ${line}\n`);

/** The kernel a command's --kernel flags choose, else the one CRH_KERNEL names, else undefined (the recipe's default). */
function commandKernel(values: Record<string, string | boolean | string[] | undefined>): Promise<GuestKernel | undefined> {
  return resolveKernel(kernelChoiceFromFlags(values) ?? runConfiguration().kernel, log);
}

async function bootstrapCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(COMMANDS.bootstrap, args);
  if (!parsed) return EXIT.ok;
  const report = await bootstrapHost(log, { test: parsed.values.test ?? false });
  log(report.installed.length > 0 ? `installed ${report.installed.join(' ')}` : 'host packages present');
  return EXIT.ok;
}

async function imageCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(COMMANDS.image, args);
  if (!parsed) return EXIT.ok;
  const { values } = parsed;
  await bootstrapHost(log);
  const image = await buildImage({ kernel: await commandKernel(values), log });
  process.stdout.write(
    `${JSON.stringify({ key: image.key, dir: image.dir, kernel: image.kernel.bzImage, initramfs: image.initramfs, origin: image.kernel.origin }, null, 2)}\n`,
  );
  return EXIT.ok;
}

async function bootCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(COMMANDS.boot, args);
  if (!parsed) return EXIT.ok;
  const { values } = parsed;
  await bootstrapHost(log);
  const image = await buildImage({ kernel: await commandKernel(values), log });
  const artifactsDir = path.join(artifactsRoot(), 'boot');
  // CRH_ACCEL, read with the other user variables (flags/run-configuration.ts), forces the accelerator here as in a run.
  const { accel } = runConfiguration();
  const machine = new QemuMachine({
    image,
    artifactsDir,
    name: 'crh-boot',
    onEvent: (e) => e.type === 'ready' && log(`ready in ${e.elapsedMs} ms`),
    ...(accel ? { accel: await forcedAccelerator(accel) } : {}),
  });
  await machine.launch();
  try {
    const session = await writeBootSession(
      artifactsDir,
      { sshPort: machine.sshPort, clientKey: image.clientKey, qemuPid: machine.pid!, ownerPid: process.pid },
      image.hostPublicKey,
    );
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
  const parsed = parseCommandLine(COMMANDS.verdicts, args);
  if (!parsed) return EXIT.ok;
  const { values } = parsed;
  if (values.reset && values.check) throw usageError(COMMANDS.verdicts, '--reset and --check exclude each other');
  const file = verdictsFile();
  if (values.reset) {
    rmSync(file, { force: true });
    return EXIT.ok;
  }
  const verdicts = readVerdicts(file);
  const failed = verdicts.filter((v) => outcome(v) === 'FAIL');
  const gaps = verdicts.filter((v) => outcome(v) === 'GAP').length;
  process.stdout.write(
    `${formatVerdictTable(verdicts)}\n\n${verdicts.length - failed.length} as expected or skipped${gaps > 0 ? ` (${gaps} of them known engine gaps)` : ''}, ${failed.length} not (${file})\n`,
  );
  if (!values.check) return EXIT.ok;
  for (const v of failed)
    log(
      `not as expected: ${v.case}${v.engine && v.engine !== 'crh' ? ` [${v.engine}]` : ''}: ${v.scenario} under ${v.policy}${v.control ? ' (negative control)' : ''}: expected ${v.expected}, observed ${v.observed}`,
    );
  if (failed.length === 0 && verdictsExitCode(verdicts) !== EXIT.ok)
    log(verdicts.length === 0 ? 'no verdict was recorded: nothing was tested' : 'every verdict is a skip: nothing was tested');
  return verdictsExitCode(verdicts);
}

/** A shell (or one command) in the guest `crh boot` is running; exits with ssh's code. */
async function sshCommand(args: string[]): Promise<number> {
  // Everything but a leading --help is the remote command (`crh ssh ls -l` works without `--`).
  if (args[0] === '--help' || args[0] === '-h') {
    process.stdout.write(`${COMMANDS.ssh.usage}\n`);
    return EXIT.ok;
  }
  const dash = args.indexOf('--');
  const command = dash >= 0 ? args.slice(dash + 1) : args;
  const session = readBootSession(path.join(artifactsRoot(), 'boot'));
  const ssh = await execa('ssh', sshArgs(session, command), { stdio: 'inherit', reject: false });
  return ssh.exitCode ?? EXIT.failed;
}

async function doctorCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(COMMANDS.doctor, args);
  if (!parsed) return EXIT.ok;
  const { values } = parsed;
  const engine = values.engine ?? 'crh';
  if (engine !== 'crh' && engine !== 'criu') throw usageError(COMMANDS.doctor, `--engine takes crh or criu, not ${JSON.stringify(engine)}`);
  await bootstrapHost(log);
  // Opened as every command and case opens its guest (guest/open-guest.ts), the profile measured anew.
  const kernel = kernelChoiceFromFlags(values);
  const guest = await openGuest({
    artifactsDir: path.join(artifactsRoot(), 'doctor'),
    log,
    freshProfile: true,
    ...(kernel ? { kernel } : {}),
    ...(engine === 'criu' ? { criu: true } : {}),
  });
  try {
    const { image, machine, profile } = guest;
    const criu = image.criu ? { ...image.criu, ...(await criuCheck((command) => machine.ssh.exec(command), image.criu.command)) } : undefined;
    if (values.json) {
      process.stdout.write(`${JSON.stringify(criu ? { ...profile, criu } : profile, null, 2)}\n`);
    } else {
      const rows = profileRows(profile);
      if (criu)
        rows.push(
          ['criu', `${criu.version} (Debian ${criu.suite} package ${image.criu!.version}): criu check ${criu.ok ? 'ok' : 'FAILED'}`],
          ['criu check', escapeControl(criu.output.split('\n').slice(-3).join(' | '))],
        );
      const width = Math.max(...rows.map(([k]) => k.length));
      process.stdout.write(`${rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n')}\n`);
    }
    if (criu && !criu.ok) {
      log(`criu check failed in the guest:\n${escapeControl(criu.output)}`);
      return EXIT.failed;
    }
  } finally {
    await guest.close();
  }
  return EXIT.ok;
}

async function restoreCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(COMMANDS.restore, args);
  if (!parsed) return EXIT.ok;
  const { values, positionals } = parsed;
  if (!values['dry-run']) throw usageError(COMMANDS.restore, 'crh restore needs --dry-run');
  if (positionals.length !== 1) throw usageError(COMMANDS.restore, `crh restore takes one IMAGE (got ${positionals.length})`);
  const policy = policyFromFlags(values);
  const tree = await readTreeImage(positionals[0]!);
  const image = tree.members[0]!.image;
  // Image fields are untrusted text: control characters in them are shown escaped, never sent to the terminal.
  const shown = escapeControl;
  const processes =
    tree.members.length > 1
      ? `, a tree of ${tree.members.length} processes (${tree.members.map((m) => m.pid).join(' ')})${tree.pipes?.length ? ` and ${tree.pipes.length} pipe${tree.pipes.length > 1 ? 's' : ''}` : ''}`
      : '';
  process.stdout.write(
    `image ${shown(positionals[0]!)}: valid (${shown(image.process.binary)}, pid ${image.process.pid}, ${image.regions.length} memory regions, ${1 + image.threads.length} thread${image.threads.length ? 's' : ''}${processes}, taken ${shown(String(image.created))})\n`,
  );
  process.stdout.write(`policy: ${describePolicy(policy)}\n`);
  const plan = tree.members.length > 1 ? dryRunTreePlan(tree, policy) : dryRunPlan(image, policy);
  process.stdout.write(`${shown(formatPlan(plan), { keepNewlines: true })}\n`);
  return EXIT.ok;
}

const HANDLERS: Record<Exclude<keyof typeof COMMANDS, 'repro' | 'cr' | 'zdtm'>, (args: string[]) => Promise<number>> = {
  bootstrap: bootstrapCommand,
  image: imageCommand,
  boot: bootCommand,
  ssh: sshCommand,
  verdicts: verdictsCommand,
  doctor: doctorCommand,
  restore: restoreCommand,
  run: runCommand,
  report: reportCommand,
};

async function main(argv: string[]): Promise<number> {
  installSignalCleanup(); // SIGINT/SIGTERM: remove temp dirs and records, stop QEMUs, then die of the signal
  const [command, ...rest] = argv;
  if (command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${CRH_USAGE}\n`);
    return EXIT.ok;
  }
  if (!isCommand(command)) {
    process.stderr.write(`${command === undefined ? 'crh: no command' : `crh: unknown command ${JSON.stringify(command)}`}\n${CRH_USAGE}\n`);
    return EXIT.usage;
  }
  if (command === 'repro' || command === 'cr') {
    // repro/options.ts parses these; a --cflags value may itself start with a dash.
    if (wantsHelp(rest, ['--cflags'])) {
      process.stdout.write(`${COMMANDS[command].usage}\n`);
      return EXIT.ok;
    }
    return reproCommand(command, rest);
  }
  if (command === 'zdtm') {
    // zdtm/options.ts parses it; --help before `--` only (after it come the tests' arguments).
    if (wantsHelp(rest)) {
      process.stdout.write(`${COMMANDS.zdtm.usage}\n`);
      return EXIT.ok;
    }
    return zdtmCommand(rest);
  }
  return HANDLERS[command](rest);
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  // Our errors (a UsageError included: its message and the usage) print without a stack; only a bug shows one.
  // Messages quote images, programs and guest consoles: their control characters are shown escaped.
  const text = error instanceof CrhError ? error.describe() : error instanceof Error ? (error.stack ?? error.message) : String(error);
  process.stderr.write(`${escapeControl(text, { keepNewlines: true })}\n`);
  process.exitCode = isInfraFailure(error) ? EXIT.infra : error instanceof UsageError ? EXIT.usage : EXIT.failed;
}
