/**
 * What a run configures in its case processes, as one value: the kernel the
 * guests boot, the engines, the accelerator override, where artifacts and
 * verdict rows go. `crh run` builds it once from its flags, checks it once,
 * writes it as JSON into the run's artifacts directory and names that file
 * in one variable (CRH_RUN) of the case processes it starts (each case file
 * is its own node process); each case process reads and checks it once,
 * here, and the cases and fixtures ask runConfiguration().
 *
 * A case file run on its own (`npx tap cases/X.test.ts`, `npm test`) has no
 * configuration handed down: then, and only then, the variables documented
 * for people (CRH_KERNEL and its companions, CRH_ENGINES, CRH_ACCEL,
 * CRH_ARTIFACTS_DIR) are read — all of them here, in
 * configurationFromUserEnvironment — into the same value, with the defaults
 * for what they leave unset. crh run starts from the same reading, so the
 * variables are defaults its flags override.
 *
 * CRH_CACHE_DIR and CRH_QEMU are not run configuration: they say where
 * things live on this host, for every crh command alike, and are read by the
 * one module each that uses them (util/cache-dir.ts, machine/qemu-binary.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors.ts';
import { DEBIAN_KERNEL_PREFIX, KERNEL_LABEL, type KernelChoice } from '../image/kernel.ts';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { REPO_ROOT } from '../util/cache-dir.ts';
import { escapeControl } from '../util/terminal-text.ts';
import { kernelChoiceFromFlags, resolveKernelFlag, type kernelOptions } from './kernel-flags.ts';

/** Which checkpoint/restore engine makes a row: crh's restore core, or CRIU in the guest. */
export type Engine = 'crh' | 'criu';
export const ENGINES: readonly Engine[] = ['crh', 'criu'];

/** The accelerator a person forces (CRH_ACCEL); without it KVM when a guest boots under it, else TCG (machine/accel.ts). */
export type AcceleratorOverride = 'tcg' | 'kvm';
const ACCELERATOR_OVERRIDES: readonly AcceleratorOverride[] = ['tcg', 'kvm'];

export interface RunConfiguration {
  /** the kernel the guests boot; absent: the image recipe's Debian kernel */
  kernel?: KernelChoice;
  /** the engines each case puts its scenarios through, crh first; never empty */
  engines: Engine[];
  /** absent: decided by evidence */
  accel?: AcceleratorOverride;
  /** absolute: each case's console log, QMP log, images and profile go to <artifactsDir>/<case>/ */
  artifactsDir: string;
  /** absolute: the verdict rows (JSON lines); infra-failures.jsonl goes beside it */
  verdictsFile: string;
}

/** The one variable crh run hands its case processes: the path of the configuration file. */
export const RUN_CONFIGURATION_ENV = 'CRH_RUN';
/** The file's name in the run's artifacts directory. */
export const RUN_CONFIGURATION_FILE = 'run-configuration.json';
/** Bumped when a field changes meaning; a file of another version is refused, not guessed at. */
export const RUN_CONFIGURATION_VERSION = 1;

/** A run configuration that cannot be used: `source` (a file, or "the environment") and the `field` refused. A UsageError: crh exits 2. */
export class RunConfigurationError extends UsageError {
  override readonly name = 'RunConfigurationError';
  constructor(
    readonly source: string,
    readonly field: string,
    why: string,
  ) {
    // The file's text may be anyone's: escaped once, here, for every place that prints it.
    super(escapeControl(`run configuration ${source}: ${field}: ${why}`));
  }
}

/** The user's variables that stand for the kernel flags, by flag. */
const KERNEL_VARIABLES: Record<keyof typeof kernelOptions, string> = {
  kernel: 'CRH_KERNEL',
  'system-map': 'CRH_SYSTEM_MAP',
  'kernel-config': 'CRH_KERNEL_CONFIG',
  modules: 'CRH_MODULES_DIR',
};

/** The default artifacts directory: artifacts/ in the repository. */
export const DEFAULT_ARTIFACTS_DIR = path.join(REPO_ROOT, 'artifacts');

/** The verdict rows' file of an artifacts directory. */
export function verdictsFileIn(artifactsDir: string): string {
  return path.join(artifactsDir, 'verdicts.jsonl');
}

/**
 * The configuration the user's variables make, with a default for each one
 * unset or empty: no kernel choice, crh alone, no accelerator override,
 * artifacts/ in the repository. The one place these variables are read.
 */
export function configurationFromUserEnvironment(env: NodeJS.ProcessEnv): RunConfiguration {
  const source = 'the environment';
  const value = (name: string): string | undefined => (env[name] === undefined || env[name] === '' ? undefined : env[name]);
  const kernelFlags: Record<string, string> = {};
  for (const [flag, name] of Object.entries(KERNEL_VARIABLES)) {
    const given = value(name);
    if (given === undefined) continue;
    try {
      kernelFlags[flag] = resolveKernelFlag(flag, given);
    } catch (error) {
      throw new RunConfigurationError(source, name, (error as Error).message);
    }
  }
  const kernel = kernelChoiceFromFlags(kernelFlags);
  const engines = value('CRH_ENGINES');
  const accel = value('CRH_ACCEL');
  const artifacts = value('CRH_ARTIFACTS_DIR');
  const artifactsDir = artifacts === undefined ? DEFAULT_ARTIFACTS_DIR : path.resolve(artifacts);
  return checkRunConfiguration(
    {
      ...(kernel ? { kernel } : {}),
      engines: engines === undefined ? ['crh'] : engines.split(',').map((e) => e.trim()),
      ...(accel !== undefined ? { accel } : {}),
      artifactsDir,
      verdictsFile: verdictsFileIn(artifactsDir),
    },
    source,
    { CRH_ENGINES: 'engines', CRH_ACCEL: 'accel', CRH_ARTIFACTS_DIR: 'artifactsDir' },
  );
}

/** What crh run's own flags say; each one given overrides the user's variable for it. */
export interface RunFlags {
  kernel?: KernelChoice;
  engines?: Engine[];
  artifactsDir?: string;
}

/** The configuration of a run: the user's variables, then the flags over them; checked. */
export function configureRun(flags: RunFlags, env: NodeJS.ProcessEnv): RunConfiguration {
  const inputs = configurationFromUserEnvironment(env);
  const artifactsDir = flags.artifactsDir !== undefined ? path.resolve(flags.artifactsDir) : inputs.artifactsDir;
  const kernel = flags.kernel ?? inputs.kernel;
  return checkRunConfiguration(
    {
      ...(kernel ? { kernel } : {}),
      engines: flags.engines ?? inputs.engines,
      ...(inputs.accel ? { accel: inputs.accel } : {}),
      artifactsDir,
      verdictsFile: flags.artifactsDir !== undefined ? verdictsFileIn(artifactsDir) : inputs.verdictsFile,
    },
    'the command line',
  );
}

/** The file's text: the configuration and its version. */
export function serializeRunConfiguration(configuration: RunConfiguration): string {
  return `${JSON.stringify({ version: RUN_CONFIGURATION_VERSION, ...configuration }, null, 2)}\n`;
}

/** Writes `configuration` to `file` (atomically: case processes may start reading at once) and returns the path. */
export async function writeRunConfiguration(configuration: RunConfiguration, file: string): Promise<string> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, serializeRunConfiguration(configuration));
  return file;
}

/** A configuration file's text, checked field by field; `source` names it in every refusal. */
export function parseRunConfiguration(text: string, source: string): RunConfiguration {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new RunConfigurationError(source, '(the file)', `not JSON: ${(error as Error).message}`);
  }
  if (!isRecord(value)) throw new RunConfigurationError(source, '(the file)', 'not a JSON object');
  const { version, ...configuration } = value;
  if (version !== RUN_CONFIGURATION_VERSION)
    throw new RunConfigurationError(source, 'version', `${JSON.stringify(version)}: this crh reads version ${RUN_CONFIGURATION_VERSION}`);
  return checkRunConfiguration(configuration, source);
}

/** The configuration file at `file`, read and checked; a missing or unreadable file is refused by its path. */
export function readRunConfiguration(file: string): RunConfiguration {
  const source = path.resolve(file);
  let text: string;
  try {
    text = readFileSync(source, 'utf8');
  } catch (error) {
    const why = existsSync(source) ? (error as Error).message : 'no such file';
    throw new RunConfigurationError(source, '(the file)', `${why} (named by ${RUN_CONFIGURATION_ENV})`);
  }
  return parseRunConfiguration(text, source);
}

/** This process's configuration: the file CRH_RUN names when a run handed one down, else the user's variables. */
export function loadRunConfiguration(env: NodeJS.ProcessEnv): RunConfiguration {
  const file = env[RUN_CONFIGURATION_ENV];
  return file !== undefined && file !== '' ? readRunConfiguration(file) : configurationFromUserEnvironment(env);
}

let current: RunConfiguration | undefined;

/** The run configuration of this process, read and checked on first use, the same value after. */
export function runConfiguration(): RunConfiguration {
  current ??= loadRunConfiguration(process.env);
  return current;
}

/**
 * Makes `configuration` this process's: crh run, which built it from its
 * flags, works under the same value it hands its case processes.
 */
export function adoptRunConfiguration(configuration: RunConfiguration): void {
  current = configuration;
}

/**
 * Every field of an untrusted configuration checked: known fields only,
 * each of its type, paths absolute and free of NUL, the kernel's spec a
 * file or a `debian:` package. `names` maps a field to what the user calls
 * it (a variable) in the refusal.
 */
export function checkRunConfiguration(value: Record<string, unknown>, source: string, names: Record<string, string> = {}): RunConfiguration {
  const refuse = (field: string, why: string): never => {
    const named = Object.entries(names).find(([, f]) => f === field)?.[0];
    throw new RunConfigurationError(source, named ?? field, why);
  };
  const known = ['kernel', 'engines', 'accel', 'artifactsDir', 'verdictsFile'];
  for (const key of Object.keys(value)) if (!known.includes(key)) refuse(key, `not a field of a run configuration (${known.join(', ')})`);

  const engines = value.engines;
  if (!Array.isArray(engines) || engines.length === 0) refuse('engines', `${JSON.stringify(engines)}: give a list of one or both of ${ENGINES.join(', ')}`);
  for (const engine of engines as unknown[])
    if (!(ENGINES as readonly unknown[]).includes(engine)) refuse('engines', `${JSON.stringify(engine)} is not an engine (${ENGINES.join(' or ')})`);
  const repeated = (engines as Engine[]).find((e, i) => (engines as Engine[]).indexOf(e) !== i);
  if (repeated) refuse('engines', `${repeated} is named twice`);

  const accel = value.accel;
  if (accel !== undefined && !(ACCELERATOR_OVERRIDES as readonly unknown[]).includes(accel))
    refuse('accel', `${JSON.stringify(accel)}: must be tcg or kvm (or absent: decided by evidence)`);

  return {
    ...(value.kernel !== undefined
      ? { kernel: checkKernelChoice(value.kernel, (field, why) => refuse(field === '' ? 'kernel' : `kernel.${field}`, why)) }
      : {}),
    engines: ENGINES.filter((e) => (engines as Engine[]).includes(e)),
    ...(accel !== undefined ? { accel: accel as AcceleratorOverride } : {}),
    artifactsDir: absolutePath(value.artifactsDir, (why) => refuse('artifactsDir', why)),
    verdictsFile: absolutePath(value.verdictsFile, (why) => refuse('verdictsFile', why)),
  };
}

type Refusal = (field: string, why: string) => never;

function checkKernelChoice(value: unknown, refuse: Refusal): KernelChoice {
  if (!isRecord(value)) return refuse('', `${JSON.stringify(value)} is not an object`);
  const known = ['spec', 'label', 'systemMap', 'config', 'modulesDir'];
  for (const key of Object.keys(value)) if (!known.includes(key)) refuse(key, `not a field of a kernel choice (${known.join(', ')})`);
  const { spec, label } = value;
  if (typeof spec !== 'string' || spec === '') return refuse('spec', `${JSON.stringify(spec)}: give a bzImage path or debian:PACKAGE[@SUITE]`);
  if (spec.startsWith(DEBIAN_KERNEL_PREFIX)) {
    // The same check as --kernel: a Debian package name that apt-get cannot mistake for an option.
    try {
      resolveKernelFlag('kernel', spec);
    } catch (error) {
      refuse('spec', (error as Error).message);
    }
  } else {
    absolutePath(spec, (why) => refuse('spec', why));
  }
  if (label !== undefined && (typeof label !== 'string' || !KERNEL_LABEL.test(label)))
    refuse('label', `${JSON.stringify(label)} is not a kernel name (letters, digits, . _ -)`);
  const file = (field: 'systemMap' | 'config' | 'modulesDir'): Partial<KernelChoice> =>
    value[field] === undefined ? {} : { [field]: absolutePath(value[field], (why) => refuse(field, why)) };
  return { spec, ...(label !== undefined ? { label: label as string } : {}), ...file('systemMap'), ...file('config'), ...file('modulesDir') };
}

function absolutePath(value: unknown, refuse: (why: string) => never): string {
  if (typeof value !== 'string' || value === '') return refuse(`${JSON.stringify(value)} is not a path`);
  if (value.includes('\0')) return refuse('a path with a NUL byte');
  if (!path.isAbsolute(value)) return refuse(`${JSON.stringify(value)} is not an absolute path`);
  return path.normalize(value);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
