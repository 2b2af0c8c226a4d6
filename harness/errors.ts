/**
 * Typed errors. Every error carries the context a person needs to act on it
 * (a command line, a console tail, the rejected field), not just a message.
 *
 * The split follows syzkaller and vmtest: an InfraError means the host, QEMU
 * or the image builder failed — the run proves nothing about the kernel or the
 * restore core and exits 69 (EX_UNAVAILABLE); a BootError means the kernel
 * under test did not come up — a result about that kernel.
 */
export class CrhError extends Error {
  override readonly name: string = 'CrhError';
  /** Extra lines shown under the message (command line, console tail, ...). */
  readonly details: Record<string, string>;

  constructor(message: string, details: Record<string, string> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.details = details;
  }

  /** The message followed by every detail, each under its own heading. */
  describe(): string {
    const parts = [`${this.name}: ${this.message}`];
    for (const [heading, text] of Object.entries(this.details)) {
      if (text.length > 0) parts.push(`--- ${heading} ---\n${text.trimEnd()}`);
    }
    return parts.join('\n');
  }
}

/**
 * The request cannot be carried out as given — a flag, a reproducer that
 * does not compile, a checkpoint point the program never reaches. `crh`
 * exits 2 for it: it says nothing about checkpoint/restore.
 */
export class UsageError extends CrhError {
  override readonly name: string = 'UsageError';
}

/** The host, QEMU, or the image build failed: not a verdict on anything under test. */
export class InfraError extends CrhError {
  override readonly name: string = 'InfraError';
}

/** QEMU could not be started or died during launch (QEMU python's VMLaunchFailure). */
export class LaunchError extends InfraError {
  override readonly name: string = 'LaunchError';
}

/** A host package or tool the harness needs is missing. */
export class MissingDependencyError extends InfraError {
  override readonly name = 'MissingDependencyError';
}

/**
 * The guest kernel did not reach readiness (panicked, hung, never answered
 * SSH), or the guest was lost after it did (QemuMachine.failure: "guest
 * lost", QEMU exited unasked or the kernel panicked). Either way no verdict
 * on the restore core can be had from it: isInfraFailure
 * (report/infra-failures.ts) counts it as infrastructure, exit 69.
 */
export class BootError extends CrhError {
  override readonly name = 'BootError';
}

/** A wait ran past its deadline. */
export class TimeoutError extends CrhError {
  override readonly name = 'TimeoutError';
}

/** The in-guest agent refused an operation or broke the protocol. */
export class AgentError extends CrhError {
  override readonly name = 'AgentError';
  constructor(
    message: string,
    readonly op: string,
    readonly errno: number | undefined,
    details: Record<string, string> = {},
    options?: { cause?: unknown },
  ) {
    super(message, details, options);
  }
}

/**
 * A checkpoint image was refused before any guest operation. `entry` and
 * `field` name what was rejected so a hostile or corrupt image is easy to
 * pin down.
 */
export class ImageRejectedError extends CrhError {
  override readonly name = 'ImageRejectedError';
  constructor(
    message: string,
    readonly entry: string,
    readonly field: string,
  ) {
    super(`${entry}: ${field}: ${message}`);
  }
}

/** A process holds state a checkpoint image cannot express; the message names it. */
export class CheckpointError extends CrhError {
  override readonly name = 'CheckpointError';
}

/** A restore plan step failed in the guest; `step` is its index in the plan. */
export class RestoreStepError extends CrhError {
  override readonly name = 'RestoreStepError';
  constructor(
    message: string,
    readonly step: number,
    readonly stepDescription: string,
    options?: { cause?: unknown },
  ) {
    super(`restore step ${step} (${stepDescription}) failed: ${message}`, {}, options);
  }
}

/** True when the error means the infrastructure failed (exit code 69). */
export function isInfraError(error: unknown): boolean {
  return error instanceof InfraError;
}
