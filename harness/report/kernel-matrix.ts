/**
 * The verdicts of one suite run against several kernels, side by side: one
 * row per case × scenario × policy, one column per kernel, and a marker on
 * every row whose cells differ — what someone validating a kernel patch
 * reads first. Pure: the runs come in as data.
 */
import type { InfraFailure } from './infra-failures.ts';
import { engineOf, outcome, type Verdict } from './verdicts.ts';

/** Which kernel a run booted (cli/kernel-identity.ts): what `--json` writes as `kernel`. */
export interface KernelIdentity {
  /** the name the user gave it (`--kernel NAME=PATH`) */
  label?: string;
  /** as its bzImage header or Debian package names it; "unknown" when neither does */
  release: string;
  /** the bzImage's whole kernel_version string, or why it has none */
  kernelVersion?: string;
  /** `file:/path` or `debian:package=version` */
  origin: string;
  /** of the bzImage (a user kernel) or the .deb (a Debian kernel) */
  sha256: string;
  /** of the config the cases were decided on, when one is known */
  configSha256?: string;
  configSource?: string;
}

/** One line naming a kernel by release and hashes, e.g. `6.1.0-crh sha256 1a2b3c4d5e6f config 0f1e2d3c4b5a (file:/…/bzImage)`. */
export function describeKernelIdentity(k: KernelIdentity): string {
  const config = k.configSha256 ? ` config ${k.configSha256.slice(0, 12)}` : ' config unknown';
  return `${k.release} sha256 ${k.sha256.slice(0, 12)}${config} (${k.origin})`;
}

export interface KernelColumn {
  /** short name, also the kernel's artifacts folder */
  label: string;
  /** what was asked for (`debian:linux-image-amd64`, a bzImage path) and what it resolved to */
  kernel: string;
  /** the kernel the run booted, when its run reported it */
  identity?: KernelIdentity;
  verdicts: readonly Verdict[];
  infra: readonly InfraFailure[];
}

export interface MatrixRow {
  case: string;
  scenario: string;
  policy: string;
  /** one cell per column: PASS, FAIL, SKIP (options), INFRA, or "-" when not run */
  cells: string[];
  /** observed result per column, where there is one */
  observed: (string | undefined)[];
  differs: boolean;
}

/** A case skipped as a whole (kernel-needs.ts) has one row for all its scenarios. */
const isCaseSkip = (v: Verdict): boolean => v.skipped !== undefined && v.policy === '-';

const keyOf = (v: Verdict): string => JSON.stringify([v.case, v.scenario, engineOf(v), v.policy, v.control]);

/** The options a skip names, e.g. "SKIP (CONFIG_RSEQ)"; the whole reason stays in the verdict row. */
function skipCell(v: Verdict): string {
  const options = [...new Set(v.skipped?.match(/CONFIG_[A-Z0-9_]+(?= \(not set\))/g) ?? [])];
  return options.length > 0 ? `SKIP (${options.join(', ')})` : 'SKIP';
}

export function kernelMatrixRows(columns: readonly KernelColumn[]): MatrixRow[] {
  const rows = new Map<string, Verdict>();
  const casesRun = new Set<string>();
  for (const c of columns) for (const v of c.verdicts) if (!isCaseSkip(v)) casesRun.add(v.case);
  for (const c of columns) {
    for (const v of c.verdicts) {
      // A case one kernel skipped and another ran shows in the rows the other ran.
      if (isCaseSkip(v) && casesRun.has(v.case)) continue;
      if (!rows.has(keyOf(v))) rows.set(keyOf(v), v);
    }
  }
  // Cases run in parallel append their rows interleaved: keep each case's rows together, in the order cases first appear.
  const caseOrder = [...new Set([...rows.values()].map((v) => v.case))];
  const ordered = [...rows.entries()].sort(([, a], [, b]) => caseOrder.indexOf(a.case) - caseOrder.indexOf(b.case));
  return ordered.map(([key, row]) => {
    const cells: string[] = [];
    const observed: (string | undefined)[] = [];
    for (const c of columns) {
      const own = c.verdicts.find((v) => keyOf(v) === key);
      const caseSkip = c.verdicts.find((v) => v.case === row.case && isCaseSkip(v));
      const infra = c.infra.some((f) => f.case === row.case || f.case === '(image)');
      const cell = own ? (own.skipped !== undefined ? skipCell(own) : outcome(own)) : caseSkip ? skipCell(caseSkip) : infra ? 'INFRA' : '-';
      cells.push(cell);
      observed.push(own?.observed ?? caseSkip?.observed);
    }
    return {
      case: row.case,
      scenario: row.scenario,
      policy: `${engineOf(row) === 'crh' ? '' : `${engineOf(row)}: `}${row.control ? `${row.policy} (control)` : row.policy}`,
      cells,
      observed,
      differs: new Set(cells).size > 1,
    };
  });
}

/** The side-by-side table, a legend of the kernels, and the observed results of every row that differs. */
export function formatKernelMatrix(columns: readonly KernelColumn[]): string {
  const rows = kernelMatrixRows(columns);
  const legend = columns.map((c) => `${c.label}: ${c.kernel}`);
  // Two columns of one image compare a kernel with itself: say so rather than let it pass for a comparison.
  for (const [i, c] of columns.entries()) {
    const twin = columns.slice(0, i).find((o) => o.identity && c.identity && o.identity.sha256 === c.identity.sha256);
    if (twin) legend.push(`note: ${c.label} and ${twin.label} are the same image (sha256 ${c.identity!.sha256.slice(0, 12)})`);
  }
  if (rows.length === 0) return [...legend, '', 'no verdicts from any kernel'].join('\n');
  const header = ['', 'case', 'scenario', 'policy', ...columns.map((c) => c.label)];
  const body = rows.map((r) => [r.differs ? '≠' : '', r.case, r.scenario, r.policy, ...r.cells]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  const differing = rows.filter((r) => r.differs);
  const details = differing.flatMap((r) => [
    `≠ ${r.case} / ${r.scenario} / ${r.policy}`,
    ...columns.map((c, i) => `    ${c.label}: ${r.cells[i]}${r.observed[i] !== undefined ? ` — ${r.observed[i]}` : ''}`),
  ]);
  return [
    ...legend,
    '',
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...body.map(line),
    '',
    differing.length === 0
      ? `every row is the same on all ${columns.length} kernels`
      : `${differing.length} of ${rows.length} rows differ between kernels (≠):`,
    ...details,
  ].join('\n');
}
