/**
 * Keeps a tracer's single-steps from costing the program its SIGTRAP
 * handler. A step's trap is a SIGTRAP the kernel forces; when the program
 * has SIGTRAP blocked at that moment — it does inside its own SIGTRAP
 * handler — the kernel resets SIGTRAP to SIG_DFL and unblocks it before the
 * tracer sees the stop (force_sig_info_to_task; the same reset
 * docs/agent-protocol.md describes for RUN's hits). Natively nothing of the
 * kind happens, and the program's next SIGTRAP of its own would kill it. So
 * around a step taken with SIGTRAP blocked and caught, the disposition is
 * read first and, if the step reset it, put back with SIGTRAP blocked again
 * — through injected rt_sigaction calls on a scratch page, the task left as
 * it was.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError } from '../errors.ts';
import { withScratchPage } from '../restore/scratch.ts';
import { decodeSigAction, encodeSigAction, SIG_DFL, SIG_IGN } from '../restore/signals.ts';
import type { SigAction } from '../restore/image-model.ts';
import { hex } from '../x86/registers.ts';

const NR_RT_SIGACTION = 13;
const SIGTRAP = 5;
const SIGTRAP_BIT = 1n << BigInt(SIGTRAP - 1);
const SIGACTION_BYTES = 32;
const SIGSET_BYTES = 8n;

/** What a step may take from the program: its SIGTRAP handler, caught and blocked before the step. */
export interface ExposedHandler {
  action: SigAction;
  mask: bigint;
}

/** The program's SIGTRAP handler when a step now could reset it (SIGTRAP blocked and caught), else undefined. */
export async function exposedSigtrapHandler(agent: AgentClient, pid: number): Promise<ExposedHandler | undefined> {
  const mask = await agent.call({ op: 'GETSIGMASK', pid });
  if ((mask & SIGTRAP_BIT) === 0n || !(await sigtrapCaught(agent, pid))) return undefined;
  const action = await withScratchPage(agent, pid, async (scratch) => {
    const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR_RT_SIGACTION, args: [BigInt(SIGTRAP), 0n, scratch, SIGSET_BYTES] });
    if (r !== 0n) throw new AgentError(`reading the SIGTRAP disposition of pid ${pid}: rt_sigaction returned ${r}`, 'INJECT_SYSCALL', Number(-r));
    return decodeSigAction(SIGTRAP, await agent.call({ op: 'READ_MEM', pid, address: scratch, length: SIGACTION_BYTES }));
  });
  if (action.handler === SIG_DFL || action.handler === SIG_IGN) return undefined;
  return { action, mask };
}

/**
 * After the step: if the kernel reset the handler — SIGTRAP no longer
 * blocked *and* no longer caught (an rt_sigreturn unblocks it too, and
 * leaves the handler) — the disposition and the mask are put back.
 * Returns a note saying so, or undefined when the step left them alone.
 */
export async function undoSigtrapReset(agent: AgentClient, pid: number, exposed: ExposedHandler): Promise<string | undefined> {
  const mask = await agent.call({ op: 'GETSIGMASK', pid });
  if ((mask & SIGTRAP_BIT) !== 0n || (await sigtrapCaught(agent, pid))) return undefined;
  await withScratchPage(agent, pid, async (scratch) => {
    await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: encodeSigAction(exposed.action) });
    const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR_RT_SIGACTION, args: [BigInt(SIGTRAP), scratch, 0n, SIGSET_BYTES] });
    if (r !== 0n) throw new AgentError(`restoring the SIGTRAP handler of pid ${pid}: rt_sigaction returned ${r}`, 'INJECT_SYSCALL', Number(-r));
  });
  await agent.call({ op: 'SETSIGMASK', pid, mask: mask | SIGTRAP_BIT });
  return `the step's forced SIGTRAP reset the program's SIGTRAP handler ${hex(exposed.action.handler)} (SIGTRAP was blocked); put back`;
}

/** SIGTRAP in the thread's SigCgt (/proc/TID/status): a handler is installed. */
async function sigtrapCaught(agent: AgentClient, pid: number): Promise<boolean> {
  const status = (await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/status`, maxSize: 1 << 16 })).toString('utf8');
  const caught = /^SigCgt:\s*([0-9a-f]+)$/m.exec(status)?.[1];
  if (caught === undefined) throw new AgentError(`/proc/${pid}/status has no SigCgt line`, 'READ_FILE', undefined);
  return (BigInt(`0x${caught}`) & SIGTRAP_BIT) !== 0n;
}

const RT_SIGRETURN = 15n;
const SYSCALL_INSN = Buffer.from([0x0f, 0x05]);
/** rsp at __restore_rt's syscall points at the rt_sigframe's ucontext: uc_flags, uc_link, uc_stack (24), then sigcontext, whose 18th u64 is eflags. */
const UC_EFLAGS_OFFSET = 40n + 17n * 8n;
const EFLAGS_TF = 0x100n;

/**
 * Whether the instruction at the stop is an rt_sigreturn that brings back a
 * TF the program had when its signal came (the frame's saved eflags).
 * Stepping leaves the task's TIF_FORCED_TF set from the steps through the
 * handler (whose TF the kernel cleared), so the kernel takes the TF the
 * sigreturn restores for the tracer's and drops it at the next resume: the
 * program would lose its own single-stepping. The caller gives the TF back
 * as the program's (SETREGS with TF clears TIF_FORCED_TF) after the step.
 */
export async function sigreturnRestoresTf(agent: AgentClient, pid: number, regs: { rip: bigint; rax: bigint; rsp: bigint }): Promise<boolean> {
  if (regs.rax !== RT_SIGRETURN) return false;
  const insn = await agent.call({ op: 'READ_MEM', pid, address: regs.rip, length: 2 });
  if (!SYSCALL_INSN.equals(insn)) return false;
  const saved = (await agent.call({ op: 'READ_MEM', pid, address: regs.rsp + UC_EFLAGS_OFFSET, length: 8 })).readBigUInt64LE(0);
  return (saved & EFLAGS_TF) !== 0n;
}

/** After the rt_sigreturn step: TF set again, as the program's. Returns whether it had to be. */
export async function giveBackTf(agent: AgentClient, pid: number): Promise<boolean> {
  const regs = await agent.call({ op: 'GETREGS', pid });
  if ((regs.eflags & EFLAGS_TF) !== 0n) return false;
  await agent.call({ op: 'SETREGS', pid, regs: { ...regs, eflags: regs.eflags | EFLAGS_TF } });
  return true;
}
