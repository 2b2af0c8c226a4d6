// expect: a 4-thread process — each thread with its own registers, ymm0-15 and mxcsr, blocked mask, TLS and rseq registration,
// t1 and t2 stopped inside rseq critical sections, t1 with a signal on its own queue, t2 with its own alternate stack, t3 holding
// a robust mutex and watched by a DR1 write watchpoint set on its tid alone — checkpointed once every thread is stopped, killed
// and restored with its pid and tids (clone3 set_tid) under the ptrace and the sigreturn restorer, verifies itself exactly as the
// uninterrupted run does (registers, masks, tids, EBUSY on re-registration, an abort out of each section — the CPU runs the
// abort handler with t1's or t2's own registers —, pthread_join through clear_child_tid, EOWNERDEAD through the robust list)
// and t3's watchpoint fires 4 times, in t3 only. Negative controls: rseq-fixup=off (threads put back inside their sections
// with rseq_cs cleared), omit=thread-xstate (one FPU state per process), omit=thread-masks, omit=thread-links (pthread_join
// and the robust mutex time out), omit=debugregs (t3's watchpoint lost). Engine criu: the same stopped process handed to
// CRIU (every thread dumped, restored with its tids, taken back) verifies itself as uninterrupted, t1 and t2 resuming
// through their abort handlers; t3's watchpoint is CRIU's known debug-register gap. Its control gives t1 another blocked
// mask in CRIU's restored process (as omit=thread-masks): t1.mask.
import t, { type Test } from 'tap';
import { appendFileSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { handOffToCriu } from '../harness/criu/handoff.ts';
import { CRIU_GAPS } from '../harness/criu/known-gaps.ts';
import { criuIn, policyRowsNotForCriu, runsEngine } from '../harness/testing/criu-engine.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { dr7WriteWatch } from '../harness/agent/breakpoint-spawn.ts';
import type { BreakpointHit } from '../harness/agent/ops.ts';
import {
  armDebugRegisters,
  blockSignal,
  disarm,
  finishRun,
  kill,
  readDebugRegister,
  readMemory,
  readRegisters,
  stepInstruction,
} from '../harness/agent/guest-run.ts';
import { observeCpu } from '../harness/oracle/cpu-oracle.ts';
import type { CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { checkpointStopped, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, spawnArmed, type Restored, type Workload } from '../harness/testing/scenario.ts';
import { hex, type UserRegName, type UserRegs } from '../harness/x86/registers.ts';
import type { Attempt } from '../harness/scenarios/attempt.ts';
import { runTable, type TableScenario } from '../harness/scenarios/table.ts';

const CASE = 'threads';
const SCENARIO = '4 threads: own registers, xstate, masks, rseq (2 inside sections), signal queue, altstack, DR1 watch, join, robust mutex';
const THREADS = 4;
/** Thread i writes `watched` i+1 times after the release: t3's watchpoint sees 4. */
const T3_WATCH_HITS = 4;
/** What the CPU must hold when an in-section thread runs its abort handler: that thread's callee-saved registers and TLS. */
const OWN_REGISTERS: UserRegName[] = ['rbx', 'rbp', 'r12', 'r13', 'r14', 'r15', 'fs_base'];
/** hold_abort to hold_start is 3 instructions; more steps than this outside the section means it is somewhere else. */
const MAX_STEPS_BACK_INSIDE = 32;

/** SIGRTMIN+10 (glibc's SIGRTMIN is 34): blocked by no thread of the workload. */
const EXTRA_BLOCKED = 44;

const summaryLine = (output: string): string => /^threads (?:ok|mismatch).*$/m.exec(output)?.[0] ?? `no summary line (${JSON.stringify(output.slice(0, 120))})`;

/** One attempt: every thread stopped, checkpointed, restored with its tids and run to its end under the oracle. */
interface ThreadsAttempt extends Attempt {
  pid: number;
  tids: number[];
  steppedBack: string[];
  image: CheckpointImage;
  checkpointMs: number;
  imageBytes: number;
  restored: Restored & { pid: number };
  /** the summary line and the watch hits: what the uninterrupted run is compared by */
  summary: string;
  /** which thread's own registers the CPU ran the abort handler with (1 or 2), if any */
  owner?: number;
}

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_RSEQ', 'CONFIG_CHECKPOINT_RESTORE']), async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent, symbols } = guest;
  const binary = guest.image.guestPaths.threads!;
  const sym = (name: string): bigint => symbols.resolve(`threads:${name}`);
  const section = { start: sym('hold_start'), end: sym('hold_post_commit') };
  const workload: Workload = { binary, argv: [binary], breakAt: sym('threads_checkpoint') };
  const watchSummary = (hits: BreakpointHit[], t3: number): string => {
    const elsewhere = hits.filter((h) => h.tid !== t3).length;
    if (hits.length === 0) return 'watch hits 0';
    return `watch hits ${hits.length}${elsewhere === 0 ? ', all in t3' : `, ${elsewhere} in other threads`}`;
  };

  /**
   * A preemption aborts t1's or t2's section: the kernel sends it to
   * hold_abort, from where it runs 3 instructions outside the section
   * (hold_abort, hold_retry) before it is back at hold_start. The more
   * preemptions (a loaded host), the likelier the stop finds it in that
   * window, and the scenario — a thread checkpointed inside its section —
   * was then missed by chance. Such a thread is single-stepped back in: the
   * instructions it would run next anyway, nothing skipped. A preemption
   * during a step aborts it again; the loop follows it, bounded.
   */
  const stepBackInside = async (tid: number): Promise<number> => {
    const inside = (rip: bigint): boolean => rip >= section.start && rip < section.end;
    let rip = (await readRegisters(agent, tid)).rip;
    let steps = 0;
    while (!inside(rip) && steps < MAX_STEPS_BACK_INSIDE) {
      const step = await stepInstruction(agent, tid, RUN_TIMEOUT_MS);
      if (step.outcome !== 'stepped') throw new Error(`thread ${tid} ${step.outcome} (${step.code}) while stepped back into its section from ${hex(rip)}`);
      rip = step.rip;
      steps++;
    }
    return steps;
  };

  /**
   * Provoke: runs to the main thread's breakpoint — every worker spinning,
   * t1 and t2 inside their sections (stepped back in when the stop caught
   * one just aborted out of it) — where RUN leaves every thread stopped;
   * gives t3 its own DR1 write watch and disarms the main thread's DR0.
   */
  const stopAll = async (tag: string) => {
    const out = `/tmp/threads-${tag}.original.out`;
    const pid = await spawnArmed(guest, workload, out);
    const run = await finishRun(agent, pid, RUN_TIMEOUT_MS, 1);
    if (run.outcome !== 'hit-limit') throw new Error(`threads never reached threads_checkpoint (${run.outcome} ${run.code}): ${await readOutput(guest, out)}`);
    const raw = await readMemory(agent, pid, sym('thread_tids'), 4 * THREADS);
    const tids = Array.from({ length: THREADS }, (_, i) => raw.readInt32LE(4 * i));
    const steppedBack: string[] = [];
    for (const i of [1, 2]) {
      const steps = await stepBackInside(tids[i]!);
      if (steps > 0) steppedBack.push(`t${i} was stopped just aborted out of its section: ${steps} step(s) back into it`);
    }
    await disarm(agent, pid);
    await armDebugRegisters(agent, tids[3]!, { 1: sym('watched'), 7: dr7WriteWatch(1, 8) });
    return { pid, run, tids, out, steppedBack };
  };

  // The uninterrupted run: stopped the same way, then let go (t3 watched).
  const reference = await (async () => {
    const s = await stopAll('reference');
    for (const line of s.steppedBack) t.comment(`reference: ${line}`);
    const run = await finishRun(agent, s.pid, RUN_TIMEOUT_MS);
    const output = await readOutput(guest, s.out);
    // The reference is a traced run (stopped at the breakpoint, t3 watched): it must be what the program does with no
    // tracer at all.
    const native = await nativeReference(guest, workload);
    t.equal(`${endedAs(run)}\n${output}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');
    return { ...s, end: run, line: summaryLine(output) };
  })();
  t.equal(reference.run.stoppedTid, reference.pid, 'the main thread hit threads_checkpoint');
  t.same(
    reference.run.threads,
    [...reference.tids].sort((a, b) => a - b),
    `RUN left all ${THREADS} threads stopped: ${reference.run.threads.join(' ')}`,
  );
  t.equal(reference.end.code, 0, `uninterrupted: ${reference.line}`);
  t.match(reference.line, /^threads ok: 4 threads/);
  t.equal(reference.end.hits.length, T3_WATCH_HITS, `uninterrupted: ${watchSummary(reference.end.hits, reference.tids[3]!)}`);
  t.ok(
    reference.end.hits.every((h) => h.tid === reference.tids[3]),
    'every watch hit in t3, the one thread whose DR1 was set',
  );
  const expected = `${reference.line}; ${watchSummary(reference.end.hits, reference.tids[3]!)}`;
  /** Which of t1 and t2 the CPU ran the abort handler as: the thread whose own registers it had at hold_abort's first execution. */
  const ownerOf = (first: Map<string, bigint> | undefined, tids: number[], regsOf: (tid: number) => UserRegs | undefined): number | undefined =>
    first && [1, 2].find((i) => OWN_REGISTERS.every((name) => first.get(name) === regsOf(tids[i]!)?.[name]));

  const scenario: TableScenario<ThreadsAttempt> = {
    name: SCENARIO,
    expected,
    async attempt(policy: RestorePolicy, tag: string): Promise<ThreadsAttempt> {
      // Checkpoint: every thread stopped, the process checkpointed and killed.
      const s = await stopAll(tag);
      const started = Date.now();
      const { file, image } = await checkpointStopped(guest, { binary, argv: workload.argv, envp: [], noAslr: true, pid: s.pid }, tag);
      const checkpointMs = Date.now() - started;
      await kill(agent, s.pid);
      // Restore (same pid, same tids) and oracle: the CPU watched for the abort handler's first execution.
      const restored = await restoreAndFinish(guest, file, policy, tag, { firstExecutionAt: sym('hold_abort') });
      const summary = `${summaryLine(restored.output)}; ${watchSummary(restored.run.hits, s.tids[3]!)}`;
      const owner = ownerOf(restored.observation.first, s.tids, (tid) => restored.image.threads.find((x) => x.tid === tid)?.regs);
      return {
        ...s,
        image,
        checkpointMs,
        imageBytes: (await stat(file)).size,
        restored,
        summary,
        ...(owner !== undefined ? { owner } : {}),
        matched: summary === expected && restored.run.code === 0 && owner !== undefined && restored.differences.length === 0,
        observed: `${summary}; CPU ran the abort handler as ${owner ? `t${owner}` : 'no thread'}`,
        witnesses: {
          output: restored.output,
          ended: endedAs(restored.run),
          hits: restored.run.hits.length,
          oracle: { debugTraps: 0, firstReached: restored.observation.first !== undefined },
          differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
        },
      };
    },
    assertWitnesses(t, a) {
      for (const line of a.steppedBack) t.comment(line);
      t.same(
        a.image.threads.map((x) => x.tid),
        a.tids.slice(1),
        `the image holds the 3 other threads: ${a.tids.slice(1).join(' ')}`,
      );
      const inside = a.image.threads.filter((x) => x.regs.rip >= section.start && x.regs.rip < section.end).map((x) => a.tids.indexOf(x.tid));
      t.same(inside, [1, 2], `t1 and t2 checkpointed inside their critical sections [${hex(section.start)}, ${hex(section.end)})`);
      t.ok(a.image.threads.every((x) => x.rseq !== null) && a.image.rseq !== null, 'every thread has its own rseq registration in the image');
      t.comment(`checkpoint of ${THREADS} threads: ${a.checkpointMs} ms, image ${a.imageBytes} bytes`);
    },
  };

  // expect: each restorer resumes every thread as the uninterrupted run, the abort handler run with t1's or t2's own registers.
  const resumes = (restorer: 'ptrace' | 'sigreturn') => ({
    title: `kill and restore, restorer=${restorer}: every thread verifies itself as in the uninterrupted run`,
    policy: { ...DEFAULT_POLICY, restorer },
    tag: `default-${restorer}`,
    expect: 'resumes' as const,
    notForCriu: false,
    check: (t: Test, a: ThreadsAttempt) => {
      const r = a.restored;
      const clone3 = r.plan?.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 435).length;
      t.comment(`restore of ${THREADS} threads (${r.plan?.length} plan steps, ${clone3} clone3): ${r.restoreMs} ms`);
      t.equal(r.pid, a.pid, `the same pid, ${a.pid}`);
      t.same(r.differences, [], 'read back: every thread holds the registers, xstate, debug registers, rseq registration, mask and queue the plan set');
      t.equal(a.summary, expected, `restored: ${a.summary}`);
      t.equal(r.run.code, 0);
      t.ok(
        r.run.hits.every((h) => h.tid === a.tids[3]),
        'the restored watchpoint fires in t3 (the same tid) only',
      );
      t.ok(
        a.owner !== undefined,
        `oracle: the CPU ran the abort handler with ${a.owner ? `t${a.owner}'s` : "no restored thread's"} own ${OWN_REGISTERS.join(' ')}`,
      );
    },
  });
  const controls: { name: string; policy: RestorePolicy; shows: RegExp; cpu?: 'no-abort' }[] = [
    {
      name: 'rseq-fixup=off: t1 and t2 are put back inside their sections, where the kernel had cleared rseq_cs during the restore',
      policy: { ...DEFAULT_POLICY, rseqFixup: 'off' },
      shows: /^threads mismatch:.* t1\.rseq-lost.* t2\.rseq-lost/,
      cpu: 'no-abort',
    },
    {
      name: "omit=thread-xstate: each thread keeps the copy of the main thread's xstate it was created with (one FPU state per process)",
      policy: { ...DEFAULT_POLICY, omit: ['thread-xstate'] },
      shows: /^threads mismatch: t1\.vec t1\.mxcsr t2\.vec t2\.mxcsr t3\.vec t3\.mxcsr;/,
    },
    {
      name: 'omit=thread-masks: each thread keeps the everything-blocked mask it was created with',
      policy: { ...DEFAULT_POLICY, omit: ['thread-masks'] },
      shows: /^threads mismatch: t1\.mask t2\.mask t3\.mask;/,
    },
    {
      name: 'omit=thread-links: no clear_child_tid, no robust list: pthread_join and the robust mutex time out',
      policy: { ...DEFAULT_POLICY, omit: ['thread-links'] },
      shows: /^threads mismatch: join1 join2 join3 robust;/,
    },
    {
      name: "omit=debugregs: t3's DR1 watchpoint is lost",
      policy: { ...DEFAULT_POLICY, omit: ['debugregs'] },
      shows: /^threads ok: .*; watch hits 0$/,
    },
  ];
  await runTable(t, CASE, scenario, [
    resumes('ptrace'),
    resumes('sigreturn'),
    ...controls.map((c, i) => ({
      title: `negative control ${c.name}`,
      policy: c.policy,
      tag: `control-${i}`,
      expect: 'differs' as const,
      notForCriu: false,
      check: (t: Test, a: ThreadsAttempt) => {
        t.match(a.summary, c.shows, `caught: ${a.summary}`);
        t.not(a.summary, expected, 'and it differs from the uninterrupted run');
        if (c.cpu === 'no-abort') t.equal(a.restored.observation.first, undefined, 'oracle: the CPU never ran the abort handler after the restore');
      },
    })),
  ]);

  if (!runsEngine('criu')) return;
  const criu = criuIn(guest);
  /** Stops every thread as above, hands the process to CRIU, takes it back (every thread) and runs it to its end under the oracle. */
  const throughCriu = async (t: Test, tag: string, afterRestore?: (tids: number[]) => Promise<void>) => {
    const s = await stopAll(tag);
    for (const line of s.steppedBack) t.comment(line);
    const regsAtDump = new Map<number, UserRegs>();
    for (const tid of s.tids) regsAtDump.set(tid, await readRegisters(agent, tid));
    const handoff = await handOffToCriu(agent, criu, s.pid, `/tmp/criu-${tag}`);
    await writeFile(path.join(guest.artifactsDir, `criu-${tag}-dump.log`), handoff.dumpLog);
    if (handoff.restoreLog !== undefined) await writeFile(path.join(guest.artifactsDir, `criu-${tag}-restore.log`), handoff.restoreLog);
    if (!handoff.ok) return { kind: 'refused' as const, why: `CRIU ${criu.version}: ${handoff.reason}` };
    t.comment(`CRIU: ${handoff.dumpMs} ms dump, ${handoff.restoreMs} ms restore, ${handoff.imageBytes} bytes of images`);
    const t3Dr7 = await readDebugRegister(agent, s.tids[3]!, 7);
    if (afterRestore) await afterRestore(s.tids);
    const oracleLog = path.join(guest.artifactsDir, `oracle-${tag}.log`);
    writeFileSync(oracleLog, '');
    const log = (line: string): void => appendFileSync(oracleLog, `${new Date().toISOString()} ${line}\n`);
    const { result: run, observation } = await observeCpu(guest.machine.gdbSocket, symbols, { firstExecutionAt: sym('hold_abort'), log }, () =>
      finishRun(agent, handoff.restoredPid, RUN_TIMEOUT_MS),
    );
    const line = summaryLine(await readOutput(guest, s.out));
    const owner = ownerOf(observation.first, s.tids, (tid) => regsAtDump.get(tid));
    return { kind: 'restored' as const, s, handoff, t3Dr7, run, line, owner, observed: `${line}; ${watchSummary(run.hits, s.tids[3]!)}` };
  };
  const criuBase = { case: CASE, scenario: SCENARIO, engine: 'criu' as const, expected, conditions: { 'criu.version': criu.version } };

  await t.test('engine criu: CRIU dumps and restores every thread, which verifies itself as uninterrupted', async (t) => {
    const r = await throughCriu(t, 'criu');
    if (r.kind === 'refused') {
      t.fail(r.why);
      return recordRow(t, { ...criuBase, policy: 'criu defaults', control: false, observed: r.why, pass: false });
    }
    t.equal(r.handoff.restoredPid, r.s.pid, `CRIU kept the pid, ${r.s.pid}`);
    t.equal(r.run.code, 0);
    t.equal(r.line, reference.line, `restored: ${r.line}`);
    t.ok(
      r.owner !== undefined,
      `oracle: the CPU ran the abort handler with ${r.owner ? `t${r.owner}'s` : "no dumped thread's"} own ${OWN_REGISTERS.join(' ')}`,
    );
    const exact = r.observed === expected && r.run.code === 0 && r.owner !== undefined;
    // t3's DR1 watch: CRIU does not restore a task's debug registers (known-gaps.ts); the rest must be exact.
    const gap = !exact && r.line === reference.line && r.run.code === 0 && r.owner !== undefined && r.run.hits.length === 0 && (r.t3Dr7 & 0xf0n) === 0n;
    t.ok(exact || gap, `exact, or differs by the known gap alone: ${r.observed}; t3's DR7 after CRIU's restore ${hex(r.t3Dr7)}`);
    recordRow(t, {
      ...criuBase,
      policy: 'criu defaults',
      control: false,
      observed: `${r.observed}; CPU ran the abort handler as ${r.owner ? `t${r.owner}` : 'no thread'}; t3's DR7 restored as ${hex(r.t3Dr7)}`,
      pass: exact,
      ...(gap ? { engineGap: CRIU_GAPS.debugRegisters } : {}),
    });
  });

  await t.test(
    "engine criu, negative control: t1 given another blocked mask (SIGRTMIN+10 blocked) in CRIU's restored process (as omit=thread-masks)",
    async (t) => {
      // One more signal blocked (SIGRTMIN+10, which no thread blocks): t1's pending SIGUSR1 stays blocked, the mask differs.
      const r = await throughCriu(t, 'criu-mask', async (tids) => {
        await blockSignal(agent, tids[1]!, EXTRA_BLOCKED);
      });
      if (r.kind === 'refused') {
        t.fail(r.why);
        return recordRow(t, { ...criuBase, policy: 'criu, t1 blocks SIGRTMIN+10 after the restore', control: true, observed: r.why, pass: false });
      }
      const showed = /^threads mismatch:.* t1\.mask/.test(r.line);
      t.ok(showed, `caught: ${r.observed}`);
      recordRow(t, { ...criuBase, policy: 'criu, t1 blocks SIGRTMIN+10 after the restore', control: true, observed: r.observed, pass: showed });
    },
  );
  for (const row of policyRowsNotForCriu(CASE, SCENARIO, [
    describePolicy({ ...DEFAULT_POLICY, restorer: 'sigreturn' }),
    ...controls.map((c) => describePolicy(c.policy)),
  ])) {
    await t.test(`engine criu: ${row.policy} ${row.skipped}`, async (t) => {
      t.pass(row.skipped);
      recordRow(t, row);
    });
  }
});
