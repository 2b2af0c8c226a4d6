/**
 * The restored task's descriptor table as a plan fills it: a call that
 * creates a descriptor (openat, userfaultfd) returns the lowest free number,
 * as the kernel picks it, so every result is known when the plan is made,
 * and dup3 then moves it to the number the image had.
 */
import { CheckpointError } from '../errors.ts';
import type { TaskState } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';

const NR = { close: 3, dup3: 292 } as const;
const O_CLOEXEC = 0o2000000n;

export class DescriptorTable {
  private readonly open: Set<number>;

  /** `fds`: what the target has open now (its /proc/PID/fd). */
  constructor(fds: Iterable<number>) {
    this.open = new Set(fds);
  }

  /** The number the next created descriptor gets. */
  lowestFree(): number {
    let fd = 0;
    while (this.open.has(fd)) fd++;
    return fd;
  }

  /**
   * Records a descriptor just created as `got` (lowestFree()) and returns
   * the steps that put it at `fd`: none when it is there already, else dup3
   * (with O_CLOEXEC as asked) and a close of `got`. `what` names it in
   * errors and the plan.
   */
  place(pid: number, got: number, fd: number, cloexec: boolean, what: string): PlanStep[] {
    this.open.add(got);
    if (got === fd) return [];
    if (this.open.has(fd)) throw new CheckpointError(`fd ${fd} is already open in the fresh target; cannot restore ${what} there`);
    this.open.delete(got);
    this.open.add(fd);
    return [
      {
        op: { op: 'INJECT_SYSCALL', pid, nr: NR.dup3, args: [BigInt(got), BigInt(fd), cloexec ? O_CLOEXEC : 0n] },
        why: `move ${what} to fd ${fd}`,
        expect: BigInt(fd),
      },
      { op: { op: 'INJECT_SYSCALL', pid, nr: NR.close, args: [BigInt(got)] }, why: `close the temporary fd ${got}`, expect: 0n },
    ];
  }
}

/** Every descriptor task.json restores (its files, userfaultfds, eventfds and signalfds; timers.json's timerfds are not in it). Pure. */
export function imageDescriptors(task: TaskState): number[] {
  return [
    ...task.files.map((f) => f.fd),
    ...(task.userfaultfds ?? []).map((u) => u.fd),
    ...(task.eventfds ?? []).map((e) => e.fd),
    ...(task.signalfds ?? []).map((s) => s.fd),
  ];
}
