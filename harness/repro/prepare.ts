/**
 * The program as it will run in the guest, made ready on the host: compiled
 * (repro) or checked (cr), its checkpoint address resolved, its files read —
 * everything that can be wrong with a request fails here, before a guest
 * starts.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { compileReproducer } from './compile.ts';
import type { ReproRequest } from './options.ts';
import { loadProgram, resolveCheckpointAddress, type Program } from './program.ts';
import type { Progress } from './progress.ts';
import { UsageError } from './usage-error.ts';

export interface HostFile {
  file: string;
  data: Buffer;
  mode: number;
}

export interface PreparedProgram {
  /** file-name-safe name: the guest binary's and the bundle's */
  name: string;
  program: Program;
  /** the compiler command line (repro) */
  compiler?: string[];
  /** the DR0 address of a --checkpoint-at */
  breakAt?: bigint;
  files: HostFile[];
}

/** The name a request's program goes by, from its source or binary file name. */
export function programName(request: ReproRequest): string {
  const file = request.source ?? request.binary ?? 'program';
  return (
    path
      .basename(file)
      .replace(/\.c$/, '')
      .replace(/[^A-Za-z0-9_.+-]/g, '_') || 'program'
  );
}

export async function prepareProgram(request: ReproRequest, buildDir: string, progress: Progress): Promise<PreparedProgram> {
  let compiler: string[] | undefined;
  let binary = request.binary;
  if (request.source) {
    progress.phase('compile', path.basename(request.source));
    const compiled = await compileReproducer(request.source, buildDir, request.cflags);
    for (const line of compiled.warnings.split('\n').filter(Boolean)) progress.note(line);
    compiler = compiled.command;
    binary = compiled.binary;
  }
  const program = await loadProgram(binary!);
  const breakAt = request.checkpoint.kind === 'symbol' ? resolveCheckpointAddress(program, request.checkpoint.symbol) : undefined;
  const files = await Promise.all(
    request.files.map(async (file): Promise<HostFile> => {
      try {
        return { file, data: await readFile(file), mode: (await stat(file)).mode & 0o777 };
      } catch (error) {
        throw new UsageError(`--file ${file}: ${(error as Error).message}`);
      }
    }),
  );
  return { name: programName(request), program, ...(compiler ? { compiler } : {}), ...(breakAt !== undefined ? { breakAt } : {}), files };
}
