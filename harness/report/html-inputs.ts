/**
 * Gathers from a run's artifacts what the HTML report shows beside the
 * verdicts — each case's console tail, a link to its folder, the platform
 * facts the run's checkpoint images recorded — and writes the report file.
 */
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { readCheckpointImage } from '../restore/checkpoint-image.ts';
import { htmlReport } from './html.ts';
import type { InfraFailure } from './infra-failures.ts';
import type { Verdict } from './verdicts.ts';

/** Lines of guest console a cell shows: enough for a panic or an oops with its call trace. */
export const CONSOLE_EXCERPT_LINES = 40;
/** Only the end of a console log is read: a boot log can be megabytes, the excerpt is its tail. */
const CONSOLE_TAIL_BYTES = 64 * 1024;
const ANSI_SEQUENCE = /\u001b\[[0-9;?]*[ -/]*[@-~]/g;

/** A case's artifacts folder: the one its verdicts name, else `<root>/<case>`. */
export function caseArtifactsDir(root: string, caseName: string, verdicts: readonly Verdict[]): string {
  const named = verdicts.find((v) => v.case === caseName && v.artifacts)?.artifacts;
  return named ? path.resolve(root, named) : path.join(root, caseName);
}

/** The last `lines` lines of a console log, terminal escapes removed; undefined when there is none or it is empty. */
export async function consoleExcerpt(file: string, lines = CONSOLE_EXCERPT_LINES): Promise<string | undefined> {
  if (!existsSync(file)) return undefined;
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, CONSOLE_TAIL_BYTES);
    const { buffer } = await handle.read(Buffer.alloc(length), 0, length, size - length);
    let text = buffer
      .toString('utf8')
      .replace(ANSI_SEQUENCE, '')
      .replace(/\r(?=\n)/g, '');
    // A tail cut mid-line starts with a fragment; drop it.
    if (size > length) text = text.slice(text.indexOf('\n') + 1);
    const tail = text.trimEnd().split('\n').slice(-lines).join('\n');
    return tail.length > 0 ? tail : undefined;
  } finally {
    await handle.close();
  }
}

/**
 * The platform facts in the newest checkpoint image of these folders that
 * was written at or after `sinceMs` — the profile this run's cases ran
 * under, as they recorded it. Images that do not validate are passed over.
 */
export async function runPlatformFacts(dirs: readonly string[], sinceMs: number): Promise<{ rows: Array<[string, string]>; file: string } | undefined> {
  const images: Array<{ file: string; mtimeMs: number }> = [];
  for (const dir of dirs) {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names.filter((n) => /^checkpoint-.*\.tar$/.test(n))) {
      const file = path.join(dir, name);
      const { mtimeMs } = await stat(file);
      if (mtimeMs >= sinceMs) images.push({ file, mtimeMs });
    }
  }
  images.sort((a, b) => b.mtimeMs - a.mtimeMs);
  for (const { file } of images) {
    try {
      const image = await readCheckpointImage(file);
      return { file, rows: Object.entries(image.platform).map(([k, v]) => [k, v === null ? 'not measured' : String(v)]) };
    } catch {
      continue;
    }
  }
  return undefined;
}

/** What `crh run` knows at the end of a run, for writeHtmlReport. */
export interface HtmlReportRun {
  verdicts: readonly Verdict[];
  infra: readonly InfraFailure[];
  artifactsRoot: string;
  /** the run's start: older checkpoint images in the folders are not this run's */
  sinceMs: number;
  generatedAt?: string;
}

/** Renders the run's report into `file` (folders created as needed). */
export async function writeHtmlReport(file: string, run: HtmlReportRun): Promise<void> {
  const cases = [...new Set([...run.verdicts.map((v) => v.case), ...run.infra.map((f) => f.case)])];
  const dirs = new Map(cases.map((c) => [c, caseArtifactsDir(run.artifactsRoot, c, run.verdicts)]));
  const consoleExcerpts: Record<string, string> = {};
  const artifactLinks: Record<string, string> = {};
  for (const [c, dir] of dirs) {
    const excerpt = await consoleExcerpt(path.join(dir, 'console.log'));
    if (excerpt) consoleExcerpts[c] = excerpt;
    if (existsSync(dir)) artifactLinks[c] = path.relative(path.dirname(path.resolve(file)), dir) || '.';
  }
  const facts = await runPlatformFacts([...dirs.values()], run.sinceMs);
  const html = htmlReport({
    verdicts: run.verdicts,
    infra: run.infra,
    consoleExcerpts,
    artifactLinks,
    ...(facts
      ? { profile: facts.rows, profileSource: `as recorded in ${path.relative(run.artifactsRoot, facts.file)}, the newest checkpoint image of this run` }
      : {}),
    generatedAt: run.generatedAt ?? new Date().toISOString(),
  });
  await mkdir(path.dirname(path.resolve(file)), { recursive: true });
  await writeFile(file, html);
}
