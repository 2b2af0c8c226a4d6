/**
 * `crh repro` and `crh cr`: a program in, a verdict and a bundle out.
 * Build (repro) or check (cr) the program on the host, boot a guest, copy
 * the program and its files in, run it uninterrupted, run it again with a
 * checkpoint → kill → restore in the middle, compare, and write the bundle.
 * Exit 0 when the restored run matches, 1 when it differs (or the restore
 * failed), 3 when the uninterrupted traced run differs from the native one
 * (the harness perturbs the program), 2 for a request that cannot be
 * carried out, 69 for infrastructure.
 */
import { existsSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import path from 'node:path';
import { CrhError, type CheckpointError } from '../errors.ts';
import { artifactsRoot } from '../report/verdicts.ts';
import { escapeControl } from '../util/terminal-text.ts';
import { extractEntries, writeBundle } from './bundle.ts';
import { describeRerun, openBundle, requestFromRecord } from './bundle-rerun.ts';
import { bundleContents } from './contents.ts';
import { runInGuest } from './guest-runs.ts';
import { parseReproArgs, type BundleRerun, type ReproRequest } from './options.ts';
import { prepareProgram, programName } from './prepare.ts';
import { Progress } from './progress.ts';
import { sweepCommand } from './sweep-command.ts';
import type { BundleInputs } from './rerun.ts';
import { UsageError } from './usage-error.ts';
import { makeTempDir, removeTempDir } from '../util/temp-dir.ts';
import { NotOwnedError, replaceOwnedDir } from '../util/owned-dir.ts';
import { DEFAULT_POLICY } from '../restore/policy.ts';
import { makeVerdict, verdictExitCode, verdictLabel, type ReproVerdict } from './verdict.ts';

export interface ReproOutcome {
  verdict: ReproVerdict;
  bundle: string;
  /** --engine crh,criu: CRIU's verdict and bundle, beside crh's */
  criu?: { verdict: ReproVerdict; bundle: string };
}

/** --engine crh,criu where crh refused the checkpoint: its refusal beside CRIU's verdict and bundle. */
export interface RefusedBesideCriu {
  crhRefusal: CheckpointError;
  criu: { verdict: ReproVerdict; bundle: string };
}

/** Entry point for `crh repro ...` and `crh cr ...`; returns the exit code. */
export async function reproCommand(command: 'repro' | 'cr', argv: readonly string[]): Promise<number> {
  try {
    const parsed = parseReproArgs(command, argv);
    const progress = new Progress(`crh ${command}`);
    if ('bundle' in parsed) return await rerunBundle(parsed, progress);
    if (parsed.sweep) return await sweepCommand(parsed, progress);
    const outcome = await reproduce(parsed, progress);
    if ('crhRefusal' in outcome) {
      // crh's line is its refusal, as `--engine crh` alone would end (exit 1 with the reason).
      for (const note of outcome.criu.verdict.notes) process.stdout.write(`note [criu]: ${escapeControl(note)}\n`);
      process.stdout.write(`verdict [crh ]: ${'REFUSED'.padEnd(9)} — ${escapeControl(`${outcome.crhRefusal.name}: ${outcome.crhRefusal.message}`)}\n`);
      process.stdout.write(`verdict [criu]: ${verdictLabel(outcome.criu.verdict).padEnd(9)} — ${escapeControl(outcome.criu.verdict.summary)}\n`);
      process.stdout.write(`bundle [criu]: ${escapeControl(outcome.criu.bundle)}\n`);
      return outcome.criu.verdict.perturbed ? verdictExitCode(outcome.criu.verdict) : 1;
    }
    if (!outcome.criu) {
      report(outcome.verdict, outcome.bundle);
      return verdictExitCode(outcome.verdict);
    }
    reportSideBySide([
      { engine: 'crh', ...outcome },
      { engine: 'criu', ...outcome.criu },
    ]);
    return sideBySideExitCode([outcome.verdict, outcome.criu.verdict]);
  } catch (error) {
    // Details quote the program's output and the compiler's diagnostics, both under the source's control.
    if (error instanceof CrhError) {
      for (const [heading, text] of Object.entries(error.details)) error.details[heading] = escapeControl(text, { keepNewlines: true });
    }
    throw error;
  }
}

/** Notes and summary quote what the program printed: escaped, so its output cannot rewrite the verdict line. */
function report(verdict: ReproVerdict, bundle: string): void {
  for (const note of verdict.notes) process.stdout.write(`note: ${escapeControl(note)}\n`);
  process.stdout.write(`verdict: ${verdictLabel(verdict)} — ${escapeControl(verdict.summary)}\n`);
  process.stdout.write(`bundle: ${escapeControl(bundle)}\n`);
}

/** Both engines' verdicts, a line each under one header, then each one's notes and bundle. */
function reportSideBySide(each: Array<{ engine: string; verdict: ReproVerdict; bundle: string }>): void {
  for (const { engine, verdict } of each) for (const note of verdict.notes) process.stdout.write(`note [${engine}]: ${escapeControl(note)}\n`);
  for (const { engine, verdict } of each)
    process.stdout.write(`verdict [${engine.padEnd(4)}]: ${verdictLabel(verdict).padEnd(9)} — ${escapeControl(verdict.summary)}\n`);
  for (const { engine, bundle } of each) process.stdout.write(`bundle [${engine.padEnd(4)}]: ${escapeControl(bundle)}\n`);
}

/**
 * The exit code of a side-by-side run: 3 when the harness perturbs the
 * program (the uninterrupted run both verdicts share), else 1 when either
 * engine failed, else 0.
 */
export function sideBySideExitCode(verdicts: readonly ReproVerdict[]): 0 | 1 | 3 {
  const codes = verdicts.map(verdictExitCode);
  if (codes.includes(3)) return 3;
  return codes.includes(1) ? 1 : 0;
}

/** Where CRIU's bundle of a side-by-side run goes: beside crh's, `-criu` before `.tar`. */
export function criuBundlePath(out: string): string {
  return out.endsWith('.tar') ? `${out.slice(0, -'.tar'.length)}-criu.tar` : `${out}-criu.tar`;
}

/**
 * The run directory's name: the bundle's, so runs of one program under
 * different policies keep their own logs; the program's when the bundle's
 * name has no stem (`--out .tar`, `--out ..tar` would name the directory
 * holding every run).
 */
export function runDirName(out: string, program: string): string {
  const plain = (name: string): boolean => name !== '' && name !== '.' && name !== '..';
  return [path.basename(out).replace(/\.tar$/, ''), program].find(plain) ?? 'program';
}

/** Runs one request to its verdict and writes its bundle. */
export async function reproduce(request: ReproRequest, progress: Progress): Promise<ReproOutcome | RefusedBesideCriu> {
  const name = programName(request);
  const root = path.join(request.artifacts ?? artifactsRoot(), 'repro');
  const out = request.out ?? path.join(root, `${name}.tar`);
  const runDir = path.join(root, runDirName(out, name));
  // Only a run directory crh made is deleted; one of the user's is refused, as a usage error (exit 2).
  await replaceOwnedDir(runDir).catch((error: unknown) => {
    throw error instanceof NotOwnedError ? new UsageError(`${error.message}; name the bundle otherwise (--out)`, {}, { cause: error }) : error;
  });

  const prepared = await prepareProgram(request, path.join(runDir, 'build'), progress);
  const imageFile = path.join(runDir, 'checkpoint.tar');
  const runs = await runInGuest(request, prepared, runDir, imageFile, progress);

  if (!runs.crhRefusal) progress.phase('bundle', out);
  const inputs: BundleInputs = {
    ...(request.source ? { source: `source/${path.basename(request.source)}` } : {}),
    binary: `binary/${name}`,
    files: prepared.files.map((f) => `files/${path.basename(f.file)}`),
  };
  // Side by side, each engine's verdict is a single-engine one: its bundle reruns that engine alone.
  const single: ReproRequest = { ...request };
  delete single.engines;
  const consoleLog = path.join(runDir, 'console.log');
  if (runs.crhRefusal) {
    const criuOnly: ReproRequest = { ...single, engine: 'criu', policy: DEFAULT_POLICY };
    const criuVerdict = makeVerdict(criuOnly, prepared, runs, inputs);
    const criuOut = criuBundlePath(out);
    progress.phase('bundle', criuOut);
    progress.endPhase();
    criuVerdict.timingsMs = { ...progress.timings };
    await writeBundle(criuOut, await bundleContents({ request: criuOnly, prepared, runs, inputs, verdict: criuVerdict, imageFile, consoleLog }));
    return { crhRefusal: runs.crhRefusal, criu: { verdict: criuVerdict, bundle: criuOut } };
  }
  const verdict = makeVerdict(single, prepared, runs, inputs);
  const criuRequest: ReproRequest | undefined = runs.criuAlongside ? { ...single, engine: 'criu', policy: DEFAULT_POLICY } : undefined;
  const criuRuns = runs.criuAlongside ? { ...runs, checkpointed: runs.criuAlongside } : undefined;
  const criuVerdict = criuRequest && criuRuns ? makeVerdict(criuRequest, prepared, criuRuns, inputs) : undefined;
  progress.endPhase();
  verdict.timingsMs = { ...progress.timings };
  await writeBundle(out, await bundleContents({ request: single, prepared, runs, inputs, verdict, imageFile, consoleLog }));
  if (!criuVerdict || !criuRequest || !criuRuns) return { verdict, bundle: out };
  criuVerdict.timingsMs = { ...progress.timings };
  const criuOut = criuBundlePath(out);
  progress.phase('bundle', criuOut);
  await writeBundle(criuOut, await bundleContents({ request: criuRequest, prepared, runs: criuRuns, inputs, verdict: criuVerdict, imageFile, consoleLog }));
  progress.endPhase();
  return { verdict, bundle: out, criu: { verdict: criuVerdict, bundle: criuOut } };
}

/**
 * `crh repro --bundle FILE`: reruns what the bundle records and says whether
 * the verdict is the same. The bundle is untrusted input (bundle-rerun.ts):
 * checked whole before anything is written, its program and files
 * extracted into a private directory, what will run printed first.
 */
async function rerunBundle(request: BundleRerun, progress: Progress): Promise<number> {
  if (!existsSync(request.bundle)) throw new UsageError(`${request.bundle}: no such bundle`);
  const { recorded, inputs } = await openBundle(request.bundle);
  for (const line of describeRerun(request.bundle, recorded.rerun)) process.stdout.write(`${line}\n`);
  // A fresh 0700 directory: no one else can plant a link in it.
  const dir = await makeTempDir('crh-bundle-');
  try {
    await chmod(dir, 0o700);
    const extracted = await extractEntries(dir, inputs);
    // Never over the bundle being rerun: the new one goes beside it unless --out says otherwise.
    const out = request.out ?? request.bundle.replace(/(\.tar)?$/, '-rerun.tar');
    const rerun = requestFromRecord(recorded.rerun, extracted, { out, ...(request.artifacts ? { artifacts: request.artifacts } : {}) });
    const outcome = await reproduce(rerun, progress);
    // A bundle records one engine (rerun-record.ts): a side-by-side outcome cannot come back from one.
    if ('crhRefusal' in outcome || outcome.criu) throw new CrhError(`${request.bundle} reran as two engines; a bundle records one`);
    const { verdict, bundle } = outcome;
    report(verdict, bundle);
    const same =
      verdict.pass === recorded.pass &&
      Boolean(verdict.perturbed) === Boolean(recorded.perturbed) &&
      verdict.mismatches.map((m) => m.what).join() === recorded.mismatches.map((m) => m.what).join();
    process.stdout.write(
      same
        ? `reproduced: the same verdict as ${escapeControl(request.bundle)}\n`
        : `NOT reproduced: ${escapeControl(request.bundle)} says ${verdictLabel(recorded)} — ${escapeControl(recorded.summary)}\n`,
    );
    return verdictExitCode(verdict);
  } finally {
    await removeTempDir(dir);
  }
}
