/**
 * CRIU's command lines as the criu engine runs them in the guest, from pure
 * functions (tested without a guest), and the guest-side runner that times
 * them. CRIU runs over its own SSH exec channel, never through the agent.
 */
import { InfraError } from '../errors.ts';
import { shellQuote } from '../machine/qemu-args.ts';

/** Runs one guest shell command; the SSH session's exec. */
export type GuestExec = (command: string) => Promise<{ stdout: string; stderr: string; code: number | null }>;

/**
 * Options a process the agent spawned needs:
 * - --shell-job: it shares the agent's session and process group (the agent
 *   does not setsid), which CRIU otherwise refuses to dump;
 * - no --tcp-established, no --file-locks, no --ext-unix-sk: a workload with
 *   such state is refused by CRIU by name, which is the verdict we want;
 * - images and log on the guest's tmpfs, the log verbose enough to explain
 *   a refusal (-v4), and kept for the run's artifacts.
 */
export function criuDumpArgs(criu: string, pid: number, imagesDir: string): string[] {
  return [criu, 'dump', '-t', String(pid), '-D', imagesDir, '--shell-job', '-v4', '-o', 'dump.log'];
}

/** Restore detached (-d: criu exits once the tree runs, or here stays stopped) and say the pid in `pidFile`. */
export function criuRestoreArgs(criu: string, imagesDir: string, pidFile: string): string[] {
  return [criu, 'restore', '-D', imagesDir, '--shell-job', '-d', '--pidfile', pidFile, '-v4', '-o', 'restore.log'];
}

export interface CriuStep {
  ok: boolean;
  /**
   * wall time of the guest command measured on the host, one SSH exec round
   * trip included. Not the guest's clock: under TCG it was seen to run
   * about six times fast (/proc/uptime advanced 12.4 s over a 1.9 s dump).
   */
  wallMs: number;
  stdout: string;
  stderr: string;
  code: number | null;
}

/** Runs a CRIU command line in the guest over its own exec channel. */
export async function runCriu(exec: GuestExec, args: readonly string[]): Promise<CriuStep> {
  const started = performance.now();
  const result = await exec(args.map(shellQuote).join(' '));
  return { ok: result.code === 0, wallMs: Math.round(performance.now() - started), stdout: result.stdout, stderr: result.stderr, code: result.code };
}

/** `criu --version` and `criu check`, as the doctor reports them. */
export interface CriuCheck {
  version: string;
  ok: boolean;
  output: string;
}

export async function criuCheck(exec: GuestExec, criu: string): Promise<CriuCheck> {
  const version = await exec(`${shellQuote(criu)} --version`);
  if (version.code !== 0) throw new InfraError(`${criu} --version failed in the guest`, { stdout: version.stdout, stderr: version.stderr });
  const check = await exec(`${shellQuote(criu)} check`);
  return {
    version: version.stdout
      .trim()
      .split('\n')[0]!
      .replace(/^Version:\s*/, ''),
    ok: check.code === 0,
    output: `${check.stdout}${check.stderr}`.trim(),
  };
}
