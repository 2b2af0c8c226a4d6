// expect: --sweep parses into a symbol checkpoint with a bounded count and spacing (every contradiction a usage error naming
// the flags), the switches round-trip through requestFlags, the rerun record carries the sweep bounded (over-large or
// stray sweeps rejected by field), a boundary is named by symbol+offset and by objdump's instruction on a real host
// binary, and the report's headline names the first failing boundary and the register that changed since the last match.
import { caught } from './support/caught.ts';
import t from 'tap';
import { execa } from 'execa';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseReproArgs, requestFlags, type ReproRequest } from '../harness/repro/options.ts';
import { sweepBoundaries, SWEEP_MAX_COUNT } from '../harness/repro/sweep-options.ts';
import { parseRerunRecord, rerunRecord } from '../harness/repro/rerun-record.ts';
import { BundleRejectedError, UsageError } from '../harness/repro/usage-error.ts';
import { locate, makeSweepReport, objdumpInstruction, objdumpInstructions, formatSweepTable } from '../harness/repro/sweep-report.ts';
import { sweepHtml } from '../harness/repro/sweep-html.ts';
import { loadProgram } from '../harness/repro/program.ts';
import type { BoundaryVerdict, SweepResult } from '../harness/repro/sweep.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { USER_REGS_FIELDS, type UserRegs } from '../harness/x86/registers.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

t.test('--sweep parses into a symbol checkpoint with bounds', async (t) => {
  const r = parseReproArgs('repro', ['p.c', '--sweep', 'f', '--count', '12', '--every', '3']) as ReproRequest;
  t.same(r.checkpoint, { kind: 'symbol', symbol: 'f', hit: 1 });
  t.same(r.sweep, { symbol: 'f', count: 12, every: 3 });
  t.same(sweepBoundaries(r.sweep!), [0, 3, 6, 9]);
  const d = parseReproArgs('cr', ['--binary', 'b', '--sweep', '0x401000', '--hit', '2']) as ReproRequest;
  t.same(
    [d.sweep, d.checkpoint],
    [
      { symbol: '0x401000', count: 40, every: 1 },
      { kind: 'symbol', symbol: '0x401000', hit: 2 },
    ],
    'defaults: 40 boundaries, every one',
  );
  const again = parseReproArgs('repro', ['p.c', ...requestFlags(r)]) as ReproRequest;
  t.same([again.sweep, again.checkpoint], [r.sweep, r.checkpoint], 'requestFlags re-creates the sweep');
  for (const [args, message] of [
    [['--sweep', 'f', '--checkpoint-at', 'g'], /--sweep takes its checkpoints itself.*--checkpoint-at/],
    [['--sweep', 'f', '--when-ready'], /drop --when-ready/],
    [['--count', '3', '--checkpoint-at', 'g'], /--count goes with --sweep/],
    [['--sweep', 'f', '--count', String(SWEEP_MAX_COUNT + 1)], /--count: 10001 is more than 10000/],
    [['--sweep', 'f', '--count', '4', '--every', '5'], /--every: 5 is more than 4 \(--count\)/],
    [['--sweep', 'f', '--count', '0'], /not a positive whole number/],
    [['--sweep', 'f', '--count', '1001'], /takes 1001 checkpoints, more than 1000: give --every 2 or more/],
    [['--sweep', 'a b'], /neither a symbol name nor a 0x address/],
  ] as const) {
    const error = caught(() => parseReproArgs('repro', ['p.c', ...args]));
    t.ok(error instanceof UsageError, `${args.join(' ')}: a usage error`);
    t.match(error?.message, message);
  }
});

t.test('the rerun record carries the sweep, bounded', async (t) => {
  const request = parseReproArgs('repro', ['/x/p.c', '--sweep', 'f', '--count', '12', '--every', '3']) as ReproRequest;
  const record = rerunRecord(request, { source: 'source/p.c', binary: 'binary/p', files: [] });
  t.same(record.sweep, { count: 12, every: 3 });
  t.same(parseRerunRecord(JSON.parse(JSON.stringify(record)), 'b.tar'), record, 'round-trips');
  for (const [sweep, field] of [
    [{ count: SWEEP_MAX_COUNT + 1, every: 1 }, /rerun\.sweep\.count/],
    [{ count: 4, every: 5 }, /rerun\.sweep\.every/],
    [{ count: 4, every: 1, run: 'rm -rf /' }, /rerun\.sweep\.run/],
  ] as const) {
    const error = caught(() => parseRerunRecord({ ...record, sweep }, 'b.tar'));
    t.ok(error instanceof BundleRejectedError, `${JSON.stringify(sweep)} rejected`);
    t.match(error?.message, field);
  }
  const after = caught(() => parseRerunRecord({ ...record, checkpoint: { kind: 'after', ms: 5 } }, 'b.tar'));
  t.match(after?.message, /goes with a "symbol" checkpoint only/);
});

t.test('boundaries are named by symbol+offset and by objdump on the host binary', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-sweep-units-'));
  const binary = path.join(dir, 'callee');
  await execa('gcc', ['-static', '-O2', '-o', binary, path.join(REPO_ROOT, 'examples', 'repro', 'callee-sweep.c')]);
  const program = await loadProgram(binary);
  const entry = program.elf.symbols().find((s) => s.name === 'sweep_callee')!.value;
  t.equal(await objdumpInstruction(binary, entry), 'push %rbx');
  t.equal(await objdumpInstruction(binary, entry + 6n), 'lea 0x7(%rdi),%r12');
  // One objdump per window of nearby addresses names each as objdump names it alone; far ones (main's entry, libc's
  // memcpy) get windows of their own; an address inside an instruction (entry+2, in mov %rdi,%rbx) is not listed by the
  // window and is asked alone, as objdumpInstruction would answer it.
  const at = (name: string) => program.elf.symbols().find((s) => s.name === name)!.value;
  const addresses = [entry, entry + 1n, entry + 2n, entry + 3n, entry + 6n, at('main'), at('memcpy'), entry];
  const named = await objdumpInstructions(binary, addresses);
  t.equal(named.size, 7, 'each address once');
  for (const a of addresses) t.equal(named.get(a), await objdumpInstruction(binary, a), `${a.toString(16)} as objdump names it alone`);
  t.equal(named.get(entry + 2n), await objdumpInstruction(binary, entry + 2n), 'inside an instruction: as alone');
  t.same(await objdumpInstructions(binary, []), new Map(), 'no addresses, no objdump');
  const symbols = program.elf.symbols().map((s) => ({ name: s.name, value: s.value, size: s.size }));
  t.equal(
    locate(
      symbols.filter((s) => s.name === 'sweep_callee' || s.name === 'main'),
      entry + 6n,
    ),
    'sweep_callee+0x6',
  );
  t.equal(locate([], 0x1234n), '0x1234', 'no symbol: the address');

  const regs = (over: Partial<UserRegs>): UserRegs => ({ ...(Object.fromEntries(USER_REGS_FIELDS.map((n) => [n, 0n])) as unknown as UserRegs), ...over });
  const verdict = (index: number, pass: boolean, image: Partial<UserRegs>, restored: Partial<UserRegs>): BoundaryVerdict => ({
    index,
    rip: entry + BigInt([0, 1, 3, 6][index]!),
    pass,
    reached: 'step',
    against: { outcome: 'exited', code: 0, output: 'result 105\n', hits: 0 },
    stopFelt: [],
    imageRegs: regs(image),
    restoredRegs: regs(restored),
    restoreDifferences: [],
    run: { outcome: 'exited', code: 0, output: pass ? 'result 105\n' : 'result 0\n', hits: 0 },
    mismatches: pass ? [] : [{ what: 'output', line: 1, reference: '"result 105"', restored: '"result 0"' }],
    checkpointMs: 10,
    restoreRunMs: 20,
  });
  // r12 differs at every boundary (the caller's value lost), rbx only once it holds x: rbx is the newly differing register at 3.
  const result: SweepResult = {
    pid: 1,
    boundaries: [0, 1, 2, 3].map((index) => ({ index, rip: entry })),
    notes: [],
    walkMs: 100,
    freshRunsMs: 0,
    freshRuns: 0,
    verdicts: [
      verdict(0, true, { r12: 5n }, {}),
      verdict(1, true, { r12: 5n }, {}),
      verdict(2, true, { r12: 5n }, {}),
      verdict(3, false, { r12: 5n, rbx: 7n }, {}),
    ],
    stepped: { outcome: 'exited', code: 0, output: 'result 105\n', hits: 0 },
    steppedMismatches: [],
  };
  const report = await makeSweepReport({
    program,
    sweep: { symbol: 'sweep_callee', count: 4, every: 1 },
    hit: 1,
    policy: DEFAULT_POLICY,
    reference: { outcome: 'exited', code: 0, output: 'result 105\n', hits: 0 },
    result,
  });
  t.equal(report.pass, false);
  t.match(
    report.headline,
    /^first failing boundary 3 at 0x[0-9a-f]+ sweep_callee\+0x6 \(lea 0x7\(%rdi\),%r12\): output differs at line 1: uninterrupted "result 105", restored "result 0"; restored wrong: rbx — 1 of 4 boundaries fail \(3\)$/,
  );
  t.same(report.rows[3]?.registersDiffering.sort(), ['r12', 'rbx']);
  t.match(formatSweepTable(report), /^3\s+0x[0-9a-f]+\s+sweep_callee\+0x6\s+lea 0x7\(%rdi\),%r12\s+step\s+DIFFERS output differs/m);

  // The HTML table: one row per boundary, the failing one marked, and the program's text escaped.
  const html = sweepHtml({ ...report, notes: ['<script>alert(1)</script>'] });
  t.match(html, /<meta http-equiv="Content-Security-Policy" content="default-src 'none';/, 'scripts forbidden');
  t.equal(html.match(/<tr class="(pass|fail)">/g)?.length, 4, 'a row per checkpointed boundary');
  t.match(
    html,
    /<tr class="fail"><td>3<\/td>.*lea 0x7\(%rdi\),%r12.*DIFFERS.*output differs at line 1: uninterrupted &quot;result 105&quot;.*registers differing: <code>r12 rbx<\/code>/,
    'the failing boundary with its difference and registers',
  );
  t.notMatch(html, /<script>/, 'notes escaped');
  t.match(html, /&lt;script&gt;alert\(1\)&lt;\/script&gt;/);

  // A boundary reached by breakpoint is compared with its own run continued from the stop, and says what the stop alone did.
  const uninterrupted = { outcome: 'exited' as const, code: 0, output: 'counter 3 aborts 0\n', hits: 0 };
  const continued = { outcome: 'exited' as const, code: 0, output: 'counter 3 aborts 1\n', hits: 0 };
  const byBreakpoint = (index: number, pass: boolean): BoundaryVerdict => ({
    index,
    rip: entry + BigInt(index),
    pass,
    reached: 'breakpoint',
    rseqArmed: true,
    against: continued,
    stopFelt: [{ what: 'output', line: 1, reference: '"counter 3 aborts 0"', restored: '"counter 3 aborts 1"' }],
    imageRegs: regs({}),
    restoredRegs: regs({}),
    restoreDifferences: [],
    run: pass ? continued : uninterrupted,
    mismatches: pass ? [] : [{ what: 'output', line: 1, reference: '"counter 3 aborts 1"', restored: '"counter 3 aborts 0"' }],
    checkpointMs: 10,
    restoreRunMs: 20,
  });
  const rseqResult: SweepResult = {
    pid: 1,
    boundaries: [0, 1].map((index) => ({ index, rip: entry + BigInt(index) })),
    notes: [],
    walkMs: 100,
    freshRunsMs: 900,
    freshRuns: 2,
    verdicts: [byBreakpoint(0, true), byBreakpoint(1, false)],
    stepped: uninterrupted,
    steppedMismatches: [],
  };
  const rseqReport = await makeSweepReport({
    program,
    sweep: { symbol: 'sweep_callee', count: 2, every: 1 },
    hit: 1,
    policy: DEFAULT_POLICY,
    reference: uninterrupted,
    result: rseqResult,
    disassemble: async () => 'nop',
  });
  t.same(
    rseqReport.rows.map((r) => [r.reached, r.rseqArmed, r.pass]),
    [
      ['breakpoint', true, true],
      ['breakpoint', true, false],
    ],
  );
  t.equal(
    rseqReport.rows[0]?.stopFelt,
    'output differs at line 1: uninterrupted "counter 3 aborts 0", continued from the stop "counter 3 aborts 1"',
    'the stop alone, against the uninterrupted run',
  );
  t.equal(
    rseqReport.rows[1]?.firstDifference,
    'output differs at line 1: continued from the stop "counter 3 aborts 1", restored "counter 3 aborts 0"',
    'the restored run, against the continued one',
  );
  t.match(formatSweepTable(rseqReport), /; 2 fresh runs to a breakpoint 900 ms\n/);
  t.match(formatSweepTable(rseqReport), /^1\s+0x[0-9a-f]+\s+sweep_callee\+0x1\s+nop\s+break rseq DIFFERS output differs .*; the stop alone: /m);
});
