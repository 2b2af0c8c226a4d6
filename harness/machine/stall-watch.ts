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
 * stays silent past a bound on a cold boot while the vCPUs do not move.
 *
 * Silence alone is not a stall: a generic Debian kernel (8 MB vmlinuz)
 * decompresses without printing anything, and under TCG on 2 cores shared
 * with other QEMUs (load average 20) that took more than 15 s — a launch
 * judged "stalled" while its vCPU was busy in the decompressor (a CI run
 * failed that way). So when the bound passes, the watch samples the vCPUs'
 * instruction pointers twice; only a vCPU that stays put is a stall, and a
 * moving one earns another bound.
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
/** Between the two samples of the vCPUs' positions: a busy TCG vCPU retires millions of instructions in this time. */
export const PROGRESS_SAMPLE_MS = 1000;

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
    seen: evidence.seen,
    'QMP status': evidence.qmpStatus,
    elapsed: `${evidence.elapsedMs} ms after launch`,
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
  /**
   * Where the vCPUs are now (e.g. their RIPs); two equal answers
   * PROGRESS_SAMPLE_MS apart mean they do not move. Undefined: silence past
   * the bound is a stall by itself (the KVM boot probe, which wants evidence
   * of a working accelerator, not patience).
   */
  vcpuPosition?: () => Promise<string>;
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
  /** the next time silence is judged (moves on while the vCPUs make progress) */
  let silenceBound = o.silentConsoleMs === undefined ? undefined : o.launchedAt + o.silentConsoleMs;
  let sampling = false;
  let progressNote = '';
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
    else if (status === 'guest-panicked')
      stall(new BootError('the guest kernel panicked (QMP status guest-panicked)', evidenceDetails(evidence('QMP status guest-panicked'))));
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
      const line = stderr
        .slice(stderr.lastIndexOf('\n', kvm.index) + 1)
        .split('\n')[0]!
        .trim();
      stall(new StalledLaunchError(`the vCPU stopped: QEMU says "${line}"`, evidence(`stderr: ${line}`)));
      return;
    }
    if (silenceBound === undefined || sampling || o.console.firstByteAt !== undefined || Date.now() < silenceBound) return;
    const silent = (): StalledLaunchError =>
      new StalledLaunchError(
        `no console output within ${o.silentConsoleMs} ms of launch${progressNote}`,
        evidence(`console silent for ${Date.now() - o.launchedAt} ms${progressNote}`),
      );
    if (!o.vcpuPosition) {
      stall(silent());
      return;
    }
    sampling = true;
    void sampleProgress(o.vcpuPosition).then((moved) => {
      sampling = false;
      if (stopped || o.console.firstByteAt !== undefined) return;
      if (moved.kind === 'moving') {
        silenceBound = Date.now() + o.silentConsoleMs!;
        return;
      }
      progressNote =
        moved.kind === 'still'
          ? `, and the vCPUs did not move in ${PROGRESS_SAMPLE_MS} ms (${moved.at})`
          : `; the vCPUs' positions could not be read (${moved.why})`;
      stall(silent());
    });
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

type Progress = { kind: 'moving' } | { kind: 'still'; at: string } | { kind: 'unknown'; why: string };

async function sampleProgress(position: () => Promise<string>): Promise<Progress> {
  try {
    const first = await bounded(position());
    await new Promise((resolve) => setTimeout(resolve, PROGRESS_SAMPLE_MS).unref());
    const second = await bounded(position());
    return first === second ? { kind: 'still', at: first } : { kind: 'moving' };
  } catch (error) {
    return { kind: 'unknown', why: error instanceof Error ? error.message : String(error) };
  }
}

function bounded<T>(answer: Promise<T>): Promise<T> {
  const bound = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${QMP_ANSWER_MS} ms`)), QMP_ANSWER_MS).unref());
  return Promise.race([answer, bound]);
}

/** The RIP (EIP for a vCPU still in 32-bit or real mode) of every vCPU in an HMP `info registers -a` answer, in order: what "moving" compares. */
export function instructionPointers(infoRegisters: string): string {
  return [...infoRegisters.matchAll(/\b[ER]IP=([0-9a-f]+)/g)].map((m) => m[1]).join(' ');
}
