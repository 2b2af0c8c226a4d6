// expect: signal state survives a checkpoint — every disposition, the blocked mask, the alternate stack, and the pending
// queues (SIGUSR1 on the thread queue, SIGRTMIN+1 three times with values 101, 202, 303 on the process queue), each
// delivered once, in order, with its value after restore, and a SIGSEGV handler still running on the alternate stack —
// under the ptrace and the sigreturn restorer; a process checkpointed inside a SIGILL (ud2), SIGSEGV (#GP) or SIGTRAP
// (int3) handler returns from it exactly once with the interrupted context's EFLAGS.RF as the uninterrupted run saw it
// (the architecture says 1 for the two faults, 0 for the trap; a platform that pushes otherwise is reported); a process
// checkpointed inside a handler that then writes another alternate stack into its frame's uc_stack has that stack
// after rt_sigreturn (the kernel installs the frame's uc_stack), under both restorers, as natively.
// Negative controls: omit=signals (dispositions, mask, alternate stack and queues lost) and, inside a handler,
// regs=partial. The descriptor side of signals and its neighbours (fdstate): a signalfd for SIGUSR1|SIGUSR2 with
// SIGUSR1 pending, an EFD_SEMAPHORE eventfd (counter 3) and one at 2^33+5, and a private expedited membarrier
// registration survive a checkpoint, read back as uninterrupted; omit=signalfd, omit=eventfd and omit=membarrier each
// end with the program naming the loss.
import t, { type Test } from 'tap';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { siginfoSigno } from '../harness/restore/signals.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { hex } from '../harness/x86/registers.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import { shows } from '../harness/scenarios/attempt.ts';
import { runTable } from '../harness/scenarios/table.ts';

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
/** regs=partial inside a handler: the handler keeps its ucontext pointer in a callee-saved register across sigstate_in_handler(). */
const REGS_PARTIAL = { ...DEFAULT_POLICY, regs: 'partial' as const };

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.sigstate!;
  const atCheckpoint = guest.symbols.resolve('sigstate:sigstate_checkpoint');
  const inHandler = guest.symbols.resolve('sigstate:sigstate_in_handler');

  // Provoke: dispositions, a mask, an alternate stack and queued signals, then a stop at sigstate_checkpoint.
  const state = await breakpointScenario(t, guest, {
    name: 'signal state: dispositions, mask, sigaltstack, pending RT queue',
    workload: { binary, argv: [binary, 'state'], breakAt: atCheckpoint },
  });
  t.equal(state.reference.ended, 'exited 0', `uninterrupted sigstate state: ${state.expected}`);
  const stateInImage = (t: Test, a: BreakpointAttempt): void => {
    const s = a.checkpointed!.image!.signals;
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
  };
  await runTable(t, CASE, state, [
    ...(['ptrace', 'sigreturn'] as const).map((restorer) => ({
      title: `dispositions, mask, alternate stack and pending queues, restorer=${restorer}`,
      policy: { ...DEFAULT_POLICY, restorer },
      tag: `state-${restorer}`,
      expect: 'resumes' as const,
      check: stateInImage,
    })),
    {
      title: 'negative control omit=signals: the workload names what was lost',
      policy: { ...DEFAULT_POLICY, omit: ['signals'] },
      tag: 'state-omit-signals',
      expect: 'differs',
      // Nothing was queued again, so nothing arrives either.
      check: (t, a) => {
        t.match(
          a.witnesses.output,
          /^sigstate mismatch: action:10 action:12 action:35 action:11 blocked altstack pending usr1-delivery rt-queue$/m,
          `caught, naming every piece: ${a.observed}`,
        );
        t.equal(a.witnesses.ended, 'exited 1');
      },
    },
    { title: 'engine criu: dispositions, mask, alternate stack and pending queues through CRIU', criu: {}, tag: 'criu-state', expect: 'resumes' },
    {
      // The mask CRIU restored replaced by an empty one through the agent: the workload must name it (and the early deliveries).
      title: "engine criu, negative control: the mask emptied after CRIU's restore is named by the workload",
      criu: { afterRestore: async (pid) => void (await guest.agent.call({ op: 'SETSIGMASK', pid, mask: 0n })) },
      policyName: 'criu, signal mask emptied after the restore',
      tag: 'criu-state-mask',
      expect: shows('sigstate mismatch naming the mask', (a) => /^sigstate mismatch:.*\bblocked\b/m.test(a.witnesses.output ?? '')),
    },
  ]);

  // Provoke: a signalfd, two eventfds and a membarrier registration, then a stop at fdstate_checkpoint (event-fds.ts, membarrier.ts).
  const fdstateBinary = guest.image.guestPaths.fdstate!;
  const fdstate = await breakpointScenario(t, guest, {
    name: 'a signalfd with a pending signal, eventfd counters (one a semaphore), a membarrier registration',
    workload: { binary: fdstateBinary, argv: [fdstateBinary], breakAt: guest.symbols.resolve('fdstate:fdstate_checkpoint') },
  });
  t.equal(
    `${fdstate.reference.ended}: ${fdstate.expected}`,
    'exited 0: fdstate ok: sem 1 1 1 again, big 8589934597, signal 10, membarrier 0',
    'uninterrupted: three reads of 1 from the semaphore, the 2^33+5 counter, SIGUSR1 through the signalfd, a membarrier that succeeds',
  );
  const lost = (omit: 'eventfd' | 'signalfd' | 'membarrier', ended: string, line: RegExp) => ({
    title: `negative control omit=${omit}: the program names what was lost`,
    policy: { ...DEFAULT_POLICY, omit: [omit] },
    tag: `fdstate-omit-${omit}`,
    expect: 'differs' as const,
    check: (t: Test, a: BreakpointAttempt) => {
      t.match(a.witnesses.output, line, `caught: ${a.observed}`);
      t.equal(a.witnesses.ended, ended);
    },
  });
  await runTable(t, CASE, fdstate, [
    {
      title: 'eventfd counters (a semaphore, one past 32 bits), a signalfd with SIGUSR1 pending, a membarrier registration',
      policy: DEFAULT_POLICY,
      tag: 'fdstate',
      expect: 'resumes',
      check: (t, a) => {
        const task = a.checkpointed!.image!.task;
        t.same(
          task.eventfds?.map((e) => [e.fd, e.count, e.semaphore]),
          [
            [3, 3n, true],
            [4, (1n << 33n) + 5n, false],
          ],
          'the image holds both eventfds, the semaphore flag probed (the 6.1 fdinfo does not show it)',
        );
        t.same(
          task.signalfds?.map((x) => [x.fd, x.mask]),
          [[5, (1n << BigInt(SIGUSR1 - 1)) | (1n << BigInt(SIGUSR2 - 1))]],
          'and the signalfd for SIGUSR1|SIGUSR2',
        );
        t.same(task.membarrier, ['private-expedited'], 'and the registration');
      },
    },
    lost('eventfd', 'exited 2', /^fdstate semaphore eventfd read: Bad file descriptor$/m),
    lost('signalfd', 'exited 3', /^fdstate signalfd read: Bad file descriptor$/m),
    lost('membarrier', 'exited 4', /^fdstate membarrier: Operation not permitted$/m),
  ]);

  // Provoke: a stop inside a handler that then writes another alternate stack into its frame's uc_stack.
  const altstack = await breakpointScenario(t, guest, {
    name: 'checkpoint inside a handler that changes uc_stack: sigaltstack after rt_sigreturn',
    workload: { binary, argv: [binary, 'altstack'], breakAt: inHandler },
  });
  t.equal(
    `${altstack.reference.ended}: ${altstack.expected}`,
    'exited 0: sigstate ok altstack=frame',
    "uninterrupted: rt_sigreturn installed the frame's uc_stack",
  );
  await runTable(t, CASE, altstack, [
    ...(['ptrace', 'sigreturn'] as const).map((restorer) => ({
      title: `checkpoint inside a handler that writes another alternate stack into its frame's uc_stack, restorer=${restorer}`,
      policy: { ...DEFAULT_POLICY, restorer },
      tag: `altstack-${restorer}`,
      expect: 'resumes' as const,
      check: (t: Test, a: BreakpointAttempt) =>
        void t.equal(a.checkpointed!.image!.signals.altstack.flags, 0, 'the image holds the alternate stack A, enabled'),
    })),
    {
      title: 'negative control regs=partial inside the altstack handler is caught',
      policy: REGS_PARTIAL,
      tag: 'altstack-ptrace-regs-partial',
      expect: 'differs',
    },
  ]);

  // Provoke: a stop inside the handler of a fault or a trap; it must return once, with RF as the uninterrupted run saw it.
  for (const h of HANDLERS) {
    const handler = await breakpointScenario(t, guest, {
      name: `checkpoint inside the handler of ${h.what}`,
      workload: { binary, argv: [binary, 'handler', h.kind], breakAt: inHandler },
      conditions: (r) => ({ architectureRf: String(h.architectureRf), platformRf: String(/rf=(\d)/.exec(r.output)?.[1]) }),
    });
    t.equal(handler.reference.ended, 'exited 0', `uninterrupted sigstate handler ${h.kind}: ${handler.expected}`);
    const platformRf = /rf=(\d)/.exec(handler.reference.output)?.[1];
    if (platformRf !== String(h.architectureRf)) {
      t.comment(
        `platform deviation: the uninterrupted run saw RF=${platformRf} in the ${h.what} frame; the architecture pushes ${h.architectureRf} (accel ${guest.profile.accel}; profile probes.rfOnUserPageFault = ${guest.profile.probes.rfOnUserPageFault.value})`,
      );
    }
    await runTable(t, CASE, handler, [
      {
        title: `checkpoint inside the handler of ${h.what}: returns once, RF as uninterrupted`,
        policy: DEFAULT_POLICY,
        tag: `handler-${h.kind}`,
        expect: 'resumes',
      },
      {
        title: `negative control regs=partial inside the handler of ${h.what} is caught`,
        policy: REGS_PARTIAL,
        tag: `handler-${h.kind}-regs-partial`,
        expect: 'differs',
      },
      { title: `engine criu: checkpoint inside the handler of ${h.what}`, criu: {}, tag: `criu-handler-${h.kind}`, expect: 'resumes' },
    ]);
  }
});
