/**
 * The rerun record of a bundle: what `crh repro --bundle` may take from a
 * bundle someone sent, as typed data — never a command line. It names the
 * program and its files by bundle entry, and carries only the checkpoint
 * point, the policy switches, the timeout, the finish signal, the cycles and the
 * program's arguments. Compiler flags, kernel and module paths, artifact
 * and output directories cannot be expressed in it; a record that tries is
 * refused naming the field, as is every value out of bounds.
 */
import { policyFromFlags } from '../flags/policy-flags.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { SAFE_SEGMENT } from './bundle.ts';
import { checkPidFilePath, MAX_CYCLES, parseSignal, type CheckpointPoint, type ReproRequest } from './options.ts';
import type { BundleInputs } from './rerun.ts';
import { BundleRejectedError, UsageError } from './usage-error.ts';
import { SWEEP_MAX_COUNT } from './sweep-options.ts';
import { parseCpuModel } from './restore-elsewhere.ts';

export const RERUN_RECORD_VERSION = 1;

/** Bounds a rerun record must keep: generous for a reproducer, small enough that no value is absurd. */
export const RERUN_LIMITS = {
  /** per run of the program; the CLI's --timeout default is 60 s */
  timeoutMs: 30 * 60_000,
  hit: 1_000_000,
  args: 256,
  argChars: 4096,
  files: 64,
  symbolChars: 256,
  cycles: MAX_CYCLES,
} as const;

/** Every switch spelled out, defaults included: a later change of a default does not change what a bundle reruns. */
export interface RerunPolicy {
  rf: string;
  regs: string;
  restorer: string;
  rseqFixup: string;
  syscallRestart: string;
  omit: string[];
}

export interface RerunRecord {
  version: typeof RERUN_RECORD_VERSION;
  /** absent: crh's restore core; "criu": CRIU in the guest */
  engine?: 'criu';
  /** repro: compile `source` (without compiler flags) and run it; cr: run `binary` as carried */
  command: 'repro' | 'cr';
  /** repro: the bundle entry `source/NAME.c` */
  source?: string;
  /** cr: the bundle entry `binary/NAME` */
  binary?: string;
  /** bundle entries `files/NAME`, copied into the program's working directory */
  files: string[];
  checkpoint: CheckpointPoint;
  policy: RerunPolicy;
  /** a signal name, with a `ready` checkpoint only */
  finishSignal?: string;
  /** --pid-file: a path in the guest relative to the working directory, with a `ready` checkpoint only */
  pidFile?: string;
  timeoutMs: number;
  /** checkpoint → kill → restore cycles in a chain; absent in records made before --cycles (one cycle) */
  cycles?: number;
  /** the program's arguments */
  args: string[];
  /** --sweep: boundaries walked from the checkpoint symbol and the checkpoint spacing (sweep-options.ts) */
  sweep?: { count: number; every: number };
  /** --restore-cpu: the QEMU CPU model of the restore guest (a restore kernel, like --kernel, is never taken from a bundle) */
  restoreCpu?: string;
  /** --restore-anyway */
  restoreAnyway?: boolean;
}

/**
 * The record that reruns `request` from its bundle. A reproducer built with
 * --cflags is rerun from the binary the bundle carries: a bundle may not
 * hand compiler flags to the compiler of whoever reruns it.
 */
export function rerunRecord(request: ReproRequest, inputs: BundleInputs): RerunRecord {
  const p = request.policy;
  const fromSource = request.command === 'repro' && request.cflags.length === 0 && inputs.source !== undefined;
  return {
    version: RERUN_RECORD_VERSION,
    ...(request.engine === 'criu' ? { engine: 'criu' as const } : {}),
    command: fromSource ? 'repro' : 'cr',
    ...(fromSource ? { source: inputs.source! } : { binary: inputs.binary }),
    files: inputs.files,
    checkpoint: request.checkpoint,
    policy: {
      rf: p.rf,
      regs: p.regs ?? 'full',
      restorer: p.restorer ?? 'ptrace',
      rseqFixup: p.rseqFixup ?? 'on',
      syscallRestart: p.syscallRestart ?? 'on',
      omit: [...(p.omit ?? [])],
    },
    ...(request.finishSignal ? { finishSignal: request.finishSignal.name } : {}),
    ...(request.pidFile !== undefined ? { pidFile: request.pidFile } : {}),
    timeoutMs: request.timeoutMs,
    cycles: request.cycles,
    args: request.args,
    ...(request.sweep ? { sweep: { count: request.sweep.count, every: request.sweep.every } } : {}),
    ...(request.elsewhere?.cpu !== undefined ? { restoreCpu: request.elsewhere.cpu } : {}),
    ...(request.elsewhere?.anyway ? { restoreAnyway: true } : {}),
  };
}

/** Fields a hostile record might carry, refused with the reason rather than as merely unknown. */
const NEVER_FROM_A_BUNDLE: Record<string, string> = {
  cflags: 'compiler flags are never taken from a bundle (a flag such as -wrapper runs any program)',
  compiler: 'compiler flags are never taken from a bundle (a flag such as -wrapper runs any program)',
  kernel: 'kernel and module paths are never taken from a bundle',
  'system-map': 'kernel and module paths are never taken from a bundle',
  systemMap: 'kernel and module paths are never taken from a bundle',
  'kernel-config': 'kernel and module paths are never taken from a bundle',
  kernelConfig: 'kernel and module paths are never taken from a bundle',
  modules: 'kernel and module paths are never taken from a bundle',
  restoreKernel: 'kernel and module paths are never taken from a bundle',
  'restore-kernel': 'kernel and module paths are never taken from a bundle',
  artifacts: 'where crh writes is never taken from a bundle (give --artifacts yourself)',
  out: 'where crh writes is never taken from a bundle (give --out yourself)',
};

const RECORD_KEYS = [
  'version',
  'engine',
  'command',
  'source',
  'binary',
  'files',
  'checkpoint',
  'policy',
  'finishSignal',
  'pidFile',
  'timeoutMs',
  'cycles',
  'args',
  'sweep',
  'restoreCpu',
  'restoreAnyway',
];
const POLICY_KEYS = ['rf', 'regs', 'restorer', 'rseqFixup', 'syscallRestart', 'omit'];

/**
 * Checks a rerun record read from a bundle: exactly the known fields, each of
 * its type and within its bounds, entry names plain and in their directory.
 * Throws BundleRejectedError naming the field (`rerun.cflags`,
 * `rerun.files[0]`, `rerun.timeoutMs`); reads nothing but `raw`.
 */
export function parseRerunRecord(raw: unknown, bundle: string): RerunRecord {
  const reject = (field: string, why: string): never => {
    throw new BundleRejectedError(bundle, `verdict.json rerun${field}`, why);
  };
  const record = object(raw, '', reject);
  onlyKeys(record, RECORD_KEYS, '', reject);
  if (record.version !== RERUN_RECORD_VERSION) reject('.version', `${show(record.version)}; this crh reads rerun records of version ${RERUN_RECORD_VERSION}`);
  const command = record.command;
  if (command !== 'repro' && command !== 'cr') return reject('.command', `${show(command)}, expected "repro" or "cr"`);
  if (record.engine !== undefined && record.engine !== 'criu') reject('.engine', `${show(record.engine)}, expected "criu" or no field (crh)`);

  const program = command === 'repro' ? 'source' : 'binary';
  const other = command === 'repro' ? 'binary' : 'source';
  if (record[other] !== undefined) reject(`.${other}`, `a ${command} record names its program by ${program} only`);
  const programEntry = entryName(record[program], program, `.${program}`, reject);
  if (command === 'repro' && !programEntry.endsWith('.c')) reject('.source', `${show(programEntry)} is not a .c file`);

  if (!Array.isArray(record.files)) return reject('.files', 'must be a list of bundle entries files/NAME');
  if (record.files.length > RERUN_LIMITS.files) reject('.files', `${record.files.length} files, more than ${RERUN_LIMITS.files}`);
  if (command === 'repro' && record.files.length > 0) reject('.files', 'a repro record takes no files (crh repro has no --file)');
  const files = record.files.map((f: unknown, i: number) => entryName(f, 'files', `.files[${i}]`, reject));
  const twice = files.find((f, i) => files.indexOf(f) !== i);
  if (twice) reject('.files', `${show(twice)} is named twice`);

  const checkpoint = checkpointPoint(record.checkpoint, reject);
  const timeoutMs = boundedInteger(record.timeoutMs, '.timeoutMs', RERUN_LIMITS.timeoutMs, reject);
  const cycles = record.cycles === undefined ? undefined : boundedInteger(record.cycles, '.cycles', RERUN_LIMITS.cycles, reject);

  let finishSignal: string | undefined;
  if (record.finishSignal !== undefined) {
    if (typeof record.finishSignal !== 'string' || !/^[A-Z0-9+]{1,16}$/.test(record.finishSignal))
      return reject('.finishSignal', `${show(record.finishSignal)} is not a signal name`);
    if (checkpoint.kind !== 'ready') reject('.finishSignal', 'goes with a "ready" checkpoint only');
    try {
      finishSignal = parseSignal(record.finishSignal).name;
    } catch (error) {
      reject('.finishSignal', (error as Error).message);
    }
  }

  let pidFile: string | undefined;
  if (record.pidFile !== undefined) {
    if (typeof record.pidFile !== 'string') return reject('.pidFile', `${show(record.pidFile)} is not a path`);
    if (checkpoint.kind !== 'ready') reject('.pidFile', 'goes with a "ready" checkpoint only');
    if (record.engine === 'criu') reject('.pidFile', "is crh's own attach, not the criu engine's");
    checkPidFilePath(record.pidFile, (why) => reject('.pidFile', why));
    pidFile = record.pidFile;
  }

  return {
    version: RERUN_RECORD_VERSION,
    ...(record.engine === 'criu' ? { engine: 'criu' as const } : {}),
    command,
    [program]: programEntry,
    files,
    checkpoint,
    policy: rerunPolicy(record.policy, reject),
    ...(finishSignal ? { finishSignal } : {}),
    ...(pidFile !== undefined ? { pidFile } : {}),
    timeoutMs,
    ...(cycles !== undefined ? { cycles } : {}),
    args: programArgs(record.args, reject),
    ...(record.sweep !== undefined ? { sweep: sweepRecord(record.sweep, checkpoint, reject) } : {}),
    ...restoreElsewhereRecord(record, reject),
  };
}

/** --restore-cpu and --restore-anyway from a record: a CPU model as QEMU spells one, a boolean that needs it. */
function restoreElsewhereRecord(record: Record<string, unknown>, reject: Reject): Pick<RerunRecord, 'restoreCpu' | 'restoreAnyway'> {
  let restoreCpu: string | undefined;
  if (record.restoreCpu !== undefined) {
    if (typeof record.restoreCpu !== 'string') return reject('.restoreCpu', `${show(record.restoreCpu)} is not a CPU model`);
    try {
      restoreCpu = parseCpuModel('restoreCpu', record.restoreCpu);
    } catch (error) {
      reject('.restoreCpu', (error as Error).message);
    }
  }
  if (record.restoreAnyway !== undefined && record.restoreAnyway !== true) reject('.restoreAnyway', `${show(record.restoreAnyway)}: true or no field`);
  if (record.restoreAnyway === true && restoreCpu === undefined) reject('.restoreAnyway', 'goes with restoreCpu');
  return { ...(restoreCpu !== undefined ? { restoreCpu } : {}), ...(record.restoreAnyway === true ? { restoreAnyway: true } : {}) };
}

/** A sweep's bounds: at most SWEEP_MAX_COUNT boundaries, a spacing no larger than the count, from a symbol checkpoint only. */
function sweepRecord(raw: unknown, checkpoint: CheckpointPoint, reject: Reject): { count: number; every: number } {
  const sweep = object(raw, '.sweep', reject);
  onlyKeys(sweep, ['count', 'every'], '.sweep', reject);
  if (checkpoint.kind !== 'symbol') reject('.sweep', 'goes with a "symbol" checkpoint only (the sweep starts at its execution)');
  const count = boundedInteger(sweep.count, '.sweep.count', SWEEP_MAX_COUNT, reject);
  return { count, every: boundedInteger(sweep.every, '.sweep.every', count, reject) };
}

/** The restore policy a (checked) record asks for. */
export function policyOf(record: RerunRecord): RestorePolicy {
  const p = record.policy;
  return policyFromFlags({
    rf: p.rf,
    regs: p.regs,
    restorer: p.restorer,
    'rseq-fixup': p.rseqFixup,
    'syscall-restart': p.syscallRestart,
    ...(p.omit.length ? { omit: p.omit.join(',') } : {}),
  });
}

type Reject = (field: string, why: string) => never;

function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function object(raw: unknown, field: string, reject: Reject): Record<string, unknown> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return reject(field, `must be an object, not ${show(raw)}`);
  return raw as Record<string, unknown>;
}

function onlyKeys(value: Record<string, unknown>, known: readonly string[], field: string, reject: Reject): void {
  for (const key of Object.keys(value)) {
    if (known.includes(key)) continue;
    reject(`${field}.${key}`, NEVER_FROM_A_BUNDLE[key] ?? `unknown field (a rerun record of version ${RERUN_RECORD_VERSION} has ${known.join(', ')})`);
  }
}

/** A bundle entry `dir/NAME`: a plain name in its own directory of the bundle, never a path. */
function entryName(value: unknown, dir: string, field: string, reject: Reject): string {
  if (typeof value !== 'string') return reject(field, `must be a bundle entry ${dir}/NAME, not ${show(value)}`);
  if (!new RegExp(`^${dir}/${SAFE_SEGMENT}$`).test(value)) {
    return reject(field, `${show(value)} is not a bundle entry ${dir}/NAME (a plain name: no "/" or ".." beyond ${dir}/, no absolute path)`);
  }
  return value;
}

function boundedInteger(value: unknown, field: string, max: number, reject: Reject): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > max)
    return reject(field, `${show(value)} is not a whole number from 1 to ${max}`);
  return value;
}

function checkpointPoint(raw: unknown, reject: Reject): CheckpointPoint {
  const point = object(raw, '.checkpoint', reject);
  if (point.kind === 'symbol') {
    onlyKeys(point, ['kind', 'symbol', 'hit'], '.checkpoint', reject);
    const symbol = point.symbol;
    if (typeof symbol !== 'string' || symbol.length > RERUN_LIMITS.symbolChars || !/^(?:[A-Za-z_.$][\w.$@]*|0x[0-9a-fA-F]{1,16})$/.test(symbol)) {
      return reject('.checkpoint.symbol', `${show(symbol)} is neither a symbol name nor a 0x address`);
    }
    return { kind: 'symbol', symbol, hit: boundedInteger(point.hit, '.checkpoint.hit', RERUN_LIMITS.hit, reject) };
  }
  if (point.kind === 'after') {
    onlyKeys(point, ['kind', 'ms'], '.checkpoint', reject);
    return { kind: 'after', ms: boundedInteger(point.ms, '.checkpoint.ms', RERUN_LIMITS.timeoutMs, reject) };
  }
  if (point.kind === 'ready') {
    onlyKeys(point, ['kind'], '.checkpoint', reject);
    return { kind: 'ready' };
  }
  return reject('.checkpoint.kind', `${show(point.kind)}, expected "symbol", "after" or "ready"`);
}

function rerunPolicy(raw: unknown, reject: Reject): RerunPolicy {
  const p = object(raw, '.policy', reject);
  onlyKeys(p, POLICY_KEYS, '.policy', reject);
  const text = (key: string): string =>
    typeof p[key] === 'string' && (p[key] as string).length <= 32 ? (p[key] as string) : reject(`.policy.${key}`, `must be a policy name, not ${show(p[key])}`);
  if (!Array.isArray(p.omit) || p.omit.length > 32 || !p.omit.every((o) => typeof o === 'string' && /^[a-z-]{1,32}$/.test(o)))
    return reject('.policy.omit', `must be a list of names, not ${show(p.omit)}`);
  const policy: RerunPolicy = {
    rf: text('rf'),
    regs: text('regs'),
    restorer: text('restorer'),
    rseqFixup: text('rseqFixup'),
    syscallRestart: text('syscallRestart'),
    omit: p.omit as string[],
  };
  try {
    policyOf({ policy } as RerunRecord);
  } catch (error) {
    if (!(error instanceof RangeError || error instanceof UsageError)) throw error;
    reject('.policy', error.message);
  }
  return policy;
}

function programArgs(raw: unknown, reject: Reject): string[] {
  if (!Array.isArray(raw)) return reject('.args', 'must be a list of strings');
  if (raw.length > RERUN_LIMITS.args) reject('.args', `${raw.length} arguments, more than ${RERUN_LIMITS.args}`);
  raw.forEach((a: unknown, i) => {
    // execve cannot pass a NUL inside an argument.
    if (typeof a !== 'string' || a.length > RERUN_LIMITS.argChars || a.includes('\0'))
      reject(`.args[${i}]`, `must be a string of at most ${RERUN_LIMITS.argChars} characters without NUL, not ${show(a)}`);
  });
  return raw as string[];
}
