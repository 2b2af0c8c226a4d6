// expect: a multi-threaded image compiles to a plan that blocks every signal and sets the main thread's xstate before it
// creates the threads — clone3 in the main thread, ascending tids, each with set_tid and its clear_child_tid — injects what
// only a thread can set into that thread, sets registers, xstate and debug registers per thread (DR7 last), applies the rseq
// fixup and the syscall restart per thread, and sets each thread's mask last; omit=thread-* drops exactly its piece; the
// threads section round-trips through the tar and every hostile field of it is refused naming threads.json (or the thread's
// xstate entry) and the field, also under random mutation.
import t, { type Test } from 'tap';
import { isDeepStrictEqual } from 'node:util';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ImageRejectedError } from '../harness/errors.ts';
import { imageEntries, parseImageEntries, readCheckpointImage, writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { dryRunPlan, formatPlan } from '../harness/restore/dry-run.ts';
import { compileRestorePlan, type PlanStep } from '../harness/restore/plan.ts';
import { parseOmit, type RestorePolicy } from '../harness/restore/policy.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { ALL_BLOCKABLE } from '../harness/restore/signals.ts';
import { CLONE, THREAD_CLONE_FLAGS } from '../harness/restore/threads.ts';
import { threadXstateEntry } from '../harness/restore/image-model.ts';
import { debugRegOffset, NT_X86_XSTATE } from '../harness/x86/registers.ts';
import {
  reseal,
  SYNTHETIC_MAPS,
  syntheticImage,
  syntheticRegs,
  syntheticThread as thread,
  syntheticThreadedImage as threaded,
  syntheticXstate,
} from './support/synthetic-image.ts';
import { prng } from './support/prng.ts';

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
const NR = { mmap: 9, munmap: 11, sigaltstack: 131, set_tid_address: 218, set_robust_list: 273, rt_tgsigqueueinfo: 297, rseq: 334, clone3: 435 } as const;

const ops = (plan: PlanStep[]) => plan.map((s) => s.op);
const indexOf = (plan: PlanStep[], match: (s: PlanStep) => boolean): number => plan.findIndex(match);
const injected = (plan: PlanStep[], nr: number, pid?: number) =>
  plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === nr && (pid === undefined || s.op.pid === pid));
const argsOf = (s: PlanStep): readonly bigint[] => (s.op as { args: readonly bigint[] }).args;

/** The bytes the plan writes last at `address` (inside one WRITE_MEM). */
function written(plan: PlanStep[], address: bigint, length: number): Buffer {
  for (const s of [...plan].reverse()) {
    if (s.op.op !== 'WRITE_MEM' || address < s.op.address || address + BigInt(length) > s.op.address + BigInt(s.op.data.length)) continue;
    const at = Number(address - s.op.address);
    return Buffer.from(s.op.data).subarray(at, at + length);
  }
  throw new Error(`nothing written at 0x${address.toString(16)}`);
}

t.test('thread creation: after the main thread blocks everything and gets its xstate; clone3 per thread, ascending, set_tid and clear_child_tid', async (t) => {
  const image = threaded();
  const plan = compileRestorePlan(image, probe, POLICY);
  const clones = injected(plan, NR.clone3);
  t.same(
    clones.map((s) => [s.op.op === 'INJECT_SYSCALL' && s.op.pid, s.expect]),
    [
      [42, 43n],
      [42, 45n],
    ],
    'clone3 injected into the main thread, ascending tids, each must answer its tid',
  );
  const firstClone = plan.indexOf(clones[0]!);
  const block = indexOf(plan, (s) => s.op.op === 'SETSIGMASK' && s.op.pid === 42 && s.op.mask === ALL_BLOCKABLE);
  t.ok(block >= 0 && block < firstClone, 'every signal blocked in the main thread before a thread exists (the threads inherit the mask)');
  const mainXstate = indexOf(plan, (s) => s.op.op === 'SETREGSET' && s.op.pid === 42);
  t.ok(mainXstate >= 0 && mainXstate < firstClone, "the main thread's xstate set before the threads are created");
  t.equal(plan.filter((s) => s.op.op === 'SETREGSET' && s.op.pid === 42).length, 1, 'and only once');
  const scratch = argsOf(plan.find((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === NR.mmap && s.why.includes('clone_args'))!)[0]!;
  t.ok(
    indexOf(plan, (s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === NR.munmap && argsOf(s)[0] === scratch) > plan.indexOf(clones.at(-1)!),
    'the scratch page is unmapped after the last thread',
  );
  for (const [i, clone] of clones.entries()) {
    const t0 = image.threads[i]!;
    const [argsAt, size] = argsOf(clone);
    t.equal(size, 80n, 'CLONE_ARGS_SIZE_VER1');
    const args = written(plan, argsAt!, 80);
    t.equal(args.readBigUInt64LE(0), THREAD_CLONE_FLAGS | CLONE.CHILD_CLEARTID, 'VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|CHILD_CLEARTID');
    t.equal(args.readBigUInt64LE(16), t0.clearChildTid, "child_tid = the thread's clear_child_tid");
    t.equal(args.readBigUInt64LE(32), 0n, 'exit_signal 0: a thread');
    t.equal(args.readBigUInt64LE(72), 1n, 'set_tid_size 1');
    t.equal(written(plan, args.readBigUInt64LE(64), 4).readInt32LE(0), t0.tid, `set_tid points at ${t0.tid}`);
  }
});

t.test('per-thread steps: injected into the thread after its creation, ptrace state by tid, DR7 last, masks last', async (t) => {
  const image = threaded();
  const plan = compileRestorePlan(image, probe, POLICY);
  for (const t0 of image.threads) {
    const created = plan.indexOf(injected(plan, NR.clone3).find((s) => s.expect === BigInt(t0.tid))!);
    const own = plan.filter((s) => 'pid' in s.op && s.op.pid === t0.tid);
    t.ok(
      own.every((s) => plan.indexOf(s) > created),
      `thread ${t0.tid}: nothing addresses it before it exists`,
    );
    t.same(
      injected(plan, NR.rseq, t0.tid).map(argsOf),
      [[t0.rseq!.area, 32n, 0n, 0x53053053n]],
      `thread ${t0.tid}: its own rseq registration, injected into it`,
    );
    t.same(injected(plan, NR.set_robust_list, t0.tid).map(argsOf), [[t0.robustList, 24n]], `thread ${t0.tid}: its robust list`);
    t.equal(injected(plan, NR.set_tid_address, t0.tid).length, 0, 'clear_child_tid comes with clone3, not set_tid_address');
    const setregs = plan.find((s) => s.op.op === 'SETREGS' && s.op.pid === t0.tid)!.op as { regs: { rip: bigint; rsp: bigint; rbx: bigint; fs_base: bigint } };
    t.same(
      [setregs.regs.rip, setregs.regs.rsp, setregs.regs.rbx, setregs.regs.fs_base],
      [t0.regs.rip, t0.regs.rsp, t0.regs.rbx, t0.regs.fs_base],
      `thread ${t0.tid}: its own registers and TLS`,
    );
    const xstate = plan.find((s) => s.op.op === 'SETREGSET' && s.op.pid === t0.tid && s.op.noteType === NT_X86_XSTATE)!.op as { data: Uint8Array };
    t.ok(Buffer.from(xstate.data).equals(t0.xstate), `thread ${t0.tid}: its own xstate`);
    const pokes = plan.filter((s) => s.op.op === 'POKEUSER' && s.op.pid === t0.tid).map((s) => s.op as { offset: number; value: bigint });
    t.same(
      pokes.map((p) => p.offset),
      [0, 1, 2, 3, 6, 7].map(debugRegOffset),
      `thread ${t0.tid}: DR0-3, DR6, DR7 last`,
    );
    t.equal(pokes.at(-1)!.value, t0.debugRegs.dr7);
    const mask = plan.find((s) => s.op.op === 'SETSIGMASK' && s.op.pid === t0.tid);
    t.equal((mask?.op as { mask: bigint } | undefined)?.mask, t0.blocked, `thread ${t0.tid}: its own mask`);
    t.ok(
      plan.slice(plan.indexOf(mask!) + 1).every((s) => s.op.op === 'SETSIGMASK' || s.op.op === 'WRITE_MEM'),
      'nothing that runs a task after the masks',
    );
  }
  const altstack = injected(plan, NR.sigaltstack, 43);
  t.equal(altstack.length, 1, 'thread 43 gets its alternate stack');
  t.equal(written(plan, argsOf(altstack[0]!)[0]!, 24).readBigUInt64LE(0), 0x100c2000n);
  t.equal(injected(plan, NR.sigaltstack, 45).length, 0, 'a disabled alternate stack needs no call');
  const queued = injected(plan, NR.rt_tgsigqueueinfo);
  t.same(
    queued.map((s) => [s.op.op === 'INJECT_SYSCALL' && s.op.pid, ...argsOf(s).slice(0, 3)]),
    [[43, 42n, 43n, 10n]],
    "thread 43's SIGUSR1 queued again from inside thread 43 (SI_TKILL may only be queued by its target)",
  );
  t.same(
    injected(plan, NR.set_tid_address, 42).map((s) => [argsOf(s)[0], s.expect]),
    [[0x100c3400n, 42n]],
    "the main thread's clear_child_tid (set_tid_address answers its tid)",
  );
  t.same(injected(plan, NR.set_robust_list, 42).map(argsOf), [[0x100c3420n, 24n]], 'and its robust list');
  const mainRegs = indexOf(plan, (s) => s.op.op === 'SETREGS' && s.op.pid === 42);
  t.ok(
    injected(plan, NR.clone3).every((s) => plan.indexOf(s) < mainRegs),
    "the main thread's registers are set after it made the threads",
  );
  t.equal(plan.at(-1)!.op.op, 'SETSIGMASK', 'the last step is a mask');
  t.same(
    ops(plan)
      .filter((o) => o.op === 'SETSIGMASK')
      .map((o) => (o as { pid: number }).pid),
    [42, 42, 43, 45],
    "masks: block everything, then the main thread's and each thread's own",
  );
});

t.test("an image without threads compiles to the plan it always did, plus the main thread's links", async (t) => {
  const plain = compileRestorePlan(syntheticImage(), probe, POLICY);
  t.equal(injected(plain, NR.clone3).length, 0);
  t.notOk(
    plain.some((s) => s.op.op === 'SETSIGMASK' && s.op.mask === ALL_BLOCKABLE),
    'no blocking step when there is no thread and no signal state to restore',
  );
  const linked = compileRestorePlan(syntheticImage({ links: { clearChildTid: 0x100c3400n, robustList: 0n } }), probe, POLICY);
  t.equal(linked.length, plain.length + 1, 'a clear_child_tid is one set_tid_address');
});

t.test('omit=thread-xstate, thread-masks, thread-links, rseq, signals, debugregs each drop exactly their piece', async (t) => {
  const image = threaded();
  const full = compileRestorePlan(image, probe, POLICY);
  const plan = (omit: string): PlanStep[] => compileRestorePlan(image, probe, { ...POLICY, omit: parseOmit(omit) });
  const threadSteps = (p: PlanStep[], op: string) => p.filter((s) => s.op.op === op && 'pid' in s.op && s.op.pid !== 42);

  const noXstate = plan('thread-xstate');
  t.equal(threadSteps(noXstate, 'SETREGSET').length, 0, 'thread-xstate: no thread gets its own');
  t.ok(
    indexOf(noXstate, (s) => s.op.op === 'SETREGSET' && s.op.pid === 42) < indexOf(noXstate, (s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === NR.clone3),
    "each keeps the copy of the main thread's it was created with",
  );
  t.equal(noXstate.length, full.length - 2);

  const noMasks = plan('thread-masks');
  t.equal(threadSteps(noMasks, 'SETSIGMASK').length, 0, 'thread-masks: no thread mask');
  t.equal(noMasks.length, full.length - 2);

  const noLinks = plan('thread-links');
  t.equal(injected(noLinks, NR.set_robust_list).length + injected(noLinks, NR.set_tid_address).length, 0, 'thread-links: no robust list, no set_tid_address');
  for (const s of injected(noLinks, NR.clone3))
    t.equal(written(noLinks, argsOf(s)[0]!, 8).readBigUInt64LE(0), THREAD_CLONE_FLAGS, 'and no CLONE_CHILD_CLEARTID');

  t.equal(injected(plan('rseq'), NR.rseq).length, 0, 'rseq: no thread registers');
  const noSignals = plan('signals');
  t.equal(
    injected(noSignals, NR.rt_tgsigqueueinfo).length + injected(noSignals, NR.sigaltstack).length + noSignals.filter((s) => s.op.op === 'SETSIGMASK').length,
    0,
    'signals: no queue, no alternate stack, no mask at all',
  );
  t.equal(injected(noSignals, NR.clone3).length, 2, 'the threads are still made');
  t.equal(threadSteps(plan('debugregs'), 'POKEUSER').length, 0, 'debugregs: none for any thread');
});

t.test('the rseq fixup and the syscall restart apply to each thread on its own', async (t) => {
  // Thread 43 stopped inside a section whose descriptor lies in .data; thread 45 interrupted in futex().
  const cs = { at: 0x100a0100n, start: 0x10001300n, postCommit: 0x40n, abort: 0x10001380n };
  const base = threaded();
  const data = Buffer.from(base.memory.get(base.regions[1]!.entry!)!);
  const d = Number(cs.at - base.regions[1]!.start);
  data.fill(0, d, d + 32);
  data.writeBigUInt64LE(cs.start, d + 8);
  data.writeBigUInt64LE(cs.postCommit, d + 16);
  data.writeBigUInt64LE(cs.abort, d + 24);
  const heap = Buffer.from(base.memory.get(base.regions[2]!.entry!)!);
  const area43 = base.threads[0]!.rseq!.area;
  heap.writeBigUInt64LE(cs.at, Number(area43 + 8n - base.regions[2]!.start));
  const memory = new Map(base.memory).set(base.regions[1]!.entry!, data).set(base.regions[2]!.entry!, heap);
  const futex = syntheticRegs({ rip: 0x10001400n, rsp: 0x7ffffffe0000n, orig_rax: 202n, rax: BigInt.asUintN(64, -512n) });
  const image = {
    ...base,
    memory,
    threads: [
      { ...base.threads[0]!, regs: { ...base.threads[0]!.regs, rip: cs.start + 8n } },
      { ...base.threads[1]!, regs: futex },
    ],
  };

  const plan = compileRestorePlan(image, probe, POLICY);
  const regsOf = (p: PlanStep[], tid: number) => (p.find((s) => s.op.op === 'SETREGS' && s.op.pid === tid)!.op as { regs: { rip: bigint; rax: bigint } }).regs;
  t.equal(regsOf(plan, 43).rip, cs.abort, 'thread 43 inside its section resumes at abort_ip');
  t.equal(written(plan, area43 + 8n, 8).readBigUInt64LE(0), 0n, 'its rseq_cs is cleared in the memory the plan writes');
  t.equal(regsOf(plan, 42).rip, base.regs.rip, 'the main thread, outside any section, keeps its IP');
  t.same([regsOf(plan, 45).rip, regsOf(plan, 45).rax], [0x10001400n - 2n, 202n], 'thread 45 issues its interrupted futex() again');

  const off = compileRestorePlan(image, probe, { ...POLICY, rseqFixup: 'off' });
  t.equal(regsOf(off, 43).rip, cs.start + 8n, 'rseq-fixup=off: thread 43 goes back inside');
  t.equal(written(off, area43 + 8n, 8).readBigUInt64LE(0), cs.at, 'with rseq_cs as checkpointed');
  t.equal(
    regsOf(compileRestorePlan(image, probe, { ...POLICY, syscallRestart: 'off' }), 45).rax,
    BigInt.asUintN(64, -512n),
    'syscall-restart=off: the raw -ERESTARTSYS',
  );

  const deprecated = Buffer.from(data);
  deprecated.writeUInt32LE(4, d + 4);
  const noRestart = compileRestorePlan({ ...image, memory: new Map(memory).set(base.regions[1]!.entry!, deprecated) }, probe, POLICY);
  t.equal(regsOf(noRestart, 43).rip, cs.start + 8n, 'NO_RESTART flags: the IP stays');
  const last = noRestart.at(-1)!.op as { op: string; pid: number; address: bigint; data: Uint8Array };
  t.same(
    [last.op, last.pid, last.address, Buffer.from(last.data).readBigUInt64LE(0)],
    ['WRITE_MEM', 43, area43 + 8n, cs.at],
    "and thread 43's rseq_cs is written back last",
  );
});

t.test("sigreturn and popf: one trampoline for every thread, each frame on the thread's own stack", async (t) => {
  const image = threaded();
  for (const restorer of ['sigreturn', 'popf'] as const) {
    const plan = compileRestorePlan(image, probe, { ...POLICY, restorer });
    t.equal(
      plan.filter((s) => s.why.includes('trampoline') && s.op.op === 'INJECT_SYSCALL' && s.op.nr === NR.mmap).length,
      1,
      `${restorer}: the trampoline page is mapped once`,
    );
    const page = argsOf(plan.find((s) => s.why.includes('trampoline') && s.op.op === 'INJECT_SYSCALL' && s.op.nr === NR.mmap)!)[0]!;
    for (const t0 of image.threads) {
      const setregs = plan.find((s) => s.op.op === 'SETREGS' && s.op.pid === t0.tid)!.op as { regs: { rip: bigint; rsp: bigint } };
      t.equal(setregs.regs.rip, page, `${restorer}: thread ${t0.tid} starts on the shared trampoline`);
      t.ok(setregs.regs.rsp < t0.regs.rsp - 128n && setregs.regs.rsp > t0.regs.rsp - 0x2000n, `${restorer}: its frame below its own red zone`);
      if (restorer === 'sigreturn') {
        const frame = written(plan, setregs.regs.rsp - 8n, 440);
        t.equal(frame.readBigUInt64LE(304), t0.blocked, `sigreturn: thread ${t0.tid}'s own mask in its frame`);
        t.equal(frame.readBigUInt64LE(48 + 128), t0.regs.rip, 'and its own rip');
      }
    }
  }
  t.notOk(
    compileRestorePlan(image, probe, { ...POLICY, restorer: 'sigreturn' }).some((s) => s.op.op === 'SETREGSET'),
    'sigreturn: every xstate travels in a frame',
  );
});

t.test('dry run: the plan names every thread; rf=reject refuses RF in any thread', async (t) => {
  const text = formatPlan(dryRunPlan(threaded(), POLICY));
  t.match(text, /create thread 43: clone3 flags 0x250f00, set_tid 43, clear_child_tid 0x100c3010/);
  t.match(text, /SETREGS pid 45 rip=0x10001320/);
  const rf = threaded({ threads: [thread(43, 1, { regs: syntheticRegs({ eflags: 0x10202n }) })] });
  const error = (() => {
    try {
      dryRunPlan({ ...rf, regs: syntheticRegs({ eflags: 0x202n }) }, { rf: 'reject' });
    } catch (e) {
      return e;
    }
  })() as ImageRejectedError;
  t.ok(error instanceof ImageRejectedError, 'refused');
  t.equal(error.entry, 'threads.json');
  t.equal(error.field, 'threads[0].regs.eflags.RF');
});

function rejects(t: Test, entries: Map<string, Buffer>, entry: string, field: RegExp | string): void {
  try {
    parseImageEntries(entries);
    t.fail(`accepted, expected a refusal naming ${entry} ${field}`);
  } catch (error) {
    t.ok(error instanceof ImageRejectedError, `refused: ${(error as Error).message}`);
    t.equal((error as ImageRejectedError).entry, entry);
    t.match((error as ImageRejectedError).field, field);
  }
}

/** The image's entries with threads.json edited (and every digest recomputed). */
function withThreadsJson(
  edit: (j: { main: Record<string, unknown>; threads: Array<Record<string, unknown>> }) => void,
  extra: Record<string, Buffer> = {},
): Map<string, Buffer> {
  const entries = imageEntries(threaded());
  const json = JSON.parse(entries.get('threads.json')!.toString());
  edit(json);
  return reseal(entries, { 'threads.json': Buffer.from(JSON.stringify(json)), ...extra });
}

t.test('threads.json round-trips through the tar', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-threads-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'image.tar');
  const image = threaded();
  await writeCheckpointImage(image, file);
  const back = await readCheckpointImage(file);
  t.same(back.links, image.links);
  t.equal(back.threads.length, 2);
  for (const [i, t0] of image.threads.entries()) {
    const b = back.threads[i]!;
    t.ok(b.xstate.equals(t0.xstate) && b.pending.every((p, j) => p.equals(t0.pending[j]!)), `thread ${t0.tid}: xstate and queue intact`);
    t.same({ ...b, xstate: 0, pending: 0 }, { ...t0, xstate: 0, pending: 0 }, `thread ${t0.tid}: every other field intact`);
  }
  t.ok(imageEntries(image).has(threadXstateEntry(45)), 'one xstate entry per thread');
});

t.test('hostile threads.json fields are refused, naming the field', async (t) => {
  const e = 'threads.json';
  rejects(
    t,
    withThreadsJson((j) => (j.threads[1]!.tid = 43)),
    e,
    'threads[1].tid',
  );
  rejects(
    t,
    withThreadsJson((j) => j.threads.reverse()),
    e,
    'threads[1].tid',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.tid = 42)),
    e,
    'threads[0].tid',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.tid = 4194305)),
    e,
    'threads[0].tid',
  );
  rejects(
    t,
    withThreadsJson((j) => ((j.threads[0]!.regs as Record<string, string>).eflags = '0x3246')),
    e,
    'threads[0].regs.eflags',
  );
  rejects(
    t,
    withThreadsJson((j) => ((j.threads[1]!.regs as Record<string, string>).cs = '0x10')),
    e,
    'threads[1].regs.cs',
  );
  rejects(
    t,
    withThreadsJson((j) => ((j.threads[0]!.debugRegs as Record<string, string>).dr7 = '0x2000')),
    e,
    'threads[0].debugRegs.dr7',
  );
  rejects(
    t,
    withThreadsJson((j) => ((j.threads[1]!.rseq as Record<string, string>).area = '0x100c0060')),
    e,
    'threads[1].rseq.area',
  );
  rejects(
    t,
    withThreadsJson((j) => ((j.threads[1]!.rseq as Record<string, string>).area = '0x100c0020')),
    e,
    'threads[1].rseq.area',
  );
  rejects(
    t,
    withThreadsJson((j) => ((j.threads[0]!.rseq as Record<string, unknown>).size = 8)),
    e,
    'threads[0].rseq.size',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.blocked = '0x100')),
    e,
    'threads[0].blocked',
  );
  rejects(
    t,
    withThreadsJson((j) => ((j.threads[0]!.altstack as Record<string, string>).sp = '0x10000000')),
    e,
    'threads[0].altstack.sp',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.pending = ['00'.repeat(128)])),
    e,
    'threads[0].pending[0].si_signo',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.pending = ['0a'])),
    e,
    'threads[0].pending[0]',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.clearChildTid = '0x100c3002')),
    e,
    'threads[0].clearChildTid',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.clearChildTid = '0x10000000')),
    e,
    'threads[0].clearChildTid',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.robustList = '0x100c4ff0')),
    e,
    'threads[0].robustList',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.main.robustList = '0x7ffffffff000')),
    e,
    'main.robustList',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.main.extra = '0x0')),
    e,
    'main.extra',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.comm = 'x')),
    e,
    'threads[0].comm',
  );
  rejects(
    t,
    withThreadsJson((j) => ((j as Record<string, unknown>).threads = 'all')),
    e,
    'threads',
  );
  rejects(
    t,
    withThreadsJson((j) => (j.threads[0]!.xstate = 'memory/0000.bin')),
    e,
    'threads[0].xstate',
  );
  const short = syntheticXstate(704);
  rejects(
    t,
    withThreadsJson(() => {}, { [threadXstateEntry(43)]: short }),
    threadXstateEntry(43),
    '(size)',
  );
  rejects(
    t,
    withThreadsJson(() => {}, { [threadXstateEntry(45)]: syntheticXstate(832, 0x3n) }),
    threadXstateEntry(45),
    'xcr0',
  );
  rejects(
    t,
    withThreadsJson(() => {}, { 'threads/44-xstate.bin': syntheticXstate() }),
    'threads/44-xstate.bin',
    '(entry)',
  );
  const entries = imageEntries(threaded());
  entries.delete(threadXstateEntry(45));
  rejects(
    t,
    reseal(entries, {}, (m) => delete (m.entries as Record<string, unknown>)[threadXstateEntry(45)]),
    threadXstateEntry(45),
    '(entry)',
  );
});

const SEED = Number(process.env.CRH_FUZZ_SEED ?? 20261124);
/** Invalid values for fields of a thread record, by path below threads[i]. */
const INVALID: Array<{ path: string[]; values: unknown[] }> = [
  { path: ['tid'], values: [0, -1, 42, 4194305, 1.5, '43', null] },
  { path: ['regs', 'eflags'], values: ['0x20246', '0x46', 'x', 582] },
  { path: ['regs', 'rip'], values: ['0xffffffff81000000', '0x800000000000'] },
  { path: ['regs', 'ss'], values: ['0x18', '0x0'] },
  { path: ['regs', 'r12'], values: [undefined, '', 12] },
  { path: ['debugRegs', 'dr7'], values: ['0x2000', '0x20001', '0x100000000'] },
  { path: ['debugRegs', 'dr1'], values: ['0x800000000000', '0xffffffffff600000'] },
  { path: ['rseq', 'area'], values: ['0x100c0041', '0x10000000', '0x7ffffffff000'] },
  { path: ['rseq', 'signature'], values: ['0x100000000', 7] },
  { path: ['blocked'], values: ['0x100', '0x40000', 'all'] },
  { path: ['altstack', 'flags'], values: [8, 2 ** 31, 'x'] },
  { path: ['pending'], values: [['0a'], [null], 'x', ['00'.repeat(128)]] },
  { path: ['clearChildTid'], values: ['0x1', '0x10000000', '0x800000000000', undefined] },
  { path: ['robustList'], values: ['0x100c3104', '0x7fffffffefff0', '0x10000000'] },
  { path: ['xstate'], values: ['threads/44-xstate.bin', 'xstate.bin', null] },
  { path: ['unknown'], values: [1] },
];

t.test("random invalid values in random threads, resealed: every one refused naming threads.json or the thread's xstate", async (t) => {
  const random = prng(SEED);
  const base = imageEntries(threaded());
  const accepted: string[] = [];
  const crashes: string[] = [];
  const MUTATIONS = 3000;
  for (let i = 0; i < MUTATIONS; i++) {
    const target = INVALID[Math.floor(random() * INVALID.length)]!;
    const value = target.values[Math.floor(random() * target.values.length)];
    const which = Math.floor(random() * 2);
    const json = JSON.parse(base.get('threads.json')!.toString());
    let at = json.threads[which];
    for (const key of target.path.slice(0, -1)) at = at[key];
    const last = target.path.at(-1)!;
    if (value === undefined) delete at[last];
    else at[last] = value;
    try {
      parseImageEntries(reseal(base, { 'threads.json': Buffer.from(JSON.stringify(json)) }));
      accepted.push(`threads[${which}].${target.path.join('.')} = ${JSON.stringify(value)}`);
    } catch (error) {
      if (!(error instanceof ImageRejectedError) || !['threads.json', 'threads/44-xstate.bin'].includes(error.entry))
        crashes.push(`threads[${which}].${target.path.join('.')} = ${JSON.stringify(value)}: ${String(error)}`);
    }
  }
  t.comment(`seed ${SEED}: ${MUTATIONS} field mutations of threads.json`);
  t.same([...new Set(accepted)], [], 'no invalid value is accepted');
  t.same(crashes, [], 'every refusal is an ImageRejectedError naming threads.json');
});

t.test('byte-level mutations of a threaded image: refused, or read back unchanged', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-threads-fuzz-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'original.tar');
  await writeCheckpointImage(threaded(), file);
  const bytes = await readFile(file);
  const baseline = await readCheckpointImage(file);
  const random = prng(SEED + 1);
  const mutant = path.join(dir, 'mutant.tar');
  const accepted: string[] = [];
  const crashes: string[] = [];
  const MUTATIONS = 1500;
  for (let i = 0; i < MUTATIONS; i++) {
    const copy = Buffer.from(bytes);
    const at = Math.floor(random() * copy.length);
    copy[at] = copy[at]! ^ (1 << Math.floor(random() * 8));
    await writeFile(mutant, copy);
    try {
      const image = await readCheckpointImage(mutant);
      if (!isDeepStrictEqual({ ...image, memory: [...image.memory] }, { ...baseline, memory: [...baseline.memory] })) accepted.push(`bit flip ${i} at ${at}`);
    } catch (error) {
      if (!(error instanceof ImageRejectedError)) crashes.push(`bit flip ${i} at ${at}: ${String(error)}`);
    }
  }
  t.same(accepted, [], 'no changed image is accepted');
  t.same(crashes, [], 'no error other than ImageRejectedError');
});
