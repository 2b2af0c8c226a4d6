// expect: the read-back compiles from the plan to one list of agent reads — the same checks for the main thread and for
// every other thread (registers and xstate as the plan set them, the six debug registers, the rseq registration and its
// rseq_cs word, the mask, the pending queues; the process-wide queue, pkeys and userfaultfd ranges once) — and a kernel
// that holds exactly what was asked gives no difference, while each thing a kernel drops or changes comes back as one
// typed difference naming the task and the piece, worded as before for people; a failed read is the agent's error.
import t from 'tap';
import type { BatchStep } from '../harness/agent/client.ts';
import type { AgentOp } from '../harness/agent/ops.ts';
import { compileRestorePlan } from '../harness/restore/plan.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import type { RestorePolicy } from '../harness/restore/policy.ts';
import { answersOf, compareReadBack, compileReadBack, type ReadBackCheck } from '../harness/restore/read-back.ts';
import { rseqCsPointer } from '../harness/restore/rseq.ts';
import type { CheckpointImage } from '../harness/restore/image-model.ts';
import { debugRegOffset, type UserRegs } from '../harness/x86/registers.ts';
import { SYNTHETIC_MAPS, syntheticRegs, syntheticSiginfo, syntheticThreadedImage } from './support/synthetic-image.ts';

const POLICY: RestorePolicy = { rf: 'keep-and-preserve' };
const probe = {
  pid: 42,
  regs: syntheticRegs({ eflags: 0x202n, fs_base: 0n }),
  maps: parseMaps(
    SYNTHETIC_MAPS.split('\n')
      .filter((l) => !l.includes('[heap]'))
      .join('\n'),
  ),
};

/** A kernel holding, per task, what the image says (registers and xstate as the plan set them): built from the image, not from the read-back's own expectations. */
function faithfulKernel(image: CheckpointImage, plan: ReturnType<typeof compileRestorePlan>) {
  const tasks = new Map<
    number,
    {
      regs?: UserRegs;
      xstate?: Buffer;
      dr: Record<string, bigint>;
      rseq?: { area: bigint; size: number; signature: number };
      cs: bigint;
      blocked: bigint;
      thread: Buffer[];
      shared: Buffer[];
    }
  >();
  const setRegs = (tid: number) => (plan.find((s) => s.op.op === 'SETREGS' && s.op.pid === tid)?.op as { regs: UserRegs } | undefined)?.regs;
  const setXstate = (tid: number) => (plan.find((s) => s.op.op === 'SETREGSET' && s.op.pid === tid)?.op as { data: Uint8Array } | undefined)?.data;
  const xs = (d: Uint8Array | undefined) => (d ? Buffer.from(d) : undefined);
  tasks.set(42, {
    regs: setRegs(42),
    xstate: xs(setXstate(42)),
    dr: { ...image.debugRegs },
    rseq: image.rseq ?? undefined,
    cs: image.rseq ? rseqCsPointer(image) : 0n,
    blocked: image.signals.blocked,
    thread: [...image.signals.pending.thread],
    shared: [...image.signals.pending.shared],
  });
  for (const th of image.threads) {
    tasks.set(th.tid, {
      regs: setRegs(th.tid),
      xstate: xs(setXstate(th.tid)),
      dr: { ...th.debugRegs },
      rseq: th.rseq ?? undefined,
      cs: th.rseq ? rseqCsPointer({ ...image, rseq: th.rseq }) : 0n,
      blocked: th.blocked,
      thread: [...th.pending],
      shared: [],
    });
  }
  const answer = (op: AgentOp): BatchStep => {
    const task = tasks.get((op as { pid: number }).pid)!;
    const ok = (result: unknown): BatchStep => ({ ok: true, op, result }) as BatchStep;
    switch (op.op) {
      case 'GETREGS':
        return ok(task.regs);
      case 'GETREGSET':
        return ok(task.xstate);
      case 'PEEKUSER':
        return ok(task.dr[['dr0', 'dr1', 'dr2', 'dr3', '', '', 'dr6', 'dr7'][[0, 1, 2, 3, 4, 5, 6, 7].find((n) => debugRegOffset(n) === op.offset)!]!]);
      case 'RSEQ_CONFIG':
        return ok(task.rseq ? { area: task.rseq.area, size: task.rseq.size, signature: task.rseq.signature } : { area: 0n, size: 0, signature: 0 });
      case 'READ_MEM': {
        const b = Buffer.alloc(8);
        b.writeBigUInt64LE(task.cs);
        return ok(b);
      }
      case 'GETSIGMASK':
        return ok(task.blocked);
      case 'PEEKSIGINFO':
        return ok(op.shared ? task.shared : task.thread);
      default:
        throw new Error(`no answer for ${op.op}`);
    }
  };
  return { tasks, run: (checks: ReadBackCheck[]) => compareReadBack(checks, answersOf(checks, checks.flatMap((c): AgentOp[] => c.ops).map(answer))) };
}

t.test('one path for every thread: the same checks for the main thread and each other one, all reads in one list', async (t) => {
  const image = syntheticThreadedImage({ signals: { ...syntheticThreadedImage().signals, pending: { thread: [], shared: [syntheticSiginfo(12)] } } });
  const checks = compileReadBack(42, compileRestorePlan(image, probe, POLICY), image, POLICY);
  const kindsOf = (tid: number) =>
    checks.filter((c) => 'task' in c && c.task.tid === tid).map((c) => (c.kind === 'pending-signals' ? `${c.kind}:${c.queue}` : c.kind));
  const perThread = ['registers', 'xstate', ...Array(6).fill('debug-register'), 'rseq', 'signal-mask', 'pending-signals:thread'];
  t.same(kindsOf(43), perThread, 'a thread: registers, xstate, six debug registers, rseq, mask, its own queue');
  t.same(kindsOf(45), perThread, 'the other thread alike');
  t.same(kindsOf(42), [...perThread, 'pending-signals:shared'], 'the main thread: the same, and the process-wide queue once');
  t.equal(checks.flatMap((c): AgentOp[] => c.ops).length, 3 * 11 + 3 + 1, 'every read in one list (rseq is two reads: the registration and its rseq_cs word)');
});

t.test('a kernel that holds what was asked gives no difference; each change comes back as one typed difference', async (t) => {
  const image = syntheticThreadedImage();
  const plan = compileRestorePlan(image, probe, POLICY);
  const checks = compileReadBack(42, plan, image, POLICY);
  const kernel = faithfulKernel(image, plan);
  t.same(kernel.run(checks), [], 'nothing differs');

  const t43 = kernel.tasks.get(43)!;
  const t45 = kernel.tasks.get(45)!;
  const main = kernel.tasks.get(42)!;
  t45.regs = { ...t45.regs!, eflags: t45.regs!.eflags & ~0x10000n };
  t43.dr.dr1 = 0x100c4000n;
  t45.dr.dr7 = 0n;
  main.cs = 0x1234n;
  t43.thread = [];
  main.xstate = Buffer.concat([main.xstate!.subarray(0, 100), Buffer.from([main.xstate![100]! ^ 1]), main.xstate!.subarray(101)]);
  const differences = kernel.run(checks);
  t.same(
    differences.map((d) => d.subject),
    [
      { kind: 'xstate', tid: 42 },
      { kind: 'rseq-cs', tid: 42 },
      { kind: 'debug-register', tid: 43, name: 'dr1' },
      { kind: 'pending-signals', tid: 43, queue: 'thread' },
      { kind: 'register', tid: 45, name: 'eflags' },
      { kind: 'debug-register', tid: 45, name: 'dr7' },
    ],
    'one difference per change, typed, in task order',
  );
  t.same(
    differences.map((d) => d.what),
    ['xstate', 'rseq.rseq_cs', 'thread 43 dr1', 'thread 43 signals.pending.thread', 'thread 45 eflags', 'thread 45 dr7'],
    'worded for people as before: the main thread unnamed, the others by tid',
  );
  t.match(
    differences.find((d) => d.what === 'xstate'),
    { requested: '832 bytes', accepted: '832 bytes, first difference at offset 100' },
  );
  t.match(
    differences.find((d) => d.what === 'thread 45 eflags'),
    { requested: '0x10246', accepted: '0x246' },
    'RF dropped by the kernel',
  );
  t.match(
    differences.find((d) => d.what === 'thread 43 signals.pending.thread'),
    { requested: '[10]', accepted: '[]' },
  );
});

t.test('omit=signals and omit=thread-masks drop exactly their checks', async (t) => {
  const image = syntheticThreadedImage();
  const count = (policy: RestorePolicy, kind: string) =>
    compileReadBack(42, compileRestorePlan(image, probe, policy), image, policy).filter((c) => c.kind === kind).length;
  t.equal(count(POLICY, 'signal-mask'), 3);
  t.equal(count({ ...POLICY, omit: ['thread-masks'] }, 'signal-mask'), 1, "the main thread's mask only");
  t.equal(count({ ...POLICY, omit: ['signals'] }, 'signal-mask') + count({ ...POLICY, omit: ['signals'] }, 'pending-signals'), 0, 'no signal checks at all');
  t.equal(count({ ...POLICY, omit: ['signals'] }, 'debug-register'), 18, 'the rest kept');
});

t.test('a read the agent fails is its error, naming the read; a short answer is refused', async (t) => {
  const image = syntheticThreadedImage();
  const checks = compileReadBack(42, compileRestorePlan(image, probe, POLICY), image, POLICY);
  const first = checks[0]!.ops[0]!;
  t.throws(() => answersOf(checks, [{ ok: false, op: first, errno: 3, message: 'no such process' }]), {
    name: 'AgentError',
    message: /read-back GETREGS.*no such process/,
  });
  t.throws(() => answersOf(checks, []), { name: 'AgentError', message: /answered 0 of 37/ });
});
