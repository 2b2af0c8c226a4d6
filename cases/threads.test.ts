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
import { observeCpu } from '../harness/oracle/cpu-oracle.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { readCheckpointImage, writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { readOutput, RUN_TIMEOUT_MS, spawnArmed, type Workload } from '../harness/testing/scenario.ts';
import { debugRegOffset, hex, type UserRegName, type UserRegs } from '../harness/x86/registers.ts';

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
    let rip = (await agent.call({ op: 'GETREGS', pid: tid })).rip;
    let steps = 0;
    while (!inside(rip) && steps < MAX_STEPS_BACK_INSIDE) {
      const step = await agent.call({ op: 'STEP', pid: tid, count: 1, timeoutMs: RUN_TIMEOUT_MS });
      if (step.outcome !== 'stepped') throw new Error(`thread ${tid} ${step.outcome} (${step.code}) while stepped back into its section from ${hex(rip)}`);
      rip = step.rip;
      steps++;
    }
    return steps;
  };

  /**
   * Runs to the main thread's breakpoint — every worker spinning, t1 and t2
   * inside their sections (stepped back in when the stop caught one just
   * aborted out of it) — where RUN leaves every thread stopped; gives t3
   * its own DR1 write watch and disarms the main thread's DR0.
   */
  const stopAll = async (tag: string) => {
    const out = `/tmp/threads-${tag}.original.out`;
    const pid = await spawnArmed(guest, workload, out);
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
    if (run.outcome !== 'hit-limit') throw new Error(`threads never reached threads_checkpoint (${run.outcome} ${run.code}): ${await readOutput(guest, out)}`);
    const raw = await agent.call({ op: 'READ_MEM', pid, address: sym('thread_tids'), length: 4 * THREADS });
    const tids = Array.from({ length: THREADS }, (_, i) => raw.readInt32LE(4 * i));
    const steppedBack: string[] = [];
    for (const i of [1, 2]) {
      const steps = await stepBackInside(tids[i]!);
      if (steps > 0) steppedBack.push(`t${i} was stopped just aborted out of its section: ${steps} step(s) back into it`);
    }
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
    await agent.call({ op: 'POKEUSER', pid: tids[3]!, offset: debugRegOffset(1), value: sym('watched') });
    await agent.call({ op: 'POKEUSER', pid: tids[3]!, offset: debugRegOffset(7), value: dr7WriteWatch(1, 8) });
    return { pid, run, tids, out, steppedBack };
  };

  const reference = await (async () => {
    const s = await stopAll('reference');
    for (const line of s.steppedBack) t.comment(`reference: ${line}`);
    const run = await agent.call({ op: 'RUN', pid: s.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
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

  /** Stops every thread as above, checkpoints the process and kills it; the image goes to the artifacts. */
  const checkpoint = async (t: Test, tag: string) => {
    const s = await stopAll(tag);
    for (const line of s.steppedBack) t.comment(line);
    const started = Date.now();
    const image = await checkpointProcess(agent, { binary, argv: workload.argv, envp: [], noAslr: true, pid: s.pid }, guest.platform);
    const checkpointMs = Date.now() - started;
    const file = path.join(guest.artifactsDir, `checkpoint-${tag}.tar`);
    await writeCheckpointImage(image, file);
    await agent.call({ op: 'KILL', pid: s.pid });
    t.same(
      image.threads.map((x) => x.tid),
      s.tids.slice(1),
      `the image holds the 3 other threads: ${s.tids.slice(1).join(' ')}`,
    );
    const inside = image.threads.filter((x) => x.regs.rip >= section.start && x.regs.rip < section.end).map((x) => s.tids.indexOf(x.tid));
    t.same(inside, [1, 2], `t1 and t2 checkpointed inside their critical sections [${hex(section.start)}, ${hex(section.end)})`);
    t.ok(image.threads.every((x) => x.rseq !== null) && image.rseq !== null, 'every thread has its own rseq registration in the image');
    t.comment(`checkpoint of ${THREADS} threads: ${checkpointMs} ms, image ${(await stat(file)).size} bytes`);
    return { ...s, file, checkpointMs };
  };

  /** Restores under `policy` (same pid, same tids) and runs the restored process to its end while the oracle watches the abort handler. */
  const restoreAndRun = async (file: string, policy: RestorePolicy, tag: string, t3: number) => {
    const image = await readCheckpointImage(file);
    const out = `/tmp/threads-${tag}.restored.out`;
    const started = Date.now();
    const restored = await restoreWitnessed(agent, image, { policy, stdoutPath: out }, tag);
    const restoreMs = Date.now() - started;
    const oracleLog = path.join(guest.artifactsDir, `oracle-${tag}.log`);
    writeFileSync(oracleLog, '');
    const log = (line: string): void => appendFileSync(oracleLog, `${new Date().toISOString()} ${line}\n`);
    const { result: run, observation } = await observeCpu(guest.machine.gdbSocket, symbols, { firstExecutionAt: sym('hold_abort'), log }, () =>
      agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS }),
    );
    const line = summaryLine(await readOutput(guest, out));
    return { image, restored, restoreMs, run, observation, line, observed: `${line}; ${watchSummary(run.hits, t3)}` };
  };

  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
  for (const restorer of ['ptrace', 'sigreturn'] as const) {
    await t.test(`kill and restore, restorer=${restorer}: every thread verifies itself as in the uninterrupted run`, crhOnly, async (t) => {
      const policy: RestorePolicy = { ...DEFAULT_POLICY, restorer };
      const c = await checkpoint(t, `default-${restorer}`);
      const r = await restoreAndRun(c.file, policy, `default-${restorer}`, c.tids[3]!);
      t.comment(
        `restore of ${THREADS} threads (${r.restored.plan.length} plan steps, ${r.restored.plan.filter((s) => s.op.op === 'INJECT_SYSCALL' && s.op.nr === 435).length} clone3): ${r.restoreMs} ms`,
      );
      t.equal(r.restored.pid, c.pid, `the same pid, ${c.pid}`);
      t.same(
        r.restored.differences,
        [],
        'read back: every thread holds the registers, xstate, debug registers, rseq registration, mask and queue the plan set',
      );
      t.equal(r.observed, expected, `restored: ${r.observed}`);
      t.equal(r.run.code, 0);
      t.ok(
        r.run.hits.every((h) => h.tid === c.tids[3]),
        'the restored watchpoint fires in t3 (the same tid) only',
      );
      const first = r.observation.first;
      const owner = first && r.image.threads.find((x) => OWN_REGISTERS.every((name) => first.get(name) === x.regs[name]));
      t.ok(
        owner && [1, 2].includes(c.tids.indexOf(owner.tid)),
        `oracle: the CPU ran the abort handler with ${owner ? `t${c.tids.indexOf(owner.tid)}'s` : "no restored thread's"} own ${OWN_REGISTERS.join(' ')}`,
      );
      recordRowOutcome(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: describePolicy(policy),
        control: false,
        expected,
        observed: `${r.observed}; CPU ran the abort handler as ${owner ? `t${c.tids.indexOf(owner.tid)}` : 'no thread'}`,
        matchedUninterrupted: r.observed === expected && r.run.code === 0 && owner !== undefined && r.restored.differences.length === 0,
      });
    });
  }

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
  for (const [i, c] of controls.entries()) {
    await t.test(`negative control ${c.name}`, crhOnly, async (t) => {
      const tag = `control-${i}`;
      const k = await checkpoint(t, tag);
      const r = await restoreAndRun(k.file, c.policy, tag, k.tids[3]!);
      t.match(r.observed, c.shows, `caught: ${r.observed}`);
      t.not(r.observed, expected, 'and it differs from the uninterrupted run');
      if (c.cpu === 'no-abort') t.equal(r.observation.first, undefined, 'oracle: the CPU never ran the abort handler after the restore');
      recordRowOutcome(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: describePolicy(c.policy),
        control: true,
        expected,
        observed: r.observed,
        matchedUninterrupted: r.observed === expected,
      });
    });
  }

  if (!runsEngine('criu')) return;
  const criu = criuIn(guest);
  /** Stops every thread as above, hands the process to CRIU, takes it back (every thread) and runs it to its end under the oracle. */
  const throughCriu = async (t: Test, tag: string, afterRestore?: (tids: number[]) => Promise<void>) => {
    const s = await stopAll(tag);
    for (const line of s.steppedBack) t.comment(line);
    const regsAtDump = new Map<number, UserRegs>();
    for (const tid of s.tids) regsAtDump.set(tid, await agent.call({ op: 'GETREGS', pid: tid }));
    const handoff = await handOffToCriu(agent, criu, s.pid, `/tmp/criu-${tag}`);
    await writeFile(path.join(guest.artifactsDir, `criu-${tag}-dump.log`), handoff.dumpLog);
    if (handoff.restoreLog !== undefined) await writeFile(path.join(guest.artifactsDir, `criu-${tag}-restore.log`), handoff.restoreLog);
    if (!handoff.ok) return { kind: 'refused' as const, why: `CRIU ${criu.version}: ${handoff.reason}` };
    t.comment(`CRIU: ${handoff.dumpMs} ms dump, ${handoff.restoreMs} ms restore, ${handoff.imageBytes} bytes of images`);
    const t3Dr7 = await agent.call({ op: 'PEEKUSER', pid: s.tids[3]!, offset: debugRegOffset(7) });
    if (afterRestore) await afterRestore(s.tids);
    const oracleLog = path.join(guest.artifactsDir, `oracle-${tag}.log`);
    writeFileSync(oracleLog, '');
    const log = (line: string): void => appendFileSync(oracleLog, `${new Date().toISOString()} ${line}\n`);
    const { result: run, observation } = await observeCpu(guest.machine.gdbSocket, symbols, { firstExecutionAt: sym('hold_abort'), log }, () =>
      agent.call({ op: 'RUN', pid: handoff.restoredPid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS }),
    );
    const line = summaryLine(await readOutput(guest, s.out));
    const first = observation.first;
    const owner = first && [1, 2].find((i) => OWN_REGISTERS.every((name) => first.get(name) === regsAtDump.get(s.tids[i]!)![name]));
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
        const mask = await agent.call({ op: 'GETSIGMASK', pid: tids[1]! });
        await agent.call({ op: 'SETSIGMASK', pid: tids[1]!, mask: mask | (1n << BigInt(EXTRA_BLOCKED - 1)) });
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
