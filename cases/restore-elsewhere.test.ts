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
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { readCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import type { Difference } from '../harness/restore/restore.ts';
import { IncompatibleTargetError, userCpuFlags, xstateFeatureName, type PlatformDependencies } from '../harness/restore/platform-dependencies.ts';
import { recordRow, recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { hex } from '../harness/x86/registers.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest, type Guest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, runUninterrupted, RUN_TIMEOUT_MS, type Workload } from '../harness/testing/scenario.ts';

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

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  if (!guest.profile.cpuFlags.includes('avx')) {
    t.comment(`the checkpoint guest's CPU (${guest.profile.cpuModel}) has no avx (measured flags: ${guest.profile.cpuFlags.join(' ')}): nothing to move`);
    return;
  }
  const binary = guest.image.guestPaths.avxhold!;
  const workload: Workload = { binary, argv: [binary], breakAt: guest.symbols.resolve('avxhold:avx_checkpoint') };
  const { run: reference, output: expected } = await runUninterrupted(guest, workload, '/tmp/avxhold-reference.out');
  t.equal(reference.code, 0, `uninterrupted: ${expected.trim()}`);
  t.match(expected, /^avxhold ymm=16\/16 sum=[0-9a-f]{64}\n$/, 'uninterrupted: every register held its pattern');
  const native = await nativeReference(guest, workload);
  t.equal(`${endedAs(native)}\n${native.output}`, `${endedAs(reference)}\n${expected}`, 'the traced reference is the native run (no tracer)');

  const checkpointed = await checkpointAtHit(guest, workload, 1, 'avx', { disarm: true });
  t.equal(checkpointed.run.outcome, 'hit-limit', 'stopped at avx_checkpoint');
  const deps = checkpointed.image!.dependencies!;
  t.ok(deps, 'the image records its platform dependencies');
  t.ok(deps.xstate.xcr0 !== null && (deps.xstate.xcr0 & YMM_BIT) !== 0n, `XCR0 ${deps.xstate.xcr0?.toString(16)} has YMM`);
  t.ok((deps.xstate.inUse & YMM_BIT) !== 0n, `YMM in use (XSTATE_BV 0x${deps.xstate.inUse.toString(16)})`);
  t.ok(deps.cpuFlags.includes('avx'), 'avx among the flags the process could have seen');
  const conditions = { 'checkpoint cpu': guest.profile.cpuModel, 'checkpoint flags': guest.profile.cpuFlags.join(' ') };

  await t.test('the same CPU model, another guest: the uninterrupted output', async (t) => {
    const same = await startGuest(t, CASE, { name: 'restore-max', cpuModel: guest.profile.cpuModel });
    const r = await restoreAndFinish(same, checkpointed.file, DEFAULT_POLICY, 'avx-same-model', {});
    // The workload lives in the session of the agent that spawned it; in another guest that agent's session is another
    // (measured: pgid/sid 109 there, 107 here): the only difference a move may show, and it must be exactly that one.
    t.same(
      r.differences.filter((d) => d.what !== 'session'),
      [],
      'read back: as requested, but for the session',
    );
    const session = r.differences.find((d) => d.what === 'session');
    if (session) {
      t.equal(session.requested, await agentSession(guest), "the image holds the checkpoint guest's agent session");
      t.equal(session.accepted, await agentSession(same), "the restored process joined the restore guest's agent session");
    }
    t.equal(r.output, expected, `the restored run is the native run: ${r.output.trim()}`);
    t.equal(r.run.code, 0);
    recordRowOutcome(t, {
      case: CASE,
      scenario: `${SCENARIO}: -cpu ${same.profile.cpuModel}`,
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: expected.trim(),
      observed: r.output.trim(),
      matchedUninterrupted: r.output === expected && r.run.code === 0,
      conditions,
    });
  });

  await t.test(`-cpu ${NO_AVX}: refused, naming avx; and what happens when tried anyway`, async (t) => {
    const noAvx = await startGuest(t, CASE, { name: 'restore-max-no-avx', cpuModel: NO_AVX });
    const measured = noAvx.profile.cpuFlags.includes('avx');
    t.notOk(measured, `measured: the ${NO_AVX} guest has no avx (flags ${noAvx.profile.cpuFlags.join(' ')}, XCR0 ${noAvx.profile.xcr0})`);
    const rowConditions = {
      ...conditions,
      'restore cpu': NO_AVX,
      'restore flags': noAvx.profile.cpuFlags.join(' '),
      'restore xcr0': String(noAvx.profile.xcr0),
    };
    const image = await readCheckpointImage(checkpointed.file);
    const refused = await restoreWitnessed(noAvx.agent, image, { policy: DEFAULT_POLICY, stdoutPath: '/tmp/avxhold-refused.restored.out' }, 'avx-refused').then(
      (r) => ({ restoredPid: r.pid }),
      (e: unknown) => e,
    );
    const named = refused instanceof IncompatibleTargetError && refused.missing.some((m) => m.feature === 'avx');
    t.ok(refused instanceof IncompatibleTargetError, `refused: ${(refused as Error).message ?? JSON.stringify(refused)}`);
    t.ok(named, 'the refusal names avx');
    t.match(String((refused as Error).message), /\bavx \(in use: YMM/, 'avx as in use (YMM state), not only seen');
    const left = (await noAvx.machine.ssh.exec('pidof avxhold')).stdout.trim();
    t.equal(left, '', 'no avxhold left behind in the restore guest');
    recordRow(t, {
      case: CASE,
      scenario: `${SCENARIO}: -cpu ${NO_AVX}`,
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: 'refused, naming avx (in use), nothing left running',
      observed: refused instanceof IncompatibleTargetError ? `refused: ${refused.missing.map((m) => m.feature).join(', ')}` : 'restored',
      pass: named && left === '',
      conditions: rowConditions,
    });

    // Anyway: the row says what happened (the kernel's refusal of the YMM state, or the program's own finding).
    const tried = await restoreWitnessed(
      noAvx.agent,
      image,
      { policy: DEFAULT_POLICY, stdoutPath: '/tmp/avxhold-anyway.restored.out', dependencies: 'try' },
      'avx-anyway',
    ).then(
      async (r) => {
        const run = await noAvx.agent.call({ op: 'RUN', pid: r.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
        return { notes: r.dependencyNotes, ended: `${endedAs(run)}: ${(await readOutput(noAvx, '/tmp/avxhold-anyway.restored.out')).trim()}` };
      },
      (e: unknown) => ({ notes: [] as string[], ended: `restore failed: ${(e as Error).message.split('\n')[0]}` }),
    );
    t.comment(`restored anyway onto ${NO_AVX}: ${tried.ended}`);
    const wrong = tried.ended !== `exited 0: ${expected.trim()}`;
    t.ok(wrong, 'tried anyway, the process does not finish as uninterrupted');
    recordRow(t, {
      case: CASE,
      scenario: `${SCENARIO}: -cpu ${NO_AVX}, restored anyway`,
      policy: `${describePolicy(DEFAULT_POLICY)} dependencies=try`,
      control: true,
      expected: 'not the uninterrupted run (the target has no YMM state)',
      observed: [tried.ended, ...tried.notes].join('; '),
      pass: wrong,
      conditions: rowConditions,
    });
  });

  await t.test(`-cpu ${SKYLAKE}: what it lacks of the checkpoint's platform is refused by name, as measured`, async (t) => {
    // QEMU 7.2's TCG drops part of the model (measured: pcid x2apic tsc-deadline hle invpcid rtm rdseed 3dnowprefetch
    // xsavec, one warning each); what the guest ends up with is the profile's word, and the expectation rests on it.
    const sky = await startGuest(t, CASE, { name: 'restore-skylake-client', cpuModel: SKYLAKE });
    const xcr0 = BigInt(sky.profile.xcr0);
    // The flags as the restore compares them: the user-visible ones of the guest's /proc/cpuinfo.
    const skyFlags = userCpuFlags((await sky.agent.call({ op: 'READ_FILE', path: '/proc/cpuinfo', maxSize: 1 << 20 })).toString('latin1'));
    const lackedFlags = deps.cpuFlags.filter((f) => !skyFlags.includes(f));
    const lostInUse = deps.xstate.inUse & ~xcr0;
    const rowConditions = { ...conditions, 'restore cpu': SKYLAKE, 'restore flags': skyFlags.join(' '), 'restore xcr0': sky.profile.xcr0 };
    t.comment(
      `measured under ${sky.profile.accel}: -cpu ${SKYLAKE} has ${skyFlags.join(' ')}, XCR0 ${sky.profile.xcr0}; the image's flags it lacks: ${lackedFlags.join(' ') || 'none'}; xstate in use it lacks: ${hex(lostInUse)}`,
    );
    const image = await readCheckpointImage(checkpointed.file);
    const outcome = await restoreWitnessed(
      sky.agent,
      image,
      { policy: DEFAULT_POLICY, stdoutPath: '/tmp/avxhold-skylake.restored.out' },
      'avx-skylake-client',
    ).then(
      async (r) => {
        const run = await sky.agent.call({ op: 'RUN', pid: r.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
        return { refused: undefined, ended: `${endedAs(run)}: ${(await readOutput(sky, '/tmp/avxhold-skylake.restored.out')).trim()}` };
      },
      (e: unknown) => {
        if (e instanceof IncompatibleTargetError) return { refused: e, ended: `refused: ${e.missing.map((m) => m.feature).join(', ')}` };
        throw e;
      },
    );
    if (lackedFlags.length === 0 && lostInUse === 0n) {
      t.equal(outcome.ended, `exited 0: ${expected.trim()}`, `nothing lacking: restored, the native run's output (${outcome.ended})`);
      recordRow(t, {
        case: CASE,
        scenario: `${SCENARIO}: -cpu ${SKYLAKE}`,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: expected.trim(),
        observed: outcome.ended,
        pass: outcome.ended === `exited 0: ${expected.trim()}`,
        conditions: rowConditions,
      });
      return;
    }
    const named = outcome.refused?.missing.map((m) => m.feature) ?? [];
    const wanted = [...new Set([...lackedFlags, ...bitsOf(lostInUse).map(xstateFeatureName)])];
    t.ok(outcome.refused, `refused: ${outcome.refused?.message ?? outcome.ended}`);
    t.same([...named].sort(), [...wanted].sort(), `the refusal names exactly what the measured ${SKYLAKE} lacks: ${wanted.join(', ')}`);
    const left = (await sky.machine.ssh.exec('pidof avxhold')).stdout.trim();
    t.equal(left, '', 'nothing left running');
    recordRow(t, {
      case: CASE,
      scenario: `${SCENARIO}: -cpu ${SKYLAKE}`,
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: `refused, naming ${wanted.join(', ')} (what the measured model lacks)`,
      observed: outcome.ended,
      pass: outcome.refused !== undefined && named.length === wanted.length && wanted.every((w) => named.includes(w)) && left === '',
      conditions: rowConditions,
    });

    await t.test(`and back: checkpointed under -cpu ${SKYLAKE}, restored under -cpu ${guest.profile.cpuModel}`, async (t) => {
      // The other way the model earns acceptance: what it offers, the checkpoint guest's model offers too (measured).
      const back = await checkpointAtHit(sky, workload, 1, 'avx-from-skylake', { disarm: true });
      t.equal(back.run.outcome, 'hit-limit', 'stopped at avx_checkpoint');
      const needed = back.image!.dependencies!;
      const missingHere = needed.cpuFlags.filter((f) => !deps.cpuFlags.includes(f));
      t.comment(
        `the ${SKYLAKE} image's flags the ${guest.profile.cpuModel} guest lacks: ${missingHere.join(' ') || 'none'}; XCR0 ${hex(needed.xstate.xcr0 ?? 0n)} in use ${hex(needed.xstate.inUse)}`,
      );
      const r = await restoreThere(guest, back.file, DEFAULT_POLICY, 'avx-from-skylake', 'refuse').then(
        (done) => ({ observed: `${done.ended}: ${done.output.trim()}`, notes: done.notes }),
        (e: unknown) => ({ observed: `restore failed: ${(e as Error).message}`, notes: [] as string[] }),
      );
      const accept = missingHere.length === 0 && (needed.xstate.inUse & ~(deps.xstate.xcr0 ?? 0n)) === 0n;
      const want = accept ? `exited 0: ${expected.trim()}` : 'refused';
      if (accept) t.equal(r.observed, want, `accepted, the native run's output: ${r.observed}`);
      else t.match(r.observed, /lacks what the process depends on/, `refused: ${r.observed}`);
      recordRow(t, {
        case: CASE,
        scenario: `${SCENARIO.replace('-cpu max', `-cpu ${SKYLAKE}`)}: restored under -cpu ${guest.profile.cpuModel}`,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: want,
        observed: [r.observed, ...r.notes].join('; '),
        pass: accept ? r.observed === want : r.observed.includes('lacks what the process depends on'),
        conditions: { ...rowConditions, 'flags the checkpoint cpu lacks': missingHere.join(' ') || 'none' },
      });
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
    const moves: KernelMove[] = [
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
    for (const move of moves) {
      const bin = guest.image.guestPaths[move.name]!;
      const w: Workload = { binary: bin, argv: [bin, ...(move.args ?? [])], breakAt: guest.symbols.resolve(move.symbol) };
      const { run: ref, output: want } = await runUninterrupted(guest, w, `/tmp/${move.name}-reference.out`);
      t.equal(ref.code, 0, `${move.name} uninterrupted on ${guest.profile.kernelRelease}: ${want.trim()}`);
      const nat = await nativeReference(guest, w);
      t.equal(`${endedAs(nat)}\n${nat.output}`, `${endedAs(ref)}\n${want}`, `${move.name}: the traced reference is the native run`);

      await t.test(`${move.name}: checkpointed on ${guest.profile.kernelRelease}, restored on ${there.profile.kernelRelease}`, async (t) => {
        const taken = await checkpointAtHit(guest, w, 1, `${move.name}-to-6.12`, { disarm: true });
        t.equal(taken.run.outcome, 'hit-limit', `stopped at ${move.symbol}`);
        const r = await restoreThere(there, taken.file, DEFAULT_POLICY, `${move.name}-to-6.12`, 'refuse');
        t.same(
          r.differences.filter((d) => d.what !== 'session'),
          [],
          'read back: as requested, but for the session',
        );
        t.ok(
          r.notes.some((n) => n.startsWith('vDSO redirected')),
          `the vDSO redirected: ${r.notes.join('; ')}`,
        );
        t.equal(r.output, want, `the restored run is the native run: ${r.output.trim()}`);
        recordRowOutcome(t, {
          case: CASE,
          scenario: move.scenario,
          policy: describePolicy(DEFAULT_POLICY),
          control: false,
          expected: want.trim(),
          observed: r.output.trim() || r.ended,
          matchedUninterrupted: r.output === want && r.ended === 'exited 0',
          conditions: kernelConditions,
        });
      });
      await t.test(`${move.name}: negative control ${move.control.why}`, async (t) => {
        const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: move.control.omit };
        const taken = await checkpointAtHit(guest, w, 1, `${move.name}-to-6.12-control`, { disarm: true });
        const r = await restoreThere(there, taken.file, policy, `${move.name}-to-6.12-control`, 'try');
        const observed = `${r.ended}: ${r.output.trim()}`;
        t.not(observed, `exited 0: ${want.trim()}`, `caught: ${observed}`);
        recordRowOutcome(t, {
          case: CASE,
          scenario: move.scenario,
          policy: `${describePolicy(policy)} dependencies=try`,
          control: true,
          expected: want.trim(),
          observed,
          matchedUninterrupted: r.output === want && r.ended === 'exited 0',
          conditions: kernelConditions,
        });
      });
      await moveBack(t, move, w, there, guest, deps, kernelConditions);
    }
    await clockMove(t, guest, there, kernelConditions);
  });

  await t.test('negative control omit=xstate (same guest): the upper halves lost', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['xstate'] };
    const again = await checkpointAtHit(guest, workload, 1, 'avx-omit', { disarm: true });
    const r = await restoreAndFinish(guest, again.file, policy, 'avx-omit-xstate', {});
    const line = r.output.trim();
    t.not(r.output, expected, `caught: ${line}`);
    t.match(line, /^avxhold ymm=\d+\/16 /, 'the program itself reports the lost registers');
    t.equal(r.run.code, 1, 'and exits 1');
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(policy),
      control: true,
      expected: expected.trim(),
      observed: line,
      matchedUninterrupted: r.output === expected,
    });
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

/**
 * The way back: `w` checkpointed on `from` (6.12) and restored on `to` (6.1). By default refused, naming exactly what
 * the measured 6.1 lacks of the image's platform — the functions of 6.12's vDSO that 6.1's has not (getrandom: the
 * redirect has no jump for it) and AT_RSEQ_FEATURE_SIZE (6.1 has no auxv entry and never updates node_id or mm_cid,
 * which rseqcpu reads when the size covers them). Neither can be waived from the image: it records which functions
 * the vDSO exports and the size the process was told, not which ones the program uses — glibc 2.36 resolves only
 * clock_gettime, gettimeofday, time, getcpu and clock_getres, but a program may parse the vDSO or the rseq area
 * itself. So --restore-anyway (dependencies 'try') is what gets it there, and the row says what happened against
 * the native run on 6.12, the notes naming what was missing. Control: the move's own omission, tried anyway.
 * `toDeps` are the dependencies of a process checkpointed on `to` (the kernel's vDSO and rseq facts).
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
  const scenario = `${move.what}, ${direction} (the way back)`;
  const { run: ref, output: want } = await runUninterrupted(from, w, `/tmp/${move.name}-back-reference.out`);
  t.equal(ref.code, 0, `${move.name} uninterrupted on ${from.profile.kernelRelease}: ${want.trim()}`);
  const nat = await nativeReference(from, w);
  t.equal(
    `${endedAs(nat)}\n${nat.output}`,
    `${endedAs(ref)}\n${want}`,
    `${move.name}: the traced reference on ${from.profile.kernelRelease} is the native run`,
  );
  const conditions = { ...kernelConditions, direction };

  await t.test(`${move.name}: checkpointed on ${from.profile.kernelRelease}, restored on ${to.profile.kernelRelease}: refused by name`, async (t) => {
    const taken = await checkpointAtHit(from, w, 1, `${move.name}-to-6.1`, { disarm: true });
    t.equal(taken.run.outcome, 'hit-limit', `stopped at ${move.symbol}`);
    const needed = taken.image!.dependencies!;
    // What 6.1 lacks, from the two kernels' measured facts (not from the function under test).
    const lackingSymbols = Object.keys(needed.vdso.symbols).filter((name) => toDeps.vdso.symbols[name] === undefined);
    const rseqLacking = needed.rseq.featureSize !== null && (toDeps.rseq.featureSize ?? 0) < needed.rseq.featureSize;
    const wanted = [...(lackingSymbols.length > 0 ? ['vdso symbols'] : []), ...(rseqLacking ? ['rseq feature size'] : [])];
    t.comment(
      `measured: ${from.profile.kernelRelease}'s vDSO exports ${Object.keys(needed.vdso.symbols).join(' ')}; ${to.profile.kernelRelease}'s lacks ${lackingSymbols.join(' ') || 'none'}; AT_RSEQ_FEATURE_SIZE ${String(needed.rseq.featureSize)} / ${String(toDeps.rseq.featureSize)}`,
    );
    t.ok(wanted.length > 0, `${to.profile.kernelRelease} lacks something of ${from.profile.kernelRelease}'s platform: ${wanted.join(', ')}`);
    const refused = await restoreThere(to, taken.file, DEFAULT_POLICY, `${move.name}-to-6.1-refused`, 'refuse').then(
      (r) => r,
      (e: unknown) => e,
    );
    const named = refused instanceof IncompatibleTargetError ? refused.missing.map((m) => m.feature) : [];
    t.ok(refused instanceof IncompatibleTargetError, `refused: ${refused instanceof Error ? refused.message : JSON.stringify(refused)}`);
    t.same([...named].sort(), [...wanted].sort(), `the refusal names exactly what ${to.profile.kernelRelease} lacks: ${wanted.join(', ')}`);
    const symbolsWhy = refused instanceof IncompatibleTargetError ? (refused.missing.find((m) => m.feature === 'vdso symbols')?.why ?? '') : '';
    t.ok(
      lackingSymbols.every((name) => symbolsWhy.includes(name)),
      `the vDSO's missing functions by name: ${lackingSymbols.join(', ')}`,
    );
    const left = (await to.machine.ssh.exec(`pidof ${move.name}`)).stdout.trim();
    t.equal(left, '', `no ${move.name} left behind on ${to.profile.kernelRelease}`);
    recordRow(t, {
      case: CASE,
      scenario,
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: `refused, naming ${wanted.join(', ')}; nothing left running`,
      observed: refused instanceof IncompatibleTargetError ? `refused: ${refused.message}` : 'restored',
      pass: refused instanceof IncompatibleTargetError && named.length === wanted.length && wanted.every((f) => named.includes(f)) && left === '',
      conditions: { ...conditions, [`${to.profile.kernelRelease} vDSO lacks`]: lackingSymbols.join(' ') || 'none' },
    });

    const tried = await restoreThere(to, taken.file, DEFAULT_POLICY, `${move.name}-to-6.1-anyway`, 'try');
    t.ok(
      wanted.every((f) => tried.notes.some((n) => n.includes(f))),
      `restored anyway, the notes name what was missing: ${tried.notes.join('; ')}`,
    );
    const observed = [`${tried.ended}: ${tried.output.trim()}`, ...tried.notes].join('; ');
    if (move.backAnyway) {
      const seen = move.backAnyway.output.test(tried.output) && tried.ended === move.backAnyway.ended;
      t.ok(seen, `restored anyway on ${to.profile.kernelRelease}, the program sees what is missing: ${tried.ended}: ${tried.output.trim()}`);
      t.not(tried.output, want, 'not the native run');
      recordRow(t, {
        case: CASE,
        scenario,
        policy: `${describePolicy(DEFAULT_POLICY)} dependencies=try`,
        control: true,
        expected: move.backAnyway.expected,
        observed,
        pass: seen,
        conditions,
      });
      return;
    }
    t.equal(tried.output, want, `restored anyway on ${to.profile.kernelRelease}: ${tried.ended}: ${tried.output.trim()}`);
    t.equal(tried.ended, 'exited 0');
    recordRowOutcome(t, {
      case: CASE,
      scenario,
      policy: `${describePolicy(DEFAULT_POLICY)} dependencies=try`,
      control: false,
      expected: want.trim(),
      observed,
      matchedUninterrupted: tried.output === want && tried.ended === 'exited 0',
      conditions,
    });
  });

  await t.test(`${move.name}: negative control on the way back, ${move.control.why}`, async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: move.control.omit };
    const taken = await checkpointAtHit(from, w, 1, `${move.name}-to-6.1-control`, { disarm: true });
    const r = await restoreThere(to, taken.file, policy, `${move.name}-to-6.1-control`, 'try');
    const observed = `${r.ended}: ${r.output.trim()}`;
    t.not(observed, `exited 0: ${want.trim()}`, `caught: ${observed}`);
    recordRowOutcome(t, {
      case: CASE,
      scenario,
      policy: `${describePolicy(policy)} dependencies=try`,
      control: true,
      expected: want.trim(),
      observed,
      matchedUninterrupted: r.output === want && r.ended === 'exited 0',
      conditions,
    });
  });
}

/**
 * CLOCK_MONOTONIC and CLOCK_BOOTTIME across the move (time-namespace.ts): monoclock reads both (vDSO and system call)
 * before and after its checkpoint and says whether each went on (never backwards, not forward by more than its bound).
 * Checkpointed in `from`, restored in `to` (another boot): in a time namespace, the native run's line. The control,
 * omit=timens, leaves the restoring boot's clocks: what the process then sees is predicted from the image's clocks and
 * the restoring guest's, and the row is conditioned on it (a prediction within the bound is reported, not counted).
 */
async function clockMove(t: Test, from: Guest, to: Guest, kernelConditions: Record<string, string>): Promise<void> {
  const bin = from.image.guestPaths.monoclock!;
  const w: Workload = { binary: bin, argv: [bin, String(CLOCK_BOUND_S)], breakAt: from.symbols.resolve('monoclock:monoclock_checkpoint') };
  const scenario = `CLOCK_MONOTONIC and CLOCK_BOOTTIME (vDSO and system call) across a ${from.profile.kernelRelease} → ${to.profile.kernelRelease} move (another boot), bound ${CLOCK_BOUND_S} s`;
  const timens = to.platform['features.timeNamespace'];
  const conditions = { ...kernelConditions, 'restore kernel has time namespaces (profile)': String(timens) };
  const { run: ref, output: want } = await runUninterrupted(from, w, '/tmp/monoclock-reference.out');
  t.equal(ref.code, 0, `monoclock uninterrupted: ${want.trim()}`);
  const nat = await nativeReference(from, w);
  t.equal(`${endedAs(nat)}\n${nat.output}`, `${endedAs(ref)}\n${want}`, 'monoclock: the traced reference is the native run');

  await t.test(`monoclock: checkpointed on ${from.profile.kernelRelease}, restored on ${to.profile.kernelRelease} in a time namespace`, async (t) => {
    const taken = await checkpointAtHit(from, w, 1, 'monoclock-moved', { disarm: true });
    t.equal(taken.run.outcome, 'hit-limit', 'stopped at monoclock_checkpoint');
    const clocks = taken.image!.clocks;
    t.ok(clocks, `the image records the process's clocks (monotonic ${clocks && Number(clocks.monotonicNs) / 1e9} s, boot ${clocks?.bootId})`);
    if (timens !== true) {
      // Measured, not assumed: a kernel without CONFIG_TIME_NS cannot continue the clocks; the restore must say so by name.
      const refused = await restoreThere(to, taken.file, DEFAULT_POLICY, 'monoclock-moved', 'refuse').then(
        () => undefined,
        (e: unknown) => e,
      );
      const named = refused instanceof IncompatibleTargetError && refused.missing.some((m) => m.feature === 'time namespaces');
      t.ok(named, `the restore kernel has no time namespaces (profile: ${String(timens)}): refused, naming them`);
      recordRow(t, {
        case: CASE,
        scenario,
        policy: describePolicy(DEFAULT_POLICY),
        control: false,
        expected: 'refused, naming time namespaces (the restore kernel has none)',
        observed: refused instanceof Error ? refused.message : 'restored',
        pass: named,
        conditions,
      });
      return;
    }
    const r = await restoreThere(to, taken.file, DEFAULT_POLICY, 'monoclock-moved', 'refuse');
    t.ok(
      r.notes.some((n) => n.startsWith('time namespace: ')),
      `entered a time namespace: ${r.notes.join('; ')}`,
    );
    t.equal(r.output, want, `the restored run is the native run: ${r.output.trim()}`);
    recordRowOutcome(t, {
      case: CASE,
      scenario,
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: want.trim(),
      observed: r.output.trim() || r.ended,
      matchedUninterrupted: r.output === want && r.ended === 'exited 0',
      conditions,
    });
  });

  await t.test("monoclock: negative control omit=timens (the restoring boot's clocks)", async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['timens'] };
    const taken = await checkpointAtHit(from, w, 1, 'monoclock-moved-control', { disarm: true });
    const r = await restoreThere(to, taken.file, policy, 'monoclock-moved-control', 'try');
    const observed = `${r.ended}: ${r.output.trim()}`;
    // What the process sees without a namespace, from the two clocks (the note carries it): the control can only
    // catch a move whose boots are further apart than the bound — say so rather than count a blind control.
    const note = r.notes.find((n) => n.startsWith('omit=timens: ')) ?? '';
    const moves = /CLOCK_MONOTONIC moves by ([-+][0-9.]+) s/.exec(note);
    const step = moves ? Number(moves[1]) : NaN;
    const predicted = Number.isNaN(step) ? 'unknown' : step < 0 ? 'backwards' : step > CLOCK_BOUND_S ? 'jumped' : 'continuous';
    t.comment(`omit=timens: ${note} → predicted ${predicted}`);
    const rowConditions = { ...conditions, 'without a namespace, CLOCK_MONOTONIC would move by': moves ? `${moves[1]} s` : 'not reported' };
    if (predicted === 'continuous' || predicted === 'unknown') {
      t.comment(`the boots are within ${CLOCK_BOUND_S} s of each other (${predicted}): this control cannot catch anything in this run`);
      recordRow(t, {
        case: CASE,
        scenario,
        policy: `${describePolicy(policy)} dependencies=try`,
        control: true,
        expected: "inconclusive: the two boots' clocks are within the bound",
        observed,
        pass: false,
        conditions: rowConditions,
      });
      t.fail("the negative control had nothing to catch (the boots' clocks within the bound)");
      return;
    }
    t.not(observed, `exited 0: ${want.trim()}`, `caught: ${observed}`);
    t.match(
      r.output,
      new RegExp(`monotonic vdso=${predicted} syscall=${predicted} boottime vdso=${predicted} syscall=${predicted}`),
      `each clock ${predicted}, as predicted`,
    );
    recordRowOutcome(t, {
      case: CASE,
      scenario,
      policy: `${describePolicy(policy)} dependencies=try`,
      control: true,
      expected: want.trim(),
      observed,
      matchedUninterrupted: r.output === want && r.ended === 'exited 0',
      conditions: rowConditions,
    });
  });
}

function bitsOf(v: bigint): number[] {
  return Array.from({ length: 64 }, (_, bit) => bit).filter((bit) => ((v >> BigInt(bit)) & 1n) !== 0n);
}

/** Restores the image in `guest` (no oracle: nothing here counts CPU events) and runs it to its end. */
async function restoreThere(
  guest: Guest,
  file: string,
  policy: RestorePolicy,
  tag: string,
  dependencies: 'refuse' | 'try',
): Promise<{ differences: Difference[]; notes: string[]; ended: string; output: string }> {
  const image = await readCheckpointImage(file);
  const out = `/tmp/${tag}.restored.out`;
  const restored = await restoreWitnessed(guest.agent, image, { policy, stdoutPath: out, dependencies }, tag);
  const run = await guest.agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
  return { differences: restored.differences, notes: restored.dependencyNotes, ended: endedAs(run), output: await readOutput(guest, out) };
}

/** "pgid P, sid S" of the guest's agent, as the restore's read-back words a session (/proc/PID/stat fields 5 and 6). */
async function agentSession(guest: Guest): Promise<string> {
  const stat = (await guest.agent.call({ op: 'READ_FILE', path: `/proc/${guest.hello.agentPid}/stat`, maxSize: 4096 })).toString('latin1');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return `pgid ${fields[2]}, sid ${fields[3]}`;
}
