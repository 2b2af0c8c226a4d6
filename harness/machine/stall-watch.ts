/**
 * Fail fast when a launched VM has stopped running guest code. A broken
 * accelerator does not make QEMU exit: on a paravirtualized nested KVM the
 * kernel's first exotic instruction ends in "KVM internal error. Suberror: 1
 * ... emulation failure" on stderr, QEMU stops the VM (QMP STOP, query-status
 * "internal-error") and stays alive with an empty console. Without this watch
 * every launch waits out its whole boot deadline and reports "no SSH banner".
 *
 * Signs watched, cheapest first: QEMU's stderr and the console (in memory,
 * every POLL_MS), QMP status (once at the start, then on every STOP event:
 * no periodic QMP traffic, so qmp.log stays readable), and a console that
 * stays silent past a bound on a cold boot.
 */
import { BootError, LaunchError } from '../errors.ts';
import type { QmpClient } from '../qmp/client.ts';
import type { ConsoleLog } from './console.ts';

/**
 * Launch → first console byte under TCG here is 1.2–1.5 s (Debian 6.1
 * cloud kernel, loglevel=5; docs/platform.md); a kernel that prints nothing
 * before its init still logs "crh: rcS started" by ~2.4 s. Ten times the
 * measured value leaves room for 2 cores shared by several QEMUs.
 */
export const SILENT_CONSOLE_MS = 15_000;

const POLL_MS = 250;
const QMP_ANSWER_MS = 2000;

/** QEMU's own words when KVM cannot run the vCPU (accel/kvm/kvm-all.c). */
export const KVM_FAILURE = /KVM internal error|KVM: entry failed|emulation failure|kvm run failed/i;

/** What was seen when a launch was judged: kept in errors, the accelerator cache and the platform profile. */
export interface LaunchEvidence {
  /** one line: what decided it */
  seen: string;
  /** the last QMP status read ('' when none was read) */
  qmpStatus: string;
  stderrTail: string;
  consoleTail: string;
  /** launch → the decision */
  elapsedMs: number;
}

export function evidenceDetails(evidence: LaunchEvidence): Record<string, string> {
  return {
    'seen': evidence.seen,
    'QMP status': evidence.qmpStatus,
    'elapsed': `${evidence.elapsedMs} ms after launch`,
    'QEMU stderr': evidence.stderrTail,
    'console tail': evidence.consoleTail,
  };
}

/**
 * The VM stopped running guest code (internal error) or never printed a
 * console byte: the host, QEMU or its accelerator failed, not the kernel
 * under test. Under KVM this is what makes a run fall back to TCG.
 */
export class StalledLaunchError extends LaunchError {
  override readonly name: string = 'StalledLaunchError';
  constructor(
    message: string,
    readonly evidence: LaunchEvidence,
    details: Record<string, string> = evidenceDetails(evidence),
    options?: { cause?: unknown },
  ) {
    super(message, details, options);
  }
}

export interface StallWatchOptions {
  qmp: QmpClient;
  /** QEMU's stderr so far */
  stderr: () => string;
  console: ConsoleLog;
  /** Date.now() at spawn */
  launchedAt: number;
  /** no console byte this long after launch is a stall; undefined when silence is legitimate (loading saved state) */
  silentConsoleMs: number | undefined;
  /** called once, with a StalledLaunchError (or a BootError for a guest-panicked VM) */
  onStall: (error: Error) => void;
}

export interface StallWatch {
  /** the evidence as of now, for callers that decide on their own (a timeout) */
  evidence(seen: string): LaunchEvidence;
  stop(): void;
}

export function watchForStall(o: StallWatchOptions): StallWatch {
  let qmpStatus = '';
  let stopped = false;
  const evidence = (seen: string): LaunchEvidence => ({
    seen,
    qmpStatus,
    stderrTail: o.stderr().slice(-2048),
    consoleTail: o.console.tail(20),
    elapsedMs: Date.now() - o.launchedAt,
  });
  const stall = (error: Error): void => {
    if (stopped) return;
    stop();
    o.onStall(error);
  };

  const judgeStatus = (status: string): void => {
    qmpStatus = status;
    if (status === 'internal-error') stall(new StalledLaunchError('the VM stopped: QEMU reports status internal-error', evidence('QMP status internal-error')));
    // pvpanic: the kernel under test panicked — a result about that kernel, not infrastructure.
    else if (status === 'guest-panicked') stall(new BootError('the guest kernel panicked (QMP status guest-panicked)', evidenceDetails(evidence('QMP status guest-panicked'))));
  };
  const readStatus = (): void => {
    const answer = o.qmp.execute<{ status: string }>('query-status').then((r) => r.status);
    const bound = new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), QMP_ANSWER_MS).unref());
    void Promise.race([answer, bound]).then(
      (status) => {
        if (status !== undefined && !stopped) judgeStatus(status);
      },
      () => {}, // QMP closed: QEMU exited, which the launch sees on its own
    );
  };

  const poll = (): void => {
    const stderr = o.stderr();
    const kvm = KVM_FAILURE.exec(stderr);
    if (kvm) {
      const line = stderr.slice(stderr.lastIndexOf('\n', kvm.index) + 1).split('\n')[0]!.trim();
      stall(new StalledLaunchError(`the vCPU stopped: QEMU says "${line}"`, evidence(`stderr: ${line}`)));
      return;
    }
    if (o.silentConsoleMs !== undefined && o.console.firstByteAt === undefined && Date.now() - o.launchedAt >= o.silentConsoleMs) {
      stall(new StalledLaunchError(`no console output within ${o.silentConsoleMs} ms of launch`, evidence(`console silent for ${Date.now() - o.launchedAt} ms`)));
    }
  };

  const unsubscribe = o.qmp.onEvent((event) => {
    if (event.event === 'STOP') readStatus();
  });
  const timer = setInterval(poll, POLL_MS);
  timer.unref();
  const stop = (): void => {
    stopped = true;
    clearInterval(timer);
    unsubscribe();
  };
  readStatus();
  poll();
  return { evidence, stop };
}
