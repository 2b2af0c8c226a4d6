/**
 * Whether two descriptors of stopped processes are one open file description,
 * asked of the kernel: kcmp(2) KCMP_FILE, injected into the first process.
 */
import type { AgentClient } from '../agent/client.ts';
import { CheckpointError } from '../errors.ts';

const NR_KCMP = 312;
const KCMP_FILE = 0n;

/** kcmp(KCMP_FILE) of `a` and `b`; a failed call is a CheckpointError (about `target` when given). */
export async function sameOpenFile(agent: AgentClient, a: { pid: number; fd: number }, b: { pid: number; fd: number }, target?: string): Promise<boolean> {
  const same = await agent.call({
    op: 'INJECT_SYSCALL',
    pid: a.pid,
    nr: NR_KCMP,
    args: [BigInt(a.pid), BigInt(b.pid), KCMP_FILE, BigInt(a.fd), BigInt(b.fd)],
  });
  if (same < 0n)
    throw new CheckpointError(
      `kcmp(KCMP_FILE) of pid ${a.pid} fd ${a.fd} and pid ${b.pid} fd ${b.fd} failed with errno ${-same}: cannot tell whether they share one open file description`,
      target === undefined ? {} : { target },
    );
  return same === 0n;
}
