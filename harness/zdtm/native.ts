/**
 * The native run of a ZDTM-protocol test: no tracer, no checkpoint, in the
 * same guest and the same fresh working directory as the checkpointed run.
 * One guest shell script (pure: built and parsed without a guest) starts
 * the launcher with a clean environment and fds 0-2 only, waits for it,
 * reads the pid file, gives the daemon the settle time the checkpointed run
 * gives it, sends SIGTERM and waits until it has ended (its end shows as
 * /proc/PID gone or a zombie); a daemon still running at the timeout is
 * killed. The script runs under the native runner (guests/native/
 * crh-native), a child subreaper that kills whatever its child leaves
 * running once the child ends: the daemon and anything the test forked —
 * in its session or not — stay below it, so nothing of this run is left
 * for the next.
 */
import { CrhError } from '../errors.ts';
import { NATIVE_RUNNER } from '../guest/native-run.ts';
import { shellQuote } from '../machine/qemu-args.ts';
import { PIDFILE, OUTFILE } from './verdict.ts';

export interface ZdtmLaunch {
  /** guest path of the test binary */
  binary: string;
  args: readonly string[];
  /** the fresh working directory */
  cwd: string;
  /** guest file for the launcher's own stdout and stderr (the daemon moves to its outfile) */
  launcherOut: string;
}

/** The command line of the protocol: BINARY --pidfile=T.pid --outfile=T.out ARGS. */
export function launcherArgv(launch: Pick<ZdtmLaunch, 'binary' | 'args'>): string[] {
  return [launch.binary, `--pidfile=${PIDFILE}`, `--outfile=${OUTFILE}`, ...launch.args];
}

export interface NativeZdtmRun {
  /** the launcher's exit status (a signal as 128+N, as the shell says it) */
  launcherStatus: number;
  /** the daemon's pid, when the pid file named one */
  pid?: number;
  /** the daemon ended after SIGTERM (false: killed at the timeout) */
  ended: boolean;
}

/** The guest shell command of a native run (see the module comment). */
export function nativeZdtmCommand(launch: ZdtmLaunch, settleMs: number, timeoutMs: number): string {
  const polls = Math.max(1, Math.ceil(timeoutMs / 50));
  const state = 'sed -n "s/.*) \\(.\\) .*/\\1/p" /proc/$pid/stat 2>/dev/null';
  return [
    `cd ${shellQuote(launch.cwd)} || exit 1`,
    // env -i: no ZDTM_* (nor any other) variable; stdin /dev/null; no descriptor above 2.
    `env -i ${launcherArgv(launch).map(shellQuote).join(' ')} </dev/null >${shellQuote(launch.launcherOut)} 2>&1 3<&- 4<&- 5<&- 6<&- 7<&- 8<&- 9<&-`,
    'echo "launcher $?"',
    `pid=$(head -n 1 ${PIDFILE} 2>/dev/null)`,
    'case "$pid" in ""|*[!0-9]*) exit 0;; esac',
    'echo "pid $pid"',
    `sleep ${(settleMs / 1000).toFixed(3)}`,
    'kill -TERM "$pid" 2>/dev/null',
    'i=0',
    `while [ -d /proc/$pid ] && [ "$(${state})" != Z ] && [ $i -lt ${polls} ]; do sleep 0.05; i=$((i+1)); done`,
    `if [ -d /proc/$pid ] && [ "$(${state})" != Z ]; then kill -9 "$pid"; echo "timed-out"; else echo "ended"; fi`,
  ].join('\n');
}

/**
 * The script under the native runner: its report (what it prints) goes to
 * `reportPath`; the runner prints its own "pid N" and how the script ended
 * (guest/native-run.ts parseNativeReport), killing the script and
 * everything below it after `timeoutMs`.
 */
export function underNativeRunner(script: string, reportPath: string, timeoutMs: number, runner = NATIVE_RUNNER): string {
  return `exec ${shellQuote(runner)} ${timeoutMs} ${shellQuote(reportPath)} 0 /nonexistent /bin/sh sh -c ${shellQuote(script)}`;
}

/** Parses what nativeZdtmCommand prints. */
export function parseNativeZdtm(text: string): NativeZdtmRun {
  const m = /^launcher (\d+)(?:\npid (\d+)\n(ended|timed-out))?$/.exec(text.trimEnd());
  if (!m) throw new CrhError(`the native ZDTM run printed ${JSON.stringify(text)}, expected "launcher N" then "pid P" and "ended" or "timed-out"`);
  return { launcherStatus: Number(m[1]), ...(m[2] !== undefined ? { pid: Number(m[2]) } : {}), ended: m[3] === 'ended' };
}

/** What a native run says, in one line; undefined when it ran as the protocol wants (its outfile has the verdict). */
export function nativeProblem(run: NativeZdtmRun): string | undefined {
  if (run.launcherStatus !== 0) return `the launcher exited with status ${run.launcherStatus}`;
  if (run.pid === undefined) return `the launcher exited 0 but ${PIDFILE} names no pid`;
  if (!run.ended) return `pid ${run.pid} did not end after SIGTERM (killed at the timeout)`;
  return undefined;
}
