// expect: a sleep interrupted with ERESTART_RESTARTBLOCK and rmtp is re-issued as an absolute CLOCK_MONOTONIC clock_nanosleep on the same syscall instruction (relative, for the remaining time, in another boot), its timespec written below the red zone; a restart block with no rmtp, or of poll, is named as uncapturable; sleep.json is validated field by field against the registers and memory; syscall-restart=off leaves the raw -516.
import t from 'tap';
import { rejects } from './support/rejects.ts';
import { imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import { compileRestorePlan } from '../harness/restore/plan.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import {
  deadlineAddress,
  interruptedSleep,
  reissueSleep,
  restartBlockProblem,
  sleepDeadline,
  threadRestartBlockProblem,
  timespecBytes,
  timespecNs,
} from '../harness/restore/sleep-deadline.ts';
import type { UserRegs } from '../harness/x86/registers.ts';
import { reseal, SYNTHETIC_BOOT_ID, SYNTHETIC_MAPS, SYNTHETIC_RMTP, syntheticRegs, syntheticSleepImage } from './support/synthetic-image.ts';

const POLICY = { rf: 'keep-and-preserve', regs: 'full', restorer: 'ptrace', rseqFixup: 'on', syscallRestart: 'on' } as const;
const interrupted = (nr: bigint, overrides: Partial<UserRegs> = {}): UserRegs => syntheticRegs({ rax: BigInt.asUintN(64, -516n), orig_rax: nr, ...overrides });

t.test('which interrupted calls have a deadline the checkpoint can see', async (t) => {
  t.same(interruptedSleep(interrupted(35n, { rsi: 0x1000n })), { nr: 35, rmtp: 0x1000n }, 'nanosleep: rmtp is rsi');
  t.same(interruptedSleep(interrupted(230n, { r10: 0x2000n })), { nr: 230, rmtp: 0x2000n }, 'clock_nanosleep: rmtp is r10');
  t.equal(
    interruptedSleep(syntheticRegs({ rax: BigInt.asUintN(64, -514n), orig_rax: 230n })),
    undefined,
    'ERESTARTNOHAND (an absolute sleep) restarts with its own deadline',
  );
  t.equal(restartBlockProblem(interrupted(35n, { rsi: 0x1000n })), undefined, 'nanosleep with rmtp: capturable');
  t.equal(
    restartBlockProblem(interrupted(35n, { rsi: 0n })),
    undefined,
    'nanosleep without rmtp (usleep): not refused, it starts over with its original arguments',
  );
  t.match(restartBlockProblem(interrupted(7n)), /system call 7 .*restart_block/, 'poll: named');
  t.match(restartBlockProblem(interrupted(202n)), /system call 202/, 'a futex wait with a timeout: named');
  t.equal(restartBlockProblem(syntheticRegs({ rax: BigInt.asUintN(64, -512n), orig_rax: 202n })), undefined, 'ERESTARTSYS: no restart block');
  t.match(
    threadRestartBlockProblem(9, interrupted(35n, { rsi: 0x1000n })),
    /^thread 9: .*main thread's sleep deadline only/,
    'a sleeping thread other than the main one: named',
  );
  t.match(threadRestartBlockProblem(9, interrupted(7n)), /^thread 9: system call 7/, 'a polling thread: named');
  t.equal(threadRestartBlockProblem(9, syntheticRegs({ rax: BigInt.asUintN(64, -512n), orig_rax: 202n })), undefined, 'a thread in a futex wait: none');
});

t.test('timespecs and the deadline', async (t) => {
  t.equal(timespecNs(timespecBytes(1_500_000_001n)), 1_500_000_001n, 'round trip');
  const bad = Buffer.alloc(16);
  bad.writeBigInt64LE(1_000_000_000n, 8);
  t.equal(timespecNs(bad), undefined, 'tv_nsec of a second is not a timespec');
  bad.writeBigInt64LE(-1n, 0);
  t.equal(timespecNs(bad), undefined, 'negative seconds');
  t.equal(timespecNs(Buffer.alloc(8)), undefined, 'short');
  const d = sleepDeadline(35, 0x1000n, timespecBytes(2_000_000_000n), timespecBytes(50_000_000_000n), SYNTHETIC_BOOT_ID)!;
  t.equal(d.deadlineNs, 52_000_000_000n, 'clock + remaining');
  t.equal(deadlineAddress(0x7fffffffe008n), 0x7fffffffdf70n, 'below the 128-byte red zone, 16-byte aligned');
});

t.test('re-issued with the deadline', async (t) => {
  const image = syntheticSleepImage();
  const same = reissueSleep(image.regs, image.sleep!, true);
  t.equal(same.regs.rip, image.regs.rip - 2n, 'on the interrupted syscall instruction');
  t.equal(same.regs.rax, 230n, 'clock_nanosleep');
  t.equal(same.regs.orig_rax, 230n);
  t.equal(same.regs.rdi, 1n, 'CLOCK_MONOTONIC');
  t.equal(same.regs.rsi, 1n, 'TIMER_ABSTIME');
  t.equal(same.regs.rdx, same.address, 'the deadline placed below the red zone');
  t.equal(same.regs.r10, SYNTHETIC_RMTP, "the program's rmtp");
  t.equal(timespecNs(same.timespec), 101_500_000_000n, 'the absolute deadline');
  const other = reissueSleep(image.regs, image.sleep!, false);
  t.equal(other.regs.rsi, 0n, 'another boot: relative');
  t.equal(timespecNs(other.timespec), 1_500_000_000n, 'for the remaining time');
  t.match(other.note, /not this one/);
});

t.test('the plan: the timespec written, the registers rewound; syscall-restart=off leaves -516', async (t) => {
  const image = syntheticSleepImage();
  const probe = { pid: 77, regs: syntheticRegs(), maps: parseMaps(SYNTHETIC_MAPS).filter((m) => m.name !== '[heap]'), bootId: SYNTHETIC_BOOT_ID };
  const plan = compileRestorePlan(image, probe, POLICY);
  const setRegs = plan.find((s) => s.op.op === 'SETREGS')!.op as { regs: UserRegs };
  t.equal(setRegs.regs.rax, 230n);
  t.equal(setRegs.regs.rsi, 1n, 'absolute in the same boot');
  const write = plan.find((s) => s.op.op === 'WRITE_MEM' && s.op.address === setRegs.regs.rdx);
  t.ok(write, "the deadline's timespec is written");
  t.equal(timespecNs(Buffer.from((write!.op as { data: Uint8Array }).data)), 101_500_000_000n);
  const lastContents = plan.findLastIndex((s) => s.op.op === 'WRITE_MEM' && s.why.startsWith('contents'));
  t.ok(plan.indexOf(write!) > lastContents, 'after the contents of the stack it lies in');
  const elsewhere = compileRestorePlan(image, { ...probe, bootId: '11111111-2222-3333-4444-555555555555' }, POLICY);
  t.equal((elsewhere.find((s) => s.op.op === 'SETREGS')!.op as { regs: UserRegs }).regs.rsi, 0n, 'another boot: relative');
  const off = compileRestorePlan(image, probe, { ...POLICY, syscallRestart: 'off' });
  t.equal((off.find((s) => s.op.op === 'SETREGS')!.op as { regs: UserRegs }).regs.rax, BigInt.asUintN(64, -516n), 'off: the raw -ERESTART_RESTARTBLOCK');
  t.notOk(
    off.some((s) => s.op.op === 'WRITE_MEM' && s.why.includes('clock_nanosleep')),
    'off: no timespec',
  );
});

t.test('sleep.json round-trips and is validated field by field', async (t) => {
  const base = imageEntries(syntheticSleepImage());
  t.same(parseImageEntries(base).sleep, syntheticSleepImage().sleep, 'round trip');
  const withSleep = (change: Record<string, unknown> | null | unknown[]) => {
    const json = JSON.parse(base.get('sleep.json')!.toString()) as Record<string, unknown>;
    const value = change === null || Array.isArray(change) ? change : { ...json, ...change };
    return reseal(base, { 'sleep.json': Buffer.from(JSON.stringify(value)) });
  };
  t.equal(parseImageEntries(withSleep(null)).sleep, null, 'null: no deadline (the call starts over)');
  rejects(t, () => parseImageEntries(withSleep([])), 'sleep.json', '(root)');
  rejects(t, () => parseImageEntries(withSleep({ extra: 1 })), 'sleep.json', 'extra');
  rejects(t, () => parseImageEntries(withSleep({ nr: 7 })), 'sleep.json', 'nr');
  rejects(t, () => parseImageEntries(withSleep({ nr: 230 })), 'sleep.json', 'nr');
  rejects(t, () => parseImageEntries(withSleep({ rmtp: '0x100b0008' })), 'sleep.json', 'rmtp');
  rejects(t, () => parseImageEntries(withSleep({ rmtp: 12 })), 'sleep.json', 'rmtp');
  rejects(t, () => parseImageEntries(withSleep({ deadlineNs: '0x1' })), 'sleep.json', 'deadlineNs');
  rejects(t, () => parseImageEntries(withSleep({ remainingNs: '0x8000000000000000', deadlineNs: '0x80000017487b5800' })), 'sleep.json', 'deadlineNs');
  rejects(t, () => parseImageEntries(withSleep({ remainingNs: '-0x1' })), 'sleep.json', 'remainingNs');
  rejects(t, () => parseImageEntries(withSleep({ bootId: '../../etc' })), 'sleep.json', 'bootId');
  rejects(t, () => parseImageEntries(withSleep({ bootId: undefined })), 'sleep.json', 'bootId');
  // The registers must show the call: a sleep.json beside registers that are not in it is hostile.
  const plain = imageEntries(syntheticSleepImage());
  const regs = JSON.parse(plain.get('regs.json')!.toString()) as Record<string, string>;
  rejects(t, () => parseImageEntries(reseal(plain, { 'regs.json': Buffer.from(JSON.stringify({ ...regs, rax: '0x0' })) })), 'sleep.json', 'nr');
  // rmtp must be writable memory the image restores, and the deadline's slot below rsp too.
  rejects(
    t,
    () =>
      parseImageEntries(
        reseal(plain, {
          'regs.json': Buffer.from(JSON.stringify({ ...regs, rsi: '0x10000800' })),
          'sleep.json': Buffer.from(JSON.stringify({ ...JSON.parse(plain.get('sleep.json')!.toString()), rmtp: '0x10000800' })),
        }),
      ),
    'sleep.json',
    'rmtp',
  );
  rejects(t, () => parseImageEntries(reseal(plain, { 'regs.json': Buffer.from(JSON.stringify({ ...regs, rsp: '0x7ffffffde040' })) })), 'sleep.json', 'nr');
});
