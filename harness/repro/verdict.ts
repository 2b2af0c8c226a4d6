/**
 * verdict.json of a bundle: the verdict, what it rests on (both runs, the
 * mismatches, the restore's own report), where the checkpoint was taken, the
 * platform, and the arguments that rerun it.
 */
import { describePolicy } from '../restore/policy.ts';
import type { Difference } from '../restore/restore.ts';
import { sha256 } from '../util/hash.ts';
import { hex } from '../x86/registers.ts';
import { comparePerturbation, compareRuns, describePerturbation, describeStatus, summarize, type Mismatch, type Perturbation } from './compare.ts';
import type { GuestRuns } from './guest-runs.ts';
import type { Checkpointed } from './runs.ts';
import type { CheckpointPoint, ReproRequest } from './options.ts';
import type { PreparedProgram } from './prepare.ts';
import { rerunArgs, type BundleInputs } from './rerun.ts';
import { parseRerunRecord, rerunRecord, type RerunRecord } from './rerun-record.ts';
import { BundleRejectedError } from './usage-error.ts';

export const VERDICT_FORMAT = 'cr-harness-repro-verdict';
/** 2: `rerun` is a typed record (rerun-record.ts), no longer a command line; the command line is `rerunCommand`. */
export const VERDICT_VERSION = 2;

export interface RunView {
  status: string;
  output: string;
  /** executions of the checkpoint address (breakpoint checkpoints only) */
  hits?: number;
}

export interface ReproVerdict {
  format: typeof VERDICT_FORMAT;
  version: number;
  createdAt: string;
  pass: boolean;
  /**
   * The uninterrupted traced run differed from the native run: the harness
   * changed what it observes, so no verdict about the restore is given (never
   * a pass; exit code 3). Absent in bundles written before the native run.
   */
  perturbed?: boolean;
  summary: string;
  command: 'repro' | 'cr';
  /** which checkpoint/restore ran (absent in bundles written before the criu engine: crh) */
  engine?: 'crh' | 'criu';
  /** engine criu: its version and what its dump and restore cost (host wall time, one SSH exec round trip included) */
  criu?: { version: string; dumpMs: number; restoreMs: number; imageBytes: number; debugRegisters?: { dr0: string; dr7: string } };
  program: {
    name: string;
    /** bundle paths */
    source?: string;
    binary: string;
    files: string[];
    sha256: string;
    /** guest path, argv and envp it ran with */
    guestPath: string;
    argv: string[];
    envp: string[];
    compiler?: string[];
  };
  checkpoint: {
    point: CheckpointPoint;
    /** the DR0 address of a symbol checkpoint */
    address?: string;
    stoppedBy?: string;
    rip?: string;
    pid?: number;
    restoredPid?: number;
    rewound?: string;
  };
  policy: string;
  finishSignal?: string;
  /** the program with no tracer and no breakpoint (its pid is whatever fork gave) */
  native?: RunView & { pid: number; agreed: boolean; differences: Perturbation[] };
  reference: RunView & { pid: number; elapsedMs: number };
  restored?: RunView;
  mismatches: Mismatch[];
  restoreError?: string;
  /** what the kernel accepted differently from the restore plan */
  restoreDifferences: Difference[];
  /** what a reader of the verdict should know: a rewound system call, a pid that could not be kept */
  notes: string[];
  platform: Record<string, string | number | boolean | null>;
  /** what `crh repro --bundle` reruns: data, checked field by field when read back */
  rerun: RerunRecord;
  /** the crh arguments rerun.sh runs ({bundle}/... paths), for a person to read: never read back by crh */
  rerunCommand: string[];
  timingsMs: Record<string, number>;
  /** --cycles: each checkpoint → restore of the chain and what it cost; absent in bundles made before --cycles */
  cycles?: CyclesView;
}

export interface CyclesView {
  asked: number;
  /** cycles whose checkpoint was taken (fewer than asked when a restore failed or the program ended early) */
  done: number;
  /** the first cycle that went wrong: its restore failed, its restored registers differ from its image, or its process ended before the next point; absent when none did */
  firstWrong?: { cycle: number; why: string };
  /** per cycle, in order */
  each: Array<{ cycle: number; checkpointMs: number; restoreMs?: number; imageBytes: number; rip: string; registersDiffer?: string[]; restoreError?: string }>;
  /** median, min and max over the cycles */
  checkpointMs: Spread;
  restoreMs?: Spread;
}

export interface Spread {
  median: number;
  min: number;
  max: number;
}

export function spread(values: readonly number[]): Spread | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]! };
}

/**
 * The first cycle of a chain that went wrong, and how. The chain's verdict
 * still rests on the final result; this says where to look. A register that
 * differs is named only when the final result differs too or the cycle is a
 * failed restore — a scratch register a policy legitimately leaves is no
 * finding on its own.
 */
export function firstWrongCycle(checkpointed: Checkpointed, resultDiffers: boolean): { cycle: number; why: string } | undefined {
  for (const c of checkpointed.cycles) {
    if (c.restoreError !== undefined) return { cycle: c.cycle, why: `its restore failed: ${c.restoreError.split('\n')[0]}` };
    if (resultDiffers && c.registersDiffer && c.registersDiffer.length > 0) {
      return { cycle: c.cycle, why: `the restored process did not hold the image's ${c.registersDiffer.join(', ')}` };
    }
    if (checkpointed.endedAfterCycle === c.cycle) return { cycle: c.cycle, why: `the restored process ended before checkpoint ${c.cycle + 1}` };
  }
  if (resultDiffers && checkpointed.cyclesAsked > 1)
    return { cycle: checkpointed.cycles.length, why: 'no cycle showed a difference at its restore stop; the final result differs' };
  return undefined;
}

function cyclesView(checkpointed: Checkpointed, resultDiffers: boolean): CyclesView {
  const firstWrong = firstWrongCycle(checkpointed, resultDiffers);
  const restoreMs = spread(checkpointed.cycles.flatMap((c) => (c.restoreMs === undefined ? [] : [c.restoreMs])));
  return {
    asked: checkpointed.cyclesAsked,
    done: checkpointed.cycles.length,
    ...(firstWrong ? { firstWrong } : {}),
    each: checkpointed.cycles.map((c) => ({
      cycle: c.cycle,
      checkpointMs: c.checkpointMs,
      ...(c.restoreMs !== undefined ? { restoreMs: c.restoreMs } : {}),
      imageBytes: c.imageBytes,
      rip: c.rip,
      ...(c.registersDiffer?.length ? { registersDiffer: c.registersDiffer } : {}),
      ...(c.restoreError !== undefined ? { restoreError: c.restoreError.split('\n')[0]! } : {}),
    })),
    checkpointMs: spread(checkpointed.cycles.map((c) => c.checkpointMs))!,
    ...(restoreMs ? { restoreMs } : {}),
  };
}

/** Decides the verdict of a request from its two runs. `inputs` names the program's files in the bundle. */
export function makeVerdict(request: ReproRequest, prepared: PreparedProgram, runs: GuestRuns, inputs: BundleInputs): ReproVerdict {
  const { native, reference, checkpointed } = runs;
  const restoreError = checkpointed.restoreError;
  const perturbation = comparePerturbation(native, reference);
  const perturbed = perturbation.length > 0;
  // A breakpoint checkpoint also compares how often the address ran: a lost RF re-triggers it.
  const hitsAt = request.checkpoint.kind === 'symbol' ? request.checkpoint.symbol : undefined;
  const mismatches = restoreError === undefined ? compareRuns(reference, checkpointed.run, hitsAt) : [];
  const hits = (n: number): { hits?: number } => (hitsAt !== undefined ? { hits: n } : {});
  // CRIU's single dump and restore is no crh chain: its timings are in `criu`.
  const cycles = checkpointed.cycles.length > 0 ? cyclesView(checkpointed, restoreError !== undefined || mismatches.length > 0) : undefined;
  const summary = perturbed ? describePerturbation(perturbation) : summarize(mismatches, restoreError, reference);
  // The compiler line names the bundle's copies, not this host's paths.
  const inBundle = (arg: string): string => (arg === request.source ? inputs.source! : arg === prepared.program.file ? inputs.binary : arg);
  return {
    format: VERDICT_FORMAT,
    version: VERDICT_VERSION,
    createdAt: new Date().toISOString(),
    pass: !perturbed && restoreError === undefined && mismatches.length === 0,
    perturbed,
    summary: cycles && checkpointed.cyclesAsked > 1 && !perturbed ? `${summary} (${describeChain(cycles)})` : summary,
    command: request.command,
    engine: checkpointed.engine,
    ...(checkpointed.criu
      ? {
          criu: {
            version: checkpointed.criu.version,
            dumpMs: checkpointed.criu.dumpMs,
            restoreMs: checkpointed.criu.restoreMs,
            imageBytes: checkpointed.criu.imageBytes,
            ...(checkpointed.criu.debugRegisters ? { debugRegisters: checkpointed.criu.debugRegisters } : {}),
          },
        }
      : {}),
    program: {
      name: prepared.name,
      ...inputs,
      sha256: sha256(prepared.program.data),
      guestPath: runs.program.binary,
      argv: runs.program.argv,
      envp: runs.program.envp,
      ...(prepared.compiler ? { compiler: prepared.compiler.map(inBundle) } : {}),
    },
    checkpoint: {
      point: request.checkpoint,
      ...(prepared.breakAt !== undefined ? { address: hex(prepared.breakAt) } : {}),
      stoppedBy: checkpointed.stoppedBy,
      rip: hex(checkpointed.regsAtCheckpoint.rip),
      pid: checkpointed.pid,
      ...(checkpointed.restoredPid !== undefined ? { restoredPid: checkpointed.restoredPid } : {}),
      ...(checkpointed.rewind ? { rewound: checkpointed.rewind.note } : {}),
    },
    policy:
      checkpointed.engine === 'criu'
        ? `criu ${checkpointed.criu?.version ?? ''}: CRIU's own dump and restore (the restore core's policies do not apply)`
        : describePolicy(request.policy),
    ...(request.finishSignal ? { finishSignal: request.finishSignal.name } : {}),
    native: { status: describeStatus(native), output: native.output, pid: native.pid, agreed: !perturbed, differences: perturbation },
    reference: { status: describeStatus(reference), output: reference.output, ...hits(reference.hits), pid: reference.pid, elapsedMs: reference.elapsedMs },
    ...(restoreError === undefined
      ? { restored: { status: describeStatus(checkpointed.run), output: checkpointed.run.output, ...hits(checkpointed.run.hits) } }
      : { restoreError }),
    mismatches,
    restoreDifferences: checkpointed.restoreDifferences,
    notes: [
      ...(native.pid !== reference.pid
        ? [
            `the native run had pid ${native.pid}, which was taken before the traced runs could be given it; they had ${reference.pid}: output that shows the pid differs`,
          ]
        : []),
      ...(runs.restoredIn
        ? [
            `restored in another guest: -cpu ${runs.restoredIn.profile.cpuModel}, kernel ${runs.restoredIn.profile.kernelRelease} (CPU flags ${runs.restoredIn.profile.cpuFlags.join(' ')})`,
          ]
        : []),
      ...checkpointed.notes,
    ],
    platform: runs.platform,
    rerun: rerunRecord(request, inputs),
    rerunCommand: rerunArgs(request, inputs),
    timingsMs: {},
    ...(cycles ? { cycles } : {}),
  };
}

/** "3 of 3 cycles" / "first wrong at cycle 1: …", for the summary line. */
function describeChain(cycles: CyclesView): string {
  const done = `${cycles.done} of ${cycles.asked} checkpoint → restore cycles`;
  return cycles.firstWrong ? `${done}; first went wrong at cycle ${cycles.firstWrong.cycle}: ${cycles.firstWrong.why}` : done;
}

/** crh's exit code when the harness perturbs the program (docs/ci.md). */
export const EXIT_PERTURBED = 3;

/** The exit code crh gives a verdict: 0 pass, 1 fail, 3 the harness perturbs the program. */
export function verdictExitCode(verdict: Pick<ReproVerdict, 'pass' | 'perturbed'>): 0 | 1 | 3 {
  if (verdict.perturbed) return EXIT_PERTURBED;
  return verdict.pass ? 0 : 1;
}

/** The word a person reads first. */
export function verdictLabel(verdict: Pick<ReproVerdict, 'pass' | 'perturbed'>): 'PASS' | 'FAIL' | 'PERTURBED' {
  if (verdict.perturbed) return 'PERTURBED';
  return verdict.pass ? 'PASS' : 'FAIL';
}

/** The longest summary or mismatch name a bundle's verdict may carry: it is printed. */
const RECORDED_TEXT_CHARS = 4096;

/**
 * Checks what `crh repro --bundle` reads from a verdict.json it was sent:
 * its format and version, `pass`, `summary`, the names of the mismatches
 * (compared with the rerun's) and the rerun record (rerun-record.ts). Throws
 * BundleRejectedError naming the field. A version 1 verdict is refused by
 * name: its rerun is a command line, and a second, looser reader for it is
 * exactly the path a hostile bundle would take.
 */
export function parseVerdict(text: string, bundle = '(bundle)'): ReproVerdict {
  const reject = (field: string, why: string): never => {
    throw new BundleRejectedError(bundle, `verdict.json${field ? ` ${field}` : ''}`, why);
  };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    return reject('', `invalid JSON: ${(error as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return reject('', 'is not a JSON object');
  const v = raw as Record<string, unknown>;
  if (v.format !== VERDICT_FORMAT) reject('format', `${JSON.stringify(v.format)}, expected ${VERDICT_FORMAT}`);
  if (v.version === 1) {
    reject(
      'version',
      'version 1 records its rerun as a crh command line, which crh no longer takes from a bundle; read its rerun.sh and run that if you trust it, or ask for a bundle made by a current crh',
    );
  }
  if (v.version !== VERDICT_VERSION) reject('version', `${JSON.stringify(v.version)}, this crh reads ${VERDICT_VERSION}`);
  if (typeof v.pass !== 'boolean') reject('pass', 'must be a boolean');
  if (v.perturbed !== undefined && typeof v.perturbed !== 'boolean') reject('perturbed', 'must be a boolean');
  if (typeof v.summary !== 'string' || v.summary.length > RECORDED_TEXT_CHARS)
    reject('summary', `must be a string of at most ${RECORDED_TEXT_CHARS} characters`);
  if (!Array.isArray(v.mismatches)) return reject('mismatches', 'must be a list');
  v.mismatches.forEach((m: unknown, i) => {
    const what = (m as { what?: unknown } | null)?.what;
    if (typeof what !== 'string' || what.length > RECORDED_TEXT_CHARS) reject(`mismatches[${i}].what`, 'must be a string');
  });
  return { ...(v as unknown as ReproVerdict), rerun: parseRerunRecord(v.rerun, bundle) };
}
