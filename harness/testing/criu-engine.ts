/**
 * The criu engine for cases: the same workload, spawned and stopped at the
 * same breakpoint hit by the agent as the crh engine's checkpointAtHit, is
 * handed to CRIU in the guest (criu/handoff.ts: dump, kill, restore, take
 * back), and the restored process then runs to its end under the CPU oracle
 * as crh's restored processes do — so the case judges both engines with the
 * same witnesses. What CRIU gave back is compared with what the process had
 * at the dump (registers and debug registers, read through ptrace before
 * and after) and noted for the row as its restore's read-back; CRIU's logs
 * go to the case's artifacts.
 */
import type { Test } from 'tap';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { RunResult } from '../agent/ops.ts';
import { handOffToCriu, type CriuInGuest, type Handoff } from '../criu/handoff.ts';
import { POLICY_NOT_FOR_CRIU } from '../criu/known-gaps.ts';
import { CrhError } from '../errors.ts';
import type { Observation, WatchOptions } from '../oracle/cpu-oracle.ts';
import type { Engine, EngineGap, RestoreWitness } from '../report/verdicts.ts';
import { runEngines } from '../flags/engine-flags.ts';
import { debugRegOffset, EFLAGS, hex, USER_REGS_FIELDS, type UserRegs } from '../x86/registers.ts';
import type { Guest } from './guest-fixture.ts';
import { noteRestore } from './restore-witness.ts';
import { recordRow } from './verdict-rows.ts';
import { readOutput, RUN_TIMEOUT_MS, runUnderOracle, spawnArmed, type Workload } from './scenario.ts';

/** Whether this case process runs `engine` (crh run --engine; crh alone by default). */
export function runsEngine(engine: Engine): boolean {
  return runEngines().includes(engine);
}

/** The guest's CRIU; a guest booted without the CRIU variant cannot run the criu engine (crh run boots it when asked). */
export function criuIn(guest: Guest): CriuInGuest {
  const criu = guest.image.criu;
  if (!criu) throw new CrhError('the criu engine was asked for but this guest was booted from the image without CRIU');
  return { command: criu.command, version: criu.version, exec: (command) => guest.machine.ssh.exec(command) };
}

/** Registers compared between the dump and the restored process: all but orig_rax (the syscall number slot, not state CRIU restores). */
const COMPARED: readonly (keyof UserRegs)[] = USER_REGS_FIELDS.filter((f) => f !== 'orig_rax');
const DEBUG_INDICES = [0, 1, 2, 3, 7] as const;

export interface CriuRestored {
  /** the original's run up to the dump */
  checkpointRun: RunResult;
  regsAtDump: UserRegs;
  restoredRegs: UserRegs;
  /** DR0-3 and DR7 as dumped and as CRIU restored them */
  debugAtDump: Record<number, bigint>;
  debugRestored: Record<number, bigint>;
  /** every register and debug register CRIU gave back differently */
  differences: RestoreWitness['differences'];
  /**
   * A signal pending at the dump (a timer's, say) that the kernel delivered
   * as CRIU's restored task returned to user mode: the task was stopped at
   * its handler's entry, and the registers compared with the dump are the
   * ones its signal frame saved (the context the handler returns to)
   */
  deliveredSignals?: number[];
  /** the restored process's run to its end, with the oracle's observation */
  run: RunResult;
  observation: Observation;
  output: string;
  handoff: Extract<Handoff, { ok: true }>;
}

export interface CriuAttemptOptions {
  /** what the oracle watches while the restored process runs */
  watch: Omit<WatchOptions, 'log'>;
  /**
   * Once the restored process is back under the agent and before it runs:
   * put the dumped debug registers back (as a debugger re-inserts its
   * breakpoints), so the rest of the scenario is judged past the known gap.
   */
  rearmDebugRegisters?: boolean;
  /**
   * A negative control: registers the harness changes in the restored
   * process before it runs (clear RF as crh's rf=clear does, zero the
   * callee-saved registers as regs=partial does), to show the witnesses of
   * the criu path catch what they must.
   */
  tamper?: (regs: UserRegs) => UserRegs;
  /** A negative control's other state changed in the restored process before it runs (e.g. its signal mask, through the agent). */
  afterRestore?: (pid: number) => Promise<void>;
  /** DR7 to leave before the dump (e.g. 0: the breakpoint only chose where to stop) */
  dr7BeforeDump?: bigint;
  /**
   * Whether the stop is the scenario's: undefined when it is, else why not
   * (an rseq_cs the kernel cleared after a preemption before start_ip, as
   * scenario.ts checkpointRseqArmed says); such a stop is taken again, at
   * most STOP_TRIES times, and the last one is used whatever it is.
   */
  stopMissed?: (pid: number) => Promise<string | undefined>;
}

const STOP_TRIES = 5;

export type CriuAttempt =
  | ({ kind: 'restored' } & CriuRestored)
  /** CRIU refused or failed (its reason and log): the verdict about CRIU */
  | { kind: 'refused'; checkpointRun: RunResult; reason: string; handoff: Extract<Handoff, { ok: false }> }
  /** the workload ended before the stop */
  | { kind: 'ended'; checkpointRun: RunResult };

async function debugRegisters(guest: Guest, pid: number): Promise<Record<number, bigint>> {
  const values: Record<number, bigint> = {};
  for (const index of DEBUG_INDICES) values[index] = await guest.agent.call({ op: 'PEEKUSER', pid, offset: debugRegOffset(index) });
  return values;
}

/**
 * Runs `w` to its `hit`-th breakpoint hit, hands it to CRIU there, takes the
 * restored process back and runs it to its end under the oracle. The
 * restore's read-back (what CRIU gave back differently) is noted for the
 * case's next row under `tag`.
 */
export async function criuAtHit(guest: Guest, w: Workload, hit: number, tag: string, options: CriuAttemptOptions): Promise<CriuAttempt> {
  const { agent } = guest;
  const criu = criuIn(guest);
  const stdoutPath = `/tmp/${path.basename(w.binary)}-${tag}.criu.out`;
  let pid: number;
  let checkpointRun: RunResult;
  for (let attempt = 1; ; attempt++) {
    pid = await spawnArmed(guest, w, stdoutPath);
    checkpointRun = await agent.call({ op: 'RUN', pid, stopAfterHits: hit, timeoutMs: RUN_TIMEOUT_MS });
    if (checkpointRun.outcome !== 'hit-limit') return { kind: 'ended', checkpointRun };
    const missed = attempt < STOP_TRIES && options.stopMissed ? await options.stopMissed(pid) : undefined;
    if (missed === undefined) break;
    await agent.call({ op: 'KILL', pid });
    noteRestore({ tag: `${tag} (stop ${attempt} not the scenario's, taken again)`, differences: [], refused: missed });
  }
  if (options.dr7BeforeDump !== undefined) await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: options.dr7BeforeDump });
  const regsAtDump = await agent.call({ op: 'GETREGS', pid });
  const debugAtDump = await debugRegisters(guest, pid);

  const handoff = await handOffToCriu(agent, criu, pid, `/tmp/criu-${tag}`);
  // CRIU's own account of the dump and restore, beside the case's other artifacts.
  await writeFile(path.join(guest.artifactsDir, `criu-${tag}-dump.log`), handoff.dumpLog);
  if (handoff.restoreLog !== undefined) await writeFile(path.join(guest.artifactsDir, `criu-${tag}-restore.log`), handoff.restoreLog);
  if (!handoff.ok) {
    noteRestore({ tag, differences: [], refused: `CRIU ${criu.version}: ${handoff.reason}` });
    return { kind: 'refused', checkpointRun, reason: handoff.reason, handoff };
  }
  const restoredPid = handoff.restoredPid;
  const restoredRegs = await agent.call({ op: 'GETREGS', pid: restoredPid });
  const debugRestored = await debugRegisters(guest, restoredPid);
  const frame = await deliveredSignalFrame(guest, restoredPid, restoredRegs, regsAtDump);
  // With a signal delivered at the restore, the context CRIU restored is the one in its frame.
  const resumedWith: UserRegs = frame ? { ...restoredRegs, ...frame.saved } : restoredRegs;
  const differences: RestoreWitness['differences'] = [
    ...COMPARED.filter((r) => resumedWith[r] !== regsAtDump[r]).map((r) => ({ what: r, requested: hex(regsAtDump[r]), accepted: hex(resumedWith[r]) })),
    ...DEBUG_INDICES.filter((i) => debugRestored[i] !== debugAtDump[i]).map((i) => ({
      what: `dr${i}`,
      requested: hex(debugAtDump[i]!),
      accepted: hex(debugRestored[i]!),
    })),
  ];
  // "requested" is the process's value at the dump, "accepted" what CRIU's restore left: the read-back of a CRIU restore.
  noteRestore({
    tag: `${tag} (criu ${criu.version})${frame ? `, signals ${frame.signals.join(', ')} delivered at the restore: registers read from the innermost frame` : ''}`,
    differences,
  });

  if (options.rearmDebugRegisters) {
    // DR7 last: it enables an address only once the address is in place.
    for (const index of DEBUG_INDICES) await agent.call({ op: 'POKEUSER', pid: restoredPid, offset: debugRegOffset(index), value: debugAtDump[index]! });
  }
  if (options.tamper) await agent.call({ op: 'SETREGS', pid: restoredPid, regs: options.tamper(restoredRegs) });
  if (options.afterRestore) await options.afterRestore(restoredPid);
  const { run, observation } = await runUnderOracle(guest, restoredPid, `${tag} (criu ${criu.version})`, options.watch);
  return {
    kind: 'restored',
    checkpointRun,
    regsAtDump,
    restoredRegs,
    debugAtDump,
    debugRestored,
    differences,
    ...(frame ? { deliveredSignals: frame.signals } : {}),
    run,
    observation,
    output: await readOutput(guest, stdoutPath),
    handoff,
  };
}

/** struct sigcontext_64's general registers, in its order (arch/x86/include/uapi/asm/sigcontext.h). */
const SIGCONTEXT_GPRS = [
  'r8',
  'r9',
  'r10',
  'r11',
  'r12',
  'r13',
  'r14',
  'r15',
  'rdi',
  'rsi',
  'rbp',
  'rbx',
  'rdx',
  'rax',
  'rcx',
  'rsp',
  'rip',
  'eflags',
] as const;
/** At a handler's entry rsp points at the rt_sigframe: pretcode (8), then the ucontext's uc_flags (8), uc_link (8), uc_stack (24), then uc_mcontext. */
const SIGCONTEXT_OFFSET = 48n;

/** How many nested handler frames are followed: the kernel delivers every pending unblocked signal at once, one frame on another. */
const MAX_NESTED_FRAMES = 16;

/**
 * The signal frames the kernel built when it delivered signals pending at
 * the dump to CRIU's restored task: present when the task stopped at a
 * handler's entry (rdx = &uc = rsp + 8, rdi the signal number) rather than
 * where it was dumped. Every pending unblocked signal is delivered before
 * the return to user mode, so a handler's frame may hold another handler's
 * entry: the frames are followed down to the one whose sigcontext holds
 * the dumped rip and rsp. Undefined when there is no such chain; the
 * registers are then compared as they are.
 */
async function deliveredSignalFrame(
  guest: Guest,
  pid: number,
  restored: UserRegs,
  dumped: UserRegs,
): Promise<{ signo: number; signals: number[]; saved: Partial<UserRegs> } | undefined> {
  const signals: number[] = [];
  let at: Partial<UserRegs> = restored;
  for (let depth = 0; depth < MAX_NESTED_FRAMES; depth++) {
    if (at.rip === dumped.rip && at.rsp === dumped.rsp) return depth === 0 ? undefined : { signo: signals[0]!, signals, saved: at };
    // A handler's entry, as __setup_rt_frame leaves it (arch/x86/kernel/signal.c): rdi = signo, rsi = &info, rdx = &uc = rsp + 8.
    if (at.rdx !== at.rsp! + 8n || at.rdi === undefined || at.rdi < 1n || at.rdi > 64n) return undefined;
    signals.push(Number(at.rdi));
    const bytes = await guest.agent
      .call({ op: 'READ_MEM', pid, address: at.rsp! + SIGCONTEXT_OFFSET, length: SIGCONTEXT_GPRS.length * 8 })
      .catch(() => undefined);
    if (!bytes || bytes.length < SIGCONTEXT_GPRS.length * 8) return undefined;
    at = Object.fromEntries(SIGCONTEXT_GPRS.map((r, i) => [r, bytes.readBigUInt64LE(i * 8)]));
  }
  return undefined;
}

/** "DR0 0x401136 → 0x10d40, DR7 0x1 → 0x0": the debug registers CRIU did not give back, for a row. */
export function lostDebugRegisters(r: Pick<CriuRestored, 'debugAtDump' | 'debugRestored'>): string {
  return DEBUG_INDICES.filter((i) => r.debugAtDump[i] !== r.debugRestored[i])
    .map((i) => `DR${i} ${hex(r.debugAtDump[i]!)} → ${hex(r.debugRestored[i]!)}`)
    .join(', ');
}

/** Registers CRIU gave back differently, debug registers left out (those are the known gap): a finding when any. */
export function generalRegisterDifferences(r: Pick<CriuRestored, 'differences'>): string[] {
  return r.differences.filter((d) => !/^dr\d$/.test(d.what)).map((d) => `${d.what}: dumped ${d.requested}, restored ${d.accepted}`);
}

/** Whether CRIU's restore left the execute breakpoint or watch `index` disabled in DR7 (its L and G enable bits). */
export function debugRegisterLost(r: Pick<CriuRestored, 'debugAtDump' | 'debugRestored'>, index: 0 | 1 | 2 | 3): boolean {
  const enable = 3n << BigInt(index * 2);
  return (r.debugAtDump[7]! & enable) !== 0n && ((r.debugRestored[7]! & enable) === 0n || r.debugRestored[index] !== r.debugAtDump[index]);
}

/** The rows a case records for its crh controls under the criu engine: each a SKIP saying the switch does not apply. */
export function policyRowsNotForCriu(
  caseName: string,
  scenario: string,
  policies: readonly string[],
): Array<{
  case: string;
  scenario: string;
  policy: string;
  engine: Engine;
  control: boolean;
  expected: string;
  observed: string;
  pass: boolean;
  skipped: string;
}> {
  return policies.map((policy) => ({
    case: caseName,
    scenario,
    policy,
    engine: 'criu' as const,
    control: true,
    expected: '-',
    observed: '-',
    pass: false,
    skipped: POLICY_NOT_FOR_CRIU,
  }));
}

/** What a case's judge makes of a restored CRIU attempt. */
export interface CriuJudgement {
  observed: string;
  /** indistinguishable from the uninterrupted run, by every witness */
  exact: boolean;
  /** set when the whole difference is this documented gap of CRIU's */
  gap?: EngineGap;
  /** registers the CPU (oracle) or ptrace showed differently from the dump, one line each */
  registerDiff?: string[];
  conditions?: Record<string, string>;
}

/** The judge of a scenario whose whole witness is the program's output: exact when it printed the uninterrupted run's output and exited 0. */
export function sameOutputAs(expected: string): CriuScenario['judge'] {
  return (a) => ({
    observed: a.output.trim() || `${a.run.outcome} ${a.run.code}`,
    exact: a.output === expected && a.run.outcome === 'exited' && a.run.code === 0,
  });
}

/**
 * One row of a case's scenario table run through CRIU: the workload to its
 * `hit`-th stop, handed to CRIU, taken back and run to its end under the
 * oracle, judged by the case. The row is PASS when exact, GAP when the
 * difference is exactly a documented gap, and otherwise a finding (FAIL)
 * with its register diff; CRIU's refusal is a finding too, with its reason.
 */
export interface CriuScenario {
  case: string;
  scenario: string;
  workload: Workload;
  hit: number;
  watch: Omit<WatchOptions, 'log'>;
  dr7BeforeDump?: bigint;
  /** the uninterrupted run, as the row's expectation */
  expected: string;
  judge(a: Extract<CriuAttempt, { kind: 'restored' }>): CriuJudgement;
  /** the criu path's negative control: the harness tampers with the restored process, and the judge must see it */
  control?: {
    policy: string;
    tamper?: (regs: UserRegs) => UserRegs;
    afterRestore?: (pid: number) => Promise<void>;
    expected: string;
    /** whether the tampered run showed the difference it must */
    showedIt(a: Extract<CriuAttempt, { kind: 'restored' }>, j: CriuJudgement): boolean;
  };
}

/** Clears EFLAGS.RF: what crh's rf=clear does to an image, done to CRIU's restored process. */
export const clearRf = (regs: UserRegs): UserRegs => ({ ...regs, eflags: regs.eflags & ~EFLAGS.RF });

export async function runCriuScenario(t: Test, guest: Guest, s: CriuScenario, tag: string): Promise<void> {
  const base = { case: s.case, scenario: s.scenario, policy: 'criu defaults', engine: 'criu' as const, control: false, expected: s.expected };
  const a = await criuAtHit(guest, s.workload, s.hit, tag, { watch: s.watch, ...(s.dr7BeforeDump !== undefined ? { dr7BeforeDump: s.dr7BeforeDump } : {}) });
  if (a.kind !== 'restored') {
    const why =
      a.kind === 'refused'
        ? `CRIU ${guest.image.criu?.version}: ${a.reason}`
        : `the workload ended before stop ${s.hit} (${a.checkpointRun.outcome} ${a.checkpointRun.code})`;
    t.fail(`CRIU dumped and restored the process: ${why}`);
    recordRow(t, { ...base, observed: why, pass: false });
    return;
  }
  t.comment(
    `CRIU: ${a.handoff.dumpMs} ms dump, ${a.handoff.restoreMs} ms restore, ${a.handoff.imageBytes} bytes of images; debug registers ${lostDebugRegisters(a) || 'as dumped'}${a.deliveredSignals ? `; signals ${a.deliveredSignals.join(', ')}, pending at the dump, delivered at the restore (registers read from the innermost frame)` : ''}`,
  );
  const j = s.judge(a);
  const registers = [...generalRegisterDifferences(a), ...(j.registerDiff ?? [])];
  t.same(registers, [], 'CRIU gave back every general register (ptrace) and the CPU resumed with them (oracle)');
  t.ok(
    j.exact || j.gap !== undefined,
    `resumed exactly, or differs by a known gap alone: ${j.exact ? 'exact' : j.gap ? `the gap (${j.gap.what})` : `neither — ${j.observed}`}`,
  );
  recordRow(t, {
    ...base,
    observed: `${j.observed}${lostDebugRegisters(a) ? `; restored ${lostDebugRegisters(a)}` : ''}`,
    pass: j.exact && registers.length === 0,
    ...(!j.exact && j.gap ? { engineGap: j.gap } : {}),
    ...(registers.length > 0 ? { registerDiff: registers.join('\n') } : {}),
    conditions: { ...j.conditions, 'criu.version': guest.image.criu?.version ?? '?' },
  });
}

/** The control of `s` (its `control`), run as its own row: PASS when the tampered run showed what it must. */
export async function runCriuControl(t: Test, guest: Guest, s: CriuScenario, tag: string): Promise<void> {
  const control = s.control!;
  const base = { case: s.case, scenario: s.scenario, policy: control.policy, engine: 'criu' as const, control: true, expected: control.expected };
  const a = await criuAtHit(guest, s.workload, s.hit, tag, {
    watch: s.watch,
    ...(control.tamper ? { tamper: control.tamper } : {}),
    ...(control.afterRestore ? { afterRestore: control.afterRestore } : {}),
    ...(s.dr7BeforeDump !== undefined ? { dr7BeforeDump: s.dr7BeforeDump } : {}),
  });
  if (a.kind !== 'restored') {
    const why = a.kind === 'refused' ? `CRIU ${guest.image.criu?.version}: ${a.reason}` : `the workload ended before stop ${s.hit}`;
    t.fail(`CRIU dumped and restored the process: ${why}`);
    recordRow(t, { ...base, observed: why, pass: false });
    return;
  }
  const j = s.judge(a);
  const showed = control.showedIt(a, j) && !j.exact;
  t.ok(showed, `the tampered run differs as it must: ${j.observed}`);
  recordRow(t, { ...base, observed: j.observed, pass: showed });
}

/** A scenario's run through CRIU as scenarios.ts's Attempt, with the gap that explains it when one does. */
export interface CriuScenarioAttempt {
  pass: boolean;
  expected: string;
  observed: string;
  registerDiff?: string;
  conditions?: Record<string, string>;
  gap?: EngineGap;
}

/**
 * Runs `spec` through CRIU and judges it: what Scenario.criu returns (the
 * catalog's rows under --engine criu). CRIU's refusal, or general registers
 * it gave back differently, fail the attempt with the reason.
 */
export async function attemptThroughCriu(
  guest: Guest,
  spec: Pick<CriuScenario, 'workload' | 'hit' | 'watch' | 'dr7BeforeDump' | 'expected' | 'judge'> &
    Pick<CriuAttemptOptions, 'stopMissed'> & {
      /** where CRIU is expected to move the IP at the dump (its rseq fixup: a task inside a critical section resumes at abort_ip) */
      ripMovedTo?: bigint;
    },
  tag: string,
): Promise<CriuScenarioAttempt> {
  const a = await criuAtHit(guest, spec.workload, spec.hit, tag, {
    watch: spec.watch,
    ...(spec.dr7BeforeDump !== undefined ? { dr7BeforeDump: spec.dr7BeforeDump } : {}),
    ...(spec.stopMissed ? { stopMissed: spec.stopMissed } : {}),
  });
  if (a.kind === 'refused') return { pass: false, expected: spec.expected, observed: `CRIU ${guest.image.criu?.version}: ${a.reason}` };
  if (a.kind === 'ended')
    return {
      pass: false,
      expected: spec.expected,
      observed: `the workload ended before stop ${spec.hit} (${a.checkpointRun.outcome} ${a.checkpointRun.code})`,
    };
  const j = spec.judge(a);
  const moved = spec.ripMovedTo !== undefined && a.restoredRegs.rip === spec.ripMovedTo && a.regsAtDump.rip !== spec.ripMovedTo;
  const registers = [...generalRegisterDifferences(a).filter((d) => !(moved && d.startsWith('rip:'))), ...(j.registerDiff ?? [])];
  const lost = lostDebugRegisters(a);
  return {
    pass: j.exact && registers.length === 0,
    expected: spec.expected,
    observed: `${j.observed}${moved ? `; rip ${hex(a.regsAtDump.rip)} → ${hex(a.restoredRegs.rip)} as expected` : ''}${lost ? `; restored ${lost}` : ''}`,
    ...(registers.length > 0 ? { registerDiff: registers.join('\n') } : {}),
    conditions: { ...j.conditions, 'criu.version': guest.image.criu?.version ?? '?' },
    // A gap explains the difference only when the general registers came back as dumped.
    ...(!j.exact && j.gap && registers.length === 0 ? { gap: j.gap } : {}),
  };
}
