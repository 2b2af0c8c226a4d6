/**
 * One usage text and one option table per `crh` subcommand, and the one
 * parser they all go through: `--help`/`-h` prints the usage and exits 0,
 * anything parseArgs refuses (an unknown flag, a missing value, a stray
 * positional) becomes a UsageError (exit 2) carrying the same usage text —
 * never node:util's TypeError with a stack.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from '../repro/usage-error.ts';
import { REPRO_USAGE, reproOptions } from '../repro/options.ts';
import { ZDTM_USAGE, zdtmOptions } from '../zdtm/options.ts';
import { KERNEL_USAGE, kernelOptions } from '../flags/kernel-flags.ts';
import { runKernelOptions } from './kernel-matrix.ts';
import { OMIT_USAGE, policyOptions, POLICY_USAGE } from '../flags/policy-flags.ts';

type Options = NonNullable<ParseArgsConfig['options']>;

export interface CommandSpec<O extends Options = Options> {
  /** the usage text, printed by --help and under every usage error */
  usage: string;
  options: O;
  /** whether the command takes positionals (its own checks count them) */
  positionals: boolean;
}

const spec = <O extends Options>(usage: string, options: O, positionals = false): CommandSpec<O> => ({ usage, options, positionals });

export const COMMANDS = {
  bootstrap: spec(
    'usage: crh bootstrap [--test]\n' +
      '  install the host packages the harness needs (as root) or print the apt-get line;\n' +
      '  --test adds what only the tests need (chromium)',
    { test: { type: 'boolean' } },
  ),
  image: spec(`usage: crh image ${KERNEL_USAGE}\n  build (or find) the guest image and print its paths`, kernelOptions),
  boot: spec(`usage: crh boot ${KERNEL_USAGE}\n  boot a guest, print a ready ssh command line (host key pinned); Ctrl-C stops it`, kernelOptions),
  ssh: spec("usage: crh ssh [-- COMMAND]\n  a shell, or one command, in the guest `crh boot` is running; exits with ssh's code", {}, true),
  verdicts: spec(
    'usage: crh verdicts [--reset | --check]\n' +
      '  print the verdict rows the cases recorded; --reset empties them,\n' +
      '  --check exits 1 when a row is not as expected or there is none',
    { reset: { type: 'boolean' }, check: { type: 'boolean' } },
  ),
  doctor: spec(
    `usage: crh doctor [--json] [--engine crh|criu]\n                  ${KERNEL_USAGE}\n` +
      '  measure and print the platform profile; --engine criu boots the image variant with CRIU\n' +
      "  (Debian trixie's, with its own libraries) and adds `criu check`'s verdict",
    { ...kernelOptions, json: { type: 'boolean' }, engine: { type: 'string' } },
  ),
  restore: spec(
    `usage: crh restore --dry-run IMAGE\n                 ${POLICY_USAGE}\n${OMIT_USAGE}\n` +
      '  validate a checkpoint image and print its restore plan\n' +
      '  (a live restore runs inside a case, against a booted guest)',
    { 'dry-run': { type: 'boolean' }, ...policyOptions },
    true,
  ),
  run: spec(
    `usage: crh run [--grep RE] [--jobs N] [--shard I/N] [--artifacts DIR]\n               ${KERNEL_USAGE}...\n` +
      '               [--engine crh|criu|crh,criu] [--reporter people|tap|ktap|junit|json] [--junit FILE]\n' +
      '               [--json FILE] [--ktap FILE] [--html FILE] [--cases DIR]\n' +
      '  run the cases (N case files at once, default one more than the CPUs), a line per case and\n' +
      '  a summary (--reporter: a machine format on stdout instead); --shard I/N runs the I-th of N\n' +
      "  disjoint shards balanced by cases/durations.json. The wide verdict table, each case's TAP,\n" +
      '  the profile and the durations go to the artifacts; the HTML report is always written\n' +
      '  (default <artifacts>/report.html). --kernel repeated: the suite once per\n' +
      '  kernel, in <artifacts>/<kernel>/, then the verdicts side by side (the n-th --system-map,\n' +
      '  --kernel-config, --modules go with the n-th --kernel). --engine (default crh): which engine\n' +
      "  checkpoints and restores; criu hands each case's stopped process to CRIU (Debian trixie's, in\n" +
      '  the image variant with CRIU, built on first use) where the scenario can go through it, and says\n' +
      '  why not where it cannot; crh,criu runs both, side by side in every report',
    {
      ...runKernelOptions,
      jobs: { type: 'string' },
      grep: { type: 'string' },
      artifacts: { type: 'string' },
      junit: { type: 'string' },
      json: { type: 'string' },
      html: { type: 'string' },
      cases: { type: 'string' },
      reporter: { type: 'string' },
      shard: { type: 'string' },
      ktap: { type: 'string' },
      engine: { type: 'string' },
    },
  ),
  report: spec(
    'usage: crh report --from RUN.json [--from RUN.json]... [--junit FILE] [--json FILE] [--ktap FILE] [--html FILE]\n' +
      '  merge the JSON reports of crh run shards (disjoint, one kernel) into one set of reports',
    { from: { type: 'string', multiple: true }, junit: { type: 'string' }, json: { type: 'string' }, ktap: { type: 'string' }, html: { type: 'string' } },
  ),
  // repro and cr parse their own command line (repro/options.ts); the table is here for --help.
  repro: spec(REPRO_USAGE, reproOptions, true),
  cr: spec(REPRO_USAGE, reproOptions, true),
  // zdtm parses its own command line too (zdtm/options.ts): what follows `--` is the tests' arguments.
  zdtm: spec(ZDTM_USAGE, zdtmOptions, true),
} as const;

export type CommandName = keyof typeof COMMANDS;

export const CRH_USAGE =
  'usage: crh COMMAND [OPTIONS]   (crh COMMAND --help for its options)\n' +
  `  ${Object.keys(COMMANDS).join(' | ')}\n` +
  'exit codes: 0 all as expected, 1 a case or verdict failed (or none ran), 2 usage, 69 infrastructure';

export function isCommand(name: string | undefined): name is CommandName {
  return name !== undefined && Object.hasOwn(COMMANDS, name);
}

/**
 * Whether the command line asks for help: `--help` or `-h` before any `--`
 * (what follows `--` belongs to the program). `skipValueOf` names options
 * whose value may itself start with a dash (`--cflags -h` is not a request for help).
 */
export function wantsHelp(args: readonly string[], skipValueOf: readonly string[] = []): boolean {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') return false;
    if (arg === '--help' || arg === '-h') return true;
    if (skipValueOf.includes(arg)) i++;
  }
  return false;
}

/** A parseArgs result for `O`, with the positionals. */
export type Parsed<O extends Options> = ReturnType<typeof parseArgs<{ args: string[]; options: O; allowPositionals: true; strict: true }>>;

/**
 * Parses `args` for `command`; undefined when the user asked for help (the
 * usage has been printed on stdout). Every refusal is a UsageError naming
 * what was wrong, followed by the usage.
 */
export function parseCommandLine<O extends Options>(command: CommandSpec<O>, args: readonly string[]): Parsed<O> | undefined {
  if (wantsHelp(args)) {
    process.stdout.write(`${command.usage}\n`);
    return undefined;
  }
  try {
    return parseArgs({ args: [...args], options: command.options, allowPositionals: command.positionals, strict: true }) as Parsed<O>;
  } catch (error) {
    if (isParseArgsError(error)) throw new UsageError(`${error.message}\n${command.usage}`);
    throw error;
  }
}

/** node:util's parseArgs refuses with a TypeError whose code starts ERR_PARSE_ARGS_. */
function isParseArgsError(error: unknown): error is Error {
  const code = (error as { code?: unknown } | undefined)?.code;
  return error instanceof Error && typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}

/** A UsageError that repeats the command's usage under the message. */
export function usageError(command: CommandSpec, message: string): UsageError {
  return new UsageError(`${message}\n${command.usage}`);
}
