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
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { applyKernelOptions } from '../cli/kernel-flags.ts';
import { artifactsRoot } from '../report/verdicts.ts';
import { readBundle, writeBundle } from './bundle.ts';
import { bundleContents } from './contents.ts';
import { runInGuest } from './guest-runs.ts';
import { parseReproArgs, type BundleRerun, type ReproRequest } from './options.ts';
import { prepareProgram, programName } from './prepare.ts';
import { Progress } from './progress.ts';
import { resolveRerunArgs, type BundleInputs } from './rerun.ts';
import { UsageError } from './usage-error.ts';
import { makeVerdict, parseVerdict, verdictExitCode, verdictLabel, type ReproVerdict } from './verdict.ts';

export interface ReproOutcome {
  verdict: ReproVerdict;
  bundle: string;
}

/** Entry point for `crh repro ...` and `crh cr ...`; returns the exit code. */
export async function reproCommand(command: 'repro' | 'cr', argv: readonly string[]): Promise<number> {
  const parsed = parseReproArgs(command, argv);
  const progress = new Progress(`crh ${command}`);
  if ('bundle' in parsed) return rerunBundle(parsed, progress);
  const { verdict, bundle } = await reproduce(parsed, progress);
  report(verdict, bundle);
  return verdictExitCode(verdict);
}

function report(verdict: ReproVerdict, bundle: string): void {
  for (const note of verdict.notes) process.stdout.write(`note: ${note}\n`);
  process.stdout.write(`verdict: ${verdictLabel(verdict)} — ${verdict.summary}\n`);
  process.stdout.write(`bundle: ${bundle}\n`);
}

/** Runs one request to its verdict and writes its bundle. */
export async function reproduce(request: ReproRequest, progress: Progress): Promise<ReproOutcome> {
  applyKernelOptions(request.kernel);
  const name = programName(request);
  const root = path.join(request.artifacts ?? artifactsRoot(), 'repro');
  const out = request.out ?? path.join(root, `${name}.tar`);
  // Named after the bundle, so runs of one program under different policies keep their own logs.
  const runDir = path.join(root, path.basename(out).replace(/\.tar$/, '') || name);
  await rm(runDir, { recursive: true, force: true });
  await mkdir(runDir, { recursive: true });

  const prepared = await prepareProgram(request, path.join(runDir, 'build'), progress);
  const imageFile = path.join(runDir, 'checkpoint.tar');
  const runs = await runInGuest(request, prepared, runDir, imageFile, progress);

  progress.phase('bundle', out);
  const inputs: BundleInputs = {
    ...(request.source ? { source: `source/${path.basename(request.source)}` } : {}),
    binary: `binary/${name}`,
    files: prepared.files.map((f) => `files/${path.basename(f.file)}`),
  };
  const verdict = makeVerdict(request, prepared, runs, inputs);
  progress.endPhase();
  verdict.timingsMs = { ...progress.timings };
  await writeBundle(out, await bundleContents({ request, prepared, runs, inputs, verdict, imageFile, consoleLog: path.join(runDir, 'console.log') }));
  return { verdict, bundle: out };
}

/** `crh repro --bundle FILE`: reruns what the bundle records and says whether the verdict is the same. */
async function rerunBundle(request: BundleRerun, progress: Progress): Promise<number> {
  if (!existsSync(request.bundle)) throw new UsageError(`${request.bundle}: no such bundle`);
  const entries = await readBundle(request.bundle);
  const verdictEntry = entries.get('verdict.json');
  if (!verdictEntry) throw new UsageError(`${request.bundle}: no verdict.json (is it a crh bundle?)`);
  let recorded: ReproVerdict;
  try {
    recorded = parseVerdict(verdictEntry.data.toString('utf8'));
  } catch (error) {
    throw new UsageError(`${request.bundle}: ${(error as Error).message}`);
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-bundle-'));
  try {
    for (const entry of entries.values()) {
      const file = path.join(dir, entry.name);
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, entry.data);
      await chmod(file, entry.mode ?? 0o644);
    }
    const args = resolveRerunArgs(recorded.rerun, dir);
    const parsed = parseReproArgs(args[0] as 'repro' | 'cr', args.slice(1));
    if ('bundle' in parsed) throw new UsageError(`${request.bundle}: its rerun command is itself a bundle rerun`);
    // Never over the bundle being rerun: the new one goes beside it unless --out says otherwise.
    const out = request.out ?? request.bundle.replace(/(\.tar)?$/, '-rerun.tar');
    const rerun: ReproRequest = { ...parsed, out, ...(request.artifacts ? { artifacts: request.artifacts } : {}) };
    const { verdict, bundle } = await reproduce(rerun, progress);
    report(verdict, bundle);
    const same = verdict.pass === recorded.pass && Boolean(verdict.perturbed) === Boolean(recorded.perturbed) && verdict.mismatches.map((m) => m.what).join() === recorded.mismatches.map((m) => m.what).join();
    process.stdout.write(same ? `reproduced: the same verdict as ${request.bundle}\n` : `NOT reproduced: ${request.bundle} says ${verdictLabel(recorded)} — ${recorded.summary}\n`);
    return verdictExitCode(verdict);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
