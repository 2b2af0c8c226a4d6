/**
 * Builds a user's reproducer on the host: static (the guest has no shared
 * libraries for it), optimised as a bug report's program usually is, and
 * linked at its own text address so an address in a log names this program
 * and no workload of the harness (those sit at 0x10000000-0x21000000 and the
 * agent at 0x60000000; all stay below 2 GiB).
 *
 * The source is untrusted (a mailing list, a bundle someone sent): the
 * preprocessor and assembler read any file it names (`#include "/dev/zero"`,
 * `.incbin "/etc/shadow"`) and crh may run as root. So gcc runs in a sandbox:
 * as nobody (uid 65534, no groups, no new privileges) when crh is root, as
 * the user itself otherwise; under CPU-time, address-space and file-size
 * limits and a wall clock; in a fresh directory holding only a copy of the
 * source, from which the binary is read back without following a link.
 */
import { constants } from 'node:fs';
import { chown, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { MissingDependencyError } from '../errors.ts';
import { escapeControl } from '../util/terminal-text.ts';
import { UsageError } from './usage-error.ts';

export const REPRO_TEXT_SEGMENT = '0x30000000';

/** Warnings are the user's business (no -Werror): they are shown, not fatal. */
export const REPRO_CFLAGS = ['-static', '-O2', '-Wall', `-Wl,-Ttext-segment=${REPRO_TEXT_SEGMENT}`] as const;

/**
 * Bounds on one compilation. A reproducer of a few hundred lines compiles in
 * well under a second with cc1 at ~100 MB; these leave room for a big one
 * and stop `#include "/dev/zero"` (cc1 grows its buffer until the
 * address-space limit, ~2 s) or an assembler filling the disk.
 */
export const COMPILE_LIMITS = {
  cpuSeconds: 60,
  addressSpaceBytes: 2 * 1024 ** 3,
  fileSizeBytes: 64 * 1024 ** 2,
  wallClockMs: 180_000,
  /** gcc's diagnostics kept; more is a hostile source too */
  outputBytes: 4 * 1024 ** 2,
} as const;
export type CompileLimits = { readonly [K in keyof typeof COMPILE_LIMITS]: number };

/** The unprivileged user a root crh compiles as (Debian's nobody/nogroup). */
export const COMPILE_UID = 65534;

export interface Compiled {
  binary: string;
  /** the compiler command line, as the sandbox ran it on its copy of the source (paths named as the caller's) */
  command: string[];
  /** gcc's stderr (warnings) */
  warnings: string;
}

/** Compiles `source` into `outDir` in the sandbox; a failure is a UsageError naming the file and the cause, with gcc's output. */
export async function compileReproducer(
  source: string,
  outDir: string,
  extraFlags: readonly string[] = [],
  limits: CompileLimits = COMPILE_LIMITS,
): Promise<Compiled> {
  let text: Buffer;
  try {
    text = await readFile(source);
  } catch (error) {
    throw new UsageError(`${source}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
  }
  const stem =
    path
      .basename(source)
      .replace(/\.c$/, '')
      .replace(/[^A-Za-z0-9_.+-]/g, '_')
      .replace(/^[.]/, '_') || 'repro';
  const binary = path.join(outDir, stem);
  const command = ['gcc', ...REPRO_CFLAGS, '-o', binary, source, ...extraFlags];
  const sandbox = await mkdtemp(path.join(tmpdir(), 'crh-compile-'));
  try {
    // The copy first (ours, readable by all), then the directory handed to nobody for gcc's output.
    await writeFile(path.join(sandbox, `${stem}.c`), text, { mode: 0o644, flag: 'wx' });
    const asRoot = process.getuid?.() === 0;
    if (asRoot) await chown(sandbox, COMPILE_UID, COMPILE_UID);
    const run = await sandboxed(sandbox, asRoot, limits, ['gcc', ...REPRO_CFLAGS, '-o', stem, `${stem}.c`, ...extraFlags]);
    // Raw here: the command (command.ts) escapes error details, Progress escapes the warnings it prints.
    const details = { command: command.join(' '), sandbox: run.argv.join(' '), 'gcc output': run.stderr };
    if (run.missing) throw new MissingDependencyError(`${run.missing} is not installed (crh bootstrap installs gcc and util-linux)`, details);
    const cause = failureCause(run, limits);
    if (cause !== undefined) throw new UsageError(`${source} was not compiled: ${cause}`, details);
    if (run.exitCode !== 0) throw new UsageError(`${source} does not compile (gcc exit ${run.exitCode})`, details);
    await mkdir(outDir, { recursive: true });
    await writeFile(binary, await readBack(path.join(sandbox, stem)), { mode: 0o755 });
    return { binary, command, warnings: run.stderr };
  } finally {
    await rm(sandbox, { recursive: true, force: true });
  }
}

interface SandboxRun {
  argv: string[];
  exitCode: number | undefined;
  signal: string | undefined;
  stderr: string;
  wallClockHit: boolean;
  outputTooLong: boolean;
  /** the tool that could not be executed */
  missing?: string;
}

/** Runs `command` in `dir` under the limits, as nobody when root; its process group is killed at the wall clock. */
async function sandboxed(dir: string, asRoot: boolean, L: CompileLimits, command: string[]): Promise<SandboxRun> {
  const argv = [
    'prlimit',
    `--cpu=${L.cpuSeconds}`,
    `--as=${L.addressSpaceBytes}`,
    `--fsize=${L.fileSizeBytes}`,
    '--core=0',
    '--',
    'setpriv',
    ...(asRoot ? [`--reuid=${COMPILE_UID}`, `--regid=${COMPILE_UID}`, '--clear-groups'] : []),
    '--no-new-privs',
    '--',
    ...command,
  ];
  // A new process group (detached), so the wall clock ends cc1, as and ld too, not only the gcc driver.
  const child = execa(argv[0]!, argv.slice(1), {
    cwd: dir,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C', TMPDIR: dir, HOME: dir },
    extendEnv: false,
    stdin: 'ignore',
    detached: true,
    reject: false,
    maxBuffer: L.outputBytes,
  });
  let wallClockHit = false;
  const timer = setTimeout(() => {
    // Only while the group leader is unreaped: its pid (the group id) is still ours.
    if (child.pid === undefined || child.exitCode !== null) return;
    wallClockHit = true;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, L.wallClockMs);
  const result = await child.finally(() => clearTimeout(timer));
  const stderr = String(result.stderr ?? '');
  const unexecutable = /^(prlimit|setpriv): failed to execute (\S+): No such file or directory$/m.exec(stderr);
  const missing =
    (result as { code?: string }).code === 'ENOENT' ? 'prlimit (util-linux)' : result.exitCode === 127 && unexecutable ? unexecutable[2] : undefined;
  return {
    argv,
    exitCode: result.exitCode,
    signal: result.signal ?? undefined,
    stderr,
    wallClockHit,
    outputTooLong: Boolean((result as { isMaxBuffer?: boolean }).isMaxBuffer),
    ...(missing ? { missing } : {}),
  };
}

/** Which bound or permission stopped the compiler, from how it ended and what gcc said; undefined for a plain compile error. */
export function failureCause(
  run: Pick<SandboxRun, 'wallClockHit' | 'outputTooLong' | 'signal' | 'stderr'>,
  L: CompileLimits = COMPILE_LIMITS,
): string | undefined {
  const mib = (n: number): string => `${n / 1024 ** 2} MiB`;
  if (run.wallClockHit) return `the compiler ran longer than ${L.wallClockMs / 1000} s (wall-clock limit hit; it was killed)`;
  if (run.outputTooLong) return `the compiler printed more than ${mib(L.outputBytes)} of diagnostics (output limit hit)`;
  const said = run.stderr;
  if (run.signal === 'SIGXCPU' || /CPU time limit exceeded/.test(said)) return `the compiler used more than ${L.cpuSeconds} s of CPU time (CPU-time limit hit)`;
  if (/virtual memory exhausted|out of memory allocating|Cannot allocate memory|memory exhausted/.test(said)) {
    return `the compiler needed more than ${mib(L.addressSpaceBytes)} of memory (address-space limit hit; a source that includes a device such as /dev/zero does this)`;
  }
  if (run.signal === 'SIGXFSZ' || /File size limit exceeded/.test(said))
    return `the compiler wrote a file larger than ${mib(L.fileSizeBytes)} (file-size limit hit)`;
  const who = process.getuid?.() === 0 ? `nobody (uid ${COMPILE_UID}, no groups)` : 'you, with no new privileges';
  const denied = /^(?:.*?: )?(?:fatal error: )?(\S+): Permission denied$/m.exec(said);
  // The names come from the source: escaped, as they go into the message.
  if (denied)
    return `permission denied reading ${escapeControl(denied[1]!)}: the compiler runs as ${who} in a directory holding only a copy of the source, and reads only what that user may`;
  // GNU as reports an .incbin it may not open as "file not found".
  const incbin = /Error: file not found: (.+)$/m.exec(said);
  if (incbin)
    return `the assembler could not open ${escapeControl(incbin[1]!)} (permission denied or absent): the compiler runs as ${who} and reads only what that user may`;
  return undefined;
}

/** The compiled binary, read without following a link the sandboxed compiler may have left in its place. */
async function readBack(file: string): Promise<Buffer> {
  let handle;
  try {
    // O_NONBLOCK: a FIFO left in its place must not hang the open.
    handle = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    throw new UsageError(`the compiler left no regular file ${path.basename(file)}: ${(error as Error).message}`);
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new UsageError(`the compiler's output ${path.basename(file)} is not a regular file`);
    if (info.size > COMPILE_LIMITS.fileSizeBytes)
      throw new UsageError(`the compiler's output ${path.basename(file)} is larger than ${COMPILE_LIMITS.fileSizeBytes} bytes`);
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}
