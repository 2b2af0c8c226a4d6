// expect: a sweep over examples/repro/callee-sweep.c's sweep_callee (12 instruction boundaries, a checkpoint at each,
// one guest, one pass) matches the uninterrupted run at every boundary under the default policy, the walked process
// itself ends as the uninterrupted run (stepping is invisible), and the table names each boundary by address,
// symbol+offset and objdump's instruction. Negative control: regs=partial (callee-saved registers lost) fails at exactly
// boundaries 3-6, where rbx or r12 holds a value the function reads again, and the headline names boundary 3 and rbx.
// And a sweep through selfstep's own TF-stepped sequence, its SIGTRAP handler and its rt_sigreturn (30 boundaries, a
// checkpoint every 3) leaves the program's traps its own: the walked process prints what it prints natively and every
// checkpoint matches. Negative control: plain stepping (programSigtraps=ignore) — the walked process differs.
import t from 'tap';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { describePolicy } from '../harness/restore/policy.ts';
import { parseReproArgs, type ReproRequest } from '../harness/repro/options.ts';
import { prepareProgram } from '../harness/repro/prepare.ts';
import { Progress } from '../harness/repro/progress.ts';
import { sweepInGuest } from '../harness/repro/sweep-command.ts';
import { formatSweepTable, makeSweepReport } from '../harness/repro/sweep-report.ts';
import { artifactsRoot } from '../harness/report/verdicts.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const CASE = 'sweep';
const SCENARIO = 'sweep: 12 boundaries of sweep_callee (rbx live at 3-6, r12 at 4-5), a checkpoint at each';
const COUNT = 12;
const EXAMPLE = path.join(REPO_ROOT, 'examples', 'repro', 'callee-sweep.c');

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const progress = new Progress(`case ${CASE}`, (line) => t.comment(line));

  const sweepWith = async (policyFlags: string[], args?: string[], programSigtraps?: 'keep' | 'ignore') => {
    const request = parseReproArgs(args ? 'cr' : 'repro', args ?? [EXAMPLE, '--sweep', 'sweep_callee', '--count', String(COUNT), ...policyFlags]) as ReproRequest;
    const dir = path.join(artifactsRoot(), CASE, `${args ? 'selfstep' : 'callee'}${policyFlags.join('')}${programSigtraps ?? ''}`);
    const prepared = await prepareProgram(request, path.join(dir, 'build'), progress);
    await mkdir(dir, { recursive: true });
    const runs = await sweepInGuest(guest, request, prepared, dir, progress, { restore: restoreWitnessed, ...(programSigtraps ? { programSigtraps } : {}) });
    const report = await makeSweepReport({ program: prepared.program, sweep: request.sweep!, hit: 1, policy: request.policy, reference: runs.reference, result: runs.result });
    t.comment(formatSweepTable(report));
    return { request, runs, report, failing: report.rows.filter((r) => !r.pass).map((r) => r.boundary) };
  };

  await t.test('default policy: every boundary restores exactly', async (t) => {
    const { request, runs, report, failing } = await sweepWith([]);
    t.equal(runs.perturbed, undefined, 'the traced run prints what the native run prints');
    t.equal(report.walked, COUNT, `${COUNT} boundaries walked`);
    t.ok(report.stepped.matchesReference, `the stepped original ends as the uninterrupted run (${report.stepped.status})`);
    t.same(report.rows.slice(0, 3).map((r) => [r.location, r.instruction]), [['sweep_callee', 'push %rbx'], ['sweep_callee+0x1', 'push %r12'], ['sweep_callee+0x3', 'mov %rdi,%rbx']], 'boundaries named by symbol+offset and objdump');
    t.match(report.rows[10]?.location, /^main\+0x[0-9a-f]+$/, 'boundary 10 is back in main: the walk follows the return');
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, { case: CASE, scenario: SCENARIO, policy: describePolicy(request.policy), control: false, expected: 'failing boundaries: none', observed, pass: observed === 'failing boundaries: none' });
  });

  await t.test('negative control regs=partial: exactly the boundaries where a callee-saved register is live fail', async (t) => {
    const { request, report, failing } = await sweepWith(['--regs', 'partial']);
    t.ok(report.stepped.matchesReference, 'the stepped original is unaffected by the policy');
    t.match(report.headline, /^first failing boundary 3 at 0x[0-9a-f]+ sweep_callee\+0x6 \(lea 0x7\(%rdi\),%r12\): output differs at line 1: .*; restored wrong: rbx /, 'the headline names boundary 3 and rbx');
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, { case: CASE, scenario: SCENARIO, policy: describePolicy(request.policy), control: true, expected: 'failing boundaries: 3 4 5 6', observed, pass: observed === 'failing boundaries: 3 4 5 6' });
  });

  const SELFSTEP = 'sweep: 30 boundaries from selfstep\'s self_seq through its SIGTRAP handler and rt_sigreturn, a checkpoint every 3';
  const selfstepArgs = ['--binary', guest.image.binaries.selfstep!, '--sweep', 'self_seq', '--count', '30', '--every', '3'];

  await t.test('a program stepping itself keeps its own SIGTRAPs through the sweep', async (t) => {
    const { request, runs, report, failing } = await sweepWith([], selfstepArgs);
    t.equal(runs.perturbed, undefined, 'the traced run prints what the native run prints');
    t.ok(report.stepped.matchesReference, `the walked process ends as the uninterrupted run (${report.stepped.status}${report.stepped.difference ? `: ${report.stepped.difference}` : ''})`);
    t.ok(report.rows.some((r) => r.location.startsWith('selfstep_handler')), 'the walk enters the program\'s SIGTRAP handler');
    t.match(report.notes.join('\n'), /own SIGTRAP .* delivered to it/, 'its own trap was handed to it');
    t.match(report.notes.join('\n'), /reset the handler to SIG_DFL .* put back/, 'the handler reset by forced step traps was put back');
    t.match(report.notes.join('\n'), /rt_sigreturn .* restored the program's TF/, 'the TF its sigreturn restores stayed its own');
    const observed = `walked process ${report.stepped.matchesReference ? 'as uninterrupted' : 'differs'}; failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, { case: CASE, scenario: SELFSTEP, policy: describePolicy(request.policy), control: false, expected: 'walked process as uninterrupted; failing boundaries: none', observed, pass: observed === 'walked process as uninterrupted; failing boundaries: none' });
  });

  await t.test('negative control: plain stepping takes the program\'s SIGTRAPs from it', async (t) => {
    const { request, report } = await sweepWith([], selfstepArgs, 'ignore');
    t.notOk(report.stepped.matchesReference, `the walked process differs: ${report.stepped.difference}`);
    const observed = `walked process ${report.stepped.matchesReference ? 'as uninterrupted' : 'differs'}`;
    recordRow(t, { case: CASE, scenario: SELFSTEP, policy: `${describePolicy(request.policy)} stepping=plain`, control: true, expected: 'walked process differs', observed, pass: observed === 'walked process differs' });
  });
});
