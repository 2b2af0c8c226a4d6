/**
 * The command rerun.sh runs: the same crh invocation with the bundle's own
 * copies of the source (or binary) and files — a shell script for a person
 * who has read it; `crh repro --bundle` reads the typed rerun record instead. Paths inside the
 * bundle are written `{bundle}/NAME` in verdict.json and `"$bundle/NAME"` in
 * rerun.sh, so the bundle can be extracted anywhere.
 */
import path from 'node:path';
import { requestFlags, type ReproRequest } from './options.ts';

export const BUNDLE_DIR = '{bundle}';

/** Bundle-relative names of what the program is made of. */
export interface BundleInputs {
  source?: string;
  binary: string;
  files: string[];
}

/** `crh` arguments that rerun `request` from an extracted bundle. */
export function rerunArgs(request: ReproRequest, inputs: BundleInputs): string[] {
  const at = (name: string): string => `${BUNDLE_DIR}/${name}`;
  const program =
    request.command === 'repro' ? ['repro', at(inputs.source!)] : ['cr', '--binary', at(inputs.binary), ...inputs.files.flatMap((f) => ['--file', at(f)])];
  return [...program, ...requestFlags(request), ...(request.args.length > 0 ? ['--', ...request.args] : [])];
}

/**
 * The arguments with the bundle placeholder replaced by where it was
 * extracted. For tests and people only: `crh repro --bundle` never parses a
 * bundle's command line (it reads the rerun record, rerun-record.ts).
 */
export function resolveRerunArgs(args: readonly string[], dir: string): string[] {
  return args.map((a) => (a.startsWith(`${BUNDLE_DIR}/`) ? path.join(dir, a.slice(BUNDLE_DIR.length + 1)) : a));
}

const shellWord = (arg: string): string => {
  if (arg.startsWith(`${BUNDLE_DIR}/`)) return `"$bundle/${arg.slice(BUNDLE_DIR.length + 1).replace(/["$`\\]/g, '\\$&')}"`;
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
};

/** rerun.sh: runs from the top of a cr-harness clone, wherever the bundle was extracted. */
export function rerunScript(args: readonly string[], verdictLine: string): string {
  // Switches added when running the script (--out) go before the program's own arguments.
  const split = args.indexOf('--');
  const own = split < 0 ? args : args.slice(0, split);
  const program = split < 0 ? [] : args.slice(split);
  const command = [...['node', 'bin/crh.js', ...own].map(shellWord), '"$@"', ...program.map(shellWord)].join(' ');
  return [
    '#!/bin/sh',
    '# Reruns the reproducer in this bundle with exactly the switches that produced it.',
    '# From the top of a cr-harness clone (after `npm ci`), with the bundle extracted in DIR:',
    '#   sh DIR/rerun.sh [--out NEW.tar]',
    '# Exit status as crh: 0 the restored run matched, 1 it differed, 3 the harness perturbs the program, 2 usage, 69 infrastructure.',
    `# Recorded verdict: ${verdictLine.replace(/\n/g, ' ')}`,
    'set -e',
    'bundle=$(cd "$(dirname "$0")" && pwd)',
    `exec ${command}`,
    '',
  ].join('\n');
}
