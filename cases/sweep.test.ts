// expect: a sweep over examples/repro/callee-sweep.c's sweep_callee (12 instruction boundaries, a checkpoint at each,
// one guest, one pass) matches the uninterrupted run at every boundary under the default policy, the walked process
// itself ends as the uninterrupted run (stepping is invisible), and the table names each boundary by address,
// symbol+offset and objdump's instruction. Negative control: regs=partial (callee-saved registers lost) fails at exactly
// boundaries 3-6, where rbx or r12 holds a value the function reads again, and the headline names boundary 3 and rbx.
// And a sweep through selfstep's own TF-stepped sequence, its SIGTRAP handler and its rt_sigreturn (30 boundaries, a
// checkpoint at each) leaves the program's traps its own: the walked process prints what it prints natively and every
// checkpoint matches. Negative controls: plain stepping (programSigtraps=ignore) — the walked process differs; and
// restorer=popf (POPF sets TF one instruction early, 2010) fails at exactly the boundaries whose image has TF set.
// rseq (examples/repro/rseq-sweep.c, 12 boundaries from rseq_sweep_cs): the walk's step off rseq_armed lets the kernel's
// rseq fixup clear rseq_cs, so the later boundaries are reached by fresh runs to a breakpoint, each compared with its own
// run continued from the stop (inside [start_ip, post_commit_ip) that run aborts once); every boundary matches under the
// default policy. Negative control: rseq-fixup=off fails at exactly the boundaries inside the section, 2-5.
// rep movsb (examples/repro/rep-sweep.c, 8 boundaries from rep_sweep, the rep instruction at 1-5 with RCX 5..1): every
// boundary matches. Negative control: omit=string-regs (RCX/RSI/RDI not restored) fails exactly where they are live, 0-6.
// A rep movsb interrupted by a signal (examples/repro/rep-signal-sweep.c, 8 boundaries from rep_interrupted, called by the
// SIGALRM handler only when the interrupted RIP is the rep): the handler's return and rt_sigreturn (0-2), then the rep
// again between iterations (3-7); every boundary matches. Negative control: omit=string-regs fails at exactly 3-7 — in
// the handler the copy's progress is in the signal frame, not in registers.
// Each negative control whose switch is the restore's is judged on its policy's walk: the same checkpoints, restored
// again under the control; plain stepping changes the walk itself and walks again.
import t from 'tap';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { noteRestore, restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { describePolicy } from '../harness/restore/policy.ts';
import { parseReproArgs, type ReproRequest } from '../harness/repro/options.ts';
import { prepareProgram } from '../harness/repro/prepare.ts';
import { Progress } from '../harness/repro/progress.ts';
import { sweepInGuestUnder } from '../harness/repro/sweep-command.ts';
import { formatSweepTable, makeSweepReport } from '../harness/repro/sweep-report.ts';
import { artifactsRoot, type RestoreWitness } from '../harness/report/verdicts.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { EFLAGS } from '../harness/x86/registers.ts';

const CASE = 'sweep';
const SCENARIO = 'sweep: 12 boundaries of sweep_callee (rbx live at 3-6, r12 at 4-5), a checkpoint at each';
const COUNT = 12;
const EXAMPLE = path.join(REPO_ROOT, 'examples', 'repro', 'callee-sweep.c');

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const progress = new Progress(`case ${CASE}`, (line) => t.comment(line));

  /**
   * One walk of a program, its checkpoints restored under each set of policy flags in turn (a policy and its negative
   * control judged on the same images: the checkpoint does not depend on the restore's policy); one result per set,
   * each with the restores' read-backs its row notes.
   */
  const sweepUnder = async (policyFlagSets: string[][], args?: string[], programSigtraps?: 'keep' | 'ignore') => {
    const requests = policyFlagSets.map(
      (policyFlags) =>
        parseReproArgs(args?.[0] === '--binary' ? 'cr' : 'repro', [
          ...(args ?? [EXAMPLE, '--sweep', 'sweep_callee', '--count', String(COUNT)]),
          ...policyFlags,
        ]) as ReproRequest,
    );
    const request = requests[0]!;
    const dir = path.join(artifactsRoot(), CASE, `${request.sweep!.symbol}${programSigtraps ?? ''}`);
    const prepared = await prepareProgram(request, path.join(dir, 'build'), progress);
    await mkdir(dir, { recursive: true });
    const witnesses = requests.map((): RestoreWitness[] => []);
    const restore: typeof restoreWitnessed = (agent, image, options, tag) =>
      restoreWitnessed(agent, image, options, tag, (w) => witnesses[requests.findIndex((r) => r.policy === options.policy)]!.push(w));
    const policies = requests.map((r) => r.policy);
    const { results, ...runs } = await sweepInGuestUnder(guest, request, prepared, dir, progress, policies, {
      restore,
      ...(programSigtraps ? { programSigtraps } : {}),
    });
    return Promise.all(
      requests.map(async (request, i) => {
        const report = await makeSweepReport({
          program: prepared.program,
          sweep: request.sweep!,
          hit: 1,
          policy: request.policy,
          reference: runs.reference,
          result: results[i]!,
        });
        return {
          request,
          prepared,
          runs: { ...runs, result: results[i]! },
          report,
          witnesses: witnesses[i]!,
          failing: report.rows.filter((r) => !r.pass).map((r) => r.boundary),
        };
      }),
    );
  };
  /** sweepUnder once, when a subtest first asks: the policy's row and its control's take their results from the same walk. */
  const walkOnce = (...args: Parameters<typeof sweepUnder>) => {
    let walk: ReturnType<typeof sweepUnder> | undefined;
    return async (t: { comment(...a: unknown[]): void }, i: number) => {
      const sweep = (await (walk ??= sweepUnder(...args)))[i]!;
      t.comment(formatSweepTable(sweep.report));
      // The restores of this row's policy, made ahead of it in the walk, are this row's read-backs.
      for (const w of sweep.witnesses) noteRestore(w);
      return sweep;
    };
  };
  const calleeSweeps = walkOnce([[], ['--regs', 'partial']]);

  await t.test('default policy: every boundary restores exactly', async (t) => {
    const { request, runs, report, failing } = await calleeSweeps(t, 0);
    t.equal(runs.perturbed, undefined, 'the traced run prints what the native run prints');
    t.equal(report.walked, COUNT, `${COUNT} boundaries walked`);
    t.ok(report.stepped.matchesReference, `the stepped original ends as the uninterrupted run (${report.stepped.status})`);
    t.same(
      report.rows.slice(0, 3).map((r) => [r.location, r.instruction]),
      [
        ['sweep_callee', 'push %rbx'],
        ['sweep_callee+0x1', 'push %r12'],
        ['sweep_callee+0x3', 'mov %rdi,%rbx'],
      ],
      'boundaries named by symbol+offset and objdump',
    );
    t.match(report.rows[10]?.location, /^main\+0x[0-9a-f]+$/, 'boundary 10 is back in main: the walk follows the return');
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(request.policy),
      control: false,
      expected: 'failing boundaries: none',
      observed,
      pass: observed === 'failing boundaries: none',
    });
  });

  await t.test('negative control regs=partial: exactly the boundaries where a callee-saved register is live fail', async (t) => {
    const { request, report, failing } = await calleeSweeps(t, 1);
    t.ok(report.stepped.matchesReference, 'the stepped original is unaffected by the policy');
    t.match(
      report.headline,
      /^first failing boundary 3 at 0x[0-9a-f]+ sweep_callee\+0x6 \(lea 0x7\(%rdi\),%r12\): output differs at line 1: .*; restored wrong: rbx /,
      'the headline names boundary 3 and rbx',
    );
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(request.policy),
      control: true,
      expected: 'failing boundaries: 3 4 5 6',
      observed,
      pass: observed === 'failing boundaries: 3 4 5 6',
    });
  });

  const SELFSTEP = "sweep: 30 boundaries from selfstep's self_seq through its SIGTRAP handler and rt_sigreturn, a checkpoint at each";
  const selfstepArgs = ['--binary', guest.image.binaries.selfstep!, '--sweep', 'self_seq', '--count', '30'];
  const selfstepSweeps = walkOnce([[], ['--restorer', 'popf']], selfstepArgs);

  await t.test('a program stepping itself keeps its own SIGTRAPs through the sweep', async (t) => {
    const { request, runs, report, failing } = await selfstepSweeps(t, 0);
    t.equal(runs.perturbed, undefined, 'the traced run prints what the native run prints');
    t.ok(
      report.stepped.matchesReference,
      `the walked process ends as the uninterrupted run (${report.stepped.status}${report.stepped.difference ? `: ${report.stepped.difference}` : ''})`,
    );
    t.ok(
      report.rows.some((r) => r.location.startsWith('selfstep_handler')),
      "the walk enters the program's SIGTRAP handler",
    );
    t.match(report.notes.join('\n'), /own SIGTRAP .* delivered to it/, 'its own trap was handed to it');
    t.match(report.notes.join('\n'), /reset the handler to SIG_DFL .* put back/, 'the handler reset by forced step traps was put back');
    t.match(report.notes.join('\n'), /rt_sigreturn .* restored the program's TF/, 'the TF its sigreturn restores stayed its own');
    const observed = `walked process ${report.stepped.matchesReference ? 'as uninterrupted' : 'differs'}; failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: SELFSTEP,
      policy: describePolicy(request.policy),
      control: false,
      expected: 'walked process as uninterrupted; failing boundaries: none',
      observed,
      pass: observed === 'walked process as uninterrupted; failing boundaries: none',
    });
  });

  await t.test("negative control: plain stepping takes the program's SIGTRAPs from it", async (t) => {
    // What it shows is the walked process, not a checkpoint: one, at the first boundary, keeps it short.
    const { request, report } = await walkOnce([[]], [...selfstepArgs, '--every', '30'], 'ignore')(t, 0);
    t.notOk(report.stepped.matchesReference, `the walked process differs: ${report.stepped.difference}`);
    const observed = `walked process ${report.stepped.matchesReference ? 'as uninterrupted' : 'differs'}`;
    recordRow(t, {
      case: CASE,
      scenario: SELFSTEP,
      policy: `${describePolicy(request.policy)} stepping=plain`,
      control: true,
      expected: 'walked process differs',
      observed,
      pass: observed === 'walked process differs',
    });
  });

  await t.test("negative control restorer=popf: exactly the boundaries where the program's TF is live fail", async (t) => {
    const { request, runs, report, failing } = await selfstepSweeps(t, 1);
    t.ok(report.stepped.matchesReference, 'the walked process is unaffected by the restorer');
    const tfLive = runs.result.verdicts.filter((v) => (v.imageRegs.eflags & EFLAGS.TF) !== 0n).map((v) => v.index);
    t.same(failing, tfLive, `the failing boundaries are those whose image has TF set (${tfLive.join(' ')})`);
    t.match(
      report.headline,
      /^first failing boundary 0 at 0x[0-9a-f]+ \S+ \(add \$0x1,%rax\): output differs at line 1: uninterrupted "trap 1 code=2 addr=\+4 rip=\+4", restored "trap 1 code=2 addr=\+0 rip=\+0"/,
      'the trap comes one instruction early',
    );
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: SELFSTEP,
      policy: describePolicy(request.policy),
      control: true,
      expected: 'failing boundaries: 0 26',
      observed,
      pass: observed === 'failing boundaries: 0 26',
    });
  });

  const RSEQ =
    "sweep: 12 boundaries of rseq-sweep.c's rseq_sweep_cs (critical section at 2-5), a checkpoint at each; after the step off rseq_armed each by a fresh run to a breakpoint";
  const rseqArgs = [path.join(REPO_ROOT, 'examples', 'repro', 'rseq-sweep.c'), '--sweep', 'rseq_sweep_cs', '--count', '12'];
  const rseqSweeps = walkOnce([[], ['--rseq-fixup', 'off']], rseqArgs);
  /** The boundaries whose address is inside [start_ip, post_commit_ip): what the kernel aborts when stopped there. */
  const insideSection = (
    prepared: { program: { elf: { symbols(): { name: string; value: bigint }[] } } },
    rows: { boundary: number; address: string }[],
  ): number[] => {
    const at = (name: string): bigint => prepared.program.elf.symbols().find((s) => s.name === name)!.value;
    const [start, post] = [at('rseq_sweep_start'), at('rseq_sweep_post_commit')];
    return rows.filter((r) => BigInt(r.address) >= start && BigInt(r.address) < post).map((r) => r.boundary);
  };

  await t.test("rseq: every boundary restores as a stop there continues, the section's abort included", async (t) => {
    const { request, prepared, runs, report, failing } = await rseqSweeps(t, 0);
    t.equal(runs.perturbed, undefined, 'the traced run prints what the native run prints');
    t.ok(report.stepped.matchesReference, `the walked process ends as the uninterrupted run (${report.stepped.status})`);
    t.same(
      report.rows.filter((r) => r.reached === 'step').map((r) => r.boundary),
      [0, 1],
      'the walk checkpoints up to rseq_armed, where rseq_cs is first set',
    );
    t.ok(report.rows[1]?.rseqArmed, 'rseq_cs is set at boundary 1 (rseq_armed)');
    t.match(report.notes.join('\n'), /in the walk rseq_cs was set at boundary 1: /, 'the walk saw its step disarm the section: rseq_cs 0 from boundary 2 on');
    const inside = insideSection(prepared, report.rows);
    t.same(inside, [2, 3, 4, 5], 'boundaries 2-5 are inside [start_ip, post_commit_ip)');
    t.same(
      report.rows.filter((r) => r.stopFelt !== undefined).map((r) => r.boundary),
      inside,
      'a stop alone is felt exactly inside the section: the continued run aborts',
    );
    t.match(
      report.rows[2]?.stopFelt,
      /"counter 3 aborts 0", continued from the stop "counter 3 aborts 1"/,
      'the kernel aborted the section stopped at start_ip',
    );
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: RSEQ,
      policy: describePolicy(request.policy),
      control: false,
      expected: 'failing boundaries: none',
      observed,
      pass: observed === 'failing boundaries: none',
    });
  });

  await t.test('negative control rseq-fixup=off: exactly the boundaries inside [start_ip, post_commit_ip) fail', async (t) => {
    const { request, prepared, report, failing } = await rseqSweeps(t, 1);
    t.same(failing, insideSection(prepared, report.rows), 'the failing boundaries are those inside the section');
    t.match(
      report.headline,
      /^first failing boundary 2 at 0x[0-9a-f]+ rseq_sweep_cs\+0x5 \(mov \(%rsi\),%rax\): output differs at line 1: continued from the stop "counter 3 aborts 1", restored "counter 3 aborts 0"/,
      'the restored run commits where the stop aborts',
    );
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: RSEQ,
      policy: describePolicy(request.policy),
      control: true,
      expected: 'failing boundaries: 2 3 4 5',
      observed,
      pass: observed === 'failing boundaries: 2 3 4 5',
    });
  });

  const REP = "sweep: 8 boundaries of rep-sweep.c's rep_sweep to its ret, the rep movsb at 1-5 (RCX 5..1, after each iteration), a checkpoint at each";
  const repArgs = [path.join(REPO_ROOT, 'examples', 'repro', 'rep-sweep.c'), '--sweep', 'rep_sweep', '--count', '8'];
  const repSweeps = walkOnce([[], ['--omit', 'string-regs']], repArgs);

  await t.test('rep movsb: a restore between iterations resumes the copy where it stood', async (t) => {
    const { request, runs, report, failing } = await repSweeps(t, 0);
    t.equal(runs.perturbed, undefined, 'the traced run prints what the native run prints');
    t.ok(report.stepped.matchesReference, `the walked process ends as the uninterrupted run (${report.stepped.status})`);
    const rep = runs.result.verdicts.filter((v) => report.rows[v.index]?.instruction.startsWith('rep movsb'));
    t.same(
      rep.map((v) => [v.index, v.imageRegs.rcx]),
      [
        [1, 5n],
        [2, 4n],
        [3, 3n],
        [4, 2n],
        [5, 1n],
      ],
      'the walk stands at the rep instruction after every iteration, RCX counting down',
    );
    t.equal(runs.reference.output, 'dst ..ABCDE... end +7\n', 'the uninterrupted run copies five bytes once');
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: REP,
      policy: describePolicy(request.policy),
      control: false,
      expected: 'failing boundaries: none',
      observed,
      pass: observed === 'failing boundaries: none',
    });
  });

  await t.test('negative control omit=string-regs: exactly the boundaries where RCX/RSI/RDI are live fail', async (t) => {
    const { request, report, failing } = await repSweeps(t, 1);
    t.ok(report.stepped.matchesReference, 'the walked process is unaffected by the policy');
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: REP,
      policy: describePolicy(request.policy),
      control: true,
      expected: 'failing boundaries: 0 1 2 3 4 5 6',
      observed,
      pass: observed === 'failing boundaries: 0 1 2 3 4 5 6',
    });
  });

  const REP_SIGNAL =
    "sweep: 8 boundaries from rep-signal-sweep.c's rep_interrupted: the SIGALRM handler's return, rt_sigreturn, then the interrupted rep movsb between iterations (3-7), a checkpoint at each";
  const repSignalArgs = [path.join(REPO_ROOT, 'examples', 'repro', 'rep-signal-sweep.c'), '--sweep', 'rep_interrupted', '--count', '8'];
  const repSignalSweeps = walkOnce([[], ['--omit', 'string-regs']], repSignalArgs);
  /** Boundaries standing at the rep instruction the alarm interrupted. */
  const atRep = (prepared: { program: { elf: { symbols(): { name: string; value: bigint }[] } } }, rows: { boundary: number; address: string }[]): number[] => {
    const rep = prepared.program.elf.symbols().find((s) => s.name === 'rep_signal_insn')!.value;
    return rows.filter((r) => BigInt(r.address) === rep).map((r) => r.boundary);
  };

  await t.test('rep movsb interrupted by a signal: from the handler through rt_sigreturn into the middle of the copy', async (t) => {
    const { request, prepared, runs, report, failing } = await repSignalSweeps(t, 0);
    t.equal(runs.perturbed, undefined, 'the traced run prints what the native run prints');
    t.ok(report.stepped.matchesReference, `the walked process ends as the uninterrupted run (${report.stepped.status})`);
    t.same(
      report.rows.slice(0, 3).map((r) => r.location),
      ['rep_interrupted', '__restore_rt', '__restore_rt+0x7'],
      'the handler returns through __restore_rt',
    );
    t.same(atRep(prepared, report.rows), [3, 4, 5, 6, 7], 'then the walk stands at the interrupted rep, once per iteration');
    const rcx = runs.result.verdicts.filter((v) => v.index >= 3).map((v) => v.imageRegs.rcx);
    t.ok(rcx[0]! > 5n && rcx.every((c, i) => i === 0 || c === rcx[i - 1]! - 1n), `RCX counts down from the interrupted count (${rcx.join(' ')})`);
    t.equal(runs.reference.output, 'copy of 524288 bytes: exact; interrupted inside the rep: yes\n', 'the alarm interrupted the copy and it finished exact');
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: REP_SIGNAL,
      policy: describePolicy(request.policy),
      control: false,
      expected: 'failing boundaries: none',
      observed,
      pass: observed === 'failing boundaries: none',
    });
  });

  await t.test('negative control omit=string-regs over the signal-interrupted rep: exactly the boundaries at the rep fail, none in the handler', async (t) => {
    const { request, prepared, report, failing } = await repSignalSweeps(t, 1);
    t.same(failing, atRep(prepared, report.rows), 'the failing boundaries are those at the rep instruction');
    const observed = `failing boundaries: ${failing.join(' ') || 'none'}`;
    recordRow(t, {
      case: CASE,
      scenario: REP_SIGNAL,
      policy: describePolicy(request.policy),
      control: true,
      expected: 'failing boundaries: 3 4 5 6 7',
      observed,
      pass: observed === 'failing boundaries: 3 4 5 6 7',
    });
  });
});
