// expect: signal state survives a checkpoint — every disposition, the blocked mask, the alternate stack, and the pending
// queues (SIGUSR1 on the thread queue, SIGRTMIN+1 three times with values 101, 202, 303 on the process queue), each
// delivered once, in order, with its value after restore, and a SIGSEGV handler still running on the alternate stack —
// under the ptrace and the sigreturn restorer; a process checkpointed inside a SIGILL (ud2), SIGSEGV (#GP) or SIGTRAP
// (int3) handler returns from it exactly once with the interrupted context's EFLAGS.RF as the uninterrupted run saw it
// (the architecture says 1 for the two faults, 0 for the trap; a platform that pushes otherwise is reported); a process
// checkpointed inside a handler that then writes another alternate stack into its frame's uc_stack has that stack
// after rt_sigreturn (the kernel installs the frame's uc_stack), under both restorers, as natively.
// Negative controls: omit=signals (dispositions, mask, alternate stack and queues lost) and, inside a handler,
// regs=partial.
import t from 'tap';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { siginfoSigno } from '../harness/restore/signals.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';
import { hex } from '../harness/x86/registers.ts';
import { policyRowsNotForCriu, runCriuControl, runCriuScenario, runsEngine, type CriuScenario } from '../harness/testing/criu-engine.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';

const CASE = 'signals';
const SIGUSR1 = 10;
const SIGUSR2 = 12;
const SIGSEGV = 11;
/** glibc reserves 32 and 33: its SIGRTMIN is 34. */
const SIGRTMIN_1 = 35;
/** What the architecture pushes for EFLAGS.RF: 1 for fault-class exceptions, 0 for traps (Intel SDM vol. 3, 18.3.1.1). */
const HANDLERS = [
  { kind: 'ill', what: 'SIGILL from ud2 (#UD, a fault)', architectureRf: 1 },
  { kind: 'segv', what: 'SIGSEGV from hlt in user mode (#GP, a fault)', architectureRf: 1 },
  { kind: 'trap', what: 'SIGTRAP from int3 (#BP, a trap)', architectureRf: 0 },
] as const;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.sigstate!;
  const reference = async (argv: string[], tag: string): Promise<string> => {
    const workload: Workload = { binary, argv: [binary, ...argv] };
    const { run, output } = await runUninterrupted(guest, workload, `/tmp/sigstate-${tag}.reference.out`);
    t.equal(run.code, 0, `uninterrupted sigstate ${argv.join(' ')}: ${output.trim()}`);
    // The reference is a traced run: it must be what the program does with no tracer at all.
    const native = await nativeReference(guest, workload);
    t.equal(
      `${endedAs(run)}\n${output}`,
      `${endedAs(native)}\n${native.output}`,
      `sigstate ${argv.join(' ')}: the traced reference is the native run (no tracer)`,
    );
    return output;
  };

  const stateWorkload: Workload = { binary, argv: [binary, 'state'], breakAt: guest.symbols.resolve('sigstate:sigstate_checkpoint') };
  const stateReference = await reference(['state'], 'state');

  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`dispositions, mask, alternate stack and pending queues, restorer=${restorer}`, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const checkpointed = await checkpointAtHit(guest, stateWorkload, 1, `state-${restorer}`, { disarm: true });
      const r = await restoreAndFinish(guest, checkpointed.file, policy, `state-${restorer}`, {});
      const s = r.image.signals;
      t.same(
        s.actions.map((a) => a.signo).sort((a, b) => a - b),
        [SIGUSR1, SIGSEGV, SIGUSR2, SIGRTMIN_1].sort((a, b) => a - b),
        'the image holds the four dispositions the workload set',
      );
      t.equal(s.blocked, (1n << BigInt(SIGUSR1 - 1)) | (1n << BigInt(SIGRTMIN_1 - 1)), `blocked ${hex(s.blocked)}: SIGUSR1 and SIGRTMIN+1`);
      t.same(s.pending.shared.map(siginfoSigno), [SIGRTMIN_1, SIGRTMIN_1, SIGRTMIN_1], 'process queue: SIGRTMIN+1 three times');
      t.same(
        s.pending.shared.map((i) => i.readInt32LE(24)),
        [101, 202, 303],
        'with si_value 101, 202, 303 in order',
      );
      t.same(s.pending.thread.map(siginfoSigno), [SIGUSR1], 'thread queue: SIGUSR1');
      t.equal(s.altstack.flags, 0, 'the alternate stack is enabled');
      t.same(
        r.differences.filter((d) => d.what.startsWith('signals')),
        [],
        'read back: the kernel holds the same mask and queues',
      );
      t.equal(r.output, stateReference, `the restored run is the uninterrupted run: ${r.output.trim()}`);
      t.equal(r.run.code, 0);
      recordRowOutcome(t, {
        case: CASE,
        scenario: 'signal state: dispositions, mask, sigaltstack, pending RT queue',
        policy: describePolicy(policy),
        control: false,
        expected: stateReference.trim(),
        observed: r.output.trim(),
        matchedUninterrupted: r.output === stateReference && r.run.code === 0,
      });
    });
  }

  await t.test('negative control omit=signals: the workload names what was lost', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['signals'] };
    const checkpointed = await checkpointAtHit(guest, stateWorkload, 1, 'state-omit-signals', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, 'state-omit-signals', {});
    // Nothing was queued again, so nothing arrives either.
    t.match(
      r.output,
      /^sigstate mismatch: action:10 action:12 action:35 action:11 blocked altstack pending usr1-delivery rt-queue$/m,
      `caught, naming every piece: ${r.output.trim()}`,
    );
    t.equal(r.run.code, 1);
    recordRowOutcome(t, {
      case: CASE,
      scenario: 'signal state: dispositions, mask, sigaltstack, pending RT queue',
      policy: describePolicy(policy),
      control: true,
      expected: stateReference.trim(),
      observed: r.output.trim(),
      matchedUninterrupted: r.output === stateReference,
    });
  });

  await t.test("checkpoint inside a handler that writes another alternate stack into its frame's uc_stack", async (t) => {
    const workload: Workload = { binary, argv: [binary, 'altstack'], breakAt: guest.symbols.resolve('sigstate:sigstate_in_handler') };
    const ref = await reference(['altstack'], 'altstack');
    t.equal(ref.trim(), 'sigstate ok altstack=frame', "uninterrupted: rt_sigreturn installed the frame's uc_stack");
    const policies: RestorePolicy[] = [DEFAULT_POLICY, { ...DEFAULT_POLICY, restorer: 'sigreturn' }, { ...DEFAULT_POLICY, regs: 'partial' }];
    for (const policy of policies) {
      // regs=partial: the handler keeps its ucontext pointer in a callee-saved register across sigstate_in_handler().
      const control = policy.regs === 'partial';
      const tag = `altstack-${policy.restorer}${control ? '-regs-partial' : ''}`;
      const checkpointed = await checkpointAtHit(guest, workload, 1, tag, { disarm: true });
      const r = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
      const observed = r.run.outcome === 'killed' ? `killed by signal ${r.run.code}` : r.output.trim();
      if (control) t.not(observed, ref.trim(), `regs=partial inside the handler is caught: ${observed}`);
      else {
        t.equal(r.image.signals.altstack.flags, 0, 'the image holds the alternate stack A, enabled');
        t.equal(observed, ref.trim(), `${describePolicy(policy)}: after rt_sigreturn sigaltstack reads back the frame's stack: ${observed}`);
      }
      recordRowOutcome(t, {
        case: CASE,
        scenario: 'checkpoint inside a handler that changes uc_stack: sigaltstack after rt_sigreturn',
        policy: describePolicy(policy),
        control,
        expected: ref.trim(),
        observed,
        matchedUninterrupted: observed === ref.trim(),
      });
    }
  });

  for (const h of HANDLERS) {
    await t.test(`checkpoint inside the handler of ${h.what}`, async (t) => {
      const workload: Workload = { binary, argv: [binary, 'handler', h.kind], breakAt: guest.symbols.resolve('sigstate:sigstate_in_handler') };
      const ref = await reference(['handler', h.kind], `handler-${h.kind}`);
      const platformRf = /rf=(\d)/.exec(ref)?.[1];
      const conditions = { architectureRf: String(h.architectureRf), platformRf: String(platformRf) };
      if (platformRf !== String(h.architectureRf)) {
        t.comment(
          `platform deviation: the uninterrupted run saw RF=${platformRf} in the ${h.what} frame; the architecture pushes ${h.architectureRf} (accel ${guest.profile.accel}; profile probes.rfOnUserPageFault = ${guest.profile.probes.rfOnUserPageFault.value})`,
        );
      }
      for (const policy of [DEFAULT_POLICY, { ...DEFAULT_POLICY, regs: 'partial' } as RestorePolicy]) {
        const control = policy.regs === 'partial';
        const tag = `handler-${h.kind}${control ? '-regs-partial' : ''}`;
        const checkpointed = await checkpointAtHit(guest, workload, 1, tag, { disarm: true });
        const r = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
        const observed = r.run.outcome === 'killed' ? `killed by signal ${r.run.code}` : r.output.trim();
        if (control) t.not(observed, ref.trim(), `regs=partial inside the handler is caught: ${observed}`);
        else t.equal(observed, ref.trim(), `returns from the handler once, RF as uninterrupted: ${observed}`);
        recordRowOutcome(t, {
          case: CASE,
          scenario: `checkpoint inside the handler of ${h.what}`,
          policy: describePolicy(policy),
          control,
          expected: ref.trim(),
          observed,
          matchedUninterrupted: observed === ref.trim(),
          conditions,
        });
      }
    });
  }

  // engine criu (crh run --engine …criu): the same stops handed to CRIU, judged by the workload's own output.
  if (!runsEngine('criu')) return;
  const STATE = 'signal state: dispositions, mask, sigaltstack, pending RT queue';
  const stateScenario: CriuScenario = {
    case: CASE,
    scenario: STATE,
    workload: stateWorkload,
    hit: 1,
    dr7BeforeDump: 0n,
    watch: {},
    expected: stateReference.trim(),
    judge: (a) => ({
      observed: a.run.outcome === 'killed' ? `killed by signal ${a.run.code}` : a.output.trim(),
      exact: a.output === stateReference && a.run.outcome === 'exited' && a.run.code === 0,
    }),
    control: {
      // The mask CRIU restored replaced by an empty one through the agent: the workload must name it (and the early deliveries).
      policy: 'criu, signal mask emptied after the restore',
      afterRestore: async (pid) => void (await guest.agent.call({ op: 'SETSIGMASK', pid, mask: 0n })),
      expected: 'sigstate mismatch naming the mask',
      showedIt: (_a, j) => /^sigstate mismatch:.*\bblocked\b/m.test(j.observed),
    },
  };
  await t.test('engine criu: dispositions, mask, alternate stack and pending queues through CRIU', (t) =>
    runCriuScenario(t, guest, stateScenario, 'criu-state'),
  );
  await t.test("engine criu, negative control: the mask emptied after CRIU's restore is named by the workload", (t) =>
    runCriuControl(t, guest, stateScenario, 'criu-state-mask'),
  );
  for (const h of HANDLERS) {
    await t.test(`engine criu: checkpoint inside the handler of ${h.what}`, async (t) => {
      const ref = await reference(['handler', h.kind], `criu-handler-${h.kind}`);
      await runCriuScenario(
        t,
        guest,
        {
          case: CASE,
          scenario: `checkpoint inside the handler of ${h.what}`,
          hit: 1,
          dr7BeforeDump: 0n,
          watch: {},
          workload: { binary, argv: [binary, 'handler', h.kind], breakAt: guest.symbols.resolve('sigstate:sigstate_in_handler') },
          expected: ref.trim(),
          judge: (a) => {
            const observed = a.run.outcome === 'killed' ? `killed by signal ${a.run.code}` : a.output.trim();
            return {
              observed,
              exact: observed === ref.trim(),
              conditions: { architectureRf: String(h.architectureRf), platformRf: String(/rf=(\d)/.exec(ref)?.[1]) },
            };
          },
        },
        `criu-handler-${h.kind}`,
      );
    });
  }
  const notForCriu = [
    ...policyRowsNotForCriu(CASE, STATE, [describePolicy({ ...DEFAULT_POLICY, omit: ['signals'] })]),
    ...HANDLERS.flatMap((h) =>
      policyRowsNotForCriu(CASE, `checkpoint inside the handler of ${h.what}`, [describePolicy({ ...DEFAULT_POLICY, regs: 'partial' })]),
    ),
  ];
  for (const row of notForCriu) {
    await t.test(`engine criu: ${row.policy} ${row.skipped}`, async (t) => {
      t.pass(row.skipped);
      recordRow(t, row);
    });
  }
});
