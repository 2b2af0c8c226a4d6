/**
 * Every report of a run written from one value — the rows, the
 * infrastructure failures and the kernel's identity — so `crh run`, a
 * kernel matrix and `crh report` (shards merged) write the same files the
 * same way: JSON, JUnit, KTAP and the HTML report, and the machine formats
 * `--reporter` prints.
 */
import { readFile, writeFile } from 'node:fs/promises';
import type { InfraFailure } from './infra-failures.ts';
import { junitXml } from './junit.ts';
import { ktap } from './ktap.ts';
import { writeHtmlReport } from './html-inputs.ts';
import type { KernelIdentity } from './kernel-matrix.ts';
import { outcome, withEngine, type Verdict } from './verdicts.ts';

export interface RunReport {
  kernel?: KernelIdentity;
  verdicts: Verdict[];
  infrastructureFailures: InfraFailure[];
}

export interface ReportFiles {
  json?: string;
  junit?: string;
  ktap?: string;
  html?: string;
}

/** The kernel's identity as KTAP/summary diagnostic pairs. */
export function kernelIdentityFacts(kernel: KernelIdentity | undefined): Record<string, string> {
  if (!kernel) return {};
  return {
    kernel: `${kernel.label ? `${kernel.label} = ` : ''}${kernel.release}`,
    'kernel origin': kernel.origin,
    'kernel sha256': kernel.sha256,
    ...(kernel.configSha256 ? { 'kernel config sha256': `${kernel.configSha256}${kernel.configSource ? ` (${kernel.configSource})` : ''}` } : {}),
  };
}

export const REPORTERS = ['people', 'tap', 'ktap', 'junit', 'json'] as const;
export type Reporter = (typeof REPORTERS)[number];

/** What a machine reporter prints on stdout; `tap` is assembled by the caller from the cases' own TAP. */
export function machineReport(reporter: Exclude<Reporter, 'people' | 'tap'>, report: RunReport): string {
  if (reporter === 'ktap') return ktap(report.verdicts, kernelIdentityFacts(report.kernel));
  if (reporter === 'junit') return junitXml(report.verdicts, report.infrastructureFailures);
  return `${JSON.stringify(report, null, 2)}\n`;
}

/** Writes each requested file; the HTML report leaves skipped rows out (it knows pass and fail). */
export async function writeReports(report: RunReport, files: ReportFiles, html: { artifactsRoot: string; sinceMs: number }): Promise<void> {
  if (files.json) await writeFile(files.json, machineReport('json', report));
  if (files.junit) await writeFile(files.junit, machineReport('junit', report));
  if (files.ktap) await writeFile(files.ktap, machineReport('ktap', report));
  if (files.html) {
    await writeHtmlReport(files.html, {
      verdicts: report.verdicts.filter((v) => outcome(v) !== 'SKIP'),
      infra: report.infrastructureFailures,
      artifactsRoot: html.artifactsRoot,
      sinceMs: html.sinceMs,
    });
  }
}

/** One TAP 14 stream from the case files' own TAP, each as a subtest, as tap itself prints a run. */
export function tapStream(cases: readonly { name: string; tap: string; ok: boolean }[]): string {
  const out = ['TAP version 14'];
  cases.forEach((c, i) => {
    out.push(`# Subtest: ${c.name}`);
    for (const line of c.tap.split('\n')) if (line !== 'TAP version 14' && line.length > 0) out.push(`    ${line}`);
    out.push(`${c.ok ? 'ok' : 'not ok'} ${i + 1} - ${c.name}`);
  });
  out.push(`1..${cases.length}`);
  return `${out.join('\n')}\n`;
}

/**
 * Shards' JSON reports merged into one (`crh report --from A --from B`):
 * their rows and failures concatenated. A case in two shards means the
 * shards were not disjoint — refused, naming it. Kernels must agree.
 */
export async function mergeReports(files: readonly string[]): Promise<RunReport> {
  const merged: RunReport = { verdicts: [], infrastructureFailures: [] };
  const owner = new Map<string, string>();
  for (const file of files) {
    const r = JSON.parse(await readFile(file, 'utf8')) as Partial<RunReport>;
    if (!Array.isArray(r.verdicts) || !Array.isArray(r.infrastructureFailures))
      throw new Error(`${file}: not a crh run --json report (no verdicts/infrastructureFailures lists)`);
    for (const name of new Set([...r.verdicts.map((v) => v.case), ...r.infrastructureFailures.map((f) => f.case)])) {
      const before = owner.get(name);
      if (before) throw new Error(`case ${name} is in both ${before} and ${file}: the shards overlap`);
      owner.set(name, file);
    }
    if (r.kernel && merged.kernel && r.kernel.sha256 !== merged.kernel.sha256)
      throw new Error(
        `${file} ran kernel ${r.kernel.release} (${r.kernel.sha256.slice(0, 12)}), the others ${merged.kernel.release} (${merged.kernel.sha256.slice(0, 12)})`,
      );
    if (r.kernel) merged.kernel = r.kernel;
    merged.verdicts.push(...r.verdicts.map(withEngine));
    merged.infrastructureFailures.push(...r.infrastructureFailures);
  }
  return merged;
}
