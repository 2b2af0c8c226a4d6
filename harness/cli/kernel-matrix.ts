/**
 * `crh run --kernel A --kernel B`: the suite once per kernel, each run a
 * plain single-kernel `crh run` in a child process with its own artifacts
 * folder (`<artifacts>/<label>/`), then the verdicts side by side
 * (report/kernel-matrix.ts). A run per kernel rather than one run that
 * switches kernels keeps each kernel's guests, caches and reports exactly as
 * a single-kernel run has them.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { DEBIAN_KERNEL_PREFIX, splitKernelSpec } from '../image/kernel.ts';
import { describeKernelIdentity, formatKernelMatrix, type KernelColumn } from '../report/kernel-matrix.ts';
import { outcome } from '../report/verdicts.ts';
// A kernel's single-kernel `crh run` is read back as its `--json` wrote it (RunReport).
import { writeReports, type RunReport } from '../report/write-reports.ts';
import { EXIT } from './exit-codes.ts';
import { UsageError } from '../errors.ts';
import { REPO_ROOT } from '../util/cache-dir.ts';
import { kernelFlagArgs, resolveKernelFlag } from '../flags/kernel-flags.ts';

/** `crh run`'s kernel flags, each repeatable: the n-th --system-map, --kernel-config, --modules go with the n-th --kernel. */
export const runKernelOptions = {
  kernel: { type: 'string', multiple: true },
  'system-map': { type: 'string', multiple: true },
  'kernel-config': { type: 'string', multiple: true },
  modules: { type: 'string', multiple: true },
} as const;

type Companion = 'system-map' | 'kernel-config' | 'modules';
const COMPANIONS: readonly Companion[] = ['system-map', 'kernel-config', 'modules'];

export type KernelFlags = Partial<Record<'kernel' | Companion, string>>;

export interface KernelRun {
  label: string;
  flags: KernelFlags;
}

/** One run per --kernel (one run of the default kernel without any), companion files paired by position. */
export function kernelRuns(values: Partial<Record<'kernel' | Companion, string[] | undefined>>): KernelRun[] {
  const kernels = values.kernel ?? [];
  const count = Math.max(kernels.length, 1);
  for (const flag of COMPANIONS) {
    const given = values[flag]?.length ?? 0;
    if (given > 0 && given !== count) {
      throw new UsageError(
        `--${flag} given ${given} time(s) for ${kernels.length} kernel(s): give it once per --kernel, in the same order` +
          (kernels.length > 1 ? ', or leave it out and keep the file beside each bzImage' : ''),
      );
    }
  }
  const flagsAt = (i: number): KernelFlags => {
    const flags: KernelFlags = {};
    if (kernels[i] !== undefined) flags.kernel = kernels[i];
    for (const flag of COMPANIONS) if (values[flag]?.[i] !== undefined) flags[flag] = values[flag]![i];
    // Refused here, before the first kernel's run, rather than when its turn comes.
    for (const [flag, value] of Object.entries(flags)) resolveKernelFlag(flag, value);
    return flags;
  };
  const runs = Array.from({ length: count }, (_, i) => flagsAt(i));
  return uniqueLabels(runs.map((f) => kernelLabel(f.kernel))).map((label, i) => ({ label, flags: runs[i]! }));
}

/**
 * A short name for a kernel, safe as a folder name: the NAME of
 * `--kernel NAME=PATH`, else the flavour or package
 * of a Debian kernel (`cloud-amd64`), the file name of a bzImage, or the name
 * of the build tree a bare `arch/x86/boot/bzImage` sits in.
 */
export function kernelLabel(value: string | undefined): string {
  if (value === undefined) return 'default';
  const { label: given, spec } = splitKernelSpec(value);
  if (given !== undefined) return given;
  let label: string;
  if (spec.startsWith(DEBIAN_KERNEL_PREFIX)) {
    label = spec.slice(DEBIAN_KERNEL_PREFIX.length).replace(/^linux-image-/, '');
  } else {
    const base = path.basename(spec);
    const tree = /^(.*)\/arch\/x86(?:_64)?\/boot\/[^/]+$/.exec(spec)?.[1];
    if (tree !== undefined) label = path.basename(tree);
    else if (/^(bzImage|vmlinuz|vmlinux)$/.test(base)) label = `${path.basename(path.dirname(spec))}-${base}`;
    else label = base;
  }
  return label.replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[._]+/, '') || 'kernel';
}

function uniqueLabels(labels: string[]): string[] {
  const seen = new Map<string, number>();
  return labels.map((l) => {
    const n = (seen.get(l) ?? 0) + 1;
    seen.set(l, n);
    return n === 1 ? l : `${l}-${n}`;
  });
}

export interface MatrixOptions {
  runs: KernelRun[];
  artifactsRoot: string;
  /** flags handed to every run as they are: --grep, --jobs, --cases */
  passThrough: string[];
  junit?: string;
  json?: string;
  log: (line: string) => void;
}

export interface KernelOutcome extends KernelColumn {
  exitCode: number;
}

/** Runs the suite once per kernel and prints the side-by-side table; resolves to the exit code. */
export async function runKernelMatrix(o: MatrixOptions): Promise<{ exitCode: number; outcomes: KernelOutcome[] }> {
  const outcomes: KernelOutcome[] = [];
  for (const run of o.runs) {
    const dir = path.join(o.artifactsRoot, run.label);
    const jsonFile = path.join(dir, 'verdicts.json');
    const args = [path.join(REPO_ROOT, 'bin', 'crh.js'), 'run', ...kernelFlagArgs(run.flags), '--artifacts', dir, '--json', jsonFile, ...o.passThrough];
    o.log(`kernel ${run.label} (${run.flags.kernel}): crh ${args.slice(1).join(' ')}`);
    const started = Date.now();
    const child = await execa(process.execPath, args, { cwd: REPO_ROOT, stdio: 'inherit', reject: false });
    const exitCode = child.exitCode ?? 70;
    o.log(`kernel ${run.label}: exit ${exitCode} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const report = existsSync(jsonFile) ? (JSON.parse(await readFile(jsonFile, 'utf8')) as RunReport) : undefined;
    const infra = report?.infrastructureFailures ?? [];
    // The column's label already carries a NAME= the user gave: the legend shows what the name stands for.
    const asked = run.flags.kernel === undefined ? 'default kernel' : splitKernelSpec(run.flags.kernel).spec;
    outcomes.push({
      label: run.label,
      kernel: `${asked}${report?.kernel ? ` → ${describeKernelIdentity(report.kernel)}` : ''}`,
      ...(report?.kernel ? { identity: report.kernel } : {}),
      verdicts: report?.verdicts ?? [],
      // A run that ended without its report (killed, crashed) proves nothing about its kernel; one that refused its
      // command line (exit 2: a --grep matching no case, say) is the user's to fix, and the matrix exits 2 with it.
      infra:
        report || exitCode === EXIT.usage
          ? infra
          : [{ case: '(image)', error: `crh run for kernel ${run.label} exited ${exitCode} without writing ${jsonFile}` }],
      exitCode,
    });
  }
  process.stdout.write(`\n${formatKernelMatrix(outcomes)}\n`);
  process.stdout.write(`artifacts: ${outcomes.map((c) => path.join(o.artifactsRoot, c.label)).join(', ')}\n`);
  if (o.json) {
    const kernels = outcomes.map((c) => ({
      label: c.label,
      kernel: c.kernel,
      identity: c.identity,
      exitCode: c.exitCode,
      verdicts: c.verdicts,
      infrastructureFailures: c.infra,
    }));
    await writeFile(o.json, `${JSON.stringify({ kernels }, null, 2)}\n`);
  }
  if (o.junit) {
    // One testsuite per kernel and case: the case name carries the kernel's label.
    const verdicts = outcomes.flatMap((c) => c.verdicts.map((v) => ({ ...v, case: `${c.label}/${v.case}` })));
    const infra = outcomes.flatMap((c) => c.infra.map((f) => ({ ...f, case: `${c.label}/${f.case}` })));
    await writeReports({ verdicts, infrastructureFailures: infra }, { junit: o.junit }, { artifactsRoot: o.artifactsRoot, sinceMs: 0 });
  }
  return { exitCode: matrixExitCode(outcomes), outcomes };
}

/** 69 when any kernel's run hit the infrastructure (a kernel that cannot boot included), else 2 for a usage error, else 1 when any case failed anywhere, else 0. */
export function matrixExitCode(outcomes: readonly Pick<KernelOutcome, 'exitCode' | 'verdicts' | 'infra'>[]): number {
  if (outcomes.some((c) => c.exitCode === EXIT.infra || c.infra.length > 0)) return EXIT.infra;
  if (outcomes.some((c) => c.exitCode === EXIT.usage)) return EXIT.usage;
  if (outcomes.some((c) => c.exitCode !== EXIT.ok || c.verdicts.some((v) => outcome(v) === 'FAIL'))) return EXIT.failed;
  return EXIT.ok;
}
