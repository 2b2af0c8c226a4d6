/**
 * One way to run a program under the agent, for the cases, `crh repro` and
 * `crh cr` alike: spawn it armed (stopped before its first instruction, ASLR
 * off, its debug registers set), run it to its Nth breakpoint hit, for N ms,
 * or to its end, and read its output. RUN's timeout is an outcome here — a
 * run for N ms that was still going is `interrupted` (every thread left
 * stopped, ready for a checkpoint), a run to the end that was still going is
 * `timed-out` (killed) — and this module is the one place that turns the
 * agent's ETIMEDOUT into one.
 */
import type { AgentClient } from './client.ts';
import type { RunResult, StepResult } from './ops.ts';
import { armDebugRegisters, spawnWithBreakpoint, type ArmedProgram, type DebugRegisterValues } from './breakpoint-spawn.ts';
import { constants } from 'node:os';
import { readGuestText } from './read-file.ts';
import { AgentError, CrhError } from '../errors.ts';
import { debugRegOffset, type UserRegs } from '../x86/registers.ts';

export type { ArmedProgram, DebugRegisterValues };

const ETIMEDOUT = constants.errno.ETIMEDOUT;

/**
 * Whether `error` is the agent's RUN giving up at its timeout (the program
 * still running, every thread left stopped). A thread that did not reach a
 * stop after the interrupt is another errno (EBUSY): nothing is left stopped.
 */
export function isRunTimeout(error: unknown): boolean {
  return error instanceof AgentError && error.errno === ETIMEDOUT;
}

/** How a run to the end ended; `timed-out` carries the bound in `code`, and the program was killed. */
export type RunEnd = { outcome: 'exited' | 'killed' | 'timed-out'; code: number };

type Agent = Pick<AgentClient, 'call'>;

/** How much of a program's output is read back (a larger file is cut, with a line saying so). */
export const OUTPUT_MAX_BYTES = 4 * 1024 * 1024;

/** Spawns a program armed (breakpoint-spawn.ts): stopped before its first instruction, ASLR off, its debug registers set. */
export { spawnWithBreakpoint as spawnArmed, armDebugRegisters };

/** DR7 = 0 in thread `tid`: its breakpoints stay in DR0-DR3 but none fires. */
export function disarm(agent: Agent, tid: number): Promise<void> {
  return armDebugRegisters(agent, tid, { 7: 0n });
}

/** A run for a while: how it ended, or — still going when the time was up — interrupted, every thread left stopped. */
export type TimedRun = { kind: 'ended'; run: RunResult } | { kind: 'interrupted'; elapsedMs: number };

/**
 * RUNs `pid` with no hit limit for `ms`. `elapsedMs` of an interrupted run is
 * the host's wall time (the agent's timeout, its interrupt and the round
 * trip). A run that stops at a hit limit had a breakpoint armed it was not
 * meant to: an error.
 */
export async function runFor(agent: Agent, pid: number, ms: number): Promise<TimedRun> {
  const started = Date.now();
  let run: RunResult;
  try {
    run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: ms });
  } catch (error) {
    if (isRunTimeout(error)) return { kind: 'interrupted', elapsedMs: Date.now() - started };
    throw error;
  }
  if (run.outcome === 'hit-limit') throw new CrhError(`RUN pid ${pid} stopped at a hit limit it was not given`);
  return { kind: 'ended', run };
}

/** A run to a breakpoint hit: stopped at it (`hit-limit`), ended first, or still going at `timeoutMs` (left stopped). */
export type HitRun = { kind: 'run'; run: RunResult } | { kind: 'interrupted'; elapsedMs: number };

/** RUNs `pid` until its `hits`-th breakpoint hit, its end, or `timeoutMs`. */
export async function runToHit(agent: Agent, pid: number, hits: number, timeoutMs: number): Promise<HitRun> {
  const started = Date.now();
  try {
    return { kind: 'run', run: await agent.call({ op: 'RUN', pid, stopAfterHits: hits, timeoutMs }) };
  } catch (error) {
    if (isRunTimeout(error)) return { kind: 'interrupted', elapsedMs: Date.now() - started };
    throw error;
  }
}

/** RUN with no hit limit: the program's end and its hits, or — past `timeoutMs` — killed and reported as timed out. */
export async function runToEnd(agent: Agent, pid: number, timeoutMs: number): Promise<RunEnd & { hits: number }> {
  const timed = await runFor(agent, pid, timeoutMs);
  if (timed.kind === 'ended') return { outcome: timed.run.outcome as 'exited' | 'killed', code: timed.run.code, hits: timed.run.hits.length };
  await agent.call({ op: 'KILL', pid });
  return { outcome: 'timed-out', code: timeoutMs, hits: 0 };
}

/** A program that did not end within the bound a case gives it: killed, and named. */
export class RunTimedOutError extends CrhError {}

/**
 * A run a caller judges, every hit and signal of it: to the end, or with
 * `stopAfterHits` to that hit. A program still running at `timeoutMs` is
 * killed and is a RunTimedOutError naming it: no verdict rests on a run that
 * never got where it was meant to.
 */
export async function finishRun(agent: Agent, pid: number, timeoutMs: number, stopAfterHits = 0): Promise<RunResult> {
  const r = await runToHit(agent, pid, stopAfterHits, timeoutMs);
  if (r.kind === 'run') return r.run;
  await agent.call({ op: 'KILL', pid }).catch(() => {});
  const what = stopAfterHits === 0 ? 'still running' : `not at breakpoint hit ${stopAfterHits}`;
  throw new RunTimedOutError(`pid ${pid} was ${what} after ${timeoutMs} ms; killed`, { pid: String(pid), timeoutMs: String(timeoutMs) });
}

/** The program's output file as text, at most `maxBytes` (a cut file ends with a line saying so). */
export function readOutput(agent: Agent, file: string, maxBytes = OUTPUT_MAX_BYTES): Promise<string> {
  return readGuestText(agent, file, maxBytes);
}

/** Queues signal `signo` for `pid` (stopped or not); it is delivered when the process next runs. */
export async function sendSignal(agent: Agent, pid: number, signo: number): Promise<void> {
  await agent.call({ op: 'SIGNAL', pid, signo });
}

/** Ends `pid` (SIGKILL) and reaps it. */
export async function kill(agent: Agent, pid: number): Promise<void> {
  await agent.call({ op: 'KILL', pid });
}

/** Thread `tid`'s general registers (it must be in a ptrace stop). */
export function readRegisters(agent: Agent, tid: number): Promise<UserRegs> {
  return agent.call({ op: 'GETREGS', pid: tid });
}

/** Makes stopped thread `tid` issue system call `nr` with `args` now, and returns what it returned (negative: -errno). */
export function injectSyscall(agent: Agent, tid: number, nr: number, args: bigint[]): Promise<bigint> {
  return agent.call({ op: 'INJECT_SYSCALL', pid: tid, nr, args });
}

/** `length` bytes of `pid`'s memory at `address`. */
export function readMemory(agent: Agent, pid: number, address: bigint, length: number): Promise<Buffer> {
  return agent.call({ op: 'READ_MEM', pid, address, length });
}

/** One instruction of stopped thread `tid`: where it stopped next, or how the process ended. */
export function stepInstruction(agent: Agent, tid: number, timeoutMs: number): Promise<StepResult> {
  return agent.call({ op: 'STEP', pid: tid, count: 1, timeoutMs });
}

/** Thread `tid`'s debug register `index` (0-3 addresses, 6 status, 7 control). */
export function readDebugRegister(agent: Agent, tid: number, index: 0 | 1 | 2 | 3 | 6 | 7): Promise<bigint> {
  return agent.call({ op: 'PEEKUSER', pid: tid, offset: debugRegOffset(index) });
}

/** Adds `signo` to stopped thread `tid`'s blocked mask. */
export async function blockSignal(agent: Agent, tid: number, signo: number): Promise<void> {
  const mask = await agent.call({ op: 'GETSIGMASK', pid: tid });
  await agent.call({ op: 'SETSIGMASK', pid: tid, mask: mask | (1n << BigInt(signo - 1)) });
}

/** A kernel log record's text at most (the agent's KMSG_MAX, less the level prefix). */
const LOG_RECORD_BYTES = 970;

/**
 * Marks `text` in the guest's kernel log, and so on its console: a harness
 * phase, where a hung guest's console tail shows how far it got. One line,
 * cut to fit a record; through the agent (KMSG), since an SSH exec of
 * `echo > /dev/kmsg` cost ~50 ms of TCG.
 */
export async function markGuestLog(agent: Agent, text: string): Promise<void> {
  const line = Buffer.from(text.replace(/[\r\n]+/g, ' '));
  await agent.call({ op: 'KMSG', record: `<5>${line.subarray(0, LOG_RECORD_BYTES).toString()}` });
}
