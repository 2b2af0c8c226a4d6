// expect: a program that single-steps itself (TF set with popf) under its own SIGTRAP handler and then executes an
// int3 prints the same trap list (count, si_code, si_addr, saved rip) natively — no tracer, no breakpoint (crh-native
// over SSH exec) — as under the agent, with nothing armed and with our execute breakpoint on self_mid (inside the
// stepped sequence) or on selfstep_handler (where SIGTRAP is blocked: the hit's forced SIGTRAP resets the handler to
// SIG_DFL, which the agent undoes), or a write watchpoint on self_cell, which the stepped self_store writes (one #DB
// for our hit and the program's step: DR6 B0 and BS — the hit counted, the program's trap delivered); checkpointed at
// that hit (self_mid hit 1, selfstep_handler hit 3, the watchpoint's hit 1) and restored, it finishes with exactly the
// native output. Negative controls: RUN's legacy flag (the agent before issue 19: every hit's SIGTRAP suppressed, the
// reset left alone) — with the breakpoint on the handler the program is killed by its next step trap, with no output;
// with the watchpoint it loses the step trap that came with the hit (traps=11, natively 12).
import t from 'tap';
import { recordOutcome, recordVerdict } from '../harness/report/verdicts.ts';
import { DEFAULT_POLICY, describePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, runUninterrupted, spawnArmed, type Workload } from '../harness/testing/scenario.ts';
import { dr7WriteWatch } from '../harness/agent/breakpoint-spawn.ts';
import { hex } from '../harness/x86/registers.ts';

const CASE = 'self-step';
const DR6_BS = 0x4000n;
/**
 * Measured on QEMU 7.2 under TCG (guest 6.1): a data watchpoint that hits on an instruction the program runs with TF
 * set leaves the guest kernel looping in its #DB handler (the vCPU at pv_native_set_debugreg on the #DB stack, the
 * guest frozen) — with the legacy agent as with this one, so it is the platform's, not the agent's. On the host's
 * kernel (test/agent-invisible-breakpoints.test.ts) the same hit is one #DB with DR6 B0 and BS.
 */
const TCG_WATCH_WITH_TF =
  'QEMU TCG freezes the guest in its #DB handler when a data watchpoint hits an instruction run with TF set (measured on QEMU 7.2, also with the legacy agent); covered on the host kernel by test/agent-invisible-breakpoints.test.ts';

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.selfstep!;
  const plain: Workload = { binary, argv: [binary] };
  const native = await nativeReference(guest, plain);
  const expected = `${endedAs(native)}; ${native.output.trim().split('\n').at(-1)}`;
  const summary = (ended: string, output: string): string => `${ended}; ${output.trim().split('\n').at(-1) ?? '(no output)'}`;
  t.comment(`native (pid ${native.pid}): ${endedAs(native)}\n${native.output}`);
  t.equal(endedAs(native), 'exited 0', 'natively the program exits 0');
  t.match(native.output, /^trap 1 code=2 addr=\+4 rip=\+4$/m, 'natively: TRAP_TRACE traps at each instruction after the popf');
  t.match(native.output, /^int3 code=128 rip=\+\d+$/m, 'natively: its int3 arrives as SI_KERNEL');
  t.match(native.output, /^selfstep traps=12 sum=28$/m);
  const cell = guest.symbols.resolve('selfstep:self_cell');
  const watched: Workload = { binary, argv: [binary], debugRegs: { 0: cell, 7: dr7WriteWatch(0, 8) } };

  await t.test('traced, nothing armed: the same output as natively', async (t) => {
    const traced = await runUninterrupted(guest, plain, '/tmp/selfstep-traced.out');
    t.equal(endedAs(traced.run), endedAs(native));
    t.equal(traced.output, native.output, 'traced reference = native reference');
    recordOutcome({
      case: CASE,
      scenario: 'traced uninterrupted vs native, nothing armed',
      policy: 'agent',
      control: false,
      expected,
      observed: summary(endedAs(traced.run), traced.output),
      matchedUninterrupted: traced.output === native.output && endedAs(traced.run) === endedAs(native),
    });
  });

  const at = (symbol: string): bigint => guest.symbols.resolve(`selfstep:${symbol}`);
  const points: { where: string; what: string; hit: number; armed: Workload }[] = [
    { where: 'self_mid', what: 'breakpoint inside the stepped sequence', hit: 1, armed: { binary, argv: [binary], breakAt: at('self_mid') } },
    { where: 'selfstep_handler', what: 'breakpoint on its SIGTRAP handler', hit: 3, armed: { binary, argv: [binary], breakAt: at('selfstep_handler') } },
    { where: 'self_cell', what: 'write watchpoint hit by a stepped store', hit: 1, armed: watched },
  ];
  const watchSkip = guest.profile.accel === 'tcg' ? TCG_WATCH_WITH_TF : undefined;
  const skipRow = (scenario: string, control: boolean): void =>
    recordVerdict({
      case: CASE,
      scenario,
      policy: control ? 'agent legacy-traps (before issue 19)' : 'agent',
      control,
      expected,
      observed: 'not run',
      pass: false,
      skipped: `accel ${guest.profile.accel}: ${TCG_WATCH_WITH_TF}`,
    });
  for (const p of points) {
    const armed: Workload = p.armed;
    if (p.where === 'self_cell' && watchSkip) {
      t.comment(`platform deviation (accel ${guest.profile.accel}): ${watchSkip}`);
      skipRow(`armed uninterrupted vs native, ${p.what}`, false);
      continue;
    }

    await t.test(`${p.what} (${p.where}): the program cannot feel it`, async (t) => {
      const out = `/tmp/selfstep-armed-${p.where}.out`;
      const pid = await spawnArmed(guest, armed, out);
      const run = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
      const output = await readOutput(guest, out);
      const both = run.hits.filter((h) => (h.dr6 & DR6_BS) !== 0n).length;
      t.comment(`${run.hits.length} hits of ${p.where} (DR6 ${run.hits.map((h) => hex(h.dr6)).join(' ')}; ${both} also a single-step)`);
      t.equal(endedAs(run), endedAs(native), `armed, uninterrupted: ${endedAs(run)}`);
      t.equal(output, native.output, 'armed, uninterrupted: exactly the native output');
      t.ok(run.hits.length >= p.hit, `the breakpoint was hit (${run.hits.length} times)`);
      if (p.where === 'self_cell') t.equal(both, run.hits.length, "every watchpoint hit came in one #DB with the program's step (DR6 BS)");
      recordOutcome({
        case: CASE,
        scenario: `armed uninterrupted vs native, ${p.what}`,
        policy: 'agent',
        control: false,
        expected,
        observed: summary(endedAs(run), output),
        matchedUninterrupted: output === native.output && endedAs(run) === endedAs(native),
        conditions: { hitsWithBS: String(both) },
      });

      const checkpointed = await checkpointAtHit(guest, armed, p.hit, p.where);
      t.equal(
        checkpointed.run.outcome,
        'hit-limit',
        `checkpointed at hit ${p.hit} of ${p.where}, rip ${checkpointed.image ? hex(checkpointed.image.regs.rip) : '?'}`,
      );
      const r = await restoreAndFinish(guest, checkpointed.file, DEFAULT_POLICY, p.where, {});
      const before = await readOutput(guest, `/tmp/selfstep-${p.where}.original.out`);
      const whole = before + r.output;
      t.equal(endedAs(r.run), endedAs(native), `restored: ${endedAs(r.run)}`);
      t.equal(whole, native.output, 'original up to the checkpoint + restored: exactly the native output');
      t.equal(run.hits.length, checkpointed.run.hits.length + r.run.hits.length, `as many hits as the uninterrupted armed run (${run.hits.length})`);
      recordOutcome({
        case: CASE,
        scenario: `checkpoint ${p.what} (hit ${p.hit}), restored vs native`,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected,
        observed: summary(endedAs(r.run), whole),
        matchedUninterrupted: whole === native.output && endedAs(r.run) === endedAs(native),
      });
    });
  }

  await t.test("negative control: the legacy agent (every hit's SIGTRAP suppressed) with the breakpoint on the handler", async (t) => {
    const out = '/tmp/selfstep-legacy.out';
    const pid = await spawnArmed(guest, { binary, argv: [binary], breakAt: at('selfstep_handler') }, out);
    const run = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS, legacyTraps: true });
    const output = await readOutput(guest, out);
    t.equal(endedAs(run), 'killed 5', 'killed by SIGTRAP: the hit inside the handler reset it to SIG_DFL, the next step trap was fatal');
    t.equal(output, '', 'and printed nothing (natively: exit 0 and the trap list)');
    recordOutcome({
      case: CASE,
      scenario: 'armed uninterrupted vs native, breakpoint on its SIGTRAP handler',
      policy: 'agent legacy-traps (before issue 19)',
      control: true,
      expected,
      observed: summary(endedAs(run), output),
      matchedUninterrupted: output === native.output && endedAs(run) === endedAs(native),
    });
  });

  if (watchSkip) {
    skipRow('armed uninterrupted vs native, write watchpoint hit by a stepped store', true);
    return;
  }
  await t.test('negative control: the legacy agent with the watchpoint — the step trap that came with the hit is lost', async (t) => {
    const out = '/tmp/selfstep-legacy-watch.out';
    const pid = await spawnArmed(guest, watched, out);
    const run = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS, legacyTraps: true });
    const output = await readOutput(guest, out);
    t.equal(endedAs(run), 'exited 0');
    t.match(output, /^selfstep traps=11 sum=28$/m, 'one trap fewer than natively (12)');
    t.notOk(output.includes(`addr=+${at('self_store') - at('self_seq') + 7n} `), 'the trap after self_store is the one missing');
    recordOutcome({
      case: CASE,
      scenario: 'armed uninterrupted vs native, write watchpoint hit by a stepped store',
      policy: 'agent legacy-traps (before issue 19)',
      control: true,
      expected,
      observed: summary(endedAs(run), output),
      matchedUninterrupted: output === native.output && endedAs(run) === endedAs(native),
    });
  });
});
