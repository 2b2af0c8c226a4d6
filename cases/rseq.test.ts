// expect: a task checkpointed at start_ip or inside an rseq critical section — at a breakpoint, or in a long section (10^8
// iterations) stopped by RUN's timeout with no breakpoint, its rip checked inside the image's rseq_cs range (bounded tries) —
// resumes at its abort handler exactly once (rseq-fixup=on), as the original continued from that stop does; one checkpointed
// outside a section, at the exclusive post-commit bound or with rseq_cs set before start_ip never aborts; the registration (C
// library's or the workload's own) survives — re-registering answers EBUSY — and the per-CPU counter sum is exact (an
// uninterrupted long section aborts 0 or 1 times: spontaneous preemption; aborts are the first increment's — the one every
// checkpoint interrupts — and the others', which only a preemption inside them causes, are reported). Negative controls: rseq-fixup=off (the section
// commits as if never interrupted: 0 aborts, breakpoint and long section alike) and omit=rseq (no registration after
// restore: re-registering succeeds). Engine criu: each breakpoint point handed to CRIU — its rseq support moves a task
// inside a section to abort_ip at the dump and registers the area again — gives the same sums, aborts and EBUSY, the
// CPU running the abort handler exactly where one abort is due; its control puts CRIU's restored task back at the
// dumped IP inside the section (undoing CRIU's fixup, as rseq-fixup=off does): the section commits, 0 aborts.
import t, { type Test } from 'tap';
import { attemptThroughCriu, criuAtHit, policyRowsNotForCriu, runsEngine } from '../harness/testing/criu-engine.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { probeUnmeasuredVerdict } from '../harness/testing/probe-rows.ts';
import { describePolicy, DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { startGuest, type Guest } from '../harness/testing/guest-fixture.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { hex } from '../harness/x86/registers.ts';
import type { Workload } from '../harness/testing/scenario.ts';
import { differs, resumes, type Attempt } from '../harness/scenarios/attempt.ts';
import { settle } from '../harness/scenarios/runner.ts';
import {
  abortHandlerRan,
  abortsAtCheckpoint,
  laterAborts,
  longAborts,
  outcome,
  rseqScenario,
  show,
  summary,
  withoutAborts,
  type RseqRestored,
  type RseqScenario,
  type Summary,
} from '../harness/scenarios/rseq-scenario.ts';

const CASE = 'rseq';
const ITERATIONS = 64;
const MODES = {
  glibc: [] as string[],
  own: ['GLIBC_TUNABLES=glibc.pthread.rseq=0'],
} as const;
type Mode = keyof typeof MODES;

/** Where the checkpoint is taken (a label in rseqcs), and how many aborts the kernel's semantics give from there. */
const POINTS = [
  { label: 'rseq_outside', aborts: 0, why: 'between sections' },
  { label: 'rseq_armed', aborts: 0, why: 'rseq_cs set, IP before start_ip' },
  { label: 'rseq_start', aborts: 1, why: 'at start_ip' },
  { label: 'rseq_inside', aborts: 1, why: 'inside, at a breakpoint' },
  { label: 'rseq_post_commit', aborts: 0, why: 'at start_ip + post_commit_offset (exclusive bound)' },
] as const;

/**
 * The long section (rseqcs's LONG_SPIN argument): the first increment spins `spin` times inside its critical section;
 * one breakpoint on rseq_outside, hit once before rseqcs's settle() and disarmed there, starts the clock, and RUN's
 * timeout interrupts it `stopAfterMs` later. expect: an uninterrupted long section aborts 0 or 1 times, a restored one
 * from a stop inside exactly 1 (timings: docs/platform.md "The rseq long section's timeout, measured").
 */
const LONG = { spin: 100_000_000, stopAfterMs: 110, tries: 12 } as const;

/** Attempts at a checkpoint point whose restored run aborted more than the point's own (a preemption is rare, a restore bug is not). */
const MAX_ATTEMPTS = 3;

/** RSEQ_CS_FLAG_NO_RESTART_ON_MIGRATE: deprecated since Linux 6.0. */
const NO_RESTART_ON_MIGRATE = 4;

/** A row's Attempt: whether the restored run was what the stop owes, in the row's words. */
const attemptOf = (matched: boolean, observed: string, r?: RseqRestored, conditions?: Record<string, string>): Attempt => ({
  matched,
  observed,
  witnesses: r ? { output: r.output, ended: `${r.run.outcome} ${r.run.code}` } : { notRestored: observed },
  ...(conditions ? { conditions } : {}),
});

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_RSEQ']), async (t) => {
  const guest = await startGuest(t, CASE);
  const { symbols } = guest;
  const binary = guest.image.guestPaths.rseqcs!;
  const abortHandler = symbols.resolve('rseqcs:rseq_abort');
  const abortsCounter = symbols.resolve('rseqcs:aborts');
  const rseq = rseqScenario(guest, abortHandler);
  const workload = (mode: Mode, label: string, descFlags = 0): Workload => ({
    binary,
    argv: [binary, mode, String(ITERATIONS), String(descFlags)],
    envp: [...MODES[mode]],
    breakAt: symbols.resolve(`rseqcs:${label}`),
  });
  const row = (scenario: string, policy: RestorePolicy) => ({ case: CASE, scenario, policy: describePolicy(policy) });
  const reference = async (t: Test, w: Workload, tag: string) => {
    const r = await rseq.reference(w, tag);
    // The reference is a traced run: it must be what the program does with no tracer at all, abort counts aside.
    t.equal(...r.nativeMatches, 'the traced reference is the native run (no tracer), abort counts masked');
    return r;
  };

  for (const mode of Object.keys(MODES) as Mode[]) {
    const ref = await reference(t, workload(mode, 'rseq_outside'), mode);
    t.equal(ref.code, 0, `uninterrupted ${mode}: ${show(ref.summary)}`);
    t.same(ref.summary, { sum: ITERATIONS, aborts: 0, reregister: 'EBUSY' }, `uninterrupted ${mode} run: no abort, exact sum, still registered`);
  }

  /** Provoke, checkpoint, restore: stopped at `label` (after the store to rseq_cs unless rseq_outside), restored under `policy`. */
  const cycle = async (t: Test, mode: Mode, label: string, policy: RestorePolicy, tag: string, descFlags = 0): Promise<RseqRestored> => {
    const { checkpointRun, misses, restored: r } = await rseq.checkpointAndRestore(workload(mode, label, descFlags), label !== 'rseq_outside', policy, tag);
    for (const miss of misses) t.comment(`checkpoint taken again: ${miss}`);
    t.equal(checkpointRun.outcome, 'hit-limit', `stopped at ${label}`);
    t.ok(
      r.image.rseq,
      `the image holds the registration: ${r.image.rseq ? `area 0x${r.image.rseq.area.toString(16)} size ${r.image.rseq.size} sig 0x${r.image.rseq.signature.toString(16)}` : 'none'}`,
    );
    return r;
  };

  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
  for (const mode of Object.keys(MODES) as Mode[]) {
    for (const point of POINTS) {
      await t.test(`${mode} registration, checkpoint ${point.why} (${point.label}): ${point.aborts} abort(s)`, crhOnly, async (t) => {
        // A restore that aborts wrongly does it every time; a busy CPU preempting the first increment's section after
        // the restore does it rarely (flake runs 4 and 7 of 2026-12-05). So more aborts than the point's own are taken
        // again, up to MAX_ATTEMPTS times, each attempt named; fewer (an abort the restore failed to apply) never are.
        let r = await cycle(t, mode, point.label, DEFAULT_POLICY, `${mode}-${point.label}`);
        let before = abortsAtCheckpoint(r.image, abortsCounter);
        for (let attempt = 2; attempt <= MAX_ATTEMPTS && r.summary && r.summary.aborts > before + point.aborts; attempt++) {
          t.comment(`attempt ${attempt - 1}: ${show(r.summary)}, ${r.summary.aborts - before - point.aborts} abort(s) more than the point's own: taken again`);
          r = await cycle(t, mode, point.label, DEFAULT_POLICY, `${mode}-${point.label}-attempt${attempt}`);
          before = abortsAtCheckpoint(r.image, abortsCounter);
        }
        if (before > 0)
          t.comment(
            `the first increment had aborted ${before} time(s) on its own before the checkpoint (preempted inside its section): the restore must add exactly ${point.aborts}`,
          );
        // Oracle: the summary the stop owes, the CPU running the abort handler where one is due, the registration kept.
        const expected: Summary = { sum: ITERATIONS, aborts: before + point.aborts, reregister: 'EBUSY' };
        t.same(r.summary, expected, `restored run: ${show(r.summary)}`);
        t.equal(r.run.code, 0, 'exits 0');
        const ran = abortHandlerRan(r);
        if (ran === undefined)
          t.comment(
            `${laterAborts(r.output)} later increment(s) aborted on their own (preempted inside their sections): the oracle's abort-handler run may be theirs, so it is not checked for the first`,
          );
        else t.equal(ran, point.aborts > 0, `oracle: the CPU ${point.aborts > 0 ? 'executed' : 'never executed'} the abort handler`);
        t.notOk(
          r.differences.some((d) => d.what === 'rseq'),
          'the kernel holds the registration as the image had it',
        );
        const csDiff = r.differences.find((d) => d.what === 'rseq.rseq_cs');
        if (csDiff) t.comment(`rseq_cs after the plan: requested ${csDiff.requested}, the kernel left ${csDiff.accepted}`);
        const matched = JSON.stringify(r.summary) === JSON.stringify(expected) && r.run.code === 0 && (ran ?? point.aborts > 0) === point.aborts > 0;
        const observed = `${show(r.summary)}; CPU ran abort handler: ${r.observation.first !== undefined}`;
        settle(t, row(`rseq ${mode}: checkpoint ${point.why}`, DEFAULT_POLICY), resumes(show(expected)), attemptOf(matched, observed, r));
      });
    }
  }

  await t.test('negative control rseq-fixup=off (a restorer that does not apply the abort): the section commits, 0 aborts', crhOnly, async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, rseqFixup: 'off' };
    const r = await cycle(t, 'glibc', 'rseq_inside', policy, 'glibc-rseq_inside-fixup-off');
    t.equal(r.summary?.aborts, 0, `no abort: ${show(r.summary)}`);
    if (abortHandlerRan(r) === undefined)
      t.comment(`${laterAborts(r.output)} later increment(s) aborted on their own: the oracle's abort-handler run is theirs`);
    else t.equal(r.observation.first, undefined, 'oracle: the CPU never executed the abort handler');
    const csDiff = r.differences.find((d) => d.what === 'rseq.rseq_cs');
    t.ok(
      csDiff && csDiff.accepted === '0x0',
      `read back: the kernel cleared rseq_cs before the task resumed (${csDiff ? `${csDiff.requested} → ${csDiff.accepted}` : 'no difference'})`,
    );
    const expected = show({ sum: ITERATIONS, aborts: 1, reregister: 'EBUSY' });
    settle(t, row('rseq glibc: checkpoint inside, at a breakpoint', policy), differs(expected), attemptOf(r.summary?.aborts === 1, show(r.summary), r));
  });

  const longWorkload = (mode: Mode): Workload => ({
    binary,
    argv: [binary, mode, String(ITERATIONS), '0', String(LONG.spin)],
    envp: [...MODES[mode]],
    breakAt: symbols.resolve('rseqcs:rseq_outside'),
  });
  const section = { start: symbols.resolve('rseqcs:rseq_start'), postCommit: symbols.resolve('rseqcs:rseq_post_commit') };

  for (const mode of Object.keys(MODES) as Mode[]) {
    await t.test(
      `${mode} registration, a long section (${LONG.spin} iterations) interrupted by a ${LONG.stopAfterMs} ms timeout, no breakpoint in it: exactly one abort`,
      crhOnly,
      async (t) => {
        const w = longWorkload(mode);
        const scenario = `rseq ${mode}: long section interrupted by a ${LONG.stopAfterMs} ms timeout (no breakpoint in it)`;
        const ref = await reference(t, w, `${mode}-long`);
        const refLong = longAborts(ref.output);
        t.equal(ref.code, 0, `uninterrupted: ${show(ref.summary)}`);
        t.match(ref.summary, { sum: ITERATIONS, reregister: 'EBUSY' }, 'uninterrupted: exact sum, still registered');
        t.ok(
          refLong !== undefined && refLong <= 1,
          `uninterrupted: the long section aborted ${refLong ?? '?'} time(s) (0 or 1: preempted or not, spontaneously)`,
        );

        // Provoke and checkpoint: RUN's timeout stops it, taken again until the IP is inside the section.
        const stop = await rseq.interruptInside(w, `${mode}-long`, section.start, LONG.stopAfterMs, LONG.tries);
        for (const miss of stop.misses) t.comment(`missed: ${miss}`);
        if (!('image' in stop)) {
          t.fail(`no stop inside the section in ${LONG.tries} tries`);
          const why = `no stop inside the section in ${LONG.tries} tries`;
          return void settle(t, row(scenario, DEFAULT_POLICY), resumes('a stop inside the section, then exactly one abort'), attemptOf(false, why));
        }
        const { image, cs, tries } = stop;
        t.pass(
          `try ${tries} of at most ${LONG.tries}: RUN's timeout stopped it ${LONG.stopAfterMs} ms after rseq_outside(0) (the RUN took ${stop.elapsedMs} ms), rip ${hex(image.regs.rip)} in [${hex(cs.startIp)}, +${hex(cs.postCommitOffset)}) — ${LONG.spin - Number(image.regs.rcx)} of ${LONG.spin} iterations done`,
        );
        t.same(
          [cs.startIp, cs.startIp + cs.postCommitOffset, cs.abortIp],
          [section.start, section.postCommit, abortHandler],
          "the image's rseq_cs is rseqcs's descriptor",
        );
        t.equal(cs.flags, 0, 'no deprecated flags');

        // The original, continued from that very stop: what "without the checkpoint" means here.
        const continued = await rseq.continueOriginal(stop.process.pid, stop.stdoutPath);
        const expected: Summary = { sum: ITERATIONS, aborts: 1, reregister: 'EBUSY' };
        t.equal(continued.run.code, 0, 'the original, continued, exits 0');
        t.same(
          [withoutAborts(summary(continued.output)), longAborts(continued.output)],
          [withoutAborts(expected), 1],
          `the original, continued from the stop: ${show(summary(continued.output))}, long section aborted ${longAborts(continued.output) ?? '?'} time(s)`,
        );

        // Restore and oracle: exactly one abort of the long section, the CPU running the handler (control: none).
        for (const policy of [DEFAULT_POLICY, { ...DEFAULT_POLICY, rseqFixup: 'off' } as RestorePolicy]) {
          const control = policy.rseqFixup === 'off';
          const r = await rseq.restore(stop.file, policy, `${mode}-long-fixup-${policy.rseqFixup}`);
          const long = longAborts(r.output);
          const observed = `${show(r.summary)}, long section aborts=${long ?? '?'}; CPU ran abort handler: ${r.observation.first !== undefined}; stop inside on try ${tries}`;
          const matched =
            JSON.stringify(withoutAborts(r.summary)) === JSON.stringify(withoutAborts(expected)) &&
            long === 1 &&
            r.run.code === 0 &&
            r.observation.first !== undefined;
          const csDiff = r.differences.find((d) => d.what === 'rseq.rseq_cs');
          if (control) {
            t.equal(long, 0, `rseq-fixup=off: the section commits from the middle, no abort: ${observed}`);
            if (abortHandlerRan(r) === undefined)
              t.comment(`${laterAborts(r.output)} later increment(s) aborted on their own: the oracle's abort-handler run is theirs`);
            else t.equal(r.observation.first, undefined, 'oracle: the CPU never executed the abort handler');
            t.ok(
              csDiff && csDiff.accepted === '0x0',
              `read back: the kernel cleared rseq_cs before the task resumed (${csDiff ? `${csDiff.requested} → ${csDiff.accepted}` : 'no difference'})`,
            );
          } else {
            t.same(withoutAborts(r.summary), withoutAborts(expected), `restored run: ${show(r.summary)}`);
            t.equal(long, 1, 'the long section aborted exactly once');
            t.equal(r.run.code, 0, 'exits 0');
            t.ok(r.observation.first !== undefined, 'oracle: the CPU executed the abort handler');
            t.notOk(
              r.differences.some((d) => d.what === 'rseq'),
              'the kernel holds the registration as the image had it',
            );
          }
          const want = `${show(expected)}, long section aborts=1; CPU ran abort handler: true`;
          settle(t, row(scenario, policy), control ? differs(want) : resumes(want), attemptOf(matched, observed, r));
        }
      },
    );
  }

  await t.test('deprecated NO_RESTART flags, checkpoint inside: the restored task meets the kernel exactly as the original would', crhOnly, async (t) => {
    const scenario = 'rseq glibc: checkpoint inside a section with deprecated NO_RESTART flags';
    const probe = guest.profile.probes.rseqDeprecatedFlagsRejected;
    const rejected = probe.value;
    t.comment(`profile: probes.rseqDeprecatedFlagsRejected = ${rejected} (${probe.how}); kernel ${guest.profile.kernelRelease}`);
    if (rejected === null) {
      t.fail(`the profile could not measure how this kernel treats deprecated rseq_cs flags: ${probe.how}`);
      for (const policy of [DEFAULT_POLICY, { ...DEFAULT_POLICY, rseqFixup: 'off' } as RestorePolicy]) {
        recordRow(
          t,
          probeUnmeasuredVerdict(
            {
              ...row(scenario, policy),
              control: policy.rseqFixup === 'off',
              expected: 'as the kernel treats deprecated flags (probes.rseqDeprecatedFlagsRejected)',
              conditions: { kernelRelease: guest.profile.kernelRelease },
            },
            'probes.rseqDeprecatedFlagsRejected',
            probe,
          ),
        );
      }
      return;
    }
    // expect: killed with SIGSEGV where the kernel rejects deprecated flags (6.0+), else the section's own policy (no abort).
    const expected = rejected ? 'killed by signal 11' : 'exit 0, aborts=0';
    // The original, stopped at the same breakpoint and simply continued: what "without the checkpoint" means here. A
    // stop whose rseq_cs the kernel already cleared is taken again (flake run 6 of 2026-12-05: "exit 0, aborts=0" where
    // the kernel owed a SIGSEGV).
    const w = workload('glibc', 'rseq_inside', NO_RESTART_ON_MIGRATE);
    const { pid, stopped, stdoutPath, misses } = await rseq.stopArmed(w, 'deprecated');
    for (const miss of misses) t.comment(`original taken again: ${miss}`);
    t.equal(stopped.outcome, 'hit-limit', 'the original stopped at rseq_inside');
    const continued = await rseq.continueOriginal(pid, stdoutPath, true);
    const original = outcome(continued.run, summary(continued.output));
    t.equal(original, expected, `the original, continued from the stop: ${original}`);

    const conditions = { 'probes.rseqDeprecatedFlagsRejected': String(rejected), kernelRelease: guest.profile.kernelRelease };
    for (const policy of [DEFAULT_POLICY, { ...DEFAULT_POLICY, rseqFixup: 'off' } as RestorePolicy]) {
      const control = policy.rseqFixup === 'off';
      const r = await cycle(t, 'glibc', 'rseq_inside', policy, `glibc-deprecated-flags-fixup-${policy.rseqFixup}`, NO_RESTART_ON_MIGRATE);
      const observed = outcome(r.run, r.summary);
      if (control) t.not(observed, expected, `rseq-fixup=off: the kernel cleared rseq_cs during the restore, so the task never meets it: ${observed}`);
      else t.equal(observed, expected, `rseq-fixup=on (rseq_cs written back last): ${observed}`);
      settle(t, row(scenario, policy), control ? differs(expected) : resumes(expected), attemptOf(observed === expected, observed, r, conditions));
    }
  });

  await t.test('negative control omit=rseq (no re-registration, CRIU before rseq support): re-registering succeeds', crhOnly, async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['rseq'] };
    const r = await cycle(t, 'own', 'rseq_outside', policy, 'own-rseq_outside-omit-rseq');
    t.equal(r.summary?.reregister, '0', `the kernel had no registration: ${show(r.summary)}`);
    t.equal(r.run.code, 1, 'the workload reports it (exit 1)');
    const expected = show({ sum: ITERATIONS, aborts: 0, reregister: 'EBUSY' });
    settle(t, row('rseq own: checkpoint between sections', policy), differs(expected), attemptOf(r.summary?.reregister === 'EBUSY', show(r.summary), r));
  });

  if (runsEngine('criu')) await criuRows(t, guest, rseq, workload, abortHandler, abortsCounter);
});

/**
 * The breakpoint points through CRIU. At the stop (before the dump) the
 * first increment's aborts so far are read from the process, as the crh
 * rows read them from the image; a stop at an armed label whose rseq_cs the
 * kernel already cleared (a preemption before start_ip) is taken again, as
 * checkpointRseqArmed does.
 */
async function criuRows(
  t: Test,
  guest: Guest,
  rseq: RseqScenario,
  workload: (mode: Mode, label: string) => Workload,
  abortHandler: bigint,
  abortsCounter: bigint,
): Promise<void> {
  const atStop =
    (label: string, before: { aborts: number }) =>
    async (pid: number): Promise<string | undefined> => {
      before.aborts = await rseq.readCounter(pid, abortsCounter);
      if (label === 'rseq_outside') return undefined;
      return (await rseq.rseqCs(pid)) === 0n ? 'rseq_cs was already 0 at the stop (the kernel cleared it after a preemption before start_ip)' : undefined;
    };
  const judge = (expected: Summary, aborts: number) => (a: { output: string; run: { code: number }; observation: { first?: unknown } }) => {
    const got = summary(a.output);
    const ranAbort = a.observation.first !== undefined;
    // Later increments preempted inside their sections run the handler too: the oracle then speaks for none in particular.
    const ranAsDue = laterAborts(a.output) !== 0 && ranAbort ? true : ranAbort === aborts > 0;
    return {
      observed: `${show(got)}; CPU ran abort handler: ${ranAbort}`,
      exact: JSON.stringify(got) === JSON.stringify(expected) && a.run.code === 0 && ranAsDue,
    };
  };

  for (const mode of Object.keys(MODES) as Mode[]) {
    for (const point of POINTS) {
      const scenario = `rseq ${mode}: checkpoint ${point.why}`;
      await t.test(`engine criu: ${mode} registration, checkpoint ${point.why} (${point.label}): ${point.aborts} abort(s)`, async (t) => {
        const before = { aborts: 0 };
        // What the expectation is depends on the stop: read there, so the judge is built lazily.
        let expected: Summary = { sum: ITERATIONS, aborts: point.aborts, reregister: 'EBUSY' };
        const a = await attemptThroughCriu(
          guest,
          {
            workload: workload(mode, point.label),
            hit: 1,
            dr7BeforeDump: 0n,
            watch: { firstExecutionAt: abortHandler },
            expected: show(expected),
            ...(point.aborts > 0 ? { ripMovedTo: abortHandler } : {}),
            stopMissed: async (pid) => {
              const missed = await atStop(point.label, before)(pid);
              expected = { sum: ITERATIONS, aborts: before.aborts + point.aborts, reregister: 'EBUSY' };
              return missed;
            },
            judge: (r) => judge(expected, point.aborts)(r),
          },
          `criu-${mode}-${point.label}`,
        );
        if (before.aborts > 0)
          t.comment(`the first increment had aborted ${before.aborts} time(s) on its own before the dump: CRIU's restore must add exactly ${point.aborts}`);
        t.ok(a.pass, `CRIU: ${a.observed}${a.registerDiff ? `\n${a.registerDiff}` : ''}`);
        recordRow(t, {
          case: CASE,
          scenario,
          policy: 'criu defaults',
          engine: 'criu',
          control: false,
          expected: show(expected),
          observed: a.observed,
          pass: a.pass,
          ...(a.registerDiff ? { registerDiff: a.registerDiff } : {}),
          ...(a.conditions ? { conditions: a.conditions } : {}),
        });
      });
    }
  }

  const inside = guest.symbols.resolve('rseqcs:rseq_inside');
  await t.test(
    "engine criu, negative control: CRIU's restored task put back inside its section at the dumped IP (its fixup undone): the section commits, 0 aborts",
    async (t) => {
      const before = { aborts: 0 };
      const a = await criuAtHit(guest, workload('glibc', 'rseq_inside'), 1, 'criu-fixup-undone', {
        watch: { firstExecutionAt: abortHandler },
        dr7BeforeDump: 0n,
        stopMissed: atStop('rseq_inside', before),
        tamper: (regs) => ({ ...regs, rip: inside }),
      });
      const expected = show({ sum: ITERATIONS, aborts: before.aborts + 1, reregister: 'EBUSY' });
      const policy = 'criu, rip set back to rseq_inside after the restore';
      if (a.kind !== 'restored') {
        const why = a.kind === 'refused' ? a.reason : `ended before the stop (${a.checkpointRun.outcome} ${a.checkpointRun.code})`;
        t.fail(why);
        return recordRow(t, {
          case: CASE,
          scenario: 'rseq glibc: checkpoint inside, at a breakpoint',
          policy,
          engine: 'criu',
          control: true,
          expected,
          observed: why,
          pass: false,
        });
      }
      const got = summary(a.output);
      const showed = got?.aborts === before.aborts && a.run.code === 0;
      t.ok(
        showed,
        `caught: no abort added — ${show(got)} (CRIU moved rip ${a.regsAtDump.rip === a.restoredRegs.rip ? 'nowhere' : `${hex(a.regsAtDump.rip)} → ${hex(a.restoredRegs.rip)}`})`,
      );
      recordRow(t, {
        case: CASE,
        scenario: 'rseq glibc: checkpoint inside, at a breakpoint',
        policy,
        engine: 'criu',
        control: true,
        expected,
        observed: `${show(got)}; CPU ran abort handler: ${a.observation.first !== undefined}`,
        pass: showed,
      });
    },
  );
  for (const row of policyRowsNotForCriu(CASE, 'rseq glibc: checkpoint inside, at a breakpoint', [
    describePolicy({ ...DEFAULT_POLICY, rseqFixup: 'off' }),
    describePolicy({ ...DEFAULT_POLICY, omit: ['rseq'] }),
  ])) {
    await t.test(`engine criu: ${row.policy} ${row.skipped}`, async (t) => {
      t.pass(row.skipped);
      recordRow(t, row);
    });
  }
}
