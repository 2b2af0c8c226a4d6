// expect: the verdict rows become KTAP version 1 — a test per case file, a subtest per row, SKIP directives,
// a failing row's cause as diagnostics, the kernel identity first — that a line-by-line KTAP reader accepts.
import t from 'tap';
import { ktap } from '../harness/report/ktap.ts';
import type { Verdict } from '../harness/report/verdicts.ts';

const row = (over: Partial<Verdict>): Verdict => ({
  case: 'hwbreak-rf',
  scenario: 'one hit per call',
  policy: 'rf=keep',
  expected: '5 hits',
  observed: '5 hits',
  pass: true,
  control: false,
  ...over,
});

const rows: Verdict[] = [
  row({}),
  row({ policy: 'rf=clear', control: true, expected: 'differs from: 5 hits', observed: '6 hits' }),
  row({
    scenario: 'ptrace restorer #2',
    observed: '6 hits',
    pass: false,
    registerDiff: 'eflags: asked 0x10202, kernel has 0x202',
    restores: [{ tag: 'ptrace-rf', differences: [{ what: 'eflags', requested: '0x10202', accepted: '0x202' }] }],
  }),
  row({ case: 'rseq', scenario: 'abort', pass: false, skipped: 'CONFIG_RSEQ is not set' }),
];

t.test('structure', async (t) => {
  const text = ktap(rows, { kernel: '6.1.0-50-cloud-amd64', 'kernel sha256': 'ab12' });
  const lines = text.trimEnd().split('\n');
  t.equal(lines[0], 'KTAP version 1', 'version line first');
  t.same(lines.slice(1, 3), ['# kernel: 6.1.0-50-cloud-amd64', '# kernel sha256: ab12'], 'identity as diagnostics');
  t.equal(lines[3], '1..2', 'plan: two case files');
  t.ok(lines.includes('    1..3'), 'hwbreak-rf has three rows');
  t.ok(lines.includes('    not ok 3 ptrace restorer no.2 under rf=keep'), "a failing row; '#' kept out of the description");
  t.ok(lines.includes('    # register diff: eflags: asked 0x10202, kernel has 0x202'), 'its register diff as a diagnostic');
  t.ok(lines.includes('    # restore ptrace-rf: eflags asked 0x10202, the kernel has 0x202'), "the kernel's read-back as a diagnostic");
  t.ok(lines.includes('    ok 2 one hit per call under rf=clear (negative control)'), 'a control that showed its bug is ok');
  t.ok(lines.includes('not ok 1 hwbreak-rf'), 'a case with a failing row fails');
  t.ok(lines.includes('    ok 1 abort under rf=keep # SKIP CONFIG_RSEQ is not set'), 'a skipped row carries the SKIP directive');
  t.ok(lines.includes('ok 2 rseq # SKIP every row skipped'), 'an all-skipped case is a skip');
});

t.test('every result line is numbered in order within its plan', async (t) => {
  const text = ktap(rows);
  const byIndent = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^( *)(?:not )?ok (\d+) /.exec(line);
    if (!m) continue;
    const indent = m[1]!;
    const next = (byIndent.get(indent) ?? 0) + 1;
    t.equal(Number(m[2]), next, `"${line.trim()}" is number ${next} at its level`);
    byIndent.set(indent, next);
    if (indent === '') byIndent.delete('    ');
  }
});
