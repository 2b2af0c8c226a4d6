/**
 * Runs case files, N at a time, each as its own Node process (a tap test
 * file is a plain program that prints TAP), so `crh run` knows when each
 * starts and ends, sees its TAP as it streams (the progress display reads
 * the subtest it is in), keeps each file's full TAP in its artifacts, and
 * can stop every one of them on SIGINT.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';

export type CaseEvent =
  | { type: 'start'; file: string; name: string }
  | { type: 'line'; file: string; name: string; line: string }
  | { type: 'end'; file: string; name: string; exitCode: number | null; signal: string | null; durationMs: number; tapFile: string; timedOut: boolean };

export interface CasePoolOptions {
  files: readonly string[];
  jobs: number;
  /** where each case's full TAP goes: <tapDir>/<name>.tap */
  tapDir: string;
  cwd: string;
  env: NodeJS.ProcessEnv;
  onEvent: (event: CaseEvent) => void;
  /** how a case file is started (node's arguments, the script, extra environment); by default the TypeScript under tsx's loader */
  launch?: (file: string) => CaseLaunch;
  /** a case file still running after this long is stopped (SIGTERM, then SIGKILL) and counts as failed */
  timeoutMs?: number;
}

export interface CaseLaunch {
  nodeArgs: readonly string[];
  script: string;
  env?: NodeJS.ProcessEnv;
}

const underTsx = (file: string): CaseLaunch => ({ nodeArgs: ['--import=tsx'], script: file });

/** Grace between SIGTERM (the case's teardown shuts its guest down) and SIGKILL. */
const KILL_GRACE_MS = 10_000;

/** "cases/reports/2009-rf-tolerate.test.ts" → "reports/2009-rf-tolerate" relative to `root`. */
export function caseName(file: string, root: string): string {
  return path.relative(root, file).replace(/\.test\.ts$/, '');
}

/** Resolves once every file has run; rejects only if a process cannot be spawned at all. */
export async function runCasePool(options: CasePoolOptions, root: string): Promise<void> {
  await mkdir(options.tapDir, { recursive: true });
  const queue = [...options.files];
  const running = new Set<ChildProcess>();
  const stopAll = (): void => {
    for (const child of running) child.kill('SIGTERM');
  };
  process.once('SIGINT', stopAll);
  process.once('SIGTERM', stopAll);
  const worker = async (): Promise<void> => {
    for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
      const name = caseName(file, root);
      const tapFile = path.join(options.tapDir, `${name.replaceAll('/', '-')}.tap`);
      const started = Date.now();
      options.onEvent({ type: 'start', file, name });
      const launch = (options.launch ?? underTsx)(file);
      const child = spawn(process.execPath, [...launch.nodeArgs, launch.script], {
        cwd: options.cwd,
        env: { ...options.env, ...launch.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      running.add(child);
      const tap = createWriteStream(tapFile);
      child.stderr!.pipe(createWriteStream(`${tapFile}.stderr`));
      const lines = createInterface({ input: child.stdout! });
      lines.on('line', (line) => {
        tap.write(`${line}\n`);
        options.onEvent({ type: 'line', file, name, line });
      });
      let timedOut = false;
      let killer: NodeJS.Timeout | undefined;
      const timer = options.timeoutMs
        ? setTimeout(() => {
            timedOut = true;
            tap.write(`# crh run: stopped after ${options.timeoutMs} ms\n`);
            child.kill('SIGTERM');
            killer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
          }, options.timeoutMs)
        : undefined;
      const [exitCode, signal] = await new Promise<[number | null, string | null]>((resolve, reject) => {
        child.once('error', reject);
        child.once('close', (code, sig) => resolve([code, sig]));
      }).finally(() => {
        clearTimeout(timer);
        clearTimeout(killer);
      });
      running.delete(child);
      await new Promise<void>((resolve) => tap.end(resolve));
      options.onEvent({ type: 'end', file, name, exitCode, signal, durationMs: Date.now() - started, tapFile, timedOut });
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, Math.min(options.jobs, options.files.length)) }, worker));
  } finally {
    process.removeListener('SIGINT', stopAll);
    process.removeListener('SIGTERM', stopAll);
  }
}
