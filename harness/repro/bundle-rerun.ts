/**
 * `crh repro --bundle`: a bundle someone sent is untrusted input. Its
 * verdict.json is checked field by field (verdict.ts, rerun-record.ts), the
 * entries its rerun record names must be the bundle's own regular files,
 * and only those are written, into a private directory, before anything is
 * compiled or run. The request built from it takes nothing from the bundle
 * but the record's data and the paths of those extracted entries.
 */
import path from 'node:path';
import { escapeControl } from '../util/terminal-text.ts';
import { readBundle, type BundleEntry } from './bundle.ts';
import { parseSignal, type CheckpointPoint, type ReproRequest } from './options.ts';
import { policyOf, type RerunRecord } from './rerun-record.ts';
import { BundleRejectedError } from './usage-error.ts';
import { parseVerdict, type ReproVerdict } from './verdict.ts';

export interface OpenedBundle {
  /** the recorded verdict, its rerun record checked */
  recorded: ReproVerdict;
  /** the entries the record names: the program first, then its files */
  inputs: BundleEntry[];
}

/** Reads and checks a bundle for a rerun; extracts nothing. Throws BundleRejectedError naming the field. */
export async function openBundle(bundle: string): Promise<OpenedBundle> {
  const entries = await readBundle(bundle);
  const verdict = entries.get('verdict.json');
  if (!verdict) throw new BundleRejectedError(bundle, 'verdict.json', 'missing (is it a crh bundle?)');
  const recorded = parseVerdict(verdict.data.toString('utf8'), bundle);
  const record = recorded.rerun;
  const named: Array<[string, string]> = [
    [record.command === 'repro' ? 'rerun.source' : 'rerun.binary', (record.source ?? record.binary)!],
    ...record.files.map((f, i): [string, string] => [`rerun.files[${i}]`, f]),
  ];
  const inputs = named.map(([field, name]) => {
    const entry = entries.get(name);
    if (!entry) throw new BundleRejectedError(bundle, `verdict.json ${field}`, `${JSON.stringify(name)} is no entry of the bundle`);
    return entry;
  });
  return { recorded, inputs };
}

/**
 * The request a checked record makes, with the extracted entries' paths.
 * Only `out` and `artifacts` come from the person running the rerun; no
 * compiler flags and no kernel come from anywhere.
 */
export function requestFromRecord(record: RerunRecord, extracted: ReadonlyMap<string, string>, where: { out: string; artifacts?: string }): ReproRequest {
  const at = (name: string): string => {
    const file = extracted.get(name);
    if (!file) throw new Error(`bundle entry ${name} was not extracted`);
    return file;
  };
  return {
    command: record.command,
    ...(record.engine ? { engine: record.engine } : {}),
    ...(record.command === 'repro' ? { source: at(record.source!) } : { binary: at(record.binary!) }),
    files: record.files.map(at),
    args: [...record.args],
    cflags: [],
    checkpoint: record.checkpoint,
    ...(record.finishSignal ? { finishSignal: parseSignal(record.finishSignal) } : {}),
    ...(record.pidFile !== undefined ? { pidFile: record.pidFile } : {}),
    policy: policyOf(record),
    timeoutMs: record.timeoutMs,
    cycles: record.cycles ?? 1,
    out: where.out,
    ...(where.artifacts ? { artifacts: where.artifacts } : {}),
    kernel: {},
    ...(record.sweep && record.checkpoint.kind === 'symbol' ? { sweep: { symbol: record.checkpoint.symbol, ...record.sweep } } : {}),
    ...(record.restoreCpu !== undefined ? { elsewhere: { cpu: record.restoreCpu, anyway: record.restoreAnyway === true } } : {}),
  };
}

/** What a rerun will run, one line each, every value from the bundle escaped for the terminal. */
export function describeRerun(bundle: string, record: RerunRecord): string[] {
  const e = (text: string): string => escapeControl(text);
  const program =
    record.command === 'repro'
      ? `${e(record.source!)} (the bundle's C source, compiled again without compiler flags)`
      : `${e(record.binary!)} (the bundle's binary, run as carried)`;
  const p = record.policy;
  return [
    `rerun of ${e(path.basename(bundle))}:`,
    `  program:    ${program}`,
    `  files:      ${record.files.length ? record.files.map(e).join(', ') : '(none)'}`,
    `  checkpoint: ${describePoint(record.checkpoint)}${record.pidFile !== undefined ? ` of the daemon ${e(record.pidFile)} names` : ''}${record.finishSignal ? `, then ${e(record.finishSignal)} to finish` : ''}`,
    `  policy:     rf=${e(p.rf)} regs=${e(p.regs)} restorer=${e(p.restorer)} rseq-fixup=${e(p.rseqFixup)} syscall-restart=${e(p.syscallRestart)}${p.omit.length ? ` omit=${p.omit.map(e).join(',')}` : ''}`,
    ...(record.sweep ? [`  sweep:      ${record.sweep.count} boundaries, a checkpoint every ${record.sweep.every}`] : []),
    `  cycles:     ${record.cycles ?? 1} checkpoint → restore in a chain`,
    ...(record.restoreCpu !== undefined
      ? [`  restore in: another guest, -cpu ${e(record.restoreCpu)}${record.restoreAnyway ? ', restored even where it lacks what the process depends on' : ''}`]
      : []),
    `  timeout:    ${record.timeoutMs} ms per run`,
    `  arguments:  ${record.args.length ? record.args.map((a) => `'${e(a).replaceAll("'", "\\'")}'`).join(' ') : '(none)'}`,
  ];
}

function describePoint(point: CheckpointPoint): string {
  if (point.kind === 'symbol') return `execution ${point.hit} of ${escapeControl(point.symbol)}`;
  if (point.kind === 'after') return `${point.ms} ms after the start`;
  return 'once the program announces readiness';
}
