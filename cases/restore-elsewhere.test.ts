// expect: a program holding its state in ymm0-15 (AVX upper halves), checkpointed at a breakpoint in a `-cpu max`
// guest, records XCR0 with YMM, YMM in use and the avx flag in the image (depends.json); restored in another guest of
// the same model it finishes with the native run's output; restored in a `-cpu max,-avx` guest it is refused before
// any plan step, the error naming avx (IncompatibleTargetError); restored there anyway (dependencies 'try'), the row
// says what happened. Conditioned on the measured profiles: the checkpoint guest has avx, the restore guest has not.
// Negative control: omit=xstate on the same model (the upper halves lost: ymm=0/16, exit 1).
// Then 6.1 → 6.12 (Debian trixie's kernel, when the checkpoint guest runs 6.1): the C library's rseq area re-registered
// (cpu_id current again) and the vDSO functions glibc resolved on 6.1 (clock_gettime, gettimeofday, time, getcpu)
// redirected to 6.12's — each the native run's output; controls omit=rseq (stale cpu_id) and omit=vdso tried anyway
// (the old offsets are other code on 6.12). sigstate's signal state (SA_SIGINFO/SA_RESTART/SA_ONSTACK handlers, the
// blocked mask, the alternate stack, both pending queues) moved the same way: the native output; control omit=signals.
// The way back, each of the three checkpointed on 6.12 and restored on 6.1: refused, naming exactly what the measured
// 6.1 lacks (its vDSO has no getrandom; no AT_RSEQ_FEATURE_SIZE, so node_id and mm_cid never updated) — neither
// waivable from what the image records — then with dependencies 'try' the native 6.12 output, the notes naming what
// was missing, but for rseqcpu, which then reports mm_cid stale (6.1 never rewrites it: the refusal was right);
// controls the same omissions, tried anyway. And the clocks: CLOCK_MONOTONIC/BOOTTIME read before and after the move
// go on (a time namespace with the checkpoint's offsets), conditioned on the restore kernel's time namespaces
// (refused by name without them); control omit=timens (the restoring boot's clocks: backwards or jumped). And -cpu
// Skylake-Client as QEMU's TCG gives it: refused naming exactly what the measured guest lacks of the image's platform.
import t, { type Test } from 'tap';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { IncompatibleTargetError, userCpuFlags, xstateFeatureName, type PlatformDependencies } from '../harness/restore/platform-dependencies.ts';
import { readGuestText } from '../harness/agent/read-file.ts';
import { hex } from '../harness/x86/registers.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest, type Guest } from '../harness/testing/guest-fixture.ts';
import type { Workload } from '../harness/testing/scenario.ts';
import { differs, resumes, shows, type RowKey } from '../harness/scenarios/attempt.ts';
import { settle } from '../harness/scenarios/runner.ts';
import { settleRefusal } from '../harness/scenarios/refusal-scenario.ts';
import { asRefusal, movePolicy, moveScenario, namedMissing, type MoveAttempt } from '../harness/scenarios/move-scenario.ts';

const CASE = 'restore-elsewhere';
const SCENARIO = 'ymm0-15 holding distinct patterns at a breakpoint, checkpointed under -cpu max, restored in another guest';
const NO_AVX = 'max,-avx';
/** A named model, as a real fleet has them (no PKU, no AVX-512), under whatever TCG makes of it. */
const SKYLAKE = 'Skylake-Client';
const YMM_BIT = 1n << 2n;
/** Debian trixie's cloud kernel (6.12), through crh's private apt configuration for trixie. */
const KERNEL_612 = 'debian:linux-image-cloud-amd64@trixie';
/**
 * monoclock's bound: a clock that moved forward by more than this across the checkpoint jumped. It holds the
 * restore's own time after the target's clocks are read (the plan, the resumption: seconds under a loaded TCG), and is
 * far below what two boots' clocks differ by here (the checkpoint guest has run every earlier subtest).
 */
const CLOCK_BOUND_S = 20;
const TRY = 'try' as const;
const key = (scenario: string, policy: RestorePolicy, dependencies: 'refuse' | 'try' = 'refuse'): RowKey => ({
  case: CASE,
  scenario,
  policy: movePolicy(policy, dependencies),
});
/** The attempt with the platform-profile values its row's expectation depends on. */
const under = (a: MoveAttempt, conditions: Record<string, string>): MoveAttempt => ({ ...a, conditions });

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  if (!guest.profile.cpuFlags.includes('avx')) {
    t.comment(`the checkpoint guest's CPU (${guest.profile.cpuModel}) has no avx (measured flags: ${guest.profile.cpuFlags.join(' ')}): nothing to move`);
    return;
  }
  // Provoke: avxhold fills ymm0-15 with distinct patterns and stops at avx_checkpoint.
  const binary = guest.image.guestPaths.avxhold!;
  const workload: Workload = { binary, argv: [binary], breakAt: guest.symbols.resolve('avxhold:avx_checkpoint') };
  const avx = await moveScenario(t, { name: SCENARIO, from: guest, workload, label: 'avxhold' });
  const expected = avx.reference.output;
  t.match(expected, /^avxhold ymm=16\/16 sum=[0-9a-f]{64}\n$/, 'uninterrupted: every register held its pattern');

  // Checkpoint once: the image records XCR0 with YMM, YMM in use and avx among the flags.
  const checkpointed = await avx.checkpoint('avx');
  t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at avx_checkpoint');
  const deps = checkpointed.image!.dependencies!;
  t.ok(deps, 'the image records its platform dependencies');
  t.ok(deps.xstate.xcr0 !== null && (deps.xstate.xcr0 & YMM_BIT) !== 0n, `XCR0 ${deps.xstate.xcr0?.toString(16)} has YMM`);
  t.ok((deps.xstate.inUse & YMM_BIT) !== 0n, `YMM in use (XSTATE_BV 0x${deps.xstate.inUse.toString(16)})`);
  t.ok(deps.cpuFlags.includes('avx'), 'avx among the flags the process could have seen');
  const conditions = { 'checkpoint cpu': guest.profile.cpuModel, 'checkpoint flags': guest.profile.cpuFlags.join(' ') };

  await t.test('the same CPU model, another guest: the uninterrupted output', async (t) => {
    const same = await startGuest(t, CASE, { name: 'restore-max', cpuModel: guest.profile.cpuModel });
    const a = await avx.attempt({ to: same, policy: DEFAULT_POLICY, tag: 'avx-same-model', checkpointed, underOracle: true });
    // expect: as requested but for the session, which is the agent's in each guest (docs/platform.md)
    const differences = a.moved?.differences ?? [];
    t.same(
      differences.filter((d) => d.what !== 'session'),
      [],
      'read back: as requested, but for the session',
    );
    const session = differences.find((d) => d.what === 'session');
    if (session) {
      t.equal(session.requested, await agentSession(guest), "the image holds the checkpoint guest's agent session");
      t.equal(session.accepted, await agentSession(same), "the restored process joined the restore guest's agent session");
    }
    t.equal(a.moved?.output, expected, `the restored run is the native run: ${a.observed}`);
    t.equal(a.moved?.run.code, 0);
    settle(t, key(`${SCENARIO}: -cpu ${same.profile.cpuModel}`, DEFAULT_POLICY), resumes(avx.expected), under(a, conditions));
  });

  await t.test(`-cpu ${NO_AVX}: refused, naming avx; and what happens when tried anyway`, async (t) => {
    const noAvx = await startGuest(t, CASE, { name: 'restore-max-no-avx', cpuModel: NO_AVX });
    t.notOk(
      noAvx.profile.cpuFlags.includes('avx'),
      `measured: the ${NO_AVX} guest has no avx (flags ${noAvx.profile.cpuFlags.join(' ')}, XCR0 ${noAvx.profile.xcr0})`,
    );
    const rowConditions = {
      ...conditions,
      'restore cpu': NO_AVX,
      'restore flags': noAvx.profile.cpuFlags.join(' '),
      'restore xcr0': String(noAvx.profile.xcr0),
    };
    // expect: refused before any plan step, naming avx as in use (YMM state), nothing left running
    const refused = asRefusal(await avx.attempt({ to: noAvx, policy: DEFAULT_POLICY, tag: 'avx-refused', checkpointed }), ['avx'], false);
    t.ok(refused.refused instanceof IncompatibleTargetError, refused.observed);
    t.ok(namedMissing(refused).includes('avx'), 'the refusal names avx');
    t.match(String(refused.refused?.message), /\bavx \(in use: YMM/, 'avx as in use (YMM state), not only seen');
    t.equal(refused.leftBehind, '', 'no avxhold left behind in the restore guest');
    settleRefusal(
      t,
      key(`${SCENARIO}: -cpu ${NO_AVX}`, DEFAULT_POLICY),
      { expected: 'refused, naming avx (in use), nothing left running' },
      under(refused, rowConditions),
    );

    // expect, tried anyway: not the uninterrupted run (the kernel's refusal of the YMM state, or the program's own finding)
    const tried = await avx.attempt({ to: noAvx, policy: DEFAULT_POLICY, tag: 'avx-anyway', checkpointed, dependencies: TRY });
    t.comment(`restored anyway onto ${NO_AVX}: ${tried.observed}`);
    t.notOk(tried.matched, 'tried anyway, the process does not finish as uninterrupted');
    settle(
      t,
      key(`${SCENARIO}: -cpu ${NO_AVX}, restored anyway`, DEFAULT_POLICY, TRY),
      shows('not the uninterrupted run (the target has no YMM state)', () => tried.refused === undefined),
      under(tried, rowConditions),
    );
  });

  await t.test(`-cpu ${SKYLAKE}: what it lacks of the checkpoint's platform is refused by name, as measured`, async (t) => {
    // QEMU 7.2's TCG drops part of the model (docs/platform.md): the profile's flags are the expectation's ground.
    const sky = await startGuest(t, CASE, { name: 'restore-skylake-client', cpuModel: SKYLAKE });
    const xcr0 = BigInt(sky.profile.xcr0);
    // The flags as the restore compares them: the user-visible ones of the guest's /proc/cpuinfo.
    const skyFlags = userCpuFlags(await readGuestText(sky.agent, '/proc/cpuinfo', 1 << 20));
    const lackedFlags = deps.cpuFlags.filter((f) => !skyFlags.includes(f));
    const lostInUse = deps.xstate.inUse & ~xcr0;
    const rowConditions = { ...conditions, 'restore cpu': SKYLAKE, 'restore flags': skyFlags.join(' '), 'restore xcr0': sky.profile.xcr0 };
    t.comment(
      `measured under ${sky.profile.accel}: -cpu ${SKYLAKE} has ${skyFlags.join(' ')}, XCR0 ${sky.profile.xcr0}; the image's flags it lacks: ${lackedFlags.join(' ') || 'none'}; xstate in use it lacks: ${hex(lostInUse)}`,
    );
    const a = await avx.attempt({ to: sky, policy: DEFAULT_POLICY, tag: 'avx-skylake-client', checkpointed });
    const rowKey = key(`${SCENARIO}: -cpu ${SKYLAKE}`, DEFAULT_POLICY);
    if (lackedFlags.length === 0 && lostInUse === 0n) {
      // expect: nothing lacking, the native run's output
      t.equal(a.observed, `exited 0: ${avx.expected}`, `nothing lacking: restored, the native run's output (${a.observed})`);
      settle(t, rowKey, resumes(avx.expected), under(a, rowConditions));
      return;
    }
    // expect: refused, naming exactly what the measured model lacks
    const wanted = [...new Set([...lackedFlags, ...bitsOf(lostInUse).map(xstateFeatureName)])];
    t.ok(a.refused, `refused: ${a.observed}`);
    t.same([...namedMissing(a)].sort(), [...wanted].sort(), `the refusal names exactly what the measured ${SKYLAKE} lacks: ${wanted.join(', ')}`);
    t.equal(a.leftBehind, '', 'nothing left running');
    settleRefusal(
      t,
      rowKey,
      { expected: `refused, naming ${wanted.join(', ')} (what the measured model lacks)` },
      under(asRefusal(a, wanted, true), rowConditions),
    );

    await t.test(`and back: checkpointed under -cpu ${SKYLAKE}, restored under -cpu ${guest.profile.cpuModel}`, async (t) => {
      // expect: accepted when the checkpoint guest's model offers all the Skylake image needs (measured), else refused
      const name = `${SCENARIO.replace('-cpu max', `-cpu ${SKYLAKE}`)}: restored under -cpu ${guest.profile.cpuModel}`;
      const back = await moveScenario(t, { name, from: sky, workload, label: 'avxhold', reference: avx.reference });
      const taken = await back.checkpoint('avx-from-skylake');
      t.equal(taken.run.outcome, 'hit-limit', 'stopped at avx_checkpoint');
      const needed = taken.image!.dependencies!;
      const missingHere = needed.cpuFlags.filter((f) => !deps.cpuFlags.includes(f));
      t.comment(
        `the ${SKYLAKE} image's flags the ${guest.profile.cpuModel} guest lacks: ${missingHere.join(' ') || 'none'}; XCR0 ${hex(needed.xstate.xcr0 ?? 0n)} in use ${hex(needed.xstate.inUse)}`,
      );
      const r = await back.attempt({ to: guest, policy: DEFAULT_POLICY, tag: 'avx-from-skylake', checkpointed: taken });
      const accept = missingHere.length === 0 && (needed.xstate.inUse & ~(deps.xstate.xcr0 ?? 0n)) === 0n;
      const backConditions = { ...rowConditions, 'flags the checkpoint cpu lacks': missingHere.join(' ') || 'none' };
      if (accept) {
        t.equal(r.observed, `exited 0: ${avx.expected}`, `accepted, the native run's output: ${r.observed}`);
        settle(t, key(name, DEFAULT_POLICY), resumes(`exited 0: ${avx.expected}`), under(r, backConditions));
      } else {
        t.match(r.observed, /lacks what the process depends on/, `refused: ${r.observed}`);
        settleRefusal(t, key(name, DEFAULT_POLICY), { expected: 'refused' }, under(asRefusal(r, [], false), backConditions));
      }
    });
  });

  await t.test(`another kernel (${KERNEL_612}): rseq re-registered, the vDSO redirected`, async (t) => {
    // The move measured: Debian 6.1 (no rseq auxv, its vDSO) to 6.12 (AT_RSEQ_FEATURE_SIZE 28, a vDSO with other offsets).
    if (!guest.profile.kernelRelease.startsWith('6.1.')) {
      t.comment(`the checkpoint guest runs ${guest.profile.kernelRelease}, not 6.1: the 6.1 → 6.12 move is not this run's`);
      return;
    }
    const there = await startGuest(t, CASE, { name: 'restore-6.12', kernel: KERNEL_612 });
    const kernelConditions = {
      'checkpoint kernel': guest.profile.kernelRelease,
      'restore kernel': there.profile.kernelRelease,
      'rseq feature size (checkpoint / restore)': `${String(guest.platform['features.rseqFeatureSize'])} / ${String(there.platform['features.rseqFeatureSize'])}`,
    };
    t.ok(there.profile.kernelRelease.startsWith('6.12'), `the restore guest runs ${there.profile.kernelRelease}`);
    for (const move of KERNEL_MOVES) {
      // Provoke: the workload stops at its checkpoint symbol on 6.1, its reference taken there once.
      const bin = guest.image.guestPaths[move.name]!;
      const w: Workload = { binary: bin, argv: [bin, ...(move.args ?? [])], breakAt: guest.symbols.resolve(move.symbol) };
      const forth = await moveScenario(t, { name: move.scenario, from: guest, workload: w, label: move.name });

      await t.test(`${move.name}: checkpointed on ${guest.profile.kernelRelease}, restored on ${there.profile.kernelRelease}`, async (t) => {
        // expect: the native run's output, the vDSO redirected, read back as requested but for the session
        const a = await forth.attempt({ to: there, policy: DEFAULT_POLICY, tag: `${move.name}-to-6.12` });
        t.equal(a.checkpointed.run.outcome, 'hit-limit', `stopped at ${move.symbol}`);
        t.same(
          (a.moved?.differences ?? []).filter((d) => d.what !== 'session'),
          [],
          'read back: as requested, but for the session',
        );
        t.ok(
          a.moved?.notes.some((n) => n.startsWith('vDSO redirected')),
          `the vDSO redirected: ${a.moved?.notes.join('; ')}`,
        );
        t.equal(a.moved?.output, forth.reference.output, `the restored run is the native run: ${a.observed}`);
        settle(t, key(move.scenario, DEFAULT_POLICY), resumes(forth.expected), under(a, kernelConditions));
      });
      await t.test(`${move.name}: negative control ${move.control.why}`, async (t) => {
        // expect: not the native run
        const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: move.control.omit };
        const a = await forth.attempt({ to: there, policy, tag: `${move.name}-to-6.12-control`, dependencies: TRY });
        t.notOk(a.matched, `caught: ${a.observed}`);
        settle(t, key(move.scenario, policy, TRY), differs(forth.expected), under(a, kernelConditions));
      });
      await moveBack(t, move, w, there, guest, deps, kernelConditions);
    }
    await clockMove(t, guest, there, kernelConditions);
  });

  await t.test('negative control omit=xstate (same guest): the upper halves lost', async (t) => {
    // expect: the upper halves lost, the program says ymm=N/16 and exits 1
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['xstate'] };
    const a = await avx.attempt({ to: guest, policy, tag: 'avx-omit-xstate', underOracle: true });
    const line = a.moved?.output.trim() ?? a.observed;
    t.not(a.moved?.output, expected, `caught: ${line}`);
    t.match(line, /^avxhold ymm=\d+\/16 /, 'the program itself reports the lost registers');
    t.equal(a.moved?.run.code, 1, 'and exits 1');
    settle(t, key(SCENARIO, policy), differs(avx.expected), a);
  });
});

/** A workload moved 6.1 → 6.12 (and back): its checkpoint symbol, its row's scenario and its negative control. */
interface KernelMove {
  name: string;
  args?: string[];
  symbol: string;
  scenario: string;
  /** what the way back's rows name (the direction is appended) */
  what: string;
  control: { omit: RestorePolicy['omit']; why: string };
  /**
   * The way back tried anyway, where it cannot be the native run: what the program then reports (the dependency the
   * refusal named, seen from the inside). Absent: the native output.
   */
  backAnyway?: { expected: string; output: RegExp; ended: string };
}

const KERNEL_MOVES: readonly KernelMove[] = [
  {
    name: 'rseqcpu',
    symbol: 'rseqcpu:rseq_checkpoint',
    scenario: "the C library's rseq area (cpu_id made stale after the move), 6.1 → 6.12",
    what: "the C library's rseq area (cpu_id made stale after the move)",
    control: { omit: ['rseq'] as RestorePolicy['omit'], why: 'omit=rseq: not registered on the restore kernel, the stale cpu_id stays' },
    // The auxv it read on 6.12 says mm_cid is maintained; 6.1 never rewrites it, so the value it made stale stays.
    backAnyway: {
      expected: 'mm_cid=stale, exit 1: 6.1 never rewrites mm_cid (the refusal named rseq feature size)',
      output: /^rseqcpu registered=1 cpu_id=current cpu_id_start=current mm_cid=stale\n$/,
      ended: 'exited 1',
    },
  },
  {
    name: 'vdsoclock',
    symbol: 'vdsoclock:vdso_checkpoint',
    scenario: 'clock_gettime, gettimeofday, time, getcpu through the vDSO after a 6.1 → 6.12 move',
    what: 'clock_gettime, gettimeofday, time, getcpu through the vDSO after the move',
    control: { omit: ['vdso'] as RestorePolicy['omit'], why: "omit=vdso, tried anyway: glibc's vDSO addresses land in other code" },
  },
  {
    name: 'sigstate',
    args: ['state'],
    symbol: 'sigstate:sigstate_checkpoint',
    scenario:
      'signal state (SA_SIGINFO|SA_RESTART, SA_ONSTACK handlers, blocked mask, sigaltstack, SIGUSR1 on the thread queue, SIGRTMIN+1 ×3 on the process queue) across a 6.1 → 6.12 move',
    what: 'signal state (SA_SIGINFO|SA_RESTART, SA_ONSTACK handlers, blocked mask, sigaltstack, SIGUSR1 on the thread queue, SIGRTMIN+1 ×3 on the process queue)',
    control: { omit: ['signals'] as RestorePolicy['omit'], why: 'omit=signals: dispositions, mask, alternate stack and queues lost' },
  },
];

/**
 * The way back: `w` checkpointed on `from` (6.12) and restored on `to` (6.1): refused by default, naming exactly what
 * the measured 6.1 lacks; neither lack can be waived from the image (docs/platform.md), so dependencies 'try' is what
 * gets it there. Control: the move's own omission, tried anyway. `toDeps`: a process's dependencies checkpointed on `to`.
 */
async function moveBack(
  t: Test,
  move: KernelMove,
  w: Workload,
  from: Guest,
  to: Guest,
  toDeps: PlatformDependencies,
  kernelConditions: Record<string, string>,
): Promise<void> {
  const direction = `${from.profile.kernelRelease} → ${to.profile.kernelRelease}`;
  const back = await moveScenario(t, { name: `${move.what}, ${direction} (the way back)`, from, workload: w, label: `${move.name}-back` });
  const want = back.reference.output;
  const conditions = { ...kernelConditions, direction };

  await t.test(`${move.name}: checkpointed on ${from.profile.kernelRelease}, restored on ${to.profile.kernelRelease}: refused by name`, async (t) => {
    const taken = await back.checkpoint(`${move.name}-to-6.1`);
    t.equal(taken.run.outcome, 'hit-limit', `stopped at ${move.symbol}`);
    // expect: refused naming what 6.1 lacks, from the two kernels' measured facts (not from the function under test)
    const needed = taken.image!.dependencies!;
    const lackingSymbols = Object.keys(needed.vdso.symbols).filter((name) => toDeps.vdso.symbols[name] === undefined);
    const rseqLacking = needed.rseq.featureSize !== null && (toDeps.rseq.featureSize ?? 0) < needed.rseq.featureSize;
    const wanted = [...(lackingSymbols.length > 0 ? ['vdso symbols'] : []), ...(rseqLacking ? ['rseq feature size'] : [])];
    t.comment(
      `measured: ${from.profile.kernelRelease}'s vDSO exports ${Object.keys(needed.vdso.symbols).join(' ')}; ${to.profile.kernelRelease}'s lacks ${lackingSymbols.join(' ') || 'none'}; AT_RSEQ_FEATURE_SIZE ${String(needed.rseq.featureSize)} / ${String(toDeps.rseq.featureSize)}`,
    );
    t.ok(wanted.length > 0, `${to.profile.kernelRelease} lacks something of ${from.profile.kernelRelease}'s platform: ${wanted.join(', ')}`);
    const refused = await back.attempt({ to, policy: DEFAULT_POLICY, tag: `${move.name}-to-6.1-refused`, checkpointed: taken });
    t.ok(refused.refused instanceof IncompatibleTargetError, refused.observed);
    t.same([...namedMissing(refused)].sort(), [...wanted].sort(), `the refusal names exactly what ${to.profile.kernelRelease} lacks: ${wanted.join(', ')}`);
    const symbolsWhy = refused.refused?.missing.find((m) => m.feature === 'vdso symbols')?.why ?? '';
    t.ok(
      lackingSymbols.every((name) => symbolsWhy.includes(name)),
      `the vDSO's missing functions by name: ${lackingSymbols.join(', ')}`,
    );
    t.equal(refused.leftBehind, '', `no ${move.name} left behind on ${to.profile.kernelRelease}`);
    settleRefusal(
      t,
      key(back.name, DEFAULT_POLICY),
      { expected: `refused, naming ${wanted.join(', ')}; nothing left running` },
      under(asRefusal(refused, wanted, true), { ...conditions, [`${to.profile.kernelRelease} vDSO lacks`]: lackingSymbols.join(' ') || 'none' }),
    );

    // expect, tried anyway: the notes name what was missing; the native output, or what the program sees is missing
    const tried = await back.attempt({ to, policy: DEFAULT_POLICY, tag: `${move.name}-to-6.1-anyway`, checkpointed: taken, dependencies: TRY });
    const notes = tried.moved?.notes ?? [];
    t.ok(
      wanted.every((f) => notes.some((n) => n.includes(f))),
      `restored anyway, the notes name what was missing: ${notes.join('; ')}`,
    );
    const anyway = move.backAnyway;
    if (anyway) {
      const sees = (a: MoveAttempt): boolean => anyway.output.test(a.moved?.output ?? '') && a.moved?.ended === anyway.ended;
      t.ok(sees(tried), `restored anyway on ${to.profile.kernelRelease}, the program sees what is missing: ${tried.observed}`);
      t.not(tried.moved?.output, want, 'not the native run');
      settle(
        t,
        key(back.name, DEFAULT_POLICY, TRY),
        shows(anyway.expected, () => sees(tried)),
        under(tried, conditions),
      );
      return;
    }
    t.equal(tried.moved?.output, want, `restored anyway on ${to.profile.kernelRelease}: ${tried.observed}`);
    t.equal(tried.moved?.ended, 'exited 0');
    settle(t, key(back.name, DEFAULT_POLICY, TRY), resumes(back.expected), under(tried, conditions));
  });

  await t.test(`${move.name}: negative control on the way back, ${move.control.why}`, async (t) => {
    // expect: not the native run
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: move.control.omit };
    const a = await back.attempt({ to, policy, tag: `${move.name}-to-6.1-control`, dependencies: TRY });
    t.notOk(a.matched, `caught: ${a.observed}`);
    settle(t, key(back.name, policy, TRY), differs(back.expected), under(a, conditions));
  });
}

/**
 * CLOCK_MONOTONIC and CLOCK_BOOTTIME across the move (time-namespace.ts): monoclock reads both (vDSO and system call)
 * before and after its checkpoint and says whether each went on (never backwards, not forward by more than its bound).
 * Checkpointed in `from`, restored in `to` (another boot). The control, omit=timens, is conditioned on what the image's
 * and the restoring guest's clocks predict (a prediction within the bound is reported, not counted).
 */
async function clockMove(t: Test, from: Guest, to: Guest, kernelConditions: Record<string, string>): Promise<void> {
  const bin = from.image.guestPaths.monoclock!;
  const w: Workload = { binary: bin, argv: [bin, String(CLOCK_BOUND_S)], breakAt: from.symbols.resolve('monoclock:monoclock_checkpoint') };
  const name = `CLOCK_MONOTONIC and CLOCK_BOOTTIME (vDSO and system call) across a ${from.profile.kernelRelease} → ${to.profile.kernelRelease} move (another boot), bound ${CLOCK_BOUND_S} s`;
  const timens = to.platform['features.timeNamespace'];
  const conditions = { ...kernelConditions, 'restore kernel has time namespaces (profile)': String(timens) };
  const clock = await moveScenario(t, { name, from, workload: w, label: 'monoclock' });
  const want = clock.reference.output;

  await t.test(`monoclock: checkpointed on ${from.profile.kernelRelease}, restored on ${to.profile.kernelRelease} in a time namespace`, async (t) => {
    const taken = await clock.checkpoint('monoclock-moved');
    t.equal(taken.run.outcome, 'hit-limit', 'stopped at monoclock_checkpoint');
    const clocks = taken.image!.clocks;
    t.ok(clocks, `the image records the process's clocks (monotonic ${clocks && Number(clocks.monotonicNs) / 1e9} s, boot ${clocks?.bootId})`);
    const a = await clock.attempt({ to, policy: DEFAULT_POLICY, tag: 'monoclock-moved', checkpointed: taken });
    if (timens !== true) {
      // expect, measured not assumed: without CONFIG_TIME_NS the restore refuses, naming time namespaces
      t.ok(namedMissing(a).includes('time namespaces'), `the restore kernel has no time namespaces (profile: ${String(timens)}): refused, naming them`);
      settleRefusal(
        t,
        key(name, DEFAULT_POLICY),
        { expected: 'refused, naming time namespaces (the restore kernel has none)' },
        under(asRefusal(a, ['time namespaces'], false), conditions),
      );
      return;
    }
    // expect: in a time namespace, the native run's line
    t.ok(
      a.moved?.notes.some((n) => n.startsWith('time namespace: ')),
      `entered a time namespace: ${a.moved?.notes.join('; ')}`,
    );
    t.equal(a.moved?.output, want, `the restored run is the native run: ${a.observed}`);
    settle(t, key(name, DEFAULT_POLICY), resumes(clock.expected), under(a, conditions));
  });

  await t.test("monoclock: negative control omit=timens (the restoring boot's clocks)", async (t) => {
    // expect: each clock backwards or jumped, as the two boots' clocks predict (the restore's note carries them)
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['timens'] };
    const a = await clock.attempt({ to, policy, tag: 'monoclock-moved-control', dependencies: TRY });
    const note = a.moved?.notes.find((n) => n.startsWith('omit=timens: ')) ?? '';
    const moves = /CLOCK_MONOTONIC moves by ([-+][0-9.]+) s/.exec(note);
    const step = moves ? Number(moves[1]) : NaN;
    const predicted = Number.isNaN(step) ? 'unknown' : step < 0 ? 'backwards' : step > CLOCK_BOUND_S ? 'jumped' : 'continuous';
    t.comment(`omit=timens: ${note} → predicted ${predicted}`);
    const rowConditions = { ...conditions, 'without a namespace, CLOCK_MONOTONIC would move by': moves ? `${moves[1]} s` : 'not reported' };
    const rowKey = key(name, policy, TRY);
    if (predicted === 'continuous' || predicted === 'unknown') {
      // The boots within the bound of each other: a control that cannot catch anything fails, saying so.
      t.comment(`the boots are within ${CLOCK_BOUND_S} s of each other (${predicted}): this control cannot catch anything in this run`);
      settle(
        t,
        rowKey,
        shows("inconclusive: the two boots' clocks are within the bound", () => false),
        under(a, rowConditions),
      );
      return;
    }
    t.notOk(a.matched, `caught: ${a.observed}`);
    t.match(
      a.moved?.output ?? '',
      new RegExp(`monotonic vdso=${predicted} syscall=${predicted} boottime vdso=${predicted} syscall=${predicted}`),
      `each clock ${predicted}, as predicted`,
    );
    settle(t, rowKey, differs(clock.expected), under(a, rowConditions));
  });
}

function bitsOf(v: bigint): number[] {
  return Array.from({ length: 64 }, (_, bit) => bit).filter((bit) => ((v >> BigInt(bit)) & 1n) !== 0n);
}

/** "pgid P, sid S" of the guest's agent, as the restore's read-back words a session (/proc/PID/stat fields 5 and 6). */
async function agentSession(guest: Guest): Promise<string> {
  const stat = await readGuestText(guest.agent, `/proc/${guest.hello.agentPid}/stat`, 4096);
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return `pgid ${fields[2]}, sid ${fields[3]}`;
}
