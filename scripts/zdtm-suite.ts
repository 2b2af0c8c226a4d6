/**
 * CRIU's own ZDTM suite through `crh zdtm`, on demand (not part of `npm
 * test`): what a user with their own ZDTM build does, done for them.
 *
 * 1. Fetch CRIU's upstream source from Debian (trixie) through crh's
 *    private deb-src apt configuration, verified by apt and again by its
 *    SHA-256 in the signed Sources index (harness/zdtm/suite-source.ts).
 * 2. Unpack it into crh's cache (keyed by that SHA-256) and build ZDTM's
 *    library and the chosen tests with ZDTM's own Makefiles, static
 *    (harness/zdtm/suite-build.ts). Nothing of it enters the repository.
 * 3. Choose the tests from the tree's Makefile and .desc files
 *    (harness/zdtm/suite-selection.ts), listing each one skipped and why.
 * 4. Run them through `node bin/crh.js zdtm ... --json`, one invocation
 *    per argument list, one at a time, and print one line per test:
 *    native result, crh's verdict, CRIU's verdict, time.
 *
 * Exit 1 when a test that passes natively fails through crh; 69 when the fetch,
 * verification or build failed, or an
 * invocation failed as infrastructure (tests left without a verdict); else 0.
 *
 *   node --import tsx scripts/zdtm-suite.ts [--engine crh|crh,criu] [--iters N] [--only T1,T2] [--json FILE]
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { CrhError } from '../harness/errors.ts';
import { isInfraFailure } from '../harness/report/infra-failures.ts';
import type { Verdict } from '../harness/report/verdicts.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';
import { buildZdtmTests, zdtmTree } from '../harness/zdtm/suite-build.ts';
import { groupByArgs, selectZdtmTests, ZDTM_CANDIDATES, type SelectedTest, type SkippedTest } from '../harness/zdtm/suite-selection.ts';
import { fetchZdtmSource } from '../harness/zdtm/suite-source.ts';
import { formatSuiteTable, suiteExitCode, suiteLines, suiteTotals, type GroupRun } from '../harness/zdtm/suite-table.ts';

const { values } = parseArgs({
  options: {
    engine: { type: 'string', default: 'crh,criu' },
    iters: { type: 'string', default: '1' },
    only: { type: 'string' },
    json: { type: 'string' },
  },
});
const engines = values.engine.split(',') as ('crh' | 'criu')[];
if (!engines.includes('crh') || engines.some((e) => e !== 'crh' && e !== 'criu')) {
  process.stderr.write(`--engine: crh or crh,criu (crh's verdict is what this script judges), not ${values.engine}\n`);
  process.exit(2);
}
if (!/^[1-9]\d{0,2}$/.test(values.iters)) {
  process.stderr.write(`--iters: a positive whole number, not ${values.iters}\n`);
  process.exit(2);
}
const log = (line: string): void => void process.stderr.write(`zdtm-suite: ${line}\n`);

// Fetching, verifying and building fail as infrastructure (exit 69): a refused tarball is no verdict about crh.
main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`zdtm-suite: ${error instanceof CrhError ? error.describe() : String(error)}\n`);
    process.exit(isInfraFailure(error) ? 69 : 1);
  },
);

async function main(): Promise<number> {
  const started = Date.now();
  const source = await fetchZdtmSource(log);
  log(`${source.package} ${source.version} from ${source.suite}: ${source.uri}, SHA-256 ${source.tarball.sha256} (${source.tarball.size} bytes), verified`);
  const tree = await zdtmTree(source, log);
  const only = values.only?.split(',');
  const candidates = only ? ZDTM_CANDIDATES.map((c) => ({ ...c, tests: c.tests.filter((t) => only.includes(t)) })) : ZDTM_CANDIDATES;
  const { selected, skipped } = selectZdtmTests(candidates, tree.makefile, tree.sources, tree.descs);
  const buildStarted = Date.now();
  const { built, failed } = await buildZdtmTests(
    tree,
    selected.map((t) => t.name),
  );
  const buildMs = Date.now() - buildStarted;
  const toRun = selected.filter((t) => built.has(t.name));
  const notBuilt: SkippedTest[] = selected
    .filter((t) => failed.has(t.name))
    .map((t) => ({ name: t.name, category: t.category, reason: `does not build here: ${failed.get(t.name)}` }));
  for (const s of [...skipped, ...notBuilt]) log(`skipped ${s.name} (${s.category}): ${s.reason}`);
  log(`${toRun.length} tests to run (built in ${(buildMs / 1000).toFixed(1)} s in ${tree.staticDir}), ${skipped.length + notBuilt.length} skipped`);

  const work = await makeTempDir('crh-zdtm-suite-');
  const groups: GroupRun[] = [];
  try {
    for (const [n, tests] of groupByArgs(toRun).entries()) groups.push(await runGroup(n, tests, work, built));
  } finally {
    await removeTempDir(work);
  }

  const lines = suiteLines(groups, engines);
  const code = suiteExitCode(lines, groups);
  process.stdout.write(`\n${formatSuiteTable(lines)}\n`);
  if (skipped.length + notBuilt.length > 0) {
    process.stdout.write('Skipped:\n');
    for (const s of [...skipped, ...notBuilt]) process.stdout.write(`- ${s.name} (${s.category}): ${s.reason}\n`);
  }
  const wall = groups.map((g) => `${g.tests.map((t) => t.name).join(',')}: ${(g.wallMs / 1000).toFixed(1)} s`);
  process.stdout.write(`\nInvocations (wall time, boot included):\n${wall.map((w) => `- ${w}`).join('\n')}\n`);
  process.stdout.write(
    `\n${suiteTotals(lines)}; ${groups.length} crh zdtm invocations, ${((Date.now() - started) / 1000).toFixed(1)} s in all (build ${(buildMs / 1000).toFixed(1)} s); exit ${code}\n`,
  );
  if (values.json)
    await writeFile(
      values.json,
      JSON.stringify(
        {
          source: { package: source.package, version: source.version, suite: source.suite, uri: source.uri, sha256: source.tarball.sha256 },
          engines,
          iters: Number(values.iters),
          lines,
          skipped: [...skipped, ...notBuilt],
          invocations: groups.map((g) => ({
            tests: g.tests.map((t) => t.name),
            args: g.tests[0]?.args ?? [],
            exitCode: g.exitCode,
            wallMs: g.wallMs,
            trouble: g.trouble,
          })),
          buildMs,
          totalMs: Date.now() - started,
          exitCode: code,
        },
        null,
        2,
      ),
    );
  return code;
}

/** One `crh zdtm` invocation (one guest) for tests that share their arguments; its rows from --json. */
async function runGroup(n: number, tests: readonly SelectedTest[], work: string, built: ReadonlyMap<string, string>): Promise<GroupRun> {
  const json = path.join(work, `group-${n}.json`);
  const args = tests[0]!.args;
  const argv = [
    path.join(REPO_ROOT, 'bin/crh.js'),
    'zdtm',
    ...tests.map((t) => built.get(t.name)!),
    '--engine',
    engines.join(','),
    '--iters',
    values.iters,
    '--json',
    json,
    '--artifacts',
    path.join(REPO_ROOT, 'artifacts', 'zdtm-suite', `group-${n}`),
    ...(args.length > 0 ? ['--', ...args] : []),
  ];
  log(`crh zdtm ${tests.map((t) => t.name).join(' ')}${args.length > 0 ? ` -- ${args.join(' ')}` : ''}`);
  const t0 = Date.now();
  const run = await execa('node', argv, { cwd: REPO_ROOT, reject: false, stdout: 'inherit', stderr: 'inherit' });
  const wallMs = Date.now() - t0;
  let rows: Verdict[] = [];
  let trouble: string | undefined;
  try {
    const report = JSON.parse(await readFile(json, 'utf8')) as { verdicts: Verdict[]; infrastructureFailures: Array<{ error: string }> };
    rows = report.verdicts;
    if (report.infrastructureFailures.length > 0) trouble = report.infrastructureFailures.map((f) => f.error.split('\n')[0]).join('; ');
  } catch (error) {
    trouble = `crh zdtm exited ${run.exitCode ?? run.signal} and wrote no report (${(error as Error).message})`;
  }
  if (run.exitCode === 69 && trouble === undefined) trouble = 'crh zdtm exited 69 (infrastructure)';
  return { tests, rows, exitCode: run.exitCode ?? -1, wallMs, ...(trouble !== undefined ? { trouble } : {}) };
}
