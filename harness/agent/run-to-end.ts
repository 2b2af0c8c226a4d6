/**
 * RUN's timeout as an outcome: the agent answers ETIMEDOUT when a program is
 * still running at RUN's bound (every thread interrupted and left stopped),
 * which callers that run a program to its end treat as a result — a program
 * that never ended — not as a failure of the agent.
 */
import { constants } from 'node:os';
import type { AgentClient } from './client.ts';
import { AgentError, CrhError } from '../errors.ts';

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

/** RUN with no hit limit: the program's end, or — past `timeoutMs` — killed and reported as timed out. */
export async function runToEnd(agent: Pick<AgentClient, 'call'>, pid: number, timeoutMs: number): Promise<RunEnd> {
  try {
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs });
    if (run.outcome === 'hit-limit') throw new CrhError(`RUN pid ${pid} stopped at a hit limit it was not given`);
    return { outcome: run.outcome, code: run.code };
  } catch (error) {
    if (!isRunTimeout(error)) throw error;
    await agent.call({ op: 'KILL', pid });
    return { outcome: 'timed-out', code: timeoutMs };
  }
}
