/** A small, valid checkpoint image built in memory, for unit tests of the restore core. */
import type { ThreadState, TimerState } from '../../harness/restore/image-model.ts';
import { SIGINFO_BYTES } from '../../harness/restore/signals.ts';
import { memoryEntryName, type CheckpointImage } from '../../harness/restore/checkpoint-image.ts';
import type { LdtEntry } from '../../harness/restore/image-model.ts';
import { USER_REGS_FIELDS, type UserRegs } from '../../harness/x86/registers.ts';
import { sha256 } from '../../harness/util/hash.ts';

export const SYNTHETIC_MAPS = [
  '10000000-10001000 r--p 00000000 00:02 12 /usr/local/bin/hwbreak',
  '10001000-10080000 r-xp 00001000 00:02 12 /usr/local/bin/hwbreak',
  '100a0000-100a2000 rw-p 000a0000 00:02 12 /usr/local/bin/hwbreak',
  '100a2000-100c5000 rw-p 00000000 00:00 0 [heap]',
  '7ffff7ff9000-7ffff7ffd000 r--p 00000000 00:00 0 [vvar]',
  '7ffff7ffd000-7ffff7fff000 r-xp 00000000 00:00 0 [vdso]',
  '7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]',
].join('\n');

/** Two LDT entries as modify_ldt(0x11) makes them: a present 32-bit data segment (3) and a not-present one (5). */
export const SYNTHETIC_LDT: LdtEntry[] = [
  {
    entry_number: 3,
    base_addr: 0x100a2000,
    limit: 0x17,
    seg_32bit: 1,
    contents: 0,
    read_exec_only: 0,
    limit_in_pages: 0,
    seg_not_present: 0,
    useable: 1,
    lm: 0,
  },
  {
    entry_number: 5,
    base_addr: 0x100a3000,
    limit: 0x3f,
    seg_32bit: 1,
    contents: 0,
    read_exec_only: 0,
    limit_in_pages: 0,
    seg_not_present: 1,
    useable: 1,
    lm: 0,
  },
];

export const SYNTHETIC_RSEQ = { area: 0x100c0020n, size: 32, signature: 0x53053053 } as const;

export function syntheticXstate(size = 832, xfeatures = 0x7n, xstateBv = 0x3n): Buffer {
  const x = Buffer.alloc(size);
  x.writeUInt16LE(0x37f, 0); // fcw
  x.writeUInt32LE(0x1f80, 24); // mxcsr
  x.writeUInt32LE(0xffff, 28); // mxcsr_mask
  x.writeBigUInt64LE(xfeatures, 464); // XCR0, as ptrace reports it
  x.writeBigUInt64LE(xstateBv, 512);
  return x;
}

export function syntheticRegs(overrides: Partial<UserRegs> = {}): UserRegs {
  const regs = Object.fromEntries(USER_REGS_FIELDS.map((n, i) => [n, BigInt(i + 1) * 0x1111n])) as UserRegs;
  return {
    ...regs,
    orig_rax: 0xffff_ffff_ffff_ffffn,
    rip: 0x10001234n,
    rsp: 0x7fffffffe000n,
    eflags: 0x10246n, // RF | IF | ZF | PF | bit 1
    cs: 0x33n,
    ss: 0x2bn,
    ds: 0n,
    es: 0n,
    fs: 0n,
    gs: 0n,
    fs_base: 0x100c0000n,
    gs_base: 0n,
    ...overrides,
  };
}

export function syntheticImage(overrides: Partial<CheckpointImage> = {}): CheckpointImage {
  const regions = [
    { start: 0x10000000n, end: 0x10001000n, perms: 'r--p', name: '/usr/local/bin/hwbreak', file: '/usr/local/bin/hwbreak', offset: 0n },
    { start: 0x100a0000n, end: 0x100a2000n, perms: 'rw-p', name: '/usr/local/bin/hwbreak', file: '/usr/local/bin/hwbreak', offset: 0xa0000n },
    { start: 0x100a2000n, end: 0x100c5000n, perms: 'rw-p', name: '[heap]', file: null, offset: 0n },
    { start: 0x7ffffffde000n, end: 0x7ffffffff000n, perms: 'rw-p', name: '[stack]', file: null, offset: 0n },
  ].map((r, i) => ({ ...r, entry: memoryEntryName(i) as string | null, stored: [[r.start, r.end]] as Array<[bigint, bigint]> }));
  const memory = new Map(regions.map((r, i) => [r.entry!, Buffer.alloc(Number(r.end - r.start), i + 1)]));
  // The rseq area (in the heap, where static glibc keeps its TLS) starts zeroed: not in a critical section.
  memory
    .get(regions[2]!.entry!)!
    .fill(0, Number(SYNTHETIC_RSEQ.area - regions[2]!.start), Number(SYNTHETIC_RSEQ.area - regions[2]!.start) + SYNTHETIC_RSEQ.size);
  return {
    created: '2026-11-23T00:00:00.000Z',
    process: { binary: '/usr/local/bin/hwbreak', argv: ['/usr/local/bin/hwbreak', '5'], envp: [], noAslr: true, pid: 42 },
    platform: { accel: 'tcg', kernelRelease: '6.1.0-test' },
    regs: syntheticRegs(),
    xstate: syntheticXstate(),
    rseq: { ...SYNTHETIC_RSEQ },
    task: { pgid: 1, sid: 1, files: [] },
    links: { clearChildTid: 0n, robustList: 0n },
    threads: [],
    ldt: [],
    timers: { itimers: [], posix: [], timerfds: [] },
    sleep: null,
    pkeys: { allocated: [], tagged: [] },
    signals: { blocked: 0n, actions: [], altstack: { sp: 0n, flags: 2, size: 0n }, pending: { thread: [], shared: [] } },
    debugRegs: { dr0: 0x10001234n, dr1: 0n, dr2: 0n, dr3: 0n, dr6: 0xffff0ff0n, dr7: 0x1n },
    maps: SYNTHETIC_MAPS,
    regions,
    memory,
    ...overrides,
  };
}

/**
 * Replaces entries of an image and recomputes every digest that covers them
 * (the manifest's per-entry SHA-256 and manifest.sha256), the way a writer
 * would: what is left to catch is the content itself.
 */
export function reseal(
  entries: Map<string, Buffer>,
  changes: Record<string, Buffer>,
  editManifest: (m: Record<string, unknown>) => void = () => {},
): Map<string, Buffer> {
  const out = new Map(entries);
  const manifest = JSON.parse(out.get('manifest.json')!.toString()) as Record<string, unknown> & { entries: Record<string, { sha256: string; size: number }> };
  for (const [name, data] of Object.entries(changes)) {
    out.set(name, data);
    manifest.entries[name] = { sha256: sha256(data), size: data.length };
  }
  editManifest(manifest);
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  out.set('manifest.json', manifestBytes);
  out.set('manifest.sha256', Buffer.from(`${sha256(manifestBytes)}\n`));
  return out;
}

/**
 * Timers of every kind the image holds: ITIMER_REAL every 1 ms (its period
 * ended, SIGALRM pending), POSIX timers 0 and 3 (a gap to fill), one aimed
 * at the main thread (pid 42), and a timerfd at fd 5 with unread ticks.
 */
export const SYNTHETIC_TIMERS: TimerState = {
  itimers: [{ which: 'real', valueNs: 0n, intervalNs: 1_000_000n }],
  posix: [
    { id: 0, clock: 1, signo: 34, sival: 0x1234n, notify: 'signal', tid: 0, overrun: 2, valueNs: 400_000n, intervalNs: 5_000_000n },
    { id: 3, clock: 2, signo: 12, sival: 0n, notify: 'thread-id', tid: 42, overrun: 0, valueNs: 7_000_000_000n, intervalNs: 0n },
  ],
  timerfds: [{ fd: 5, clock: 1, flags: 0o4000, ticks: 3n, valueNs: 0n, intervalNs: 2_000_000n }],
};
/** Where the synthetic sleep's rmtp points: in the heap. */
export const SYNTHETIC_RMTP = 0x100b0000n;
export const SYNTHETIC_BOOT_ID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';

/**
 * An image checkpointed inside nanosleep (35): rax = -ERESTART_RESTARTBLOCK,
 * 1.5 s left at CLOCK_MONOTONIC 100 s, in boot SYNTHETIC_BOOT_ID.
 */
export function syntheticSleepImage(): CheckpointImage {
  const regs = syntheticRegs({ rax: BigInt.asUintN(64, -516n), orig_rax: 35n, rdi: 0x100b0010n, rsi: SYNTHETIC_RMTP, rip: 0x10001236n });
  const sleep = {
    nr: 35,
    rmtp: SYNTHETIC_RMTP,
    remainingNs: 1_500_000_000n,
    checkpointClockNs: 100_000_000_000n,
    deadlineNs: 101_500_000_000n,
    bootId: SYNTHETIC_BOOT_ID,
  };
  return syntheticImage({ regs, sleep });
}

/** A 128-byte siginfo for `signo` sent by tgkill from pid 42 (SI_TKILL). */
export function syntheticSiginfo(signo: number): Buffer {
  const b = Buffer.alloc(SIGINFO_BYTES);
  b.writeInt32LE(signo, 0);
  b.writeInt32LE(-6, 8);
  b.writeInt32LE(42, 16);
  return b;
}

/** Thread `tid`, its own everything: rseq area and tid words in the heap, stack in [stack]. */
export function syntheticThread(tid: number, n: number, overrides: Partial<ThreadState> = {}): ThreadState {
  const x = syntheticXstate();
  x.writeUInt32LE(0x1f80 | (n << 13), 24);
  return {
    tid,
    regs: syntheticRegs({
      rip: 0x10001300n + BigInt(n) * 0x10n,
      rsp: 0x7ffffffe8000n - BigInt(n) * 0x2000n,
      fs_base: 0x100c1000n + BigInt(n) * 0x100n,
      rbx: 0xb0b0n + BigInt(n),
    }),
    xstate: x,
    debugRegs: { dr0: 0n, dr1: n === 2 ? 0x100c4000n : 0n, dr2: 0n, dr3: 0n, dr6: 0xffff0ff0n, dr7: n === 2 ? 0x900004n : 0n },
    rseq: { area: 0x100c0040n + BigInt(n) * 0x20n, size: 32, signature: 0x53053053 },
    blocked: 1n << BigInt(9 + n),
    altstack: n === 1 ? { sp: 0x100c2000n, flags: 0, size: 0x1000n } : { sp: 0n, flags: 2, size: 0n },
    pending: n === 1 ? [syntheticSiginfo(10)] : [],
    clearChildTid: 0x100c3000n + BigInt(n) * 0x10n,
    robustList: 0x100c3100n + BigInt(n) * 0x20n,
    ...overrides,
  };
}

/** The synthetic image with two more threads, listed ascending. */
export function syntheticThreadedImage(overrides: Partial<CheckpointImage> = {}): CheckpointImage {
  const image = syntheticImage({
    links: { clearChildTid: 0x100c3400n, robustList: 0x100c3420n },
    threads: [syntheticThread(43, 1), syntheticThread(45, 2)],
    ...overrides,
  });
  // Each thread's rseq area starts zeroed, as the main thread's: not in a critical section.
  const heap = image.regions[2]!;
  const bytes = Buffer.from(image.memory.get(heap.entry!)!);
  for (const t0 of image.threads) if (t0.rseq) bytes.fill(0, Number(t0.rseq.area - heap.start), Number(t0.rseq.area - heap.start) + t0.rseq.size);
  return { ...image, memory: new Map(image.memory).set(heap.entry!, bytes) };
}
