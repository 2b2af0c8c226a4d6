// expect: signal state is validated against the image (handlers and restorers in executable memory, the alternate stack
// in writable memory, masks without SIGKILL/SIGSTOP, siginfo records for real signals, known SA_ flags), and the plan
// blocks everything before queueing pending signals again in their order, sets the image's mask as its very last step,
// writes it into the sigreturn frame with the alternate stack, and omits all of it under omit=signals.
import t from 'tap';
import { ImageRejectedError } from '../harness/errors.ts';
import { imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import { compileRestorePlan, type PlanStep } from '../harness/restore/plan.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { ALL_BLOCKABLE, SA_RESTORER, signalsJson } from '../harness/restore/signals.ts';
import type { SignalState } from '../harness/restore/image-model.ts';
import { validateSignals } from '../harness/restore/validate.ts';
import { SYNTHETIC_MAPS, syntheticImage, syntheticRegs } from './support/synthetic-image.ts';

const probe = {
  pid: 9,
  regs: syntheticRegs({ eflags: 0x202n }),
  maps: parseMaps(
    SYNTHETIC_MAPS.split('\n')
      .filter((l) => !l.includes('[heap]'))
      .join('\n'),
  ),
};

function siginfo(signo: number, value: number): Buffer {
  const b = Buffer.alloc(128);
  b.writeInt32LE(signo, 0);
  b.writeInt32LE(-1, 8); // SI_QUEUE
  b.writeInt32LE(value, 24);
  return b;
}

const STATE: SignalState = {
  blocked: (1n << 9n) | (1n << 34n),
  actions: [
    { signo: 10, handler: 0x10001500n, flags: 0x14000004n, restorer: 0x10001600n, mask: 1n << 11n },
    { signo: 12, handler: 1n, flags: 0n, restorer: 0n, mask: 0n },
  ],
  altstack: { sp: 0x100a2000n, flags: 0, size: 0x10000n },
  pending: { thread: [siginfo(10, 0)], shared: [siginfo(35, 101), siginfo(35, 202), siginfo(35, 303)] },
};

const injected = (plan: PlanStep[], nr: number) => plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === nr);

t.test('signals.json round-trips and every field is checked', async (t) => {
  const image = syntheticImage({ signals: STATE });
  const back = parseImageEntries(imageEntries(image));
  t.same(back.signals, STATE, 'the image reads back as written');
  const json = (): Record<string, any> => JSON.parse(JSON.stringify(signalsJson(STATE)));
  const rejects = (mutate: (j: Record<string, any>) => void, field: string): void => {
    const j = json();
    mutate(j);
    try {
      validateSignals(j, image.maps);
      t.fail(`accepted a bad ${field}`);
    } catch (error) {
      t.ok(error instanceof ImageRejectedError && error.entry === 'signals.json' && error.field === field, `${field}: ${(error as Error).message}`);
    }
  };
  rejects((j) => (j.blocked = '0x100'), 'blocked'); // SIGKILL
  rejects((j) => (j.actions[0].handler = '0x100a2000'), 'actions[0].handler'); // data, not code
  rejects((j) => (j.actions[0].restorer = '0x7ffffffde000'), 'actions[0].restorer');
  rejects((j) => (j.actions[0].flags = '0x20'), 'actions[0].flags');
  rejects((j) => (j.actions[1].signo = 19), 'actions[1].signo');
  rejects((j) => (j.actions[1].signo = 10), 'actions[1].signo'); // twice
  rejects((j) => (j.actions[0].mask = '0x40000'), 'actions[0].mask'); // SIGSTOP
  rejects((j) => (j.altstack.sp = '0x10000000'), 'altstack.sp'); // read-only
  rejects((j) => (j.altstack.size = '0x0'), 'altstack.size');
  rejects((j) => (j.altstack.flags = 8), 'altstack.flags');
  rejects((j) => (j.pending.shared[0] = 'abcd'), 'pending.shared[0]');
  rejects((j) => (j.pending.thread[0] = siginfo(9, 0).toString('hex')), 'pending.thread[0].si_signo');
  rejects((j) => (j.pending.thread = new Array(5000).fill(siginfo(10, 0).toString('hex'))), 'pending.thread');
  rejects((j) => (j.actions = {}), 'actions');
  t.ok((STATE.actions[0]!.flags & SA_RESTORER) !== 0n);
});

t.test('plan: block all, dispositions, alternate stack, queues in order, the mask last', async (t) => {
  const plan = compileRestorePlan(syntheticImage({ signals: STATE }), probe, { rf: 'keep-and-preserve' });
  const block = plan.findIndex((s) => s.op.op === 'SETSIGMASK' && s.op.mask === ALL_BLOCKABLE);
  const firstQueue = plan.findIndex((s) => s.op.op === 'INJECT_SYSCALL' && (s.op.nr === 129 || s.op.nr === 297));
  t.ok(block >= 0 && block < firstQueue, 'every signal blocked before anything is queued');
  t.same(
    injected(plan, 13).map((s) => (s.op as { args: readonly bigint[] }).args[0]),
    [10n, 12n],
    'rt_sigaction for each non-default disposition',
  );
  t.equal(injected(plan, 131).length, 1, 'one sigaltstack');
  t.same(
    injected(plan, 129).map((s) => (s.op as { args: readonly bigint[] }).args[1]),
    [35n, 35n, 35n],
    'the process queue, in order',
  );
  t.same(
    injected(plan, 297).map((s) => (s.op as { args: readonly bigint[] }).args[2]),
    [10n],
    'the thread queue',
  );
  const scratch = plan.find((s) => s.op.op === 'WRITE_MEM' && s.why.includes('sigaction'))!.op as { data: Uint8Array; address: bigint };
  t.equal(scratch.data.length, 2 * 32 + 24 + 4 * 128, 'two sigactions, a stack_t, four siginfo records');
  const lastResume = plan.findLastIndex((s) => s.op.op === 'INJECT_SYSCALL');
  const mask = plan.findLastIndex((s) => s.op.op === 'SETSIGMASK');
  t.ok(mask > lastResume, "the image's mask is set after the last injected call");
  t.equal((plan[mask]!.op as { mask: bigint }).mask, STATE.blocked);
  t.ok(injected(plan, 11).length === 1 && plan.indexOf(injected(plan, 11)[0]!) > firstQueue, 'the scratch page is unmapped again');
});

t.test('sigreturn: the frame carries the mask and the alternate stack; omit=signals drops everything', async (t) => {
  const plan = compileRestorePlan(syntheticImage({ signals: STATE }), probe, { rf: 'keep-and-preserve', restorer: 'sigreturn' });
  const frame = Buffer.from((plan.find((s) => s.why.startsWith('rt_sigframe'))!.op as { data: Uint8Array }).data);
  t.equal(frame.readBigUInt64LE(304), STATE.blocked, 'uc_sigmask');
  t.same([frame.readBigUInt64LE(24), frame.readInt32LE(32), frame.readBigUInt64LE(40)], [STATE.altstack.sp, 0, STATE.altstack.size], 'uc_stack');
  const omitted = compileRestorePlan(syntheticImage({ signals: STATE }), probe, { rf: 'keep-and-preserve', restorer: 'sigreturn', omit: ['signals'] });
  t.equal(omitted.filter((s) => s.op.op === 'SETSIGMASK').length, 0, 'no mask');
  t.equal(injected(omitted, 13).length + injected(omitted, 129).length + injected(omitted, 297).length, 0, 'no dispositions, no queues');
  const omittedFrame = Buffer.from((omitted.find((s) => s.why.startsWith('rt_sigframe'))!.op as { data: Uint8Array }).data);
  t.same([omittedFrame.readBigUInt64LE(304), omittedFrame.readInt32LE(32)], [0n, 2], "a fresh task's mask and a disabled alternate stack in the frame");
});
