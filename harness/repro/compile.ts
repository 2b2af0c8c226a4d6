/**
 * Builds a user's reproducer on the host: static (the guest has no shared
 * libraries for it), optimised as a bug report's program usually is, and
 * linked at its own text address so an address in a log names this program
 * and no workload of the harness (those sit at 0x10000000-0x21000000 and the
 * agent at 0x60000000; all stay below 2 GiB).
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { MissingDependencyError } from '../errors.ts';
import { UsageError } from './usage-error.ts';

export const REPRO_TEXT_SEGMENT = '0x30000000';

/** Warnings are the user's business (no -Werror): they are shown, not fatal. */
export const REPRO_CFLAGS = ['-static', '-O2', '-Wall', `-Wl,-Ttext-segment=${REPRO_TEXT_SEGMENT}`] as const;

export interface Compiled {
  binary: string;
  /** the compiler command line, as run */
  command: string[];
  /** gcc's stderr (warnings) */
  warnings: string;
}

/** Compiles `source` into `outDir`; a compiler error is a UsageError naming the file, with gcc's output. */
export async function compileReproducer(source: string, outDir: string, extraFlags: readonly string[] = []): Promise<Compiled> {
  if (!existsSync(source)) throw new UsageError(`${source}: no such file`);
  await mkdir(outDir, { recursive: true });
  const binary = path.join(outDir, path.basename(source).replace(/\.c$/, '') || 'repro');
  const command = ['gcc', ...REPRO_CFLAGS, '-o', binary, source, ...extraFlags];
  const result = await execa(command[0]!, command.slice(1), { reject: false });
  if ((result as { code?: string }).code === 'ENOENT') throw new MissingDependencyError('gcc is not installed (crh bootstrap installs it)');
  if (result.exitCode !== 0) {
    throw new UsageError(`${source} does not compile (gcc exit ${result.exitCode})`, { command: command.join(' '), 'gcc output': result.stderr });
  }
  return { binary, command, warnings: result.stderr };
}
