/**
 * `crh repro … --sweep SYMBOL` and `crh cr … --sweep SYMBOL`: one guest for
 * the whole sweep — the native run, the uninterrupted traced run, the walk
 * with its checkpoints, every restore — then the table and a bundle that
 * keeps the table (text, JSON, HTML), the checkpoint and register diff of every
 * failing boundary, the program and the outputs. Exit 0 when every
 * boundary matches, 1 when any differs, 3 when the harness perturbs the
 * program (the traced or the stepped run differs from the native one).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { kernelChoiceFromFlags } from '../flags/kernel-flags.ts';
import { openGuest, type Guest } from '../guest/open-guest.ts';
import type { NativeRun } from '../guest/native-run.ts';
import { bootstrapHost } from '../host/bootstrap.ts';
import { shellQuote } from '../machine/qemu-args.ts';
import { markGuestLog } from '../agent/guest-run.ts';
import { artifactsRoot } from '../report/verdicts.ts';
import { NotOwnedError, replaceOwnedDir } from '../util/owned-dir.ts';
import { escapeControl } from '../util/terminal-text.ts';
import { writeBundle, BUNDLE_LIMITS, type BundleEntry } from './bundle.ts';
import { comparePerturbation, describePerturbation } from './compare.ts';
import type { ReproRequest } from './options.ts';
import { prepareProgram, programName, type PreparedProgram } from './prepare.ts';
import type { Progress } from './progress.ts';
import { formatRegisterDiff } from './register-diff.ts';
import { GUEST_DIRS, nativeReference, READY_FILE, referenceRun, type GuestProgram, type Reference, type RunContext } from './runs.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { sweepRunsUnder, type SweepContext, type SweepResult } from './sweep.ts';
import { sweepHtml } from './sweep-html.ts';
import { formatSweepTable, makeSweepReport, type SweepReport } from './sweep-report.ts';
import { UsageError } from './usage-error.ts';
import { rerunRecord } from './rerun-record.ts';
import { hex } from '../x86/registers.ts';
import { EXIT_PERTURBED } from './verdict.ts';

/** Failing boundaries whose checkpoint the bundle keeps; the table names them all. */
const KEPT_CHECKPOINTS_MAX = 32;

export interface SweepOutcome {
  report: SweepReport;
  /** the native run and the traced run differ: the harness perturbs the program */
  perturbed?: string;
  bundle: string;
}

/** Runs a sweep request to its report and bundle, prints them, returns the exit code. */
export async function sweepCommand(request: ReproRequest, progress: Progress): Promise<number> {
  const outcome = await sweep(request, progress);
  process.stdout.write(
    formatSweepTable(outcome.report)
      .split('\n')
      .map((line) => escapeControl(line))
      .join('\n'),
  );
  if (outcome.perturbed) process.stdout.write(`verdict: PERTURBED — ${escapeControl(outcome.perturbed)}\n`);
  else process.stdout.write(`verdict: ${outcome.report.pass ? 'PASS' : 'FAIL'} — ${escapeControl(outcome.report.headline)}\n`);
  process.stdout.write(`bundle: ${escapeControl(outcome.bundle)}\n`);
  return sweepExitCode(outcome);
}

export function sweepExitCode(outcome: Pick<SweepOutcome, 'report' | 'perturbed'>): number {
  if (outcome.perturbed || !outcome.report.stepped.matchesReference) return EXIT_PERTURBED;
  return outcome.report.pass ? 0 : 1;
}

export async function sweep(request: ReproRequest, progress: Progress): Promise<SweepOutcome> {
  if (!request.sweep) throw new Error('sweep: the request has no --sweep');
  const name = programName(request);
  const root = path.join(request.artifacts ?? artifactsRoot(), 'repro');
  const out = request.out ?? path.join(root, `${name}-sweep.tar`);
  // The bundle's stem names the run directory (as command.ts's runDirName does), else the program's.
  const stem = path.basename(out).replace(/\.tar$/, '');
  const runDir = path.join(root, stem !== '' && stem !== '.' && stem !== '..' ? stem : `${name}-sweep`);
  await replaceOwnedDir(runDir).catch((error: unknown) => {
    throw error instanceof NotOwnedError ? new UsageError(`${error.message}; name the bundle otherwise (--out)`, {}, { cause: error }) : error;
  });
  const prepared = await prepareProgram(request, path.join(runDir, 'build'), progress);

  progress.phase('boot');
  await bootstrapHost((line) => progress.note(line));
  const kernel = kernelChoiceFromFlags(request.kernel);
  const guest = await openGuest({ artifactsDir: runDir, log: (line) => progress.note(line), agentCwd: GUEST_DIRS.work, ...(kernel ? { kernel } : {}) });
  let runs: SweepInGuest;
  try {
    runs = await sweepInGuest(guest, request, prepared, runDir, progress);
  } finally {
    progress.phase('shut down');
    await guest.close();
  }
  const { reference, result, perturbed } = runs;
  const nativeOutput = runs.native.output;

  progress.phase('report', 'disassembling the boundaries');
  const report = await makeSweepReport({
    program: prepared.program,
    sweep: request.sweep!,
    hit: request.checkpoint.kind === 'symbol' ? request.checkpoint.hit : 1,
    policy: request.policy,
    reference,
    result,
  });
  progress.phase('bundle', out);
  progress.endPhase();
  const entries = await sweepBundleEntries(request, prepared.program.data, name, report, result, nativeOutput, path.join(runDir, 'console.log'));
  await mkdir(path.dirname(out), { recursive: true });
  await writeBundle(out, entries);
  await writeFile(path.join(runDir, 'sweep.txt'), formatSweepTable(report));
  await writeFile(path.join(runDir, 'sweep.html'), sweepHtml(report));
  return { report, ...(perturbed ? { perturbed } : {}), bundle: out };
}

async function sweepBundleEntries(
  request: ReproRequest,
  binary: Buffer,
  name: string,
  report: SweepReport,
  result: SweepResult,
  nativeOutput: string,
  consoleLog: string,
): Promise<BundleEntry[]> {
  const text = (entry: string, value: string): BundleEntry => ({ name: entry, data: Buffer.from(value) });
  const inputs = {
    ...(request.source ? { source: `source/${path.basename(request.source)}` } : {}),
    binary: `binary/${name}`,
    files: request.files.map((f) => `files/${path.basename(f)}`),
  };
  // The rerun record (rerun-record.ts, bounded and checked when read back) says what the sweep ran.
  const json = { ...report, rerun: rerunRecord(request, inputs) };
  const entries: BundleEntry[] = [
    text('sweep.txt', formatSweepTable(report)),
    text('sweep.html', sweepHtml(report)),
    text('sweep.json', `${JSON.stringify(json, (_key, value: unknown) => (typeof value === 'bigint' ? hex(value) : value), 2)}\n`),
    ...(request.source ? [{ name: inputs.source!, data: await readFile(request.source) }] : []),
    { name: inputs.binary, data: binary, mode: 0o755 },
    ...(await Promise.all(request.files.map(async (f, i) => ({ name: inputs.files[i]!, data: await readFile(f) })))),
    { name: 'console.log', data: await readFile(consoleLog).catch(() => Buffer.from('(no console log)\n')) },
    text('output/native.out', nativeOutput),
    text('output/reference.out', report.reference.output),
    text('output/stepped.out', result.stepped.output),
  ];
  const failing = result.verdicts.filter((v) => !v.pass).slice(0, KEPT_CHECKPOINTS_MAX);
  let bytes = entries.reduce((sum, e) => sum + e.data.length, 0);
  for (const v of failing) {
    if (v.imageFile === undefined) continue;
    const image = await readFile(v.imageFile);
    if (bytes + image.length > BUNDLE_LIMITS.totalBytes / 2) break;
    bytes += image.length;
    entries.push({ name: `boundary-${v.index}/checkpoint.tar`, data: image });
    entries.push(
      text(
        `boundary-${v.index}/register-diff.txt`,
        formatRegisterDiff({
          image: v.imageRegs,
          ...(v.restoredRegs ? { restored: v.restoredRegs } : {}),
          policy: request.policy,
          kernel: v.restoreDifferences,
        }),
      ),
    );
    entries.push(text(`boundary-${v.index}/restored.out`, v.run.output));
    // Reached by a fresh run to a breakpoint: what that run printed, continued from the stop — the output it was compared with.
    if (v.reached === 'breakpoint') entries.push(text(`boundary-${v.index}/continued.out`, v.against.output));
  }
  return entries;
}

export interface SweepInGuest {
  native: NativeRun;
  reference: Reference;
  /** the native run and the traced run differ: the harness perturbs the program */
  perturbed?: string;
  result: SweepResult;
}

/**
 * The sweep's runs in an open guest (the CLI's, or a case's): upload the
 * program, run it natively, uninterrupted under the tracer, then the sweep.
 * `hooks.restore` replaces restoreProcess (a case passes its witnessed
 * restore); `hooks.programSigtraps` 'ignore' is a case's negative control.
 */
export async function sweepInGuest(
  guest: Guest,
  request: ReproRequest,
  prepared: PreparedProgram,
  imageDir: string,
  progress: Progress,
  hooks: Pick<SweepContext, 'restore' | 'programSigtraps'> = {},
): Promise<SweepInGuest> {
  const { results, ...runs } = await sweepInGuestUnder(guest, request, prepared, imageDir, progress, [request.policy], hooks);
  return { ...runs, result: results[0]! };
}

/**
 * sweepInGuest with the walk's checkpoints restored under each of
 * `policies` (sweep.ts sweepRunsUnder): a case's policy and its negative
 * control judged on one walk, one result each, in the order given.
 */
export async function sweepInGuestUnder(
  guest: Guest,
  request: ReproRequest,
  prepared: PreparedProgram,
  imageDir: string,
  progress: Progress,
  policies: readonly RestorePolicy[],
  hooks: Pick<SweepContext, 'restore' | 'programSigtraps'> = {},
): Promise<Omit<SweepInGuest, 'result'> & { results: SweepResult[] }> {
  const sweepRequest = request.sweep;
  if (!sweepRequest || request.checkpoint.kind !== 'symbol' || prepared.breakAt === undefined) throw new Error('sweepInGuest: the request has no --sweep');
  const { ssh } = guest.machine;
  const guestBinary = `${GUEST_DIRS.bin}/${prepared.name}`;
  progress.phase('upload', `${prepared.name} (${prepared.program.data.length} bytes)`);
  await ssh.run(`mkdir -p ${GUEST_DIRS.bin} ${GUEST_DIRS.out} ${GUEST_DIRS.work} && echo 7 > /proc/sys/kernel/printk`);
  await ssh.upload(guestBinary, prepared.program.data, 0o755);
  for (const f of prepared.files) await ssh.upload(`${GUEST_DIRS.work}/${path.basename(f.file)}`, f.data, f.mode);
  const program: GuestProgram = { binary: guestBinary, argv: [guestBinary, ...request.args], envp: [`CRH_READY_FILE=${READY_FILE}`] };
  const phase = async (phaseName: string, detail?: string): Promise<void> => {
    progress.phase(phaseName, detail);
    await markGuestLog(guest.agent, `crh ${request.command} --sweep: ${phaseName}${detail ? `: ${detail}` : ''}`);
  };
  const ctx: RunContext = {
    agent: guest.agent,
    program,
    point: request.checkpoint,
    breakAt: prepared.breakAt,
    timeoutMs: request.timeoutMs,
    clearReady: async () => void (await ssh.run(`rm -f ${shellQuote(READY_FILE)}`)),
    shell: (command) => ssh.run(command),
    phase,
  };
  await phase('native run', 'no tracer, no breakpoint');
  const native = await nativeReference(ctx);
  await phase('uninterrupted run');
  const reference = await referenceRun(ctx, native.pid);
  const differences = comparePerturbation(native, reference);
  const results = await sweepRunsUnder(
    {
      agent: guest.agent,
      program,
      breakAt: prepared.breakAt,
      hit: request.checkpoint.hit,
      sweep: sweepRequest,
      timeoutMs: request.timeoutMs,
      platform: guest.platform,
      phase,
      imageDir,
      ...hooks,
    },
    reference,
    policies,
  );
  return { native, reference, results, ...(differences.length > 0 ? { perturbed: describePerturbation(differences) } : {}) };
}
