// expect: a thread blocked in a page fault that a userfaultfd server (another thread of the process) holds —
// a load, a read-modify-write, rep movsb/movsq and rep stosq forward and backward (DF=1) stopped after exactly 2 KiB —
// checkpointed in the fault and restored, resumes at the faulting instruction with RCX/RSI/RDI where the fault left
// them (RF as probes.rfOnUserPageFault says the platform pushes it), faults again to the restored userfaultfd, is
// served, and ends with every byte exactly as an uninterrupted run leaves it (the read-modify-write runs once). A DR0
// execute breakpoint on the faulting load fires exactly once across the checkpoint: RF=1 in the image keeps the
// re-executed load from re-triggering it. Negative controls: omit=userfaultfd (no userfaultfd, the unserved page
// written as the image's zeros: the access reads zeros) for every access, rf=clear (the 2009 patch) for the
// breakpoint — it fires again. Engine criu: the same process stopped in the fault is handed to CRIU, which cannot dump
// a task's own userfaultfd: a known engine gap (GAP) naming CRIU's own error, never a harness failure.
import t, { type Test } from 'tap';
import { CRIU_GAPS } from '../harness/criu/known-gaps.ts';
import { runsEngine } from '../harness/testing/criu-engine.ts';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { UFFD_MODE } from '../harness/restore/userfaultfd.ts';
import type { CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest, type Guest } from '../harness/testing/guest-fixture.ts';
import { checkpointStopped, readOutput, restoreAndFinish, RUN_TIMEOUT_MS, spawnArmed, type Restored } from '../harness/testing/scenario.ts';
import { armDebugRegisters, disarm, finishRun, kill } from '../harness/agent/guest-run.ts';
import { EFLAGS, hex } from '../harness/x86/registers.ts';
import { DR7_EXECUTE_DR0 } from '../harness/agent/breakpoint-spawn.ts';
import { breakpointScenario, type BreakpointAttempt } from '../harness/scenarios/breakpoint-scenario.ts';
import type { Attempt } from '../harness/scenarios/attempt.ts';
import { runTable, type Row, type TableScenario } from '../harness/scenarios/table.ts';

const CASE = 'uffd';
const PAGE = 0x1000n;
/** The workload's fixed buffers (guests/workloads/uffd.c). */
const SRC = 0x300000000n;
const DST = 0x300100000n;
const ONE = 0x300200000n;

interface Access {
  mode: string;
  /** the faulting instruction's label in the workload */
  label: string;
  fault: 'read' | 'write';
  /** the page the server provides */
  missing: bigint;
  /** RCX, RSI, RDI where the fault leaves a rep string: 2 KiB done, 2 KiB to go */
  regs?: { rcx: bigint; rsi?: bigint; rdi: bigint };
}

const ACCESSES: Access[] = [
  { mode: 'read', label: 'uffd_load', fault: 'read', missing: ONE },
  { mode: 'write', label: 'uffd_store', fault: 'write', missing: ONE },
  { mode: 'movsb', label: 'uffd_rep_movsb', fault: 'read', missing: SRC + PAGE, regs: { rcx: 0x800n, rsi: SRC + PAGE, rdi: DST + PAGE } },
  { mode: 'movsb-back', label: 'uffd_rep_movsb_back', fault: 'read', missing: SRC, regs: { rcx: 0x800n, rsi: SRC + PAGE - 1n, rdi: DST + PAGE - 1n } },
  { mode: 'movsq', label: 'uffd_rep_movsq', fault: 'read', missing: SRC + PAGE, regs: { rcx: 0x100n, rsi: SRC + PAGE, rdi: DST + PAGE } },
  { mode: 'movsq-back', label: 'uffd_rep_movsq_back', fault: 'read', missing: SRC, regs: { rcx: 0x100n, rsi: SRC + PAGE - 8n, rdi: DST + PAGE - 8n } },
  { mode: 'stosq', label: 'uffd_rep_stosq', fault: 'write', missing: DST + PAGE, regs: { rcx: 0x100n, rdi: DST + PAGE } },
  { mode: 'stosq-back', label: 'uffd_rep_stosq_back', fault: 'write', missing: DST, regs: { rcx: 0x100n, rdi: DST + PAGE - 8n } },
];

const OMIT_USERFAULTFD: RestorePolicy = { ...DEFAULT_POLICY, omit: ['userfaultfd'] };
const RF_CLEAR: RestorePolicy = { ...DEFAULT_POLICY, rf: 'clear' };
const summary = (output: string): string => output.trim().split('\n').at(-1) ?? '';
/** The worker: the one thread besides the server (the main thread). */
const workerOf = (image: CheckpointImage) => image.threads[0]!;

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_USERFAULTFD']), async (t) => {
  const guest = await startGuest(t, CASE);
  const { symbols } = guest;
  const binary = guest.image.guestPaths.uffd!;
  const faultSeen = symbols.resolve('uffd:uffd_fault_seen');
  const rfProbe = guest.profile.probes.rfOnUserPageFault;
  t.comment(`profile: probes.rfOnUserPageFault = ${rfProbe.value} (${rfProbe.how}); the architecture pushes RF=1 for fault-class exceptions`);

  // Engine criu alone: only the read access goes through CRIU.
  for (const access of runsEngine('crh') ? ACCESSES : ACCESSES.filter((a) => a.mode === 'read')) {
    const at = symbols.resolve(`uffd:${access.label}`);
    // Provoke: the worker's access faults on the missing page; the server thread reads the fault and stops at uffd_fault_seen.
    const scenario = await breakpointScenario(t, guest, {
      name: `${access.mode}: blocked in a userfaultfd-held ${access.fault} fault`,
      workload: { binary, argv: [binary, access.mode], breakAt: faultSeen },
      expected: (reference) => summary(reference.output),
      judge: (r, reference) => ({ matched: r.output === reference.output && r.run.code === 0, observed: summary(r.output) }),
      conditions: (reference) => ({
        'probes.rfOnUserPageFault': String(rfProbe.value),
        [`faultKind.${access.mode}`]: String(/fault=(\w+)/.exec(reference.output)?.[1]),
      }),
      // CRIU does not dump a task's own userfaultfd: its dump's refusal, in its own words, is the known gap.
      criuRefusalGap: (refused) => (refused.handoff.stage === 'dump' && USERFAULTFD_REFUSAL.test(refused.reason) ? CRIU_GAPS.userfaultfd : undefined),
    });
    const { reference } = scenario;
    t.same([reference.run.outcome, reference.run.code], ['exited', 0], `uninterrupted ${access.mode}: ${summary(reference.output)}`);
    t.match(
      summary(reference.output),
      new RegExp(`^uffd mode=${access.mode} fault=\\w+ served=copied mismatches=0 `),
      'uninterrupted: one page served, every byte as the architecture says',
    );
    const measuredFault = /fault=(\w+)/.exec(reference.output)?.[1];
    if (measuredFault === access.fault) t.pass(`the server saw a ${access.fault} fault`);
    else if (access.mode === 'write' && measuredFault === 'read' && guest.profile.accel === 'tcg') {
      // Single-threaded TCG runs a locked read-modify-write as a load and a store: the load faults first.
      t.comment(`platform deviation (accel tcg): the locked RMW faulted as a read; the architecture faults it as a write`);
    } else t.fail(`the server saw a ${measuredFault} fault, the architecture says ${access.fault} (accel ${guest.profile.accel})`);

    // Checkpoint: the worker at the faulting instruction, the string registers where the fault left them, the page absent.
    const inTheFault = (t: Test, a: BreakpointAttempt): void => {
      const image = a.checkpointed?.image;
      if (!image) return void t.fail(a.observed);
      const worker = workerOf(image).regs;
      t.equal(worker.rip, at, `the worker stopped at the faulting instruction ${access.label} (${hex(worker.rip)})`);
      if (access.regs) {
        t.equal(worker.rcx, access.regs.rcx, `RCX ${hex(worker.rcx)}: what is left after 2 KiB`);
        t.equal(worker.rdi, access.regs.rdi, `RDI ${hex(worker.rdi)}: advanced by 2 KiB, at the first byte not stored`);
        if (access.regs.rsi !== undefined) t.equal(worker.rsi, access.regs.rsi, `RSI ${hex(worker.rsi)}: advanced by 2 KiB, at the first byte not loaded`);
        t.equal((worker.eflags & EFLAGS.DF) !== 0n, access.mode.endsWith('-back'), `DF ${access.mode.endsWith('-back') ? 'set' : 'clear'}`);
      }
      const rf = (worker.eflags & EFLAGS.RF) !== 0n;
      if (rfProbe.value === null) t.comment(`RF in the image: ${rf} (the profile could not measure what this platform pushes)`);
      else t.equal(rf, rfProbe.value, `RF in the image (${hex(worker.eflags)}) is what the platform pushes on a user page fault`);
      t.same(
        image.regions.filter((g) => g.userfault).map((g) => [g.start, g.end, g.userfault, g.absent]),
        [[access.missing, access.missing + PAGE, UFFD_MODE.MISSING, [[access.missing, access.missing + PAGE]]]],
        'the image: the missing page registered MISSING, and absent',
      );
      t.equal(image.task.userfaultfds?.length, 1, `the image: one userfaultfd (${JSON.stringify(image.task.userfaultfds)})`);
      t.equal(a.witnesses.output, reference.output, `the restored run is the uninterrupted run: ${a.observed}`);
      t.equal(a.restored?.run.code, 0);
    };
    // Restore and oracle: served again by the restored userfaultfd, every byte as uninterrupted; without it, zeros.
    const rows: Row<BreakpointAttempt>[] = [
      {
        title: `${access.mode}: checkpointed blocked in a ${access.fault} fault on ${hex(access.missing)}, restored, served`,
        policy: DEFAULT_POLICY,
        tag: access.mode,
        expect: 'resumes',
        check: inTheFault,
      },
      {
        title: `${access.mode}: negative control omit=userfaultfd — the unserved page reads as zeros`,
        policy: OMIT_USERFAULTFD,
        tag: `${access.mode}-omit-userfaultfd`,
        expect: 'differs',
        // Under engine criu the omit control is a SKIP row of the read scenario alone, the one CRIU is asked about.
        notForCriu: access.mode === 'read',
        check: (t, a) => {
          t.match(a.observed, /served=EBADF mismatches=[1-9]\d* /, `caught: the access read zeros, and the server has no userfaultfd: ${a.observed}`);
          t.equal(a.restored?.run.code, 1, 'and exits 1');
        },
      },
    ];
    if (access.mode === 'read') rows.push({ title: `${scenario.name}: engine criu`, criu: {}, tag: 'criu', expect: 'resumes' });
    await runTable(t, CASE, scenario, rows);
  }

  if (runsEngine('crh')) await breakpointOnFaultingLoad(t, guest);
});

/** What CRIU's dump says about a userfaultfd it does not dump (its first error line, handoff.ts criuFailure). */
const USERFAULTFD_REFUSAL = /userfaultfd/;

/** An attempt of the DR0 scenario: the hits at the load before the checkpoint and after the restore, and the restored run. */
interface LoadBreakpointAttempt extends Attempt {
  before: string[];
  total: number;
  restored: Restored;
}

/**
 * DR0 on the load whose page is missing, in the worker thread (debug
 * registers are per thread: armed once the worker exists, at
 * uffd_serve_begin, before it may run). The breakpoint fires, the load
 * faults, and the checkpoint is taken at the server's uffd_fault_seen.
 */
async function breakpointOnFaultingLoad(t: Test, guest: Guest): Promise<void> {
  const { agent, symbols } = guest;
  const binary = guest.image.guestPaths.uffd!;
  const argv = [binary, 'read'];
  const load = symbols.resolve('uffd:uffd_load');
  const hitsAtLoad = (hits: ReadonlyArray<{ rip: bigint }>): number => hits.filter((h) => h.rip === load).length;

  /** Provoke: spawned and stopped at uffd_serve_begin with the worker's DR0 on the load; returns the pid. */
  const armed = async (tag: string): Promise<number> => {
    const pid = await spawnArmed(guest, { binary, argv, breakAt: symbols.resolve('uffd:uffd_serve_begin') }, `/tmp/uffd-breakpoint-${tag}.original.out`);
    const begun = await finishRun(agent, pid, RUN_TIMEOUT_MS, 1);
    const worker = begun.threads.find((tid) => tid !== pid);
    if (begun.outcome !== 'hit-limit' || worker === undefined)
      throw new Error(`uffd did not stop at uffd_serve_begin with its worker started: ${JSON.stringify({ outcome: begun.outcome, threads: begun.threads })}`);
    await armDebugRegisters(agent, worker, { 0: load, 7: DR7_EXECUTE_DR0 });
    return pid;
  };

  // The uninterrupted run, armed: the breakpoint on the faulting load fires once.
  const referencePid = await armed('reference');
  await disarm(agent, referencePid);
  const referenceRun = await finishRun(agent, referencePid, RUN_TIMEOUT_MS);
  const reference = await readOutput(guest, '/tmp/uffd-breakpoint-reference.original.out');
  t.equal(
    hitsAtLoad(referenceRun.hits),
    1,
    `uninterrupted: the breakpoint on the faulting load fires once (${referenceRun.hits.length} hit(s); the fault frame's RF keeps the re-executed load from firing it again)`,
  );
  t.equal(referenceRun.code, 0, summary(reference));
  // This reference was traced with a breakpoint on the faulting load: still what `uffd read` does with no tracer at all.
  const native = await nativeReference(guest, { binary, argv });
  t.equal(`${endedAs(referenceRun)}\n${reference}`, `${endedAs(native)}\n${native.output}`, 'the armed traced reference is the native run (no tracer)');

  const scenario: TableScenario<LoadBreakpointAttempt> = {
    name: 'read: DR0 on the faulting load, checkpoint in the fault',
    expected: `hits=1 ${summary(reference)}`,
    async attempt(policy: RestorePolicy, tag: string): Promise<LoadBreakpointAttempt> {
      // Checkpoint: the main thread stops at uffd_fault_seen once the worker's load has hit its breakpoint and faulted.
      const pid = await armed(tag);
      await armDebugRegisters(agent, pid, { 0: symbols.resolve('uffd:uffd_fault_seen') });
      const before = await finishRun(agent, pid, RUN_TIMEOUT_MS, 2);
      await disarm(agent, pid);
      const { file } = await checkpointStopped(guest, { binary, argv, envp: [], noAslr: true, pid }, `breakpoint-${tag}`);
      await kill(agent, pid);
      // Restore and oracle: the CPU's #DB at the load counted beside ptrace's hits.
      const restored = await restoreAndFinish(guest, file, policy, `breakpoint-${tag}`, { countDebugTrapsAt: load });
      const total = hitsAtLoad(before.hits) + hitsAtLoad(restored.run.hits);
      return {
        before: before.hits.map((h) => symbols.symbolize(h.rip)),
        total,
        restored,
        matched: total === 1 && restored.output === reference,
        observed: `hits=${total} ${summary(restored.output)}`,
        witnesses: { hits: total, output: restored.output, oracle: { debugTraps: restored.observation.debugTraps.length, firstReached: false } },
      };
    },
    assertWitnesses(t, a) {
      const r = a.restored;
      t.same(a.before, ['uffd:uffd_load', 'uffd:uffd_fault_seen'], 'the load hit its breakpoint, then faulted; the server read the fault');
      t.equal(
        r.observation.debugTraps.length,
        hitsAtLoad(r.run.hits),
        `oracle: the CPU raised ${r.observation.debugTraps.length} #DB at uffd_load after the restore, as many as ptrace reported`,
      );
      const worker = workerOf(r.image);
      t.equal(worker.regs.rip, load, 'the worker is checkpointed at the load');
      t.equal(worker.debugRegs.dr7, DR7_EXECUTE_DR0, 'with its breakpoint still armed');
      t.ok(
        (worker.regs.eflags & EFLAGS.RF) !== 0n,
        `RF=1 in the image (${hex(worker.regs.eflags)}): the fault frame of an instruction whose breakpoint already fired`,
      );
    },
  };
  // expect: one hit in all, the fault served; control rf=clear (2009): the re-executed load fires the breakpoint again.
  await runTable(t, CASE, scenario, [
    {
      title: `${scenario.name}: exactly one hit across the checkpoint, the fault served`,
      policy: DEFAULT_POLICY,
      tag: 'default',
      expect: 'resumes',
      check: (t, a) => {
        t.equal(a.total, 1, `one hit in all: ${hitsAtLoad(a.restored.run.hits)} after the restore`);
        t.equal(a.restored.output, reference, `served: ${summary(a.restored.output)}`);
      },
    },
    {
      title: `${scenario.name}: negative control rf=clear (2009) — the re-executed load fires the breakpoint again`,
      policy: RF_CLEAR,
      tag: 'rf-clear',
      expect: 'differs',
      notForCriu: false,
      check: (t, a) => void t.equal(a.total, 2, `two hits in all: ${hitsAtLoad(a.restored.run.hits)} after the restore`),
    },
  ]);
}
