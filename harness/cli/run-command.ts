/**
 * `crh run`: the case files (optionally one shard of them) run N at a time,
 * each its own process, shown to a person as it goes (a line per case and a
 * summary that fits 100 columns) or printed in a machine format
 * (`--reporter tap|ktap|junit|json`), with every report written from one
 * value. `crh report`: shards' JSON reports merged into one set of reports.
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { bootstrapHost } from '../host/bootstrap.ts';
import { buildImage } from '../image/build.ts';
import { resolveKernel } from '../image/kernel.ts';
import { profileRows, type PlatformProfile } from '../platform/profile.ts';
import { caseLine, ConsoleReporter, summary } from '../report/console-reporter.ts';
import { readInfraFailures, recordInfraFailure } from '../report/infra-failures.ts';
import { describeKernelIdentity, type KernelIdentity } from '../report/kernel-matrix.ts';
import { casesOfShard, longestFirst } from '../report/shard.ts';
import { parseGrep, parseJobs, parseShard } from '../flags/run-flags.ts';
import { artifactsRoot, CASE_FILE_ENV, formatVerdictTable, readVerdicts, type Verdict } from '../report/verdicts.ts';
import { machineReport, mergeReports, REPORTERS, tapStream, writeReports, type Reporter, type RunReport } from '../report/write-reports.ts';
import { caseName, runCasePool, type CaseEvent, type CaseLaunch } from '../run/case-pool.ts';
import { bundleCases } from '../run/case-bundles.ts';
import { parseEngines } from '../flags/engine-flags.ts';
import { adoptRunConfiguration, configureRun, RUN_CONFIGURATION_ENV, RUN_CONFIGURATION_FILE, writeRunConfiguration } from '../flags/run-configuration.ts';
import { formatEngineSideBySide } from '../report/engine-matrix.ts';
import { REPO_ROOT } from '../util/cache-dir.ts';
import { COMMANDS, parseCommandLine, usageError } from './command-line.ts';
import { EXIT, verdictsExitCode } from './exit-codes.ts';
import { kernelChoiceFromFlags } from '../flags/kernel-flags.ts';
import { checkKernelConfig, kernelIdentity } from './kernel-identity.ts';
import { kernelRuns, runKernelMatrix } from './kernel-matrix.ts';

const log = (line: string): void => void process.stderr.write(`crh: ${line}\n`);

/** The recorded duration of each case file (name → ms), what `--shard` balances by; kept in the repository. */
export const DURATIONS_FILE = path.join(REPO_ROOT, 'cases', 'durations.json');
/** A case file still running after this long is stopped and fails (node-tap's own per-file bound in package.json). */
const CASE_TIMEOUT_MS = 900_000;

function readDurations(): Record<string, number> {
  try {
    return JSON.parse(readFileSync(DURATIONS_FILE, 'utf8')) as Record<string, number>;
  } catch {
    return {};
  }
}

/** The profile a case's guest measured (every guest of one image and platform measures the same). */
function measuredProfile(artifacts: string, verdicts: readonly Verdict[]): PlatformProfile | undefined {
  for (const name of new Set(verdicts.map((v) => v.case))) {
    const file = path.join(artifacts, name, 'profile.json');
    if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as PlatformProfile;
  }
  return undefined;
}

/** The first `not ok` lines of a case's TAP: why a case failed outside its rows. */
function failedAssertions(tap: string, max = 5): string[] {
  return tap
    .split('\n')
    .filter((l) => /^\s*not ok \d+/.test(l))
    .slice(0, max)
    .map((l) => l.trim());
}

export async function runCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(COMMANDS.run, args);
  if (!parsed) return EXIT.ok;
  const { values } = parsed;
  // Each flag's own check, in the flags module that owns it (a UsageError naming the flag), with this command's usage appended.
  const checked = <T>(parse: () => T): T => {
    try {
      return parse();
    } catch (error) {
      if (error instanceof Error) throw usageError(COMMANDS.run, error.message);
      throw error;
    }
  };
  const jobs = checked(() => parseJobs(values.jobs));
  const reporter = (values.reporter ?? 'people') as Reporter;
  if (!REPORTERS.includes(reporter)) throw usageError(COMMANDS.run, `--reporter takes one of ${REPORTERS.join(', ')}, not ${values.reporter}`);
  const shard = checked(() => (values.shard === undefined ? undefined : parseShard(values.shard)));
  const grep = checked(() => parseGrep(values.grep));
  const engineFlag = checked(() => (values.engine === undefined ? undefined : parseEngines(values.engine)));
  const casesDir = path.resolve(REPO_ROOT, values.cases ?? 'cases');
  if (!existsSync(casesDir)) throw usageError(COMMANDS.run, `--cases ${values.cases}: no such directory`);
  const runs = kernelRuns(values);
  if (runs.length > 1) {
    if (values.html)
      throw usageError(COMMANDS.run, '--html names one file: with several kernels each kernel has its report in <artifacts>/<kernel>/report.html');
    if (reporter !== 'people' || values.ktap)
      throw usageError(COMMANDS.run, '--reporter and --ktap go with one kernel: with several, each kernel has its reports in <artifacts>/<kernel>/');
    const passThrough = [
      ...(values.grep ? ['--grep', values.grep] : []),
      ...(values.jobs ? ['--jobs', values.jobs] : []),
      ...(values.shard ? ['--shard', values.shard] : []),
      ...(values.cases ? ['--cases', path.resolve(values.cases)] : []),
      ...(engineFlag ? ['--engine', engineFlag.join(',')] : []),
    ];
    const junit = values.junit ? path.resolve(values.junit) : undefined;
    const json = values.json ? path.resolve(values.json) : undefined;
    const root = values.artifacts ? path.resolve(values.artifacts) : artifactsRoot();
    return (await runKernelMatrix({ runs, artifactsRoot: root, passThrough, ...(junit ? { junit } : {}), ...(json ? { json } : {}), log })).exitCode;
  }

  // cases/ and its folders (cases/reports/: the mailing-list catalog); --grep matches the relative path.
  let cases = readdirSync(casesDir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.test.ts') && (!grep || grep.test(f)))
    .sort()
    .map((f) => path.join(casesDir, f));
  if (cases.length === 0) throw usageError(COMMANDS.run, `no case file matches ${values.grep}`);
  const durations = readDurations();
  const byName = new Map(cases.map((c) => [caseName(c, casesDir), c]));
  if (shard) {
    cases = casesOfShard([...byName.keys()], durations, shard).map((n) => byName.get(n)!);
    log(`shard ${shard.index}/${shard.count}: ${cases.length} case file(s): ${cases.map((c) => caseName(c, casesDir)).join(' ')}`);
    if (cases.length === 0) throw usageError(COMMANDS.run, `shard ${shard.index}/${shard.count} is empty: ${shard.count} shards for fewer case files`);
  }
  // Started longest first, each in the next free slot: the run ends when its longest case could, not after it.
  cases = longestFirst(
    cases.map((c) => caseName(c, casesDir)),
    durations,
  ).map((n) => byName.get(n)!);

  // The run's one configuration: built and checked here, worked under here, handed to every case process as one file.
  const kernelFlag = kernelChoiceFromFlags(runs[0]!.flags);
  const configuration = configureRun(
    {
      ...(kernelFlag ? { kernel: kernelFlag } : {}),
      ...(engineFlag ? { engines: engineFlag } : {}),
      ...(values.artifacts ? { artifactsDir: values.artifacts } : {}),
    },
    process.env,
  );
  adoptRunConfiguration(configuration);
  const { engines, artifactsDir: artifacts, verdictsFile } = configuration;
  const startedMs = Date.now();
  const files = {
    html: path.resolve(values.html ?? path.join(artifacts, 'report.html')),
    ...(values.junit ? { junit: path.resolve(values.junit) } : {}),
    ...(values.json ? { json: path.resolve(values.json) } : {}),
    ...(values.ktap ? { ktap: path.resolve(values.ktap) } : {}),
  };
  rmSync(verdictsFile, { force: true });
  rmSync(path.join(path.dirname(verdictsFile), 'infra-failures.jsonl'), { force: true });
  const configurationFile = await writeRunConfiguration(configuration, path.join(artifacts, RUN_CONFIGURATION_FILE));

  await bootstrapHost(log);
  // Build once up front so the cases (run in parallel) find it cached; a
  // kernel or image that cannot be had is infrastructure, reported as such.
  await checkKernelConfig(() => resolveKernel(configuration.kernel));
  let kernel: KernelIdentity | undefined;
  let criu: { version: string; suite: string } | undefined;
  try {
    // With criu among the engines every case boots the image variant with CRIU (built once here, then cached).
    const image = await buildImage({ kernel: await resolveKernel(configuration.kernel, log), log, ...(engines.includes('criu') ? { criu: true } : {}) });
    log(`guest image ${image.key} (${image.kernel.origin})${image.criu ? `, CRIU ${image.criu.version} from Debian ${image.criu.suite}` : ''}`);
    criu = image.criu;
    kernel = await kernelIdentity(image.kernel);
  } catch (error) {
    recordInfraFailure('(image)', error);
    await writeReports({ verdicts: [], infrastructureFailures: readInfraFailures() }, files, { artifactsRoot: artifacts, sinceMs: startedMs });
    log(`HTML report: ${files.html}`);
    throw error;
  }

  // Rows name their case as the case likes; the file that recorded them ties them to the case file.
  const fileOf = (name: string): string => path.relative(REPO_ROOT, path.join(casesDir, `${name}.test.ts`));
  const rowsOf = (name: string): Verdict[] => readVerdicts().filter((v) => v.file === fileOf(name));
  const infraIn = (name: string): boolean => readInfraFailures().some((f) => f.file === fileOf(name));
  const people = reporter === 'people';
  // A machine format owns stdout; a person still sees the case lines, on stderr.
  const display = people
    ? new ConsoleReporter(
        { write: (s) => void process.stdout.write(s), isTTY: process.stdout.isTTY === true, columns: process.stdout.columns ?? 100 },
        rowsOf,
        infraIn,
      )
    : undefined;
  const ended: Extract<CaseEvent, { type: 'end' }>[] = [];
  log(`${cases.length} case file(s), ${jobs} at a time; each case's TAP in ${path.join(artifacts, 'tap')}/`);
  const bundles = await bundleCases(cases, REPO_ROOT).catch((error: unknown) => {
    // The sources run as they are: a file that does not compile then fails on its own, in its own TAP.
    log(
      `case files not compiled ahead (${(error instanceof Error ? error.message : String(error)).split('\n').slice(0, 2).join(' ')}); each runs under tsx's loader`,
    );
    return undefined;
  });
  const launch = bundles
    ? (file: string): CaseLaunch => ({ nodeArgs: ['--enable-source-maps'], script: bundles.entryOf(file), env: { [CASE_FILE_ENV]: file } })
    : undefined;
  await runCasePool(
    {
      ...(launch ? { launch } : {}),
      files: cases,
      jobs,
      tapDir: path.join(artifacts, 'tap'),
      cwd: REPO_ROOT,
      // tap's own per-file bound (30 s when a test file runs as a plain program) matches ours.
      env: { ...process.env, [RUN_CONFIGURATION_ENV]: configurationFile, TAP_TIMEOUT: String(CASE_TIMEOUT_MS / 1000) },
      timeoutMs: CASE_TIMEOUT_MS,
      onEvent: (event) => {
        if (event.type === 'end') ended.push(event);
        if (display) display.onEvent(event);
        else if (event.type === 'end')
          process.stderr.write(`${caseLine(event.name, rowsOf(event.name), event.exitCode, event.durationMs, infraIn(event.name))}\n`);
      },
    },
    casesDir,
  ).finally(() => bundles?.dispose());
  display?.clearStatus();

  const report: RunReport = { ...(kernel ? { kernel } : {}), verdicts: readVerdicts(), infrastructureFailures: readInfraFailures() };
  await writeReports(report, files, { artifactsRoot: artifacts, sinceMs: startedMs });
  // The wide table, the profile and the measured durations stay in the artifacts.
  const profile = measuredProfile(artifacts, report.verdicts);
  await mkdir(artifacts, { recursive: true });
  await writeFile(path.join(artifacts, 'verdicts.txt'), `${formatVerdictTable(report.verdicts)}\n`);
  if (profile)
    await writeFile(
      path.join(artifacts, 'profile.txt'),
      `${profileRows(profile)
        .map(([k, v]) => `${k.padEnd(34)} ${v}`)
        .join('\n')}\n`,
    );
  await writeFile(path.join(artifacts, 'durations.json'), `${JSON.stringify(Object.fromEntries(ended.map((e) => [e.name, e.durationMs])), null, 2)}\n`);

  const caseFailed = (e: (typeof ended)[number]): boolean => e.exitCode !== 0 || e.timedOut;
  if (people) {
    const accel = profile ? profileRows(profile).find(([k]) => k === 'accelerator')?.[1] : undefined;
    const context = [
      ...(accel ? [`accelerator: ${accel}`] : []),
      ...(kernel ? [`kernel: ${kernel.label ? `${kernel.label} = ` : ''}${describeKernelIdentity(kernel)}`] : []),
      ...(engines.length > 1 || engines[0] !== 'crh' ? [`engines: ${engines.join(', ')}${criu ? ` (CRIU ${criu.version}, Debian ${criu.suite})` : ''}`] : []),
      ...(shard ? [`shard ${shard.index}/${shard.count}: ${cases.length} case file(s)`] : []),
    ];
    // Both engines asked: the rows side by side, one column per engine, before the summary.
    if (engines.length > 1) process.stdout.write(`\n${formatEngineSideBySide(report.verdicts, engines)}\n`);
    const failedCases: string[] = [];
    for (const e of ended.filter(caseFailed)) {
      // A failing row speaks for itself in the summary; a case that failed beside its rows shows its failed assertions.
      if (rowsOf(e.name).some((v) => !v.pass && v.skipped === undefined)) continue;
      failedCases.push(e.name);
      const why = failedAssertions(await readFile(e.tapFile, 'utf8').catch(() => ''));
      if (why.length > 0) process.stdout.write(`${e.name}:\n${why.map((w) => `  ${w}`).join('\n')}\n`);
    }
    process.stdout.write(
      summary({
        verdicts: report.verdicts,
        infraCases: [...new Set(report.infrastructureFailures.map((f) => f.case))],
        failedCases,
        elapsedMs: Date.now() - startedMs,
        artifactsRoot: artifacts,
        htmlReport: files.html,
        context,
      }),
    );
  } else if (reporter === 'tap') {
    const stream = await Promise.all(ended.map(async (e) => ({ name: e.name, tap: await readFile(e.tapFile, 'utf8').catch(() => ''), ok: !caseFailed(e) })));
    process.stdout.write(tapStream(stream));
  } else {
    process.stdout.write(machineReport(reporter, report));
  }
  for (const f of report.infrastructureFailures) log(`infrastructure failure in ${f.case}:\n${f.error}`);
  if (report.infrastructureFailures.length > 0) return EXIT.infra;
  const passes = report.verdicts.filter((v) => v.pass).length;
  if (passes === 0) log(report.verdicts.length === 0 ? 'no verdict was recorded: nothing was tested' : 'every verdict is a skip: nothing was tested');
  return verdictsExitCode(report.verdicts, ended.some(caseFailed) ? EXIT.failed : 0);
}

/** `crh report --from A.json --from B.json …`: shards merged into one set of reports, with the exit code of the whole. */
export async function reportCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(COMMANDS.report, args);
  if (!parsed) return EXIT.ok;
  const { values } = parsed;
  const from = values.from ?? [];
  if (from.length === 0) throw usageError(COMMANDS.report, 'name at least one --from RUN.json (what crh run --json wrote)');
  for (const f of from) if (!existsSync(f)) throw usageError(COMMANDS.report, `--from ${f}: no such file`);
  let report: RunReport;
  try {
    report = await mergeReports(from.map((f) => path.resolve(f)));
  } catch (error) {
    throw usageError(COMMANDS.report, (error as Error).message);
  }
  const files = {
    ...(values.junit ? { junit: path.resolve(values.junit) } : {}),
    ...(values.json ? { json: path.resolve(values.json) } : {}),
    ...(values.ktap ? { ktap: path.resolve(values.ktap) } : {}),
    ...(values.html ? { html: path.resolve(values.html) } : {}),
  };
  await writeReports(report, files, { artifactsRoot: artifactsRoot(), sinceMs: 0 });
  const count = (pass: boolean): number => report.verdicts.filter((v) => v.skipped === undefined && v.pass === pass).length;
  process.stdout.write(`${from.length} report(s), ${report.verdicts.length} rows: ${count(true)} passed, ${count(false)} failed\n`);
  if (report.infrastructureFailures.length > 0) return EXIT.infra;
  return verdictsExitCode(report.verdicts);
}
