/**
 * The command line of `crh zdtm`, parsed into one request. Everything wrong
 * with it is a UsageError (exit 2) naming the flag; nothing here touches a
 * file or a guest.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { KERNEL_USAGE, kernelOptions, resolveKernelFlag } from '../flags/kernel-flags.ts';
import { OMIT_USAGE, policyFromFlags, policyOptions, POLICY_USAGE } from '../flags/policy-flags.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { UsageError } from '../repro/usage-error.ts';
import { parseRestoreElsewhere, RESTORE_ELSEWHERE_USAGE, restoreElsewhereOptions, type RestoreElsewhereRequest } from '../repro/restore-elsewhere.ts';
import { parseEngines } from '../flags/engine-flags.ts';
import type { Engine } from '../flags/run-configuration.ts';

export interface ZdtmRequest {
  /** host paths of the test binaries (static x86-64), run one after another in one guest */
  binaries: string[];
  /** the tests' arguments (after `--`), after --pidfile and --outfile */
  args: string[];
  /** files copied into the fresh working directory before every run */
  files: string[];
  policy: RestorePolicy;
  /** which engines checkpoint and restore each test, in crh-first order (--engine; crh alone by default) */
  engines: Engine[];
  /** checkpoint → kill → restore this many times before SIGTERM */
  iters: number;
  /** bound on each wait: the launcher, the end after SIGTERM */
  timeoutMs: number;
  /** how long the daemon runs after it is ready before the checkpoint (and, natively, before SIGTERM) */
  settleMs: number;
  artifacts?: string;
  json?: string;
  junit?: string;
  /** --kernel and friends by flag name, as absolute paths */
  kernel: Record<string, string>;
  /** --restore-cpu, --restore-kernel, --restore-anyway: each test restored in another guest (repro/restore-elsewhere.ts) */
  elsewhere?: RestoreElsewhereRequest;
}

export const DEFAULT_TIMEOUT_MS = 60_000;
export const DEFAULT_SETTLE_MS = 200;
export const MAX_ITERS = 1000;

export const ZDTM_USAGE =
  'usage: crh zdtm BINARY... [--iters N] [--file PATH]... [--settle MS] [--timeout MS]\n' +
  `                 ${POLICY_USAGE}\n` +
  '                 [--engine crh|criu|crh,criu] [--artifacts DIR] [--json FILE] [--junit FILE]\n' +
  `                 ${KERNEL_USAGE}\n` +
  `                 ${RESTORE_ELSEWHERE_USAGE} [-- ARGS]\n` +
  `${OMIT_USAGE}\n` +
  "  run tests that follow CRIU's ZDTM protocol (your own ZDTM build, static): each in a fresh working\n" +
  '  directory as `BINARY --pidfile=T.pid --outfile=T.out ARGS` with a clean environment; ready when the\n' +
  '  launcher exited 0 and T.pid exists. Each test runs natively first (no checkpoint); then the process\n' +
  '  T.pid names is checkpointed, killed and restored with the same pid N times (--iters, default 1),\n' +
  '  sent SIGTERM and waited for; the verdict is the word PASS among the last lines of T.out (or\n' +
  '  T.out.inprogress). --settle: ms the test runs once ready before the first checkpoint (default 200).\n' +
  '  --restore-cpu/--restore-kernel: restore in a second guest of that CPU model/kernel (the working\n' +
  "  directory and the daemon's own output files carried over), once (--iters 1); one lacking what the\n" +
  '  test depends on is refused naming it (a C/R failure, exit 1) unless --restore-anyway.\n' +
  '  Exit 0 every test passed as natively, 1 one failed under checkpoint/restore, 2 one fails natively\n' +
  "  (or a usage error), 69 infrastructure. --json/--junit write crh run's report formats.\n" +
  "  --engine criu: CRIU (Debian trixie's, in the guest) dumps the tree rooted at T.pid's pid and restores it\n" +
  '  (criu dump -t PID --shell-job, criu restore -d), taken back under the agent and judged by T.out the same\n' +
  "  way; crh,criu runs both, one row per engine side by side. The policy switches describe crh's restore core:\n" +
  "  a usage error with criu alone, applied to crh's rows only with crh,criu";

export const zdtmOptions = {
  ...kernelOptions,
  ...policyOptions,
  ...restoreElsewhereOptions,
  iters: { type: 'string' },
  file: { type: 'string', multiple: true },
  settle: { type: 'string' },
  timeout: { type: 'string' },
  artifacts: { type: 'string' },
  json: { type: 'string' },
  junit: { type: 'string' },
  engine: { type: 'string' },
} as const;

export function parseZdtmArgs(argv: readonly string[]): ZdtmRequest {
  const split = argv.indexOf('--');
  const own = split < 0 ? [...argv] : argv.slice(0, split);
  const args = split < 0 ? [] : argv.slice(split + 1);
  let parsed: ReturnType<typeof parseArgs<{ args: string[]; options: typeof zdtmOptions; allowPositionals: true }>>;
  try {
    parsed = parseArgs({ args: own, options: zdtmOptions, allowPositionals: true });
  } catch (error) {
    throw new UsageError(`${(error as Error).message}\n${ZDTM_USAGE}`);
  }
  const { values, positionals } = parsed;
  if (positionals.length === 0) throw new UsageError(`crh zdtm needs at least one test BINARY\n${ZDTM_USAGE}`);
  const binaries = positionals.map((p) => path.resolve(p));
  const names = binaries.map((b) => path.basename(b));
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new UsageError(`two tests are named ${twice}; each is copied into the guest under its own name`);
  const files = (values.file ?? []).map((f) => path.resolve(f));
  const fileNames = files.map((f) => path.basename(f));
  const clash = fileNames.find((n, i) => fileNames.indexOf(n) !== i || ['T.pid', 'T.out', 'T.out.inprogress'].includes(n));
  if (clash)
    throw new UsageError(
      `--file: ${clash} is named twice, or names a file of the protocol (T.pid, T.out); each lands in the working directory under its own name`,
    );
  const iters = values.iters === undefined ? 1 : positiveInteger('--iters', values.iters);
  if (iters > MAX_ITERS) throw new UsageError(`--iters: ${iters} is more than ${MAX_ITERS}`);
  const elsewhere = parseRestoreElsewhere(values);
  if (elsewhere && iters > 1) throw new UsageError('a restore in another guest moves the test once: --iters goes without --restore-cpu and --restore-kernel');
  const engines = parseEngineFlag(values.engine);
  if (!engines.includes('crh')) {
    const given = Object.keys(policyOptions).filter((flag) => values[flag as keyof typeof policyOptions] !== undefined);
    if (given.length > 0)
      throw new UsageError(
        `${given.map((f) => `--${f}`).join(', ')}: policies of crh's restore core, which --engine criu does not run (CRIU restores by its own rules)`,
      );
  }
  if (elsewhere && engines.includes('criu'))
    throw new UsageError("--restore-cpu/--restore-kernel move the test through crh's restore core: not with --engine criu");
  return {
    binaries,
    args,
    files,
    policy: policyFromFlags(values),
    engines,
    iters,
    timeoutMs: values.timeout === undefined ? DEFAULT_TIMEOUT_MS : positiveInteger('--timeout', values.timeout),
    settleMs: values.settle === undefined ? DEFAULT_SETTLE_MS : positiveInteger('--settle', values.settle),
    ...(values.artifacts ? { artifacts: path.resolve(values.artifacts) } : {}),
    ...(values.json ? { json: path.resolve(values.json) } : {}),
    ...(values.junit ? { junit: path.resolve(values.junit) } : {}),
    kernel: Object.fromEntries(
      Object.keys(kernelOptions).flatMap((flag) => {
        const value = values[flag as keyof typeof kernelOptions];
        return typeof value === 'string' ? [[flag, resolveKernelFlag(flag, value)]] : [];
      }),
    ),
    ...(elsewhere ? { elsewhere } : {}),
  };
}

function parseEngineFlag(text: string | undefined): Engine[] {
  if (text === undefined) return ['crh'];
  try {
    return parseEngines(text);
  } catch (error) {
    throw new UsageError(`${(error as Error).message}\n${ZDTM_USAGE}`);
  }
}

function positiveInteger(flag: string, text: string): number {
  if (!/^[1-9]\d{0,8}$/.test(text)) throw new UsageError(`${flag}: "${text}" is not a positive whole number`);
  return Number(text);
}
