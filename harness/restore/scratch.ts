/**
 * Structures an injected system call reads from the target's memory (a
 * sigaction, a clone_args, a path): laid out one after another in scratch
 * pages mapped at a free address for the purpose, written in one step, and
 * unmapped again once the calls that read them have run.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError } from '../errors.ts';
import { hex } from '../x86/registers.ts';
import type { PlanStep } from './plan-step.ts';

const NR = { mmap: 9, munmap: 11 } as const;
const PAGE = 4096n;
const PROT_READ_WRITE = 3n;
const MAP_PRIVATE_ANONYMOUS = 0x02n | 0x20n;
/** MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE: never over an existing mapping. */
const MAP_SCRATCH = MAP_PRIVATE_ANONYMOUS | 0x100000n;
const NO_FD = BigInt.asUintN(64, -1n);

export class ScratchLayout {
  private readonly parts: Buffer[] = [];
  private size = 0;

  constructor(readonly base: bigint) {}

  /** Places `data` after what is already laid out; returns the address the target will see it at. */
  place(data: Buffer): bigint {
    const at = this.base + BigInt(this.size);
    this.parts.push(data);
    this.size += data.length;
    return at;
  }

  /**
   * The plan steps: map the pages, write everything, run `calls` (which read
   * what was placed), unmap. `what` names the contents for the plan.
   */
  steps(pid: number, what: string, calls: PlanStep[]): PlanStep[] {
    const length = ((BigInt(this.size) + PAGE - 1n) / PAGE) * PAGE;
    return [
      {
        op: { op: 'INJECT_SYSCALL', pid, nr: NR.mmap, args: [this.base, length, PROT_READ_WRITE, MAP_SCRATCH, NO_FD, 0n] },
        why: `scratch page(s) at ${hex(this.base)} for ${what}`,
        expect: this.base,
      },
      { op: { op: 'WRITE_MEM', pid, address: this.base, data: Buffer.concat(this.parts) }, why: what },
      ...calls,
      { op: { op: 'INJECT_SYSCALL', pid, nr: NR.munmap, args: [this.base, length] }, why: 'unmap the scratch page(s)', expect: 0n },
    ];
  }
}

/**
 * For a checkpoint: runs `read` with a scratch page mapped (anywhere) in the
 * stopped task `pid`, for calls injected into it to write their results to,
 * and unmaps it again whatever happens — the task is left as it was.
 * `bytes` (rounded up to whole pages) when one page is not enough.
 */
export async function withScratchPage<T>(agent: AgentClient, pid: number, read: (scratch: bigint) => Promise<T>, bytes = Number(PAGE)): Promise<T> {
  const length = ((BigInt(bytes) + PAGE - 1n) / PAGE) * PAGE;
  const scratch = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.mmap, args: [0n, length, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, NO_FD, 0n] });
  if (scratch < 0n && scratch > -4096n)
    throw new AgentError(`mmap of a scratch page in pid ${pid} failed: errno ${-scratch}`, 'INJECT_SYSCALL', Number(-scratch));
  try {
    return await read(scratch);
  } finally {
    await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.munmap, args: [scratch, length] });
  }
}
