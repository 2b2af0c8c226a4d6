// expect: a process single-stepping itself (TF set with popf, a SIGTRAP handler recording each trap IP), checkpointed
// at a breakpoint in the middle of the sequence with TF set, records exactly the uninterrupted list of trap IPs after a
// restore that returns through IRET (restorer=ptrace and restorer=sigreturn). Negative control restorer=popf (the 2010
// Rozycki/Desnoyers report): TF loaded by POPF traps one instruction late — after the trampoline's ret — so the resume
// address is recorded twice.
import t from 'tap';
import { recordOutcome } from '../harness/report/verdicts.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, type Workload } from '../harness/testing/scenario.ts';
import { EFLAGS, hex } from '../harness/x86/registers.ts';

const CASE = 'single-step';
const SCENARIO = 'TF set by popf in the workload, checkpoint mid-sequence';

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.stepper!;
  const stepSeq = guest.symbols.resolve('stepper:step_seq');
  const stepMid = guest.symbols.resolve('stepper:step_mid');
  const midOffset = `+${stepMid - stepSeq}`;
  const workload: Workload = { binary, argv: [binary], breakAt: stepMid };
  const ips = (output: string): string | undefined => /ips=(\S+)/.exec(output)?.[1];

  const { pid } = await guest.agent.call({ op: 'SPAWN', path: binary, argv: [binary], envp: [], stdoutPath: '/tmp/stepper-reference.out', noAslr: true });
  const run = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  const reference = ips(await readOutput(guest, '/tmp/stepper-reference.out'));
  t.equal(run.code, 0);
  t.ok(reference, `uninterrupted trap IPs: ${reference}`);
  t.equal(reference?.split(',').filter((ip) => ip === midOffset).length, 1, `the resume address ${midOffset} appears once`);

  const cycle = async (policy: RestorePolicy, tag: string) => {
    const checkpointed = await checkpointAtHit(guest, workload, 1, tag, { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
    t.ok((r.image.regs.eflags & EFLAGS.TF) !== 0n, `TF is set in the image (eflags ${hex(r.image.regs.eflags)})`);
    return { r, observed: ips(r.output) };
  };

  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`restorer=${restorer} (IRET): the exact trap list`, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const { r, observed } = await cycle(policy, restorer);
      t.equal(observed, reference, `trap IPs after restore: ${observed}`);
      t.equal(r.run.code, 0);
      recordOutcome({ case: CASE, scenario: SCENARIO, policy: describePolicy(policy), control: false, expected: `ips=${reference}`, observed: `ips=${observed}`, matchedUninterrupted: observed === reference });
    });
  }

  await t.test('negative control restorer=popf (2010): TF from POPF traps one instruction late, the resume address twice', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer: 'popf' };
    const { observed } = await cycle(policy, 'popf');
    const late = reference?.replace(midOffset, `${midOffset},${midOffset}`);
    t.equal(observed, late, `trap IPs: ${observed} — ${midOffset} recorded twice (after the trampoline's ret, then after the instruction)`);
    recordOutcome({ case: CASE, scenario: SCENARIO, policy: describePolicy(policy), control: true, expected: `ips=${reference}`, observed: `ips=${observed}`, matchedUninterrupted: observed === reference });
  });
});
