/**
 * Kernel mutation score: what the harness is worth for patch validation.
 * Builds a small kernel from Debian's linux-source-6.1 (fetched with
 * `apt-get download`, unpacked into the cache — nothing is installed on the
 * host), checks that the pristine kernel passes the selected cases, then for
 * each one-line mutant in images/mutants/mutants.json applies it, rebuilds
 * incrementally, runs `crh run` on its area's cases, and restores the line.
 * Prints caught/total with the rows that caught each mutant and writes the
 * results as JSON.
 *
 *   nice -n 19 node --import tsx scripts/kernel-mutants.ts [--only ID,ID] [--area AREA,AREA]
 *       [--all-cases] [--make-jobs 2] [--run-limit SECONDS] [--out FILE]
 *
 * A mutant run that passes --run-limit (default: three times the pristine run
 * of every selected area, at least 900 s: at 300 s a slow but healthy run
 * under load was stopped) is stopped and counted as a hang.
 *
 * Builds and runs are started under `nice -n 19` (the host is shared).
 * Not part of the test command: it takes minutes per mutant.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { InfraError } from '../harness/errors.ts';
import { REPO_ROOT, cacheDir } from '../harness/util/cache-dir.ts';
import { bootstrapHost } from '../harness/host/bootstrap.ts';
import {
  applyMutant,
  decide,
  describeDecision,
  parseMutantSet,
  score,
  tapFailures,
  unionGrep,
  type Decision,
  type Mutant,
  type RunReport,
  type RunResult,
} from './mutants.ts';

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    area: { type: 'string' },
    'all-cases': { type: 'boolean', default: false },
    'make-jobs': { type: 'string', default: '2' },
    'run-limit': { type: 'string' },
    out: { type: 'string' },
  },
});

const SOURCE_PACKAGE = 'linux-source-6.1';
const FRAGMENT = path.join(REPO_ROOT, 'images', 'mutants', 'kernel.fragment');
const MUTANTS = path.join(REPO_ROOT, 'images', 'mutants', 'mutants.json');
const WORK = cacheDir('mutants');
const SRC = path.join(WORK, 'linux-source-6.1');
const BUILD = path.join(WORK, 'build');
/** Beside a mutated file while the mutant is applied; found at start after a crash and put back. */
const ORIGINAL_SUFFIX = '.crh-original';

const log = (line: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);

async function run(cmd: string, args: string[], cwd: string, what: string): Promise<void> {
  const r = await execa(cmd, args, { cwd, reject: false, all: true });
  if (r.exitCode !== 0)
    throw new InfraError(`${what} failed (exit ${r.exitCode})`, { command: [cmd, ...args].join(' '), output: (r.all ?? '').split('\n').slice(-40).join('\n') });
}

/** Debian's kernel source, downloaded and unpacked once into the cache. */
async function ensureSource(): Promise<string> {
  const marker = path.join(WORK, 'source-unpacked');
  if (existsSync(marker) && existsSync(path.join(SRC, 'Makefile'))) return (await readFile(marker, 'utf8')).trim();
  const debDir = path.join(WORK, 'deb');
  await rm(debDir, { recursive: true, force: true });
  await mkdir(debDir, { recursive: true });
  log(`apt-get download ${SOURCE_PACKAGE}`);
  await run('apt-get', ['download', SOURCE_PACKAGE], debDir, `apt-get download ${SOURCE_PACKAGE}`);
  const deb = (await readdir(debDir)).find((f) => f.endsWith('.deb'));
  if (!deb) throw new InfraError(`apt-get download ${SOURCE_PACKAGE} left no .deb`, { directory: debDir });
  const version = (await execa('dpkg-deb', ['-f', path.join(debDir, deb), 'Version'])).stdout.trim();
  const pkg = path.join(WORK, 'pkg');
  await rm(pkg, { recursive: true, force: true });
  await run('dpkg-deb', ['-x', path.join(debDir, deb), pkg], WORK, 'dpkg-deb -x');
  const tarball = path.join(pkg, 'usr', 'src', `${SOURCE_PACKAGE}.tar.xz`);
  log(`unpacking ${tarball}`);
  await rm(SRC, { recursive: true, force: true });
  await run('nice', ['-n', '19', 'tar', '-xf', tarball], WORK, 'unpacking the kernel source');
  await rm(pkg, { recursive: true, force: true });
  await writeFile(marker, `${SOURCE_PACKAGE} ${version}\n`);
  return `${SOURCE_PACKAGE} ${version}`;
}

/** The fragment's lines (`CONFIG_X=y` or `# CONFIG_X is not set`), comments and blanks dropped. */
function fragmentLines(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /^CONFIG_[A-Z0-9_]+=/.test(l) || /^# CONFIG_[A-Z0-9_]+ is not set$/.test(l));
}

/**
 * tinyconfig is 32-bit: 64BIT goes in and olddefconfig runs before the rest,
 * so options that exist only on x86_64 can be set. Every fragment line must
 * survive the second olddefconfig (a dependency that drops one is an error).
 */
async function configure(): Promise<void> {
  const fragment = await readFile(FRAGMENT, 'utf8');
  const digest = createHash('sha256').update(fragment).digest('hex');
  const stamp = path.join(BUILD, '.crh-fragment-sha256');
  if (existsSync(stamp) && (await readFile(stamp, 'utf8')).trim() === digest && existsSync(path.join(BUILD, '.config'))) return;
  await mkdir(BUILD, { recursive: true });
  const make = (target: string): Promise<void> => run('nice', ['-n', '19', 'make', `O=${BUILD}`, target], SRC, `make ${target}`);
  const config = (...args: string[]): Promise<void> =>
    run(path.join(SRC, 'scripts', 'config'), ['--file', path.join(BUILD, '.config'), ...args], SRC, 'scripts/config');
  log('configuring: tinyconfig + images/mutants/kernel.fragment');
  await make('tinyconfig');
  await config('--enable', '64BIT');
  await make('olddefconfig');
  const lines = fragmentLines(fragment);
  for (const line of lines) {
    const set = /^CONFIG_([A-Z0-9_]+)=(.*)$/.exec(line);
    const unset = /^# CONFIG_([A-Z0-9_]+) is not set$/.exec(line);
    if (set) await config('--set-val', set[1]!, set[2]!);
    else if (unset) await config('--disable', unset[1]!);
  }
  await make('olddefconfig');
  const result = new Set((await readFile(path.join(BUILD, '.config'), 'utf8')).split('\n'));
  const dropped = lines.filter((l) => !result.has(l));
  if (dropped.length > 0)
    throw new InfraError('olddefconfig dropped options the fragment sets (a dependency is missing from it)', {
      dropped: dropped.join('\n'),
      fragment: FRAGMENT,
    });
  await writeFile(stamp, `${digest}\n`);
}

async function buildKernel(what: string): Promise<number> {
  const started = Date.now();
  log(`building bzImage (${what})`);
  await run('nice', ['-n', '19', 'make', `O=${BUILD}`, `-j${values['make-jobs']}`, 'bzImage'], SRC, `kernel build (${what})`);
  const seconds = Math.round((Date.now() - started) / 1000);
  log(`built in ${seconds} s`);
  return seconds;
}

/**
 * Renames the saved original over the mutated file. The copy's mtime predates
 * the mutant's object file: without a fresh one make would keep the mutant's
 * object in the "pristine" kernel.
 */
async function putBack(original: string, file: string): Promise<void> {
  await rename(original, file);
  const { atime } = await stat(file);
  await utimes(file, atime, new Date());
}

/** Puts back any file a crashed earlier run left mutated. */
async function restoreLeftovers(mutants: readonly Mutant[]): Promise<void> {
  for (const file of new Set(mutants.map((m) => m.file))) {
    const original = path.join(SRC, file + ORIGINAL_SUFFIX);
    if (existsSync(original)) {
      log(`restoring ${file} left mutated by an earlier run`);
      await putBack(original, path.join(SRC, file));
    }
  }
}

/** Checks every mutant's line is in the pristine tree exactly once, before any build. */
async function checkApplicable(mutants: readonly Mutant[]): Promise<void> {
  for (const m of mutants) applyMutant(await readFile(path.join(SRC, m.file), 'utf8'), m);
}

async function withMutant<T>(m: Mutant, body: () => Promise<T>): Promise<T> {
  const file = path.join(SRC, m.file);
  const original = file + ORIGINAL_SUFFIX;
  const text = await readFile(file, 'utf8');
  await copyFile(file, original);
  await writeFile(file, applyMutant(text, m));
  try {
    return await body();
  } finally {
    await putBack(original, file);
  }
}

async function crhRun(grep: string | undefined, label: string, outDir: string, limitSeconds: number): Promise<RunResult> {
  const json = path.join(outDir, `${label}.json`);
  await rm(json, { force: true });
  const args = [
    '-n',
    '19',
    process.execPath,
    path.join(REPO_ROOT, 'bin', 'crh.js'),
    'run',
    '--kernel',
    path.join(BUILD, 'arch', 'x86', 'boot', 'bzImage'),
    '--kernel-config',
    path.join(BUILD, '.config'),
    '--system-map',
    path.join(BUILD, 'System.map'),
    '--json',
    json,
    '--artifacts',
    path.join(outDir, label),
    '--html',
    path.join(outDir, label, 'report.html'),
    '--jobs',
    '1',
    ...(grep ? ['--grep', grep] : []),
  ];
  log(`crh run ${grep ? `--grep '${grep}'` : '(all cases)'} (${label})`);
  const limit = limitSeconds;
  const child = execa('nice', args, { cwd: REPO_ROOT, reject: false, all: true, detached: true });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    // The run's own process group: crh, tap, the cases and their QEMUs.
    if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
  }, limit * 1000);
  const result = await child;
  clearTimeout(timer);
  const output = result.all ?? '';
  await writeFile(path.join(outDir, `${label}.log`), output);
  const report = existsSync(json) ? (JSON.parse(await readFile(json, 'utf8')) as RunReport) : undefined;
  return { exitCode: result.exitCode, report, tapFailures: tapFailures(output), ...(timedOut ? { timedOutAfterSeconds: limit } : {}) };
}

interface MutantResult {
  mutant: Mutant;
  grep: string | undefined;
  buildSeconds: number;
  runSeconds: number;
  decision: Decision;
}

const set = parseMutantSet(JSON.parse(await readFile(MUTANTS, 'utf8')));
const only = values.only?.split(',');
const areas = values.area?.split(',');
for (const a of areas ?? []) if (!(a in set.areas)) throw new Error(`--area ${a}: not one of ${Object.keys(set.areas).join(', ')}`);
// --only runs its mutants in the order given (most wanted first when time is short).
const chosen = (only ? only.flatMap((id) => set.mutants.filter((m) => m.id === id)) : set.mutants).filter((m) => !areas || areas.includes(m.area));
for (const id of only ?? []) if (!set.mutants.some((m) => m.id === id)) throw new Error(`--only ${id}: no such mutant`);
if (chosen.length === 0) throw new Error('no mutant selected');

const started = new Date();
const outDir = cacheDir('mutants', 'runs', started.toISOString().replace(/[:.]/g, '-'));
await mkdir(outDir, { recursive: true });
// What `make bzImage` needs beyond the harness's own packages (installed as root, else named with the apt-get line).
await bootstrapHost(log, {
  extra: {
    make: 'runs the kernel build',
    flex: 'the kernel config lexer',
    bison: 'the kernel config parser',
    'libelf-dev': 'objtool',
    bc: 'the kernel build',
    'libssl-dev': 'the kernel build (certs)',
  },
});
const source = await ensureSource();
await restoreLeftovers(set.mutants);
await checkApplicable(chosen);
await configure();

const grepOf = (m: Mutant): string | undefined => (values['all-cases'] ? undefined : set.areas[m.area]);
const baselineGrep = values['all-cases'] ? undefined : unionGrep(set, chosen);
const baselineBuild = await buildKernel('pristine');
const baselineStarted = Date.now();
// The pristine run gets a generous fixed limit: nothing is known about its length yet.
const baseline = decide(await crhRun(baselineGrep, 'baseline', outDir, 3600));
const baselineRunSeconds = Math.round((Date.now() - baselineStarted) / 1000);
const runLimit = values['run-limit'] ? Number(values['run-limit']) : Math.max(900, 3 * baselineRunSeconds);
// decide() speaks of mutants: for the pristine kernel its "missed" means every row passed.
log(
  `baseline (${baselineRunSeconds} s): ${baseline.outcome === 'missed' ? `passes, ${baseline.rows} rows as expected` : describeDecision(baseline)}; a mutant run is stopped after ${runLimit} s`,
);
if (baseline.outcome !== 'missed') {
  // An unmutated kernel that fails its cases makes every catch meaningless.
  log(`the pristine kernel does not pass the selection; no mutant run. Logs: ${outDir}`);
  process.exit(1);
}

const results: MutantResult[] = [];
const save = (): Promise<void> =>
  writeFile(
    values.out ?? path.join(outDir, 'results.json'),
    `${JSON.stringify({ source, started: started.toISOString(), baseline: { grep: baselineGrep, buildSeconds: baselineBuild, runSeconds: baselineRunSeconds, decision: baseline }, runLimitSeconds: runLimit, results, score: score(results.map((r) => r.decision)) }, null, 2)}\n`,
  );
for (const [i, m] of chosen.entries()) {
  log(`[${i + 1}/${chosen.length}] ${m.id}: ${m.description}`);
  const grep = grepOf(m);
  const result = await withMutant(m, async () => {
    const buildSeconds = await buildKernel(m.id);
    const runStarted = Date.now();
    const decision = decide(await crhRun(grep, m.id, outDir, runLimit));
    return { mutant: m, grep, buildSeconds, runSeconds: Math.round((Date.now() - runStarted) / 1000), decision };
  });
  log(`  ${describeDecision(result.decision)}`);
  results.push(result);
  await save();
}

// The tree is pristine again; rebuild so the cached bzImage matches it.
await buildKernel('pristine again');
const s = score(results.map((r) => r.decision));
process.stdout.write(
  `\nkernel mutation score (${source}, ${started.toISOString().slice(0, 10)}): ${s.caught}/${s.decided} caught (${s.byVerdict} by a verdict row)${s.inconclusive ? `, ${s.inconclusive} inconclusive` : ''}\n\n`,
);
for (const r of results) process.stdout.write(`${r.mutant.id} [${r.mutant.area}] ${r.mutant.file}: ${describeDecision(r.decision)}\n`);
process.stdout.write(`\nresults: ${values.out ?? path.join(outDir, 'results.json')}\n`);
