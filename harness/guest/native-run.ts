/**
 * The native reference: a program run in the guest with no tracer and no
 * breakpoint — an SSH exec of guests/native/crh-native, which forks it with
 * what the agent's SPAWN gives a workload (empty signal mask, default
 * dispositions, ASLR off through personality(ADDR_NO_RANDOMIZE), stdin
 * /dev/null, stdout and stderr on a file) and nothing else: the environment
 * is exactly `envp` (env -i), the working directory `cwd`. What a traced run
 * of the same program prints must be what this prints, or the harness
 * changed what it observes. The pid cannot be arranged: it is whatever fork
 * gives, so output that shows the pid differs from the traced run's.
 */
import { CrhError } from '../errors.ts';
import { shellQuote } from '../machine/qemu-args.ts';

export const NATIVE_RUNNER = '/usr/local/bin/crh-native';

export interface NativeRunRequest {
  /** guest path */
  binary: string;
  argv: readonly string[];
  envp: readonly string[];
  /** the working directory; absent: the SSH exec's own, where an agent started without agentCwd runs too */
  cwd?: string;
  /** guest file for its stdout and stderr */
  stdoutPath: string;
  timeoutMs: number;
  /** sent once the program announces readiness (ready file or CRH-READY line), as the traced runs do */
  finish?: { signal: number; readyFile: string };
  /** a daemon: once the program exits 0, the process this file names is waited for (and sent `finish`) instead */
  pidFile?: string;
}

export interface NativeRun {
  outcome: 'exited' | 'killed' | 'timed-out';
  /** exit code, signal number, or the timeout in ms */
  code: number;
  output: string;
  pid: number;
}

/** What runs the native reference: a guest shell command and a guest file reader. */
export interface NativeRunner {
  shell: (command: string) => Promise<string>;
  readFile: (path: string) => Promise<string>;
}

/** The shell command that runs the program natively (pure: tested without a guest). */
export function nativeCommand(r: NativeRunRequest): string {
  const args = [
    ...(r.pidFile !== undefined ? ['--pid-file', r.pidFile] : []),
    String(r.timeoutMs),
    r.stdoutPath,
    String(r.finish?.signal ?? 0),
    r.finish?.readyFile ?? '/nonexistent',
    r.binary,
    ...r.argv,
  ];
  const cd = r.cwd === undefined ? '' : `cd ${shellQuote(r.cwd)} && `;
  return `${cd}exec env -i ${r.envp.map(shellQuote).join(' ')} ${NATIVE_RUNNER} ${args.map(shellQuote).join(' ')}`.replace(/ {2,}/g, ' ');
}

/** Parses crh-native's report: "pid N" then "exited N", "killed SIG" or "timed-out MS". */
export function parseNativeReport(text: string): Omit<NativeRun, 'output'> {
  const m = /^pid (\d+)\n(exited|killed|timed-out) (\d+)\n?$/.exec(text);
  if (!m) throw new CrhError(`crh-native printed ${JSON.stringify(text)}, expected "pid N" and a status line`);
  return { pid: Number(m[1]), outcome: m[2] as NativeRun['outcome'], code: Number(m[3]) };
}

export async function runNatively(runner: NativeRunner, request: NativeRunRequest): Promise<NativeRun> {
  const report = parseNativeReport(await runner.shell(nativeCommand(request)));
  return { ...report, output: await runner.readFile(request.stdoutPath) };
}
