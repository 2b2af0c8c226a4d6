// expect: --cycles and --inject-fault parse with their bounds (usage errors name the flag), the rerun record carries the cycles and refuses a count out of bounds, the verdict's per-cycle spread and first wrong cycle come out of the cycle records, a register the restore lost is named only when the result differs, an infrastructure failure is renamed by the phase it struck with its root cause (anything else passes through), and a dropped SSH link or a SIGKILLed agent becomes the agent's failure unless the machine explains it within the deferral.
import t from 'tap';
import { BootError, CrhError, AgentError, InfraError } from '../harness/errors.ts';
import { agentKilled, guestOrSessionFailure } from '../harness/guest/session-loss.ts';
import { parseFault } from '../harness/repro/fault-injection.ts';
import { duringPhase } from '../harness/repro/guest-runs.ts';
import { MAX_CYCLES, parseReproArgs, requestFlags, type ReproRequest } from '../harness/repro/options.ts';
import { differingRegisters } from '../harness/repro/register-diff.ts';
import { parseRerunRecord, rerunRecord } from '../harness/repro/rerun-record.ts';
import type { Checkpointed, CycleRecord } from '../harness/repro/runs.ts';
import { UsageError } from '../harness/repro/usage-error.ts';
import { firstWrongCycle, spread } from '../harness/repro/verdict.ts';
import { isInfraFailure } from '../harness/report/infra-failures.ts';
import { EFLAGS, USER_REGS_FIELDS, type UserRegs } from '../harness/x86/registers.ts';

const base = ['x.c', '--checkpoint-at', 'f'];
const parse = (args: string[]): ReproRequest => parseReproArgs('repro', args) as ReproRequest;

t.test('--cycles: 1 by default, a positive count up to the bound, carried to the rerun', async (t) => {
  t.equal(parse(base).cycles, 1);
  t.equal(parse([...base, '--cycles', '200']).cycles, 200);
  t.throws(() => parse([...base, '--cycles', '0']), new UsageError('--cycles: "0" is not a positive whole number'));
  t.throws(() => parse([...base, '--cycles', String(MAX_CYCLES + 1)]), { message: /^--cycles: 10001 is more than 10000$/ });
  t.match(requestFlags(parse([...base, '--cycles', '3'])).join(' '), /--cycles 3/);
  t.notMatch(requestFlags(parse(base)).join(' '), /--cycles/, 'one cycle needs no flag');
  const record = rerunRecord(parse([...base, '--cycles', '7']), { source: 'source/x.c', binary: 'binary/x', files: [] });
  t.equal(record.cycles, 7);
  t.equal(parseRerunRecord(JSON.parse(JSON.stringify(record)), 'b.tar').cycles, 7, 'read back');
  const { cycles: _, ...old } = record;
  t.equal(parseRerunRecord(old, 'b.tar').cycles, undefined, 'a record from before --cycles is read as it is (one cycle: bundle-rerun.ts)');
  t.throws(() => parseRerunRecord({ ...record, cycles: MAX_CYCLES + 1 }, 'b.tar'), { message: /rerun\.cycles.*not a whole number from 1 to 10000/ });
  t.throws(() => parseRerunRecord({ ...record, cycles: '3' }, 'b.tar'), { message: /rerun\.cycles/ });
});

t.test('--inject-fault PHASE:KIND', async (t) => {
  t.same(parse([...base, '--inject-fault', 'restore:kill-qemu']).fault, { phase: 'restore', kind: 'kill-qemu' });
  t.same(parseFault('checkpoint:guest-panic'), { phase: 'checkpoint', kind: 'guest-panic' });
  for (const bad of ['restore', 'boot:kill-qemu', 'restore:kill-everything', 'restore:kill-qemu:now']) {
    t.throws(() => parseFault(bad), { name: 'UsageError', message: /^--inject-fault: .* is not PHASE:KIND/ }, bad);
  }
  t.notOk(
    'fault' in rerunRecord(parse([...base, '--inject-fault', 'restore:drop-ssh']), { source: 'source/x.c', binary: 'binary/x', files: [] }),
    'never carried by a bundle',
  );
});

t.test('spread and the first wrong cycle', async (t) => {
  t.same(spread([5, 1, 3]), { median: 3, min: 1, max: 5 });
  t.same(spread([4, 1, 3, 2]), { median: 2.5, min: 1, max: 4 });
  t.equal(spread([]), undefined);
  const cycle = (n: number, extra: Partial<CycleRecord> = {}): CycleRecord => ({
    cycle: n,
    stoppedBy: 's',
    rip: '0x1',
    checkpointMs: 1,
    imageBytes: 1,
    restoreMs: 1,
    registersDiffer: [],
    ...extra,
  });
  const chain = (cycles: CycleRecord[], extra: Partial<Checkpointed> = {}): Checkpointed => ({ cycles, cyclesAsked: 3, ...extra }) as Checkpointed;
  t.equal(firstWrongCycle(chain([cycle(1), cycle(2), cycle(3)]), false), undefined, 'a chain that matched');
  t.same(firstWrongCycle(chain([cycle(1), cycle(2, { registersDiffer: ['rbx'] }), cycle(3, { registersDiffer: ['rbx'] })]), true), {
    cycle: 2,
    why: "the restored process did not hold the image's rbx",
  });
  t.equal(
    firstWrongCycle(chain([cycle(1, { registersDiffer: ['r11'] }), cycle(2), cycle(3)]), false),
    undefined,
    'a register alone, with the result the same, is no finding',
  );
  t.same(firstWrongCycle(chain([cycle(1), cycle(2, { restoreError: 'RestoreStepError: step 3 failed\nmore' })]), true), {
    cycle: 2,
    why: 'its restore failed: RestoreStepError: step 3 failed',
  });
  t.same(firstWrongCycle(chain([cycle(1), cycle(2)], { endedAfterCycle: 2 }), true), { cycle: 2, why: 'the restored process ended before checkpoint 3' });
  t.same(firstWrongCycle(chain([cycle(1), cycle(2), cycle(3)]), true), {
    cycle: 3,
    why: 'no cycle showed a difference at its restore stop; the final result differs',
  });
});

t.test('differingRegisters: RF alone, a rewound call and a trampoline restorer are not losses', async (t) => {
  const image = Object.fromEntries(USER_REGS_FIELDS.map((name, i) => [name, BigInt(i + 1)])) as UserRegs;
  t.same(differingRegisters(image, { ...image }, { rf: 'keep-and-preserve' }, false), []);
  t.same(differingRegisters(image, { ...image, rbx: 0n, r12: 0n }, { rf: 'keep-and-preserve' }, false), ['r12', 'rbx']);
  t.same(differingRegisters(image, { ...image, eflags: image.eflags ^ EFLAGS.RF }, { rf: 'keep-and-preserve' }, false), []);
  t.same(differingRegisters(image, { ...image, rip: 9n, rax: 9n }, { rf: 'keep-and-preserve' }, true), []);
  t.same(differingRegisters(image, { ...image, rip: 9n }, { rf: 'keep-and-preserve' }, false), ['rip']);
  t.equal(differingRegisters(image, { ...image, rip: 9n }, { rf: 'keep-and-preserve', restorer: 'sigreturn' }, false), undefined);
});

t.test('duringPhase: infrastructure renamed by its phase and root cause; the rest untouched', async (t) => {
  const lost = new BootError('guest lost: QEMU killed by SIGKILL', { 'console tail': 'tail' });
  const agent = new AgentError('RESTORE: guest lost: QEMU killed by SIGKILL', 'RESTORE', undefined, { 'agent stderr': '' }, { cause: lost });
  const wrapped = duringPhase(agent, 'restore', '/a/run') as InfraError;
  t.ok(wrapped instanceof InfraError);
  t.equal(wrapped.message, 'during restore: guest lost: QEMU killed by SIGKILL');
  t.equal(wrapped.details.artifacts, '/a/run');
  t.equal(wrapped.details['console tail'], 'tail');
  t.equal(wrapped.cause, agent, 'the chain kept');
  const full = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
  t.equal(
    (duringPhase(new InfraError('cannot write the checkpoint image /a/checkpoint.tar: ENOSPC', {}, { cause: full }), 'checkpoint', '/a') as Error).message,
    'during checkpoint: cannot write the checkpoint image /a/checkpoint.tar: ENOSPC',
  );
  const usage = new UsageError('no');
  t.equal(duringPhase(usage, 'checkpoint', '/a'), usage, 'a usage error passes through');
  const ours = new CrhError('a bug');
  t.equal(duringPhase(ours, 'restore', '/a'), ours, 'a failure of ours passes through');
});

t.test('session loss: the machine explains first, else the session loss stands', async (t) => {
  // The deferral's timer is unref'd (it must not keep a finished crh alive): something else keeps this test's loop up.
  const keepAlive = setInterval(() => {}, 1000);
  t.teardown(() => clearInterval(keepAlive));
  const never = new Promise<never>(() => {});
  const sshLost = Promise.reject(new InfraError('SSH connection to the guest lost'));
  sshLost.catch(() => {});
  const started = Date.now();
  const error = await guestOrSessionFailure(never, [sshLost], 50).catch((e: unknown) => e);
  t.match((error as Error).message, /SSH connection to the guest lost/);
  t.ok(isInfraFailure(error));
  t.ok(Date.now() - started >= 45, 'after the deferral');

  const machine = new Promise<never>((_, reject) => setTimeout(() => reject(new BootError('guest lost: QEMU killed by SIGKILL')), 10));
  const both = await guestOrSessionFailure(machine, [sshLost], 200).catch((e: unknown) => e);
  t.match((both as Error).message, /QEMU killed by SIGKILL/, "the machine's explanation wins within the deferral");

  const killed = await agentKilled(Promise.resolve({ code: null, signal: 'SIGKILL' })).catch((e: unknown) => e);
  t.match((killed as Error).message, /the agent was killed by SIGKILL/);
  const segv = await Promise.race([
    agentKilled(Promise.resolve({ code: null, signal: 'SIGSEGV' })).catch(() => 'rejected'),
    new Promise((r) => setTimeout(() => r('pending'), 50)),
  ]);
  t.equal(segv, 'pending', 'an agent that crashes by itself is no session loss: a failure of ours');
});
