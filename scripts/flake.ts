/**
 * Flake rate: runs the whole matrix (`crh run`) N times in a row and counts,
 * per case and per verdict row, how often it was not as expected, plus the
 * runs that ended in infrastructure failures. Each run keeps its own
 * artifacts (<out>/run-K/), so a flake can be read after the fact.
 *
 *   node --import tsx scripts/flake.ts [--runs 10] [--out DIR] [-- crh run switches]
 */
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import type { Verdict } from '../harness/report/verdicts.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const split = process.argv.indexOf('--');
const own = split < 0 ? process.argv.slice(2) : process.argv.slice(2, split);
const passThrough = split < 0 ? [] : process.argv.slice(split + 1);
const { values } = parseArgs({
  args: own,
  options: { runs: { type: 'string', default: '10' }, out: { type: 'string', default: path.join(REPO_ROOT, 'artifacts', 'flake') } },
});
const runs = Number(values.runs);
const out = path.resolve(values.out!);
await mkdir(out, { recursive: true });

interface RunRecord {
  run: number;
  exitCode: number;
  seconds: number;
  rows: number;
  notAsExpected: string[];
  infra: string[];
}
const records: RunRecord[] = [];
for (let run = 1; run <= runs; run++) {
  const dir = path.join(out, `run-${run}`);
  const json = path.join(dir, 'run.json');
  const started = Date.now();
  const r = await execa(process.execPath, [path.join(REPO_ROOT, 'bin', 'crh.js'), 'run', '--artifacts', dir, '--json', json, ...passThrough], {
    cwd: REPO_ROOT,
    reject: false,
    all: true,
  });
  const seconds = (Date.now() - started) / 1000;
  let verdicts: Verdict[] = [];
  let infra: { case: string }[] = [];
  try {
    const parsed = JSON.parse(await readFile(json, 'utf8')) as { verdicts: Verdict[]; infrastructureFailures: { case: string }[] };
    verdicts = parsed.verdicts;
    infra = parsed.infrastructureFailures;
  } catch {
    // no JSON: the run died before writing it; its exit code and output say why
  }
  const notAsExpected = verdicts.filter((v) => !v.pass && v.skipped === undefined).map((v) => `${v.case}: ${v.scenario} under ${v.policy}`);
  const record = { run, exitCode: r.exitCode ?? -1, seconds, rows: verdicts.length, notAsExpected, infra: infra.map((f) => f.case) };
  records.push(record);
  process.stdout.write(
    `run ${run}/${runs}: exit ${record.exitCode}, ${record.rows} rows, ${notAsExpected.length} not as expected, ${record.infra.length} infrastructure failures, ${seconds.toFixed(1)} s\n`,
  );
  for (const n of notAsExpected) process.stdout.write(`  ✗ ${n}\n`);
  for (const c of record.infra) process.stdout.write(`  ! ${c}\n`);
  if (record.exitCode !== 0 && notAsExpected.length === 0 && record.infra.length === 0)
    process.stdout.write(`${(r.all ?? '').split('\n').slice(-15).join('\n')}\n`);
}

const failedRuns = records.filter((r) => r.exitCode !== 0).length;
const byRow = new Map<string, number>();
for (const r of records) for (const n of [...r.notAsExpected, ...r.infra.map((c) => `${c}: infrastructure`)]) byRow.set(n, (byRow.get(n) ?? 0) + 1);
process.stdout.write(`\n${runs - failedRuns} of ${runs} consecutive runs exited 0 (${records.map((r) => r.rows).join('/')} rows)\n`);
for (const [row, n] of byRow) process.stdout.write(`  ${n}/${runs}  ${row}\n`);
process.exitCode = failedRuns > 0 ? 1 : 0;
