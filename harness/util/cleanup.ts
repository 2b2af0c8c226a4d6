/**
 * What crh must undo when it is told to stop (SIGINT, SIGTERM, SIGHUP):
 * its temporary directories, its reaper records, its QEMUs. Whoever creates
 * such a thing registers an action here and unregisters it once it has
 * undone the thing itself. On a signal every action runs (in parallel,
 * within a bound), then the signal is raised again with our handler gone, so
 * crh dies of it and a shell sees 128 + signo — not a status of our choosing.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export type CleanupAction = () => Promise<void> | void;

const actions = new Map<symbol, { what: string; run: CleanupAction }>();

/** Registers `run` (named `what` in the report of one that fails); returns its unregister function. */
export function onCleanup(what: string, run: CleanupAction): () => void {
  const id = Symbol(what);
  actions.set(id, { what, run });
  return () => void actions.delete(id);
}

/** The number of actions registered (for tests). */
export function pendingCleanups(): number {
  return actions.size;
}

/**
 * Runs every registered action once, newest first started but all in
 * parallel, and resolves when all are done or `boundMs` has passed. A
 * failing action is reported on stderr and does not stop the others.
 */
export async function runCleanups(boundMs: number): Promise<void> {
  const running = [...actions.values()].reverse().map(async ({ what, run }) => {
    try {
      await run();
    } catch (error) {
      process.stderr.write(`crh: cleanup of ${what} failed: ${error instanceof Error ? error.message : String(error)}\n`);
    }
  });
  actions.clear();
  const bound = new AbortController();
  await Promise.race([Promise.all(running), sleep(boundMs, undefined, { signal: bound.signal }).catch(() => {})]);
  bound.abort();
}

export const CLEANUP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type CleanupSignal = (typeof CLEANUP_SIGNALS)[number];

let installed = false;

/**
 * On the first of `CLEANUP_SIGNALS`: run the cleanups (at most `boundMs`),
 * remove our handlers and raise the signal again. Installing twice does
 * nothing.
 */
export function installSignalCleanup(boundMs = 10_000): void {
  if (installed) return;
  installed = true;
  let stopping = false;
  const handlers = new Map<CleanupSignal, () => void>();
  for (const signal of CLEANUP_SIGNALS) {
    const handler = (): void => {
      if (stopping) return; // a second Ctrl-C while cleaning up waits for the first
      stopping = true;
      void runCleanups(boundMs).finally(() => {
        for (const [s, h] of handlers) process.removeListener(s, h);
        reraise(signal);
      });
    };
    handlers.set(signal, handler);
    process.on(signal, handler);
  }
}

/**
 * Raises `signal` at this process. With no listener left Node restores the
 * default action and the process dies of it. A listener someone else left
 * (signal-exit, which execa uses, re-raises by itself) gets a moment; then
 * every listener goes and the signal is raised once more.
 */
function reraise(signal: CleanupSignal): void {
  process.kill(process.pid, signal);
  if (process.listenerCount(signal) === 0) return;
  setTimeout(() => {
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  }, 1000);
}
