// expect: the engine is a column of every report — the verdict table, the people summary and case lines,
// JSON, JUnit, KTAP, HTML, the kernel matrix and the engine side-by-side — rows without an engine read as
// crh, a known engine gap is its own outcome (GAP, with its reference) that fails nothing and is counted
// apart, and a failed assertion in a gap row's scope still makes it FAIL.
import t from 'tap';
import { XMLParser } from 'fast-xml-parser';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { verdictsExitCode } from '../harness/cli/exit-codes.ts';
import { caseLine, summary } from '../harness/report/console-reporter.ts';
import { engineMatrixRows, formatEngineSideBySide } from '../harness/report/engine-matrix.ts';
import { htmlReport } from '../harness/report/html.ts';
import { junitXml } from '../harness/report/junit.ts';
import { kernelMatrixRows } from '../harness/report/kernel-matrix.ts';
import { ktap } from '../harness/report/ktap.ts';
import { engineOf, formatVerdictTable, outcome, readVerdicts, witnessLines, type Verdict } from '../harness/report/verdicts.ts';
import { machineReport, mergeReports } from '../harness/report/write-reports.ts';
import { enginesRecorded, recordRow, withFailedAssertions } from '../harness/testing/verdict-rows.ts';
import { CRIU_GAPS, POLICY_NOT_FOR_CRIU } from '../harness/criu/known-gaps.ts';
import { adoptRunConfiguration } from '../harness/flags/run-configuration.ts';

const SCENARIO = 'hw breakpoint, checkpoint at hit 2 (RF=1)';
const base = { case: 'hwbreak-rf', scenario: SCENARIO, expected: '5 hits, 3 #DB after restore', control: false } as const;
/** A row from before engines: no engine field at all. */
const oldCrh: Verdict = { ...base, policy: 'rf=keep-and-preserve restorer=ptrace', observed: '5 hits, 3 #DB after restore', pass: true };
const crhControl: Verdict = { ...base, policy: 'rf=clear', control: true, expected: '6 hits', observed: '6 hits', pass: true, engine: 'crh' };
const criuGap: Verdict = {
  ...base,
  policy: 'criu defaults',
  engine: 'criu',
  observed: '2 hits, 0 #DB after restore; restored DR0 0x401136 → 0x10d40, DR7 0x1 → 0x0',
  pass: false,
  engineGap: CRIU_GAPS.debugRegisters,
};
const criuRearmed: Verdict = { ...base, policy: 'criu, breakpoint re-armed', engine: 'criu', observed: '5 hits, 3 #DB after restore', pass: true };
const criuFinding: Verdict = {
  ...base,
  policy: 'criu, breakpoint re-armed',
  engine: 'criu',
  observed: '6 hits, 4 #DB after restore',
  pass: false,
  registerDiff: 'rbx: dumped 0x1, cpu 0x2',
};
const criuSkip: Verdict = {
  ...base,
  policy: 'rf=clear',
  control: true,
  engine: 'criu',
  expected: '-',
  observed: '-',
  pass: false,
  skipped: POLICY_NOT_FOR_CRIU,
};
const rows = [oldCrh, crhControl, criuGap, criuRearmed, criuSkip];

t.test('outcome, engine and the gap', async (t) => {
  t.equal(engineOf(oldCrh), 'crh', 'a row without an engine is crh');
  t.equal(engineOf(criuGap), 'criu');
  t.equal(outcome(criuGap), 'GAP');
  t.equal(outcome(criuSkip), 'SKIP');
  t.equal(outcome(withFailedAssertions(criuGap, ['registers as dumped'])), 'FAIL', 'a failed assertion in its scope outweighs the gap');
  t.match(witnessLines(criuGap).join('\n'), /known engine gap: the task's own debug registers .* \(CRIU's x86 core image/);
  t.equal(verdictsExitCode(rows), 0, 'a known engine gap fails nothing');
  t.equal(verdictsExitCode([criuGap]), 1, 'gaps alone tested nothing that passed');
  t.equal(verdictsExitCode([...rows, criuFinding]), 1, 'a CRIU finding fails the run');
});

t.test('the verdict table has an engine column; a gap row says so with its reference', async (t) => {
  const table = formatVerdictTable(rows);
  const [header] = table.split('\n');
  t.match(header, /^case\s+scenario\s+engine\s+policy\s+expected/);
  t.match(table, /hwbreak-rf\s+hw breakpoint.*\s+crh\s+rf=keep-and-preserve restorer=ptrace/, 'the old row reads as crh');
  t.match(table, /criu\s+criu defaults\s+.*GAP: known engine gap: the task's own debug registers/);
  t.match(table, /criu\s+rf=clear \(control\).*SKIP: policy switches that describe the TS core do not apply to CRIU/);
});

t.test('people output: case line and summary count gaps apart and name the engine of a finding', async (t) => {
  t.match(caseLine('hwbreak-rf', rows, 0, 1000, false), /^✓ hwbreak-rf +5 rows, 2 controls, 1 engine gaps/);
  const text = summary({
    verdicts: [...rows, criuFinding],
    infraCases: [],
    failedCases: [],
    elapsedMs: 1000,
    artifactsRoot: '/a',
    htmlReport: '/a/report.html',
    context: [],
  });
  t.match(text, /✗ hwbreak-rf \[criu\]: hw breakpoint/, 'the finding names its engine');
  t.match(text, /rbx: dumped 0x1, cpu 0x2/, 'with its register diff');
  t.match(text, /artifacts \/a\/hwbreak-rf/, 'and its artifacts');
  t.match(text, /~ hwbreak-rf \[criu\]: .* under criu defaults\n +known engine gap: /, 'each gap listed with its reference');
  t.match(text, /^3 passed, 1 failed, 1 known engine gaps, 1 skipped \(engines: crh, criu\)$/m);
  const crhOnly = summary({ verdicts: [oldCrh], infraCases: [], failedCases: [], elapsedMs: 1000, artifactsRoot: '/a', htmlReport: '/a/r.html', context: [] });
  t.match(crhOnly, /^1 passed, 0 failed$/m, 'a crh-only run reads as before');
});

t.test('JSON: every row states its engine, old rows included; merged shards too', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-engine-json-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const jsonl = path.join(dir, 'verdicts.jsonl');
  await writeFile(jsonl, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const read = readVerdicts(jsonl);
  t.same(
    read.map((v) => v.engine),
    ['crh', 'crh', 'criu', 'criu', 'criu'],
  );
  const json = JSON.parse(machineReport('json', { verdicts: read, infrastructureFailures: [] })) as { verdicts: Verdict[] };
  t.same(
    json.verdicts.map((v) => [v.engine, v.policy]),
    read.map((v) => [v.engine, v.policy]),
  );
  t.same(json.verdicts[2]!.engineGap, CRIU_GAPS.debugRegisters, 'the gap and its reference are in the JSON');
  const shard = path.join(dir, 'shard.json');
  await writeFile(shard, JSON.stringify({ verdicts: [oldCrh], infrastructureFailures: [] }));
  t.same(
    (await mergeReports([shard])).verdicts.map((v) => v.engine),
    ['crh'],
    'an old shard report reads as crh',
  );
});

t.test('JUnit: engine in the test name and as a property; a gap is skipped with its reference, not a failure', async (t) => {
  const xml = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(junitXml([...rows, criuFinding]));
  const suite = xml.testsuites.testsuite;
  const cases = suite.testcase as Array<Record<string, any>>;
  t.equal(cases[0]!.name, `${SCENARIO} [rf=keep-and-preserve restorer=ptrace]`, 'a crh row is named as before');
  t.equal(cases[0]!.properties.property.value, 'crh');
  t.equal(cases[2]!.name, `${SCENARIO} [engine=criu criu defaults]`);
  t.equal(cases[2]!.properties.property.value, 'criu');
  t.equal(cases[2]!.skipped.type, 'known-engine-gap');
  t.match(cases[2]!.skipped.message, /^known engine gap: the task's own debug registers/);
  t.notOk(cases[2]!.failure, 'no failure element');
  t.ok(cases[5]!.failure, 'the finding is a failure');
  t.match(cases[5]!.failure['#text'], /register diff: rbx: dumped 0x1, cpu 0x2/);
  t.equal(suite.failures, '1');
  t.equal(suite.skipped, '2', 'the skip and the gap');
});

t.test('KTAP: a gap is ok with an XFAIL directive; criu rows name their engine', async (t) => {
  const text = ktap(rows);
  t.match(text, /^ {4}ok 1 hw breakpoint, checkpoint at hit 2 \(RF=1\) under rf=keep-and-preserve restorer=ptrace$/m);
  t.match(text, /^ {4}ok 3 .* under engine=criu criu defaults # XFAIL known engine gap: /m);
  t.match(text, /^ {4}ok 5 .* under engine=criu rf=clear \(negative control\) # SKIP policy switches/m);
  t.match(text, /^ok 1 hwbreak-rf$/m, 'the case is ok: a gap fails nothing');
});

t.test('HTML: engine · policy columns, a GAP badge with its reference, an engine column in the flat table', async (t) => {
  const html = htmlReport({ verdicts: rows.filter((v) => outcome(v) !== 'SKIP') });
  t.match(html, /<th scope="col">crh · rf=keep-and-preserve restorer=ptrace<\/th>/);
  t.match(html, /<th scope="col">criu · criu defaults<\/th>/);
  t.match(html, /<td class="cell gap" data-status="gap">/);
  t.match(html, /<span class="badge gap">GAP<\/span>/);
  t.match(html, /<dt>known engine gap<\/dt><dd>known engine gap: the task&#39;s own debug registers/);
  t.match(html, /<th scope="col">engine<\/th><th scope="col">policy<\/th>/);
  t.match(html, /, 1 known engine gap;/, 'counted apart in the headline');
  t.match(html, /class="outcome pass">ALL AS EXPECTED/, 'a gap is not a failure');
  const crhOnly = htmlReport({ verdicts: [oldCrh] });
  t.match(crhOnly, /<th scope="col">rf=keep-and-preserve restorer=ptrace<\/th>/, 'a crh-only run keeps its policy headers');
});

t.test('side by side: one column per engine, the reason under every cell that is not a pass', async (t) => {
  const matrix = engineMatrixRows(rows, ['crh', 'criu']);
  t.same(
    matrix.map((r) => [r.policy, ...r.cells]),
    [
      ['rf=keep-and-preserve restorer=ptrace', 'PASS', '-'],
      ['rf=clear (control)', 'PASS', 'SKIP'],
      ['criu defaults', '-', 'GAP'],
      ['criu, breakpoint re-armed', '-', 'PASS'],
    ],
  );
  const text = formatEngineSideBySide(rows, ['crh', 'criu']);
  t.match(text.split('\n')[0]!, /^case\s+scenario\s+policy\s+crh\s+criu$/);
  t.match(text, /criu GAP: hwbreak-rf \/ .* \/ criu defaults\n +known engine gap: the task's own debug registers .* \[1\] — observed 2 hits/);
  t.match(text, /^\[1\] CRIU's x86 core image/m, 'the reference, once, under the notes');
  t.match(text, /criu SKIP: hwbreak-rf \/ .* \/ rf=clear \(control\)\n +policy switches that describe the TS core do not apply to CRIU/);
  // The kernel matrix keeps the engines apart too.
  const kernels = kernelMatrixRows([{ label: 'a', kernel: 'a', verdicts: rows, infra: [] }]);
  t.same(
    kernels.map((r) => r.policy),
    ['rf=keep-and-preserve restorer=ptrace', 'rf=clear (control)', 'criu: criu defaults', 'criu: criu, breakpoint re-armed', 'criu: rf=clear (control)'],
  );
});

t.test('recordRow notes the engines a case process recorded (what guest-fixture checks for a SKIP row)', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-engine-rows-'));
  // This process's run configuration, as crh run's case processes have theirs: the rows go to dir.
  adoptRunConfiguration({ engines: ['crh', 'criu'], artifactsDir: dir, verdictsFile: path.join(dir, 'verdicts.jsonl') });
  t.teardown(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const teardowns: Array<() => unknown> = [];
  const scope = { count: 0, lists: { fail: [] }, teardown: (fn: () => unknown) => void teardowns.push(fn) };
  t.same([...enginesRecorded()], [], 'nothing recorded yet');
  recordRow(scope, oldCrh);
  t.same([...enginesRecorded()], ['crh'], 'a row without an engine is crh');
  recordRow(scope, criuRearmed);
  t.same([...enginesRecorded()].sort(), ['crh', 'criu']);
  for (const fn of teardowns) fn();
  t.same(
    readVerdicts(path.join(dir, 'verdicts.jsonl')).map((v) => v.engine),
    ['crh', 'criu'],
    "both rows written at the scope's end",
  );
});
