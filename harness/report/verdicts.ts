/**
 * Verdict rows — scenario × policy × expected × observed — appended by cases
 * as JSON lines and read back by `crh run` for the verdict table.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../util/cache-dir.ts';

export interface Verdict {
  case: string;
  scenario: string;
  policy: string;
  expected: string;
  observed: string;
  /** whether observed matched expected */
  pass: boolean;
  /** a negative control: expected to show the historic bug */
  control: boolean;
  /** platform-profile values the expectation depends on */
  conditions?: Record<string, string>;
}

export function artifactsRoot(): string {
  return process.env.CRH_ARTIFACTS_DIR ?? path.join(REPO_ROOT, 'artifacts');
}

export function verdictsFile(): string {
  return process.env.CRH_VERDICTS_FILE ?? path.join(artifactsRoot(), 'verdicts.jsonl');
}

export function recordVerdict(verdict: Verdict): void {
  const file = verdictsFile();
  mkdirSync(path.dirname(file), { recursive: true });
  appendFileSync(file, `${JSON.stringify(verdict)}\n`);
}

export function readVerdicts(file = verdictsFile()): Verdict[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Verdict);
}

/** A plain-text table, one row per verdict, widths fitted to the content. */
export function formatVerdictTable(verdicts: readonly Verdict[]): string {
  const header = ['case', 'scenario', 'policy', 'expected', 'observed', 'verdict'];
  const rows = verdicts.map((v) => [v.case, v.scenario, v.control ? `${v.policy} (control)` : v.policy, v.expected, v.observed, v.pass ? 'PASS' : 'FAIL']);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
