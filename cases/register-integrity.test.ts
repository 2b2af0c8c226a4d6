// expect: every general-purpose register, ymm0-15, mxcsr, x87, fs_base and EFLAGS.DF survive a checkpoint
// taken with distinct patterns in all of them and DF set (ptrace restorer, regs=full) — as the workload
// checks itself and as the CPU shows through the gdbstub oracle, under every restorer; the fault injection regs=partial
// (the 2015 entry-code bug: callee-saved registers not restored) is caught naming exactly
// rbx rbp r12 r13 r14 r15. With --engine criu the same stop is handed to CRIU and must come back with
// every register as dumped (the workload's own check and the oracle); regs=partial does not apply to CRIU.
import t, { type Test } from 'tap';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { CALLEE_SAVED, RESTORERS, type RegsPolicy, type Restorer } from '../harness/restore/policy.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, type Restored, type Workload } from '../harness/testing/scenario.ts';
import { EFLAGS, hex, USER_REGS_FIELDS } from '../harness/x86/registers.ts';
import { policyRowsNotForCriu, runCriuControl, runCriuScenario, runsEngine, type CriuScenario } from '../harness/testing/criu-engine.ts';

const CASE = 'register-integrity';
const SCENARIO = 'patterns in every register, checkpoint at regcheck_checkpoint';
/** The GPRs regcheck fills with patterns (all but rsp). */
const PATTERNED = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const;

const mismatches = (output: string): string[] | undefined => {
  if (/^regcheck ok/m.test(output)) return [];
  const m = /^regcheck mismatch:(.*)$/m.exec(output);
  return m ? m[1]!.trim().split(/\s+/).sort() : undefined;
};

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent, symbols } = guest;
  const binary = guest.image.guestPaths.regcheck!;
  const workload: Workload = { binary, argv: [binary], breakAt: symbols.resolve('regcheck:regcheck_checkpoint') };
  const resumed = symbols.resolve('regcheck:regcheck_resumed');
  t.comment(`profile: guest CPU flags ${guest.profile.cpuFlags.join(' ')}; XCR0 ${guest.profile.xcr0}`);

  const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv: [binary], envp: [], stdoutPath: '/tmp/regcheck-reference.out', noAslr: true });
  const reference = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  const referenceOutput = await readOutput(guest, '/tmp/regcheck-reference.out');
  t.equal(reference.code, 0, `uninterrupted run: ${referenceOutput.trim()}`);
  // The reference is a traced run: it must be what the program does with no tracer at all.
  const native = await nativeReference(guest, workload);
  t.equal(`${endedAs(reference)}\n${referenceOutput}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');
  t.same(mismatches(referenceOutput), [], 'the workload finds every register intact without a checkpoint');

  const run = async (t: Test, regs: RegsPolicy, restorer: Restorer): Promise<Restored> => {
    const tag = `${restorer}-regs-${regs}`;
    const checkpointed = await checkpointAtHit(guest, workload, 1, tag);
    t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at regcheck_checkpoint');
    return restoreAndFinish(guest, checkpointed.file, { rf: 'keep-and-preserve', regs, restorer }, tag, { firstExecutionAt: resumed });
  };
  /** GPRs whose value in the CPU after resuming differs from the image. */
  const cpuDiffers = (r: Restored): string[] => PATTERNED.filter((name) => r.observation.first?.get(name) !== r.image.regs[name]).sort();

  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
  for (const restorer of RESTORERS) {
    await t.test(`regs=full, restorer=${restorer}: nothing lost, at the workload and at the CPU`, crhOnly, async (t) => {
      const r = await run(t, 'full', restorer);
      t.not(r.image.regs.eflags & EFLAGS.DF, 0n, `the image holds DF=1 (eflags ${hex(r.image.regs.eflags)}): the restore must set the direction flag`);
      t.same(r.differences, [], 'the kernel accepted every register as requested');
      t.ok(r.observation.first, 'oracle: the CPU reached regcheck_resumed');
      t.same(cpuDiffers(r), [], 'oracle: every patterned GPR in the CPU equals the image');
      for (const name of USER_REGS_FIELDS.filter((n) => n === 'fs_base' || n === 'rsp')) {
        t.equal(r.observation.first?.get(name), r.image.regs[name], `oracle: ${name} = ${hex(r.image.regs[name])}`);
      }
      t.equal(r.run.outcome, 'exited');
      t.equal(r.run.code, 0, `restored run: ${r.output.trim()}`);
      t.same(mismatches(r.output), [], 'the workload finds every register intact');
      recordRow(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: `restorer=${restorer} regs=full`,
        control: false,
        expected: 'regcheck ok; CPU GPRs = image',
        observed: `${r.output.trim()}; CPU differs in [${cpuDiffers(r).join(' ')}]`,
        pass: r.run.code === 0 && mismatches(r.output)?.length === 0 && cpuDiffers(r).length === 0,
      });
    });
  }

  await t.test('negative control regs=partial (the 2015 entry-code bug): caught, naming exactly the callee-saved registers', crhOnly, async (t) => {
    const r = await run(t, 'partial', 'ptrace');
    const expected = [...CALLEE_SAVED].sort();
    t.same(mismatches(r.output), expected, `the workload names exactly ${expected.join(' ')}: ${r.output.trim()}`);
    t.equal(r.run.code, 1, 'and exits 1');
    t.same(cpuDiffers(r), expected, 'oracle: exactly those differ from the image in the CPU');
    recordRow(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: 'restorer=ptrace regs=partial',
      control: true,
      expected: `mismatch: ${expected.join(' ')}`,
      observed: r.output.trim(),
      pass: JSON.stringify(mismatches(r.output)) === JSON.stringify(expected) && JSON.stringify(cpuDiffers(r)) === JSON.stringify(expected),
    });
  });

  if (!runsEngine('criu')) return;
  const criuScenario: CriuScenario = {
    case: CASE,
    scenario: SCENARIO,
    workload,
    hit: 1,
    watch: { firstExecutionAt: resumed },
    expected: 'regcheck ok; CPU GPRs = dumped',
    judge: (a) => {
      const checked = [...PATTERNED, 'rsp', 'fs_base'] as const;
      const diff = checked
        .filter((name) => a.observation.first?.get(name) !== a.regsAtDump[name])
        .map(
          (name) =>
            `${name}: dumped ${hex(a.regsAtDump[name])}, cpu ${a.observation.first?.get(name) === undefined ? '?' : hex(a.observation.first.get(name)!)}`,
        );
      const ok = a.run.outcome === 'exited' && a.run.code === 0 && mismatches(a.output)?.length === 0;
      return {
        observed: `${a.output.trim() || `${a.run.outcome} ${a.run.code}`}; CPU differs in ${diff.length} register(s)`,
        exact: ok && diff.length === 0,
        registerDiff: diff,
      };
    },
    control: {
      policy: 'criu, callee-saved registers zeroed after the restore',
      tamper: (regs) => ({ ...regs, ...Object.fromEntries(CALLEE_SAVED.map((r) => [r, 0n])) }),
      expected: `mismatch: ${[...CALLEE_SAVED].sort().join(' ')}, at the workload and at the CPU`,
      showedIt: (a, j) => {
        const zeroed = JSON.stringify([...CALLEE_SAVED].sort());
        return JSON.stringify(mismatches(a.output)) === zeroed && JSON.stringify((j.registerDiff ?? []).map((l) => l.split(':')[0]).sort()) === zeroed;
      },
    },
  };
  await t.test('engine criu: CRIU restores every register, at the workload and at the CPU', async (t) => {
    await runCriuScenario(t, guest, criuScenario, 'criu');
  });
  await t.test("engine criu, negative control: callee-saved registers zeroed after CRIU's restore are caught by name", async (t) => {
    await runCriuControl(t, guest, criuScenario, 'criu-zeroed');
  });
  for (const row of policyRowsNotForCriu(CASE, SCENARIO, ['restorer=ptrace regs=partial'])) {
    await t.test(`engine criu: ${row.policy} ${row.skipped}`, async (t) => {
      t.pass(row.skipped);
      recordRow(t, row);
    });
  }
});
