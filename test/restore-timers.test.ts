// expect: timers.ts reads /proc/PID/timers and timerfd fdinfo as the kernel prints them, encodes the structures the timer calls read, and compiles timer steps that recreate POSIX timer ids in order (placeholders created and deleted for gaps), aim a thread-id timer at the restored main thread, arm an expired periodic timer with one interval, move a timerfd to its number with its unread ticks; an image's timers round-trip through the tar, and live timer signals are told from others.
import t from 'tap';
import { imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import {
  armingValue,
  encodeItimerspec,
  encodeItimerval,
  encodeSigevent,
  isTimerSignal,
  parseProcTimers,
  parseTimerfdFdinfo,
  procTimerProblem,
  timerSteps,
  NO_TIMERS,
} from '../harness/restore/timers.ts';
import { reseal, SYNTHETIC_TIMERS, syntheticImage } from './support/synthetic-image.ts';
import { ImageRejectedError } from '../harness/errors.ts';

const PROC_TIMERS =
  'ID: 0\nsignal: 34/0000000000005eed\nnotify: signal/pid.812\nClockID: 1\nID: 2\nsignal: 12/000000000000c0de\nnotify: signal/tid.812\nClockID: 1\nID: 3\nsignal: 10/0000000000000000\nnotify: thread/pid.812\nClockID: 1\n';

t.test('/proc/PID/timers and timerfd fdinfo', async (t) => {
  const timers = parseProcTimers(PROC_TIMERS);
  t.same(
    timers.map((x) => [x.id, x.signo, x.sival, x.notify, x.target, x.targetId, x.clock]),
    [
      [0, 34, 0x5eedn, 'signal', 'pid', 812, 1],
      [2, 12, 0xc0den, 'signal', 'tid', 812, 1],
      [3, 10, 0n, 'thread', 'pid', 812, 1],
    ],
  );
  t.same(
    timers.map(procTimerProblem).map((p) => p === undefined),
    [true, true, false],
    'SIGEV_THREAD is refused',
  );
  t.throws(() => parseProcTimers('ID: 1\nsignal: x\n'), /unreadable/);
  const info = parseTimerfdFdinfo(
    'pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\nclockid: 1\nticks: 3\nsettime flags: 01\nit_value: (0, 49406829)\nit_interval: (1, 5)\n',
  );
  t.same(info, { clock: 1, ticks: 3n, settimeFlags: 1, valueNs: 49_406_829n, intervalNs: 1_000_000_005n, flags: 0o2004002 });
});

t.test('structures as the kernel reads them', async (t) => {
  const spec = encodeItimerspec({ valueNs: 2_500_000_001n, intervalNs: 1_000_000n });
  t.same(
    [spec.readBigInt64LE(0), spec.readBigInt64LE(8), spec.readBigInt64LE(16), spec.readBigInt64LE(24)],
    [0n, 1_000_000n, 2n, 500_000_001n],
    'itimerspec: interval first',
  );
  const val = encodeItimerval({ valueNs: 1_000_001n, intervalNs: 1_000_000n });
  t.same([val.readBigInt64LE(0), val.readBigInt64LE(8), val.readBigInt64LE(16), val.readBigInt64LE(24)], [0n, 1000n, 0n, 1001n], 'itimerval in µs, rounded up');
  const ev = encodeSigevent({ signo: 12, sival: 0xc0den, notify: 'thread-id', tid: 812 }, 900);
  t.same(
    [ev.readBigUInt64LE(0), ev.readInt32LE(8), ev.readInt32LE(12), ev.readInt32LE(16)],
    [0xc0den, 12, 4, 900],
    'SIGEV_SIGNAL|SIGEV_THREAD_ID to the tid given',
  );
  t.equal(encodeSigevent({ signo: 0, sival: 0n, notify: 'none', tid: 0 }, 0).readInt32LE(12), 1, 'SIGEV_NONE');
  t.equal(armingValue({ valueNs: 5n, intervalNs: 0n }), 5n);
  t.equal(armingValue({ valueNs: 0n, intervalNs: 7n }), 7n, 'expired periodic: one interval');
  t.equal(armingValue({ valueNs: 0n, intervalNs: 0n }), undefined, 'disarmed');
});

t.test('the steps: ids in order, placeholders for gaps, thread-id to the restored pid, timerfd at its number', async (t) => {
  t.same(timerSteps(900, 42, NO_TIMERS, [0, 1, 2], 0x5000n), [], 'no timers, no steps');
  const steps = timerSteps(900, 42, SYNTHETIC_TIMERS, [0, 1, 2, 3], 0x5000n);
  const calls = steps.filter((s) => s.op.op === 'INJECT_SYSCALL').map((s) => s.op as unknown as { nr: number; args: bigint[] });
  t.same(
    calls.map((c) => c.nr),
    [9, 38, 222, 223, 222, 226, 222, 226, 222, 223, 283, 292, 3, 286, 16, 11],
    'mmap, setitimer, create+arm 0, placeholders 1 and 2, create+arm 3, timerfd (create, dup3, close, settime, ticks), munmap',
  );
  t.equal(calls[1]!.args[0], 0n, 'ITIMER_REAL');
  t.same(
    calls.filter((c) => c.nr === 226).map((c) => c.args[0]),
    [1n, 2n],
    'the placeholders deleted are ids 1 and 2',
  );
  t.same(
    calls.filter((c) => c.nr === 222).map((c) => c.args[0]),
    [1n, 1n, 1n, 2n],
    'clocks: MONOTONIC, placeholders, PROCESS_CPUTIME_ID',
  );
  t.same(calls.find((c) => c.nr === 283)!.args, [1n, 0o4000n], 'timerfd_create(MONOTONIC, O_NONBLOCK)');
  t.same(calls.find((c) => c.nr === 292)!.args, [4n, 5n, 0n], 'dup3 from the lowest free fd (4) to 5');
  t.match(steps.map((s) => s.why).join('\n'), /thread 900/, 'the thread-id timer aimed at the main thread follows it to pid 900');
  t.match(steps.map((s) => s.why).join('\n'), /3 unread expiration\(s\) on timerfd 5/);
  const write = steps.find((s) => s.op.op === 'WRITE_MEM')!.op as unknown as { data: Buffer };
  const sigevents = [...Array(write.data.length / 8).keys()].map((i) => write.data.readInt32LE(i * 8)).filter((v) => v === 900);
  t.ok(sigevents.length >= 1, 'the sigevent written names tid 900');
});

t.test('timers round-trip through the image, and live timer signals are recognised', async (t) => {
  const image = syntheticImage({ timers: SYNTHETIC_TIMERS });
  const read = parseImageEntries(imageEntries(image));
  t.same(read.timers, SYNTHETIC_TIMERS);
  const info = (signo: number, code: number, timerid = 0): Buffer => {
    const b = Buffer.alloc(128);
    b.writeInt32LE(signo, 0);
    b.writeInt32LE(code, 8);
    b.writeInt32LE(timerid, 16);
    return b;
  };
  t.ok(isTimerSignal(info(14, 0x80), SYNTHETIC_TIMERS), 'SIGALRM from ITIMER_REAL');
  t.notOk(isTimerSignal(info(14, 0), SYNTHETIC_TIMERS), 'SIGALRM sent by kill() is not');
  t.ok(isTimerSignal(info(34, -2, 0), SYNTHETIC_TIMERS), 'POSIX timer 0');
  t.notOk(isTimerSignal(info(34, -2, 1), SYNTHETIC_TIMERS), 'no timer 1');
  t.notOk(isTimerSignal(info(14, 0x80), NO_TIMERS), 'not when timers are omitted');
});

t.test('a version 7 image (no timers.json) is refused, naming what it lacks', async (t) => {
  const entries = imageEntries(syntheticImage());
  entries.delete('timers.json');
  const old = reseal(entries, {}, (m) => {
    m.version = 7;
    delete (m.entries as Record<string, unknown>)['timers.json'];
  });
  let error: unknown;
  try {
    parseImageEntries(old);
  } catch (e) {
    error = e;
  }
  t.ok(error instanceof ImageRejectedError, `refused: ${(error as Error | undefined)?.message}`);
  t.match((error as ImageRejectedError).message, /has no timers\.json/);
  t.equal((error as ImageRejectedError).field, 'version');
});
