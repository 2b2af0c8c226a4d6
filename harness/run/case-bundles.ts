/**
 * The case files of one `crh run`, compiled to JavaScript once before the
 * pool starts them. Under tsx's loader every case process resolved and
 * compiled its ~150 TypeScript modules through the loader's worker thread:
 * ~0.8 s of CPU per process before the case did anything (pkeys alone:
 * 2.8 → 2.0 s of CPU), ~24 s of a 30-file matrix on 2 cores. One esbuild
 * build, code-split so the harness modules the cases share are one set of
 * chunks, takes ~0.25 s. The output is what tsx would have run — the same
 * sources, the repository's tsconfig, source maps inline for stack traces.
 *
 * Packages stay imports, and ESM finds a bare name by walking up from the
 * importing file, so the output lives under the repository's
 * node_modules/.cache (where build tools keep theirs), one directory per run.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';

export interface CaseBundles {
  /** the compiled entry of a case file given to bundleCases */
  entryOf(file: string): string;
  /** removes this run's output; idempotent */
  dispose(): Promise<void>;
}

/** A run killed before dispose() leaves its directory; the next run removes those older than this. */
const STALE_MS = 24 * 3600_000;

/**
 * import.meta of a module folded into a chunk would describe the chunk; each
 * module's own dirname, filename and url are written in as it is loaded
 * (harness/util/cache-dir.ts finds the repository from its own directory).
 */
const ownImportMeta: Plugin = {
  name: 'own-import-meta',
  setup(b) {
    b.onLoad({ filter: /\.[cm]?ts$/ }, async ({ path: file }) => {
      const source = await readFile(file, 'utf8');
      const meta: Record<string, string> = { dirname: path.dirname(file), filename: file, url: pathToFileURL(file).href };
      const contents = source.replace(/\bimport\.meta\.(dirname|filename|url)\b/g, (_, key: string) => JSON.stringify(meta[key]));
      return { contents, loader: 'ts' };
    });
  },
};

/** The directory this run's output goes in, under `<repoRoot>/node_modules/.cache/cr-harness/case-bundles/`. */
async function runDirectory(repoRoot: string): Promise<string> {
  const parent = path.join(repoRoot, 'node_modules', '.cache', 'cr-harness', 'case-bundles');
  await mkdir(parent, { recursive: true });
  for (const name of await readdir(parent)) {
    const dir = path.join(parent, name);
    const info = await stat(dir).catch(() => undefined);
    if (info && Date.now() - info.mtimeMs > STALE_MS) await rm(dir, { recursive: true, force: true });
  }
  return mkdtemp(path.join(parent, 'run-'));
}

/**
 * Compiles `files` (absolute paths) in one build. Rejects with esbuild's
 * messages when any of them does not compile, leaving nothing behind; the
 * caller then runs the sources as they are, so that file fails on its own.
 */
export async function bundleCases(files: readonly string[], repoRoot: string): Promise<CaseBundles> {
  const outdir = await runDirectory(repoRoot);
  const dispose = (): Promise<void> => rm(outdir, { recursive: true, force: true });
  try {
    const { metafile } = await build({
      entryPoints: [...files],
      absWorkingDir: repoRoot,
      tsconfig: path.join(repoRoot, 'tsconfig.json'),
      bundle: true,
      splitting: true,
      packages: 'external',
      platform: 'node',
      format: 'esm',
      target: 'node20',
      outdir,
      outbase: repoRoot,
      outExtension: { '.js': '.mjs' },
      chunkNames: 'chunks/[name]-[hash]',
      sourcemap: 'inline',
      sourcesContent: false,
      metafile: true,
      plugins: [ownImportMeta],
      logLevel: 'silent',
    });
    const entries = new Map<string, string>();
    for (const [output, info] of Object.entries(metafile.outputs))
      if (info.entryPoint) entries.set(path.resolve(repoRoot, info.entryPoint), path.resolve(repoRoot, output));
    return {
      entryOf(file) {
        const entry = entries.get(path.resolve(file));
        if (!entry) throw new Error(`case bundles: ${file} was not among the files compiled`);
        return entry;
      },
      dispose,
    };
  } catch (error) {
    await dispose();
    throw error;
  }
}
