/**
 * What a sweep says: one row per checkpointed boundary — address, symbol
 * and offset, the instruction about to run there (binutils' objdump on the
 * host binary), the verdict, and for a failure the first difference and
 * the registers the restore got wrong — and the headline: the first
 * failing boundary. Text for a person, JSON for a program.
 */
import { execa } from 'execa';
import { SHN_LORESERVE, STT_FUNC, STT_NOTYPE, type ElfSymbol } from '../elf/elf64.ts';
import { describePolicy, type RestorePolicy } from '../restore/policy.ts';
import { hex, USER_REGS_FIELDS, type UserRegs } from '../x86/registers.ts';
import { describeStatus, summarize } from './compare.ts';
import type { Program } from './program.ts';
import type { BoundaryVerdict, Reached, SweepResult } from './sweep.ts';
import type { SweepRequest } from './sweep-options.ts';

export const SWEEP_FORMAT = 'cr-harness-sweep';
/** 2: rows say how their boundary was reached (step|breakpoint), whether rseq_cs was set, what the stop alone did; timing counts the fresh runs */
export const SWEEP_VERSION = 2;

export interface SweepRow {
  boundary: number;
  address: string;
  /** symbol+0xoffset, or the address when no symbol covers it */
  location: string;
  /** the instruction at the address, as objdump prints it */
  instruction: string;
  pass: boolean;
  /** step: checkpointed in the walk, compared with the uninterrupted run; breakpoint: by a fresh run stopped there, compared with that run continued (sweep.ts) */
  reached: Reached;
  /** rseq_cs was set at this boundary */
  rseqArmed: boolean;
  /** reached by breakpoint: how the stop alone changed the run (the continued run against the uninterrupted one), e.g. an rseq abort */
  stopFelt?: string;
  /** the first difference from the run it is compared with (compare.ts), or the restore's failure */
  firstDifference?: string;
  /** registers whose restored value differs from the checkpoint's */
  registersDiffering: string[];
  /** of those, the ones whose checkpoint value changed since the last boundary that matched: the likely cause */
  registersNewlyDiffering: string[];
  checkpointMs: number;
  restoreRunMs: number;
}

export interface SweepReport {
  format: typeof SWEEP_FORMAT;
  version: number;
  createdAt: string;
  pass: boolean;
  headline: string;
  symbol: string;
  hit: number;
  count: number;
  every: number;
  /** boundaries actually walked */
  walked: number;
  policy: string;
  reference: { status: string; output: string };
  stepped: { status: string; matchesReference: boolean; difference?: string };
  rows: SweepRow[];
  notes: string[];
  timing: { walkMs: number; checkpointMsPerBoundary: number; restoreRunMsPerBoundary: number; freshRunsMs: number; freshRuns: number };
}

export interface ReportInputs {
  program: Program;
  sweep: SweepRequest;
  hit: number;
  policy: RestorePolicy;
  reference: { outcome: 'exited' | 'killed' | 'timed-out'; code: number; output: string; hits: number };
  result: SweepResult;
  /** objdump's line for an address; injectable for tests */
  disassemble?: (address: bigint) => Promise<string>;
}

export async function makeSweepReport(inputs: ReportInputs): Promise<SweepReport> {
  const { result, program } = inputs;
  const listed = inputs.disassemble
    ? undefined
    : await objdumpInstructions(
        program.file,
        result.verdicts.map((v) => v.rip),
      );
  const disassemble = inputs.disassemble ?? (async (address: bigint) => listed!.get(address)!);
  const symbols = codeSymbols(program.elf.symbols());
  const rows: SweepRow[] = [];
  let lastMatching: BoundaryVerdict | undefined;
  for (const v of result.verdicts) {
    const differing = v.restoredRegs ? differingRegisters(v.imageRegs, v.restoredRegs) : [];
    const newly = lastMatching ? differing.filter((name) => v.imageRegs[name as keyof UserRegs] !== lastMatching!.imageRegs[name as keyof UserRegs]) : [];
    rows.push({
      boundary: v.index,
      address: hex(v.rip),
      location: locate(symbols, v.rip),
      instruction: await disassemble(v.rip),
      pass: v.pass,
      reached: v.reached,
      rseqArmed: v.rseqArmed === true,
      ...(v.stopFelt.length > 0 ? { stopFelt: againstContinued(summarize(v.stopFelt, undefined, inputs.reference)) } : {}),
      ...(v.pass
        ? {}
        : {
            firstDifference:
              v.reached === 'step'
                ? summarize(v.mismatches.slice(0, 1), v.restoreError, v.against)
                : againstContinued(summarize(v.mismatches.slice(0, 1), v.restoreError, v.against), 'restored'),
          }),
      registersDiffering: differing,
      registersNewlyDiffering: newly,
      checkpointMs: v.checkpointMs,
      restoreRunMs: v.restoreRunMs,
    });
    if (v.pass) lastMatching = v;
  }
  const failing = rows.filter((r) => !r.pass);
  const stepped = result.steppedMismatches;
  const mean = (f: (v: BoundaryVerdict) => number): number =>
    result.verdicts.length === 0 ? 0 : Math.round(result.verdicts.reduce((sum, v) => sum + f(v), 0) / result.verdicts.length);
  return {
    format: SWEEP_FORMAT,
    version: SWEEP_VERSION,
    createdAt: new Date().toISOString(),
    pass: failing.length === 0 && stepped.length === 0,
    headline: headline(rows, result.boundaries.length, stepped.length === 0 ? undefined : summarize(stepped, undefined, inputs.reference)),
    symbol: inputs.sweep.symbol,
    hit: inputs.hit,
    count: inputs.sweep.count,
    every: inputs.sweep.every,
    walked: result.boundaries.length,
    policy: describePolicy(inputs.policy),
    reference: { status: describeStatus(inputs.reference), output: inputs.reference.output },
    stepped: {
      status: describeStatus(result.stepped),
      matchesReference: stepped.length === 0,
      ...(stepped.length ? { difference: summarize(stepped, undefined, inputs.reference) } : {}),
    },
    rows,
    notes: result.notes,
    timing: {
      walkMs: result.walkMs,
      checkpointMsPerBoundary: mean((v) => v.checkpointMs),
      restoreRunMsPerBoundary: mean((v) => v.restoreRunMs),
      freshRunsMs: result.freshRunsMs,
      freshRuns: result.freshRuns,
    },
  };
}

/**
 * compare.ts words a difference as "uninterrupted X, restored Y". For a
 * boundary reached by breakpoint the left side is the fresh run continued
 * from its stop (its reference), and for the stop-felt column the right side
 * is that continued run too: say so.
 */
function againstContinued(text: string, right: 'restored' | 'continued' = 'continued'): string {
  return right === 'restored' ? text.replace(/\buninterrupted /g, 'continued from the stop ') : text.replace(/, restored /g, ', continued from the stop ');
}

function headline(rows: SweepRow[], walked: number, steppedDifference: string | undefined): string {
  if (steppedDifference !== undefined)
    return `the stepping itself changes the program (the walked process, run to its end, differs from the uninterrupted run: ${steppedDifference}); no boundary verdict rests on it`;
  const failing = rows.filter((r) => !r.pass);
  const byBreakpoint = rows.filter((r) => r.reached === 'breakpoint').length;
  if (failing.length === 0)
    return `all ${rows.length} checkpointed boundaries of ${walked} match ${byBreakpoint === 0 ? 'the uninterrupted run' : `(${byBreakpoint} reached by breakpoint, each against its own run continued from the stop)`}`;
  const first = failing[0]!;
  const registers = first.registersNewlyDiffering.length > 0 ? first.registersNewlyDiffering : first.registersDiffering;
  const regText = registers.length > 0 ? `; restored wrong: ${registers.join(', ')}` : '';
  return `first failing boundary ${first.boundary} at ${first.address} ${first.location} (${first.instruction}): ${first.firstDifference}${regText} — ${failing.length} of ${rows.length} boundaries fail (${failing.map((r) => r.boundary).join(', ')})`;
}

/** The text table, headline first. */
export function formatSweepTable(report: SweepReport): string {
  const lines = [
    `# sweep of ${report.symbol} (execution ${report.hit}): ${report.walked} boundaries walked, a checkpoint every ${report.every}; policy ${report.policy}`,
    `# ${report.headline}`,
    `# the walked process run to its end: ${report.stepped.status}${report.stepped.matchesReference ? ', as the uninterrupted run' : `, DIFFERS: ${report.stepped.difference}`}`,
    `# per boundary: checkpoint ${report.timing.checkpointMsPerBoundary} ms, restore + run to the end ${report.timing.restoreRunMsPerBoundary} ms (means); the walk ${report.timing.walkMs} ms${report.timing.freshRuns > 0 ? `; ${report.timing.freshRuns} fresh runs to a breakpoint ${report.timing.freshRunsMs} ms` : ''}`,
    ['#'.padEnd(5), 'address'.padEnd(12), 'location'.padEnd(28), 'instruction'.padEnd(36), 'reached'.padEnd(10), 'verdict', 'detail'].join(' '),
  ];
  for (const r of report.rows) {
    const felt = r.stopFelt ? `the stop alone: ${r.stopFelt}` : '';
    const failure = r.pass ? '' : `${r.firstDifference}${r.registersDiffering.length ? ` [registers differing: ${r.registersDiffering.join(' ')}]` : ''}`;
    const detail = [failure, felt].filter(Boolean).join('; ');
    const reached = `${r.reached === 'step' ? 'step' : 'break'}${r.rseqArmed ? ' rseq' : ''}`;
    lines.push(
      [
        String(r.boundary).padEnd(5),
        r.address.padEnd(12),
        r.location.padEnd(28),
        r.instruction.padEnd(36),
        reached.padEnd(10),
        (r.pass ? 'match' : 'DIFFERS').padEnd(7),
        detail,
      ]
        .join(' ')
        .trimEnd(),
    );
  }
  for (const note of report.notes) lines.push(`note: ${note}`);
  return `${lines.join('\n')}\n`;
}

/** Register names whose restored value is not the checkpoint's. */
export function differingRegisters(image: UserRegs, restored: UserRegs): string[] {
  return USER_REGS_FIELDS.filter((name) => image[name] !== restored[name]);
}

interface CodeSymbol {
  name: string;
  value: bigint;
  size: bigint;
}

/** Functions and labels that are defined: what a code address can be named after. */
function codeSymbols(all: ElfSymbol[]): CodeSymbol[] {
  return all
    .filter((s) => s.name !== '' && s.section !== 0 && s.section < SHN_LORESERVE && (s.type === STT_FUNC || s.type === STT_NOTYPE) && !s.name.startsWith('.'))
    .map((s) => ({ name: s.name, value: s.value, size: s.size }))
    .sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : 0));
}

/** name+0xoff of the nearest symbol at or below the address: a function that covers it first, else a label. */
export function locate(symbols: readonly CodeSymbol[], address: bigint): string {
  const below = symbols.filter((s) => s.value <= address);
  const covering = below.filter((s) => s.size > 0n && address < s.value + s.size);
  const nearest = (list: CodeSymbol[]): CodeSymbol | undefined => list.reduce<CodeSymbol | undefined>((a, b) => (!a || b.value >= a.value ? b : a), undefined);
  const best = nearest(covering) ?? nearest(below);
  if (!best) return hex(address);
  const offset = address - best.value;
  return offset === 0n ? best.name : `${best.name}+0x${offset.toString(16)}`;
}

/** The instruction at `address` in `binary`, from `objdump -d` (the mnemonic and operands, AT&T syntax). */
export async function objdumpInstruction(binary: string, address: bigint): Promise<string> {
  const decoded = await objdumpRange(binary, address, address + 16n);
  if (typeof decoded === 'string') return decoded;
  return decoded.get(address) ?? '(no instruction decoded here)';
}

/** Addresses this close together are disassembled by one objdump, from the first to the last. */
const SAME_WINDOW_BYTES = 4096n;

/**
 * objdumpInstruction for every address in `addresses`, one objdump per
 * window of nearby ones rather than one per address (a sweep names each of
 * its boundaries; an objdump of a static binary costs ~25 ms of CPU). An
 * instruction objdump lists at the address is the one decoded from there,
 * however the linear sweep reached it; an address the window's listing
 * skipped (data in text put it out of step) gets an objdump of its own.
 */
export async function objdumpInstructions(binary: string, addresses: readonly bigint[]): Promise<Map<bigint, string>> {
  const sorted = [...new Set(addresses)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const windows: bigint[][] = [];
  for (const a of sorted) {
    const last = windows.at(-1);
    if (last && a - last.at(-1)! <= SAME_WINDOW_BYTES) last.push(a);
    else windows.push([a]);
  }
  const named = new Map<bigint, string>();
  for (const window of windows) {
    const decoded = await objdumpRange(binary, window[0]!, window.at(-1)! + 16n);
    for (const a of window) {
      const line = typeof decoded === 'string' ? decoded : decoded.get(a);
      named.set(a, line ?? (await objdumpInstruction(binary, a)));
    }
  }
  return named;
}

/** `objdump -d` of [start, stop): each listed instruction by its address, or why objdump failed. */
async function objdumpRange(binary: string, start: bigint, stop: bigint): Promise<Map<bigint, string> | string> {
  const r = await execa('objdump', ['-d', '--no-show-raw-insn', `--start-address=${hex(start)}`, `--stop-address=${hex(stop)}`, binary], {
    reject: false,
    timeout: 30_000,
  });
  if (r.exitCode !== 0) return `(objdump failed: ${r.stderr.split('\n')[0] ?? ''})`;
  const listed = new Map<bigint, string>();
  for (const line of r.stdout.split('\n')) {
    const m = /^\s*([0-9a-f]+):\s+(.*)$/.exec(line);
    if (m) listed.set(BigInt(`0x${m[1]}`), m[2]!.replace(/\s+/g, ' ').trim());
  }
  return listed;
}
