/**
 * The command lines of `crh repro` and `crh cr`, parsed into one request.
 * Everything wrong with a command line is a UsageError (exit 2) naming the
 * flag; nothing here touches a file or a guest.
 */
import { constants } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { KERNEL_USAGE, kernelFlagArgs, kernelOptions, resolveKernelFlag } from '../flags/kernel-flags.ts';
import { OMIT_USAGE, policyFromFlags, policyOptions, POLICY_USAGE } from '../flags/policy-flags.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { parseFault, type InjectedFault } from './fault-injection.ts';
import { UsageError } from './usage-error.ts';
import {
  parseRestoreElsewhere,
  RESTORE_ELSEWHERE_USAGE,
  restoreElsewhereFlags,
  restoreElsewhereOptions,
  type RestoreElsewhereRequest,
} from './restore-elsewhere.ts';
import { parseEngines } from '../flags/engine-flags.ts';
import { parseSweepFlags, SWEEP_USAGE, sweepFlags, sweepOptions, type SweepRequest } from './sweep-options.ts';

/** Where the checkpoint is taken. */
export type CheckpointPoint =
  /** the `hit`-th execution of an address (a DR0 execute breakpoint) */
  | { kind: 'symbol'; symbol: string; hit: number }
  /** `ms` after the program starts (it is interrupted there) */
  | { kind: 'after'; ms: number }
  /** once the program announces readiness (CRH_READY_FILE or a CRH-READY line) */
  | { kind: 'ready' };

/** Which checkpoint/restore runs the checkpointed run: crh's restore core, or CRIU in the guest. */
export type Engine = 'crh' | 'criu';
export const ENGINES: readonly Engine[] = ['crh', 'criu'];

export interface ReproRequest {
  command: 'repro' | 'cr';
  /** absent: crh */
  engine?: Engine;
  /**
   * --engine crh,criu: both engines, one after the other, on the same
   * program in one guest against the same uninterrupted run — `engine` is
   * then absent (crh's run, the policy switches apply to it) and CRIU's run
   * is made alongside, with its own verdict and bundle
   */
  engines?: readonly Engine[];
  /** repro: the C source */
  source?: string;
  /** cr: the prebuilt static binary */
  binary?: string;
  /** cr: files copied into the program's working directory in the guest */
  files: string[];
  /** the program's arguments (after `--`) */
  args: string[];
  /** repro: extra compiler arguments */
  cflags: string[];
  checkpoint: CheckpointPoint;
  /** delivered once the program is ready (when-ready) and again after the restore */
  finishSignal?: { name: string; number: number };
  /**
   * --pid-file: the program is a launcher and the process to checkpoint is
   * the one whose pid it writes to this file (a path in the guest, relative
   * to the program's working directory); ready once the launcher has exited 0
   * and the file names a live process (repro/pid-file.ts)
   */
  pidFile?: string;
  policy: RestorePolicy;
  /**
   * checkpoint → kill → restore this many times in a chain, each restored
   * process the one checkpointed next (1: once). Where the checkpoints fall:
   * cycleSchedule in runs.ts.
   */
  cycles: number;
  /** --inject-fault: an infrastructure failure made on purpose (fault-injection.ts); never carried by a bundle */
  fault?: InjectedFault;
  /** bound on each run of the program */
  timeoutMs: number;
  /** the bundle to write; a default under the artifacts directory when absent */
  out?: string;
  artifacts?: string;
  /** --kernel and friends by flag name, as absolute paths */
  kernel: Record<string, string>;
  /** --sweep: a checkpoint at every K-th of N instruction boundaries from the checkpoint symbol (sweep-options.ts) */
  sweep?: SweepRequest;
  /** --restore-cpu, --restore-kernel, --restore-anyway: restore in another guest (restore-elsewhere.ts) */
  elsewhere?: RestoreElsewhereRequest;
}

export const DEFAULT_TIMEOUT_MS = 60_000;
/** The most --cycles a request (or a bundle's rerun record) may ask for. */
export const MAX_CYCLES = 10_000;

export const REPRO_USAGE =
  'usage: crh repro FILE.c [--checkpoint-at SYMBOL|0xADDR [--hit N] | --checkpoint-after MS\n' +
  '                 | --when-ready [--pid-file FILE]] [--finish-signal SIG] [--cycles N]\n' +
  `                 ${POLICY_USAGE}\n` +
  '                 [--engine crh|criu|crh,criu] [--cflags "FLAGS"] [--timeout MS] [--out BUNDLE.tar] [--artifacts DIR]\n' +
  `                 ${KERNEL_USAGE}\n` +
  `                 ${RESTORE_ELSEWHERE_USAGE} [-- ARGS]\n` +
  `       crh repro FILE.c ${SWEEP_USAGE} [the same policy switches] [-- ARGS]\n` +
  '       crh repro --bundle BUNDLE.tar [--out BUNDLE.tar] [--artifacts DIR]\n' +
  '       crh cr --binary PATH [--file PATH]... [the same checkpoint and policy switches] [-- ARGS]\n' +
  '  --pid-file FILE (with --when-ready): the program is a launcher; checkpoint the daemon whose pid it writes\n' +
  '  to FILE (relative to its working directory) once it has exited 0; a daemon with children is refused\n' +
  "  --engine criu: CRIU (Debian trixie's, in the guest) dumps and restores the stopped process instead of\n" +
  "  crh's restore core; the policy switches describe the restore core and are a usage error with it.\n" +
  '  --engine crh,criu: both, in one guest against one uninterrupted run, the verdicts side by side and a\n' +
  "  bundle each (CRIU's beside BUNDLE as BUNDLE-criu.tar); the policy switches apply to crh's run\n" +
  `${OMIT_USAGE}\n` +
  '       for tests of crh itself: [--inject-fault PHASE:KIND] (docs/ci.md)\n' +
  '       (PHASE checkpoint|restore; KIND kill-qemu|kill-agent|drop-ssh|drop-agent|guest-panic)';

const options = {
  ...kernelOptions,
  ...policyOptions,
  'checkpoint-at': { type: 'string' },
  hit: { type: 'string' },
  'checkpoint-after': { type: 'string' },
  'when-ready': { type: 'boolean' },
  'finish-signal': { type: 'string' },
  'pid-file': { type: 'string' },
  cycles: { type: 'string' },
  'inject-fault': { type: 'string' },
  timeout: { type: 'string' },
  out: { type: 'string' },
  artifacts: { type: 'string' },
  cflags: { type: 'string' },
  binary: { type: 'string' },
  file: { type: 'string', multiple: true },
  bundle: { type: 'string' },
  ...sweepOptions,
  ...restoreElsewhereOptions,
  engine: { type: 'string' },
} as const;
export { options as reproOptions };

/** A bundle rerun: the request comes from the bundle. */
export interface BundleRerun {
  bundle: string;
  out?: string;
  artifacts?: string;
}

/** Parses `crh repro ...` (a request or a bundle rerun) or `crh cr ...`. */
export function parseReproArgs(command: 'repro' | 'cr', argv: readonly string[]): ReproRequest | BundleRerun {
  const split = argv.indexOf('--');
  const own = joinCflags(split < 0 ? [...argv] : argv.slice(0, split));
  const programArgs = split < 0 ? [] : argv.slice(split + 1);
  let parsed: ReturnType<typeof parseArgs<{ args: string[]; options: typeof options; allowPositionals: true }>>;
  try {
    parsed = parseArgs({ args: own, options, allowPositionals: true });
  } catch (error) {
    throw new UsageError(`${(error as Error).message}\n${REPRO_USAGE}`);
  }
  const { values, positionals } = parsed;

  if (values.bundle !== undefined) {
    if (command !== 'repro') throw new UsageError(`--bundle belongs to crh repro\n${REPRO_USAGE}`);
    const extra = Object.keys(values).filter((k) => !['bundle', 'out', 'artifacts'].includes(k));
    if (positionals.length > 0 || extra.length > 0 || programArgs.length > 0) {
      throw new UsageError(
        `--bundle reruns exactly what the bundle records; only --out and --artifacts may be added (got ${[...positionals, ...extra.map((k) => `--${k}`)].join(' ')})`,
      );
    }
    return {
      bundle: path.resolve(values.bundle),
      ...(values.out ? { out: path.resolve(values.out) } : {}),
      ...(values.artifacts ? { artifacts: path.resolve(values.artifacts) } : {}),
    };
  }

  let source: string | undefined;
  let binary: string | undefined;
  if (command === 'repro') {
    if (positionals.length !== 1) throw new UsageError(`crh repro takes one C source file (got ${positionals.length})\n${REPRO_USAGE}`);
    if (values.binary !== undefined || values.file !== undefined) throw new UsageError(`--binary and --file belong to crh cr\n${REPRO_USAGE}`);
    source = path.resolve(positionals[0]!);
  } else {
    if (values.binary === undefined) throw new UsageError(`crh cr needs --binary PATH\n${REPRO_USAGE}`);
    if (positionals.length > 0) throw new UsageError(`crh cr takes the program's arguments after --, not ${positionals.join(' ')}\n${REPRO_USAGE}`);
    if (values.cflags !== undefined) throw new UsageError('--cflags belongs to crh repro (crh cr runs a prebuilt binary)');
    binary = path.resolve(values.binary);
  }
  const files = (values.file ?? []).map((f) => path.resolve(f));
  const names = files.map((f) => path.basename(f));
  const clash = names.find((n, i) => names.indexOf(n) !== i);
  if (clash) throw new UsageError(`--file: two files are named ${clash}; each lands in the program's working directory under its own name`);

  if (values['finish-signal'] !== undefined && !values['when-ready']) {
    throw new UsageError(
      '--finish-signal goes with --when-ready: the signal is sent once the program is ready, in the uninterrupted run and after the restore',
    );
  }
  const pidFile = values['pid-file'];
  if (pidFile !== undefined) {
    if (!values['when-ready'])
      throw new UsageError('--pid-file goes with --when-ready: the daemon is checkpointed once the launcher has exited 0 and the file names it');
    checkPidFilePath(pidFile, (why) => new UsageError(`--pid-file: ${why}`));
  }
  const sweep = parseSweepFlags(values);
  const engines = parseEngine(values.engine);
  const engine: Engine = engines.length === 1 ? engines[0]! : 'crh';
  const withCriu = engines.includes('criu');
  const flagOf = engines.length > 1 ? '--engine crh,criu' : '--engine criu';
  if (withCriu && pidFile !== undefined) throw new UsageError(`--pid-file is crh's own attach; ${flagOf} takes the process crh spawned`);
  if (withCriu && values.cycles !== undefined && values.cycles !== '1')
    throw new UsageError(`--cycles chains crh's own checkpoints; with ${flagOf} a run takes one checkpoint`);
  if (withCriu && sweep) throw new UsageError(`--sweep restores through crh's restore core at every point; it goes without ${flagOf}`);
  if (engine === 'criu') {
    const given = Object.keys(policyOptions).filter((flag) => values[flag as keyof typeof policyOptions] !== undefined);
    if (given.length > 0) {
      throw new UsageError(
        `${given.map((f) => `--${f}`).join(', ')} ${given.length === 1 ? 'is a policy' : 'are policies'} of crh's restore core and cannot apply to --engine criu (CRIU restores by its own rules); drop ${given.length === 1 ? 'it' : 'them'} or use --engine crh`,
      );
    }
  }
  const elsewhere = parseRestoreElsewhere(values);
  if (elsewhere && withCriu)
    throw new UsageError(`--restore-cpu and --restore-kernel restore through crh's restore core; with ${flagOf} CRIU restores in the checkpoint's guest`);
  if (elsewhere && sweep)
    throw new UsageError('--sweep restores every checkpoint in the guest it took it in; it goes without --restore-cpu and --restore-kernel');
  if (elsewhere && values.cycles !== undefined && values.cycles !== '1')
    throw new UsageError('a restore in another guest moves the process once: --cycles goes without --restore-cpu and --restore-kernel');
  if (elsewhere && pidFile !== undefined)
    throw new UsageError(
      '--pid-file gives the daemon back its own descriptors 0-2, files in the guest it ran in: it goes without --restore-cpu and --restore-kernel',
    );
  let policy: RestorePolicy;
  try {
    policy = policyFromFlags(values);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  return {
    command,
    ...(engine === 'criu' ? { engine } : {}),
    ...(engines.length > 1 ? { engines } : {}),
    ...(source ? { source } : {}),
    ...(binary ? { binary } : {}),
    files,
    args: programArgs,
    cflags: values.cflags?.split(/\s+/).filter(Boolean) ?? [],
    checkpoint: sweep
      ? { kind: 'symbol', symbol: sweep.symbol, hit: values.hit === undefined ? 1 : positiveInteger('--hit', values.hit) }
      : checkpointPoint(values),
    ...(sweep ? { sweep } : {}),
    ...(values['finish-signal'] !== undefined ? { finishSignal: parseSignal(values['finish-signal']) } : {}),
    ...(pidFile !== undefined ? { pidFile } : {}),
    policy,
    cycles: values.cycles === undefined ? 1 : boundedCycles(values.cycles),
    ...(values['inject-fault'] !== undefined ? { fault: parseFault(values['inject-fault']) } : {}),
    timeoutMs: values.timeout === undefined ? DEFAULT_TIMEOUT_MS : positiveInteger('--timeout', values.timeout),
    ...(values.out ? { out: path.resolve(values.out) } : {}),
    ...(values.artifacts ? { artifacts: path.resolve(values.artifacts) } : {}),
    ...(elsewhere ? { elsewhere } : {}),
    kernel: Object.fromEntries(
      Object.keys(kernelOptions).flatMap((flag) => {
        const value = values[flag as keyof typeof kernelOptions];
        return typeof value === 'string' ? [[flag, resolveKernelFlag(flag, value)]] : [];
      }),
    ),
  };
}

/**
 * A pid file's path as a request or a bundle may give it: relative to the
 * program's working directory (or absolute), printable, no `..` component
 * (a bundle's must not point the agent elsewhere).
 */
export function checkPidFilePath(file: string, refuse: (why: string) => Error): void {
  if (!/^[A-Za-z0-9_.+\/-]{1,255}$/.test(file)) throw refuse(`"${file}" is not a plain path (letters, digits, _ . + - /; at most 255)`);
  if (file.split('/').includes('..')) throw refuse(`"${file}" has a .. component`);
}

/** crh, criu or both (crh first): flags/engine-flags.ts parseEngines, its refusals as usage errors. */
function parseEngine(text: string | undefined): Engine[] {
  if (text === undefined) return ['crh'];
  try {
    return parseEngines(text);
  } catch (error) {
    throw new UsageError(`${(error as Error).message}\n${REPRO_USAGE}`);
  }
}

/** Compiler flags start with a dash, which parseArgs refuses as a separate value: `--cflags -lm` becomes `--cflags=-lm`. */
function joinCflags(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--cflags' && i + 1 < args.length) out.push(`--cflags=${args[++i]}`);
    else out.push(args[i]!);
  }
  return out;
}

function checkpointPoint(values: { 'checkpoint-at'?: string; hit?: string; 'checkpoint-after'?: string; 'when-ready'?: boolean }): CheckpointPoint {
  const given = [
    values['checkpoint-at'] !== undefined && '--checkpoint-at',
    values['checkpoint-after'] !== undefined && '--checkpoint-after',
    values['when-ready'] && '--when-ready',
  ].filter(Boolean);
  if (given.length !== 1) {
    throw new UsageError(
      `say where to checkpoint with exactly one of --checkpoint-at SYMBOL, --checkpoint-after MS, --when-ready${given.length > 1 ? ` (got ${given.join(' and ')})` : ''}\n${REPRO_USAGE}`,
    );
  }
  if (values.hit !== undefined && values['checkpoint-at'] === undefined) throw new UsageError('--hit N counts executions of --checkpoint-at SYMBOL');
  if (values['checkpoint-at'] !== undefined) {
    const symbol = values['checkpoint-at'];
    if (!/^(?:[A-Za-z_.$][\w.$@]*|0x[0-9a-fA-F]+)$/.test(symbol))
      throw new UsageError(`--checkpoint-at: "${symbol}" is neither a symbol name nor a 0x address`);
    return { kind: 'symbol', symbol, hit: values.hit === undefined ? 1 : positiveInteger('--hit', values.hit) };
  }
  if (values['checkpoint-after'] !== undefined) return { kind: 'after', ms: positiveInteger('--checkpoint-after', values['checkpoint-after']) };
  return { kind: 'ready' };
}

function boundedCycles(text: string): number {
  const cycles = positiveInteger('--cycles', text);
  if (cycles > MAX_CYCLES) throw new UsageError(`--cycles: ${cycles} is more than ${MAX_CYCLES}`);
  return cycles;
}

function positiveInteger(flag: string, text: string): number {
  if (!/^[1-9]\d{0,8}$/.test(text)) throw new UsageError(`${flag}: "${text}" is not a positive whole number`);
  return Number(text);
}

/** "USR1", "SIGUSR1" or "10". */
export function parseSignal(text: string): { name: string; number: number } {
  const signals = constants.signals as Record<string, number>;
  if (/^\d+$/.test(text)) {
    const number = Number(text);
    const name = Object.keys(signals).find((n) => signals[n] === number);
    if (!name || number < 1 || number > 64) throw new UsageError(`--finish-signal: ${text} is not a signal number`);
    return { name, number };
  }
  const name = text.toUpperCase().startsWith('SIG') ? text.toUpperCase() : `SIG${text.toUpperCase()}`;
  const number = signals[name];
  if (number === undefined) throw new UsageError(`--finish-signal: unknown signal "${text}"`);
  return { name, number };
}

/** The switches that re-create `request` (paths left to the caller), for a rerun command line. */
export function requestFlags(request: ReproRequest): string[] {
  const p = request.policy;
  const flags: string[] = [];
  const c = request.checkpoint;
  if (request.sweep) flags.push(...sweepFlags(request.sweep), '--hit', String(c.kind === 'symbol' ? c.hit : 1));
  else if (c.kind === 'symbol') flags.push('--checkpoint-at', c.symbol, '--hit', String(c.hit));
  else if (c.kind === 'after') flags.push('--checkpoint-after', String(c.ms));
  else flags.push('--when-ready');
  if (request.pidFile !== undefined) flags.push('--pid-file', request.pidFile);
  if (request.finishSignal) flags.push('--finish-signal', request.finishSignal.name);
  if (request.cycles > 1) flags.push('--cycles', String(request.cycles));
  if (request.engine === 'criu') {
    flags.push('--engine', 'criu');
  } else {
    flags.push(
      '--rf',
      p.rf,
      '--regs',
      p.regs ?? 'full',
      '--restorer',
      p.restorer ?? 'ptrace',
      '--rseq-fixup',
      p.rseqFixup ?? 'on',
      '--syscall-restart',
      p.syscallRestart ?? 'on',
    );
    if (p.omit?.length) flags.push('--omit', p.omit.join(','));
  }
  if (request.cflags.length > 0) flags.push(`--cflags=${request.cflags.join(' ')}`);
  flags.push('--timeout', String(request.timeoutMs));
  flags.push(...kernelFlagArgs(request.kernel));
  if (request.elsewhere) flags.push(...restoreElsewhereFlags(request.elsewhere));
  return flags;
}
