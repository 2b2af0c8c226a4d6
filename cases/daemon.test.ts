// expect: a daemon that leads its own session, writes a log file and blocks in FUTEX_WAIT passes a kill-and-restore
// cycle taken while it is blocked: restored with its own pid (clone3 set_tid), session and process group, its log,
// /dev/null and directory descriptors at the same numbers, flags and offset, the interrupted futex wait issued again
// (no -ERESTARTSYS reaches it), it wakes on SIGUSR1 and logs exactly what an uninterrupted run logs. Negative controls:
// a restore under a new pid, omit=files (descriptors and session lost), syscall-restart=off (the raw -ERESTARTSYS, 512,
// reaches the program). Engine criu: the same blocked daemon handed to CRIU (dump, restore -d, taken back) logs exactly
// the uninterrupted log; its control closes the log descriptor in CRIU's restored process (as omit=files loses it).
import t, { type Test } from 'tap';
import { writeFile } from 'node:fs/promises';
import { handOffToCriu } from '../harness/criu/handoff.ts';
import { criuIn, runsEngine } from '../harness/testing/criu-engine.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { endedAs } from '../harness/testing/native-reference.ts';
import { runNatively } from '../harness/guest/native-run.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { readOutput, RUN_TIMEOUT_MS, runThenInterrupt, type Workload } from '../harness/testing/scenario.ts';
import { finishRun, injectSyscall, runFor, sendSignal } from '../harness/agent/guest-run.ts';
import { hex } from '../harness/x86/registers.ts';
import { interruptedScenario, type InterruptedAttempt } from '../harness/scenarios/interrupted-scenario.ts';
import { runTable, type Row } from '../harness/scenarios/table.ts';
import { skipNotForCriu } from '../harness/scenarios/runner.ts';
import path from 'node:path';

const CASE = 'daemon';
const SCENARIO = 'daemon blocked in FUTEX_WAIT: log file, own session, own pid';
const SIGUSR1 = 10;
const FUTEX = 202;
/** Long enough for the daemon to reach its futex wait under TCG. */
const SETTLE_MS = 1000;
const OMIT_FILES: RestorePolicy = { ...DEFAULT_POLICY, omit: ['files'] };
const SYSCALL_RESTART_OFF: RestorePolicy = { ...DEFAULT_POLICY, syscallRestart: 'off' };
const normalize = (text: string): string => text.replace(/(^|\s)pid=\d+/gm, '$1pid=P');
const lastLine = (log: string): string => normalize(log).trim().split('\n').at(-1)!;

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_FUTEX']), async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent } = guest;
  const binary = guest.image.guestPaths.daemon!;
  const logOf = (run: string): string => `/tmp/daemon-${run}.log`;
  const daemon = (run: string): Workload => ({ binary, argv: [binary, logOf(run)] });

  /** Runs the daemon until it has been blocked for a while: the agent interrupts it when the time is up. */
  const runUntilBlocked = async (pid: number): Promise<void> => {
    const waited = await runFor(agent, pid, SETTLE_MS);
    if (waited.kind === 'ended') throw new Error(`the daemon did not block: it ended (${endedAs(waited.run)})`);
  };
  /** Lets it run (and block again) before the signal comes, as a daemon's wake-up would; its output is its log. */
  const wake = async (pid: number, run: string) => {
    await runUntilBlocked(pid);
    await sendSignal(agent, pid, SIGUSR1);
    return { run: await finishRun(agent, pid, RUN_TIMEOUT_MS), output: await readOutput(guest, logOf(run)) };
  };

  // Provoke: the daemon starts, logs, and blocks in FUTEX_WAIT; SIGUSR1 wakes it (the uninterrupted run: no checkpoint).
  const blocked = await runThenInterrupt(guest, daemon('reference'), SETTLE_MS, `${logOf('reference')}.out`);
  if (blocked.ended) throw new Error(`the daemon did not block: it ended (${endedAs(blocked.ended)})`);
  const woken = await wake(blocked.pid, 'reference');
  const reference = { run: woken.run, log: woken.output };
  t.equal(reference.run.code, 0, 'uninterrupted: exits 0');
  t.match(reference.log, /^started pid=\d+\nwaiting\nwoke pid=\d+ same-pid=1 session=1 files=1 futex-errno=0\n$/, 'uninterrupted log');

  // The reference is a traced run: it must be what the daemon does with no tracer at all. Not through
  // nativeReference(): the daemon announces nothing crh-native's finish can see (no CRH-READY, its log starts with
  // "started"), so its SIGUSR1 comes from a second guest shell once its own log says "waiting" and a settle has passed,
  // as the traced run's comes once it has blocked. Its log has its own path (the daemon truncates and writes it) and
  // is compared with the pids masked (normalize): the native run's pid is whatever fork gives; nothing else is masked.
  const nativeLog = '/tmp/daemon-native.log';
  await guest.machine.ssh.run(`rm -f ${nativeLog} ${nativeLog}.out`);
  const nativeRun = runNatively(
    { shell: (command) => guest.machine.ssh.run(command), readFile: (file) => readOutput(guest, file) },
    { binary, argv: [binary, nativeLog], envp: [], stdoutPath: `${nativeLog}.out`, timeoutMs: RUN_TIMEOUT_MS },
  );
  const polls = Math.ceil(RUN_TIMEOUT_MS / 100);
  await guest.machine.ssh.run(
    `i=0; until grep -qx waiting ${nativeLog} 2>/dev/null || [ $i -ge ${polls} ]; do i=$((i+1)); sleep 0.1; done; sleep ${SETTLE_MS / 1000}; ` +
      `pid=$(sed -n 's/^started pid=\\([0-9]*\\)$/\\1/p' ${nativeLog}); [ -z "$pid" ] || kill -USR1 "$pid"`,
  );
  const native = await nativeRun;
  const nativeLogText = await readOutput(guest, nativeLog);
  t.equal(
    `${endedAs(reference.run)}\n${normalize(reference.log)}`,
    `${endedAs(native)}\n${normalize(nativeLogText)}`,
    'the traced reference is the native run (no tracer), pids masked',
  );

  const scenario = await interruptedScenario(guest, {
    name: SCENARIO,
    label: 'reference',
    workload: daemon,
    afterMs: SETTLE_MS,
    reference: { run: reference.run, output: reference.log, ended: endedAs(reference.run) },
    goOn: wake,
    summary: lastLine,
    // The log, pids masked; a restored daemon that differs says why on its stdout, when it says anything.
    judge: (r, ref) => {
      const matched = normalize(r.output) === normalize(ref.output) && r.run.code === 0;
      return { matched, observed: matched ? lastLine(r.output) : normalize(r.stdout).trim() || lastLine(r.output) };
    },
  });

  // Checkpoint: inside futex() with -ERESTARTSYS, the three descriptors and the daemon's own session in the image.
  const blockedInTheImage = (t: Test, a: InterruptedAttempt): void => {
    if (!a.image || !a.restored || !('pid' in a.interrupted)) return void t.fail(a.observed);
    const checked = a.restored.image;
    const log = a.workload.argv[1];
    t.equal(checked.regs.orig_rax, BigInt(FUTEX), 'checkpointed inside futex()');
    t.equal(BigInt.asIntN(64, checked.regs.rax), -512n, `rax = -ERESTARTSYS at the checkpoint (${hex(checked.regs.rax)})`);
    t.same(
      checked.task.files.map((f) => [f.fd, f.path, f.kind]),
      [
        [3, log, 'file'],
        [4, '/dev/null', 'device'],
        [5, '/tmp', 'directory'],
      ],
      'the image holds the three descriptors',
    );
    t.equal(checked.task.sid, a.interrupted.pid, 'the image records its own session');
    t.comment(`restored as pid ${a.restored.pid} (checkpointed as ${a.interrupted.pid}); read back: ${JSON.stringify(a.restored.differences)}`);
  };
  const newPid = { ...scenario, attempt: (policy: RestorePolicy, tag: string) => scenario.attemptWith(policy, tag, { samePid: false }) };
  const control = (name: string, policy: RestorePolicy, tag: string, shows: RegExp): Row<InterruptedAttempt> => ({
    title: `negative control: ${name}`,
    policy,
    tag,
    expect: 'differs',
    check: (t, a) => {
      blockedInTheImage(t, a);
      const observed = normalize(a.restored?.output ?? '');
      t.match(observed, shows, `the daemon shows it: log ${JSON.stringify(observed)}, stdout ${JSON.stringify(a.restored?.stdout.trim())}`);
      t.equal(a.restored?.run.code, 1, 'and exits 1');
    },
  });
  // Restore and oracle: the same pid, session and descriptors, the futex wait issued again; the log is the uninterrupted one.
  await runTable(t, CASE, scenario, [
    {
      title: 'kill-and-restore under the default policy: the log is the uninterrupted one',
      policy: DEFAULT_POLICY,
      tag: 'default',
      expect: 'resumes',
      check: (t, a) => {
        blockedInTheImage(t, a);
        const original = 'pid' in a.interrupted ? a.interrupted.pid : undefined;
        t.equal(a.restored?.pid, original, `the same pid, ${original}`);
        t.same(a.restored?.differences, [], 'read back: every register, descriptor and the session as requested');
        t.equal(a.restored?.run.code, 0);
        t.equal(normalize(a.restored?.output ?? ''), normalize(reference.log), `log: ${JSON.stringify(a.restored?.output)}`);
      },
    },
    control('omit=files (descriptors and session not restored)', OMIT_FILES, 'control-1', /^started pid=P\nwaiting\n$/),
    control('syscall-restart=off (registers copied verbatim)', SYSCALL_RESTART_OFF, 'control-2', /futex-errno=512/),
  ]);
  // A restore under a new pid: the daemon sees it is not itself any more. (Under CRIU no row: the new pid is crh's switch alone.)
  await runTable(t, CASE, newPid, [
    {
      ...control('a restore under a new pid', DEFAULT_POLICY, 'control-0', /same-pid=0 session=0/),
      policyName: `${describePolicy(DEFAULT_POLICY)} new-pid`,
      notForCriu: false,
    },
  ]);

  if (!runsEngine('criu')) return;
  const criu = criuIn(guest);
  const expectedLast = lastLine(reference.log);
  /** The blocked daemon handed to CRIU and taken back; `afterRestore` changes the restored one before it goes on (a control). */
  const criuCycle = async (t: Test, tag: string, afterRestore?: (pid: number) => Promise<void>) => {
    const stopped = await runThenInterrupt(guest, daemon(tag), SETTLE_MS, `${logOf(tag)}.out`);
    if (stopped.ended) throw new Error(`the daemon did not block: it ended (${endedAs(stopped.ended)})`);
    const original = { pid: stopped.pid };
    const handoff = await handOffToCriu(agent, criu, original.pid, `/tmp/criu-${tag}`);
    await writeFile(path.join(guest.artifactsDir, `criu-${tag}-dump.log`), handoff.dumpLog);
    if (handoff.restoreLog !== undefined) await writeFile(path.join(guest.artifactsDir, `criu-${tag}-restore.log`), handoff.restoreLog);
    if (!handoff.ok) return { kind: 'refused' as const, refused: `CRIU ${criu.version}: ${handoff.reason}` };
    t.comment(
      `CRIU: ${handoff.dumpMs} ms dump, ${handoff.restoreMs} ms restore, ${handoff.imageBytes} bytes of images; pid ${original.pid} → ${handoff.restoredPid}`,
    );
    if (afterRestore) await afterRestore(handoff.restoredPid);
    const done = await wake(handoff.restoredPid, tag);
    return { kind: 'restored' as const, original, restoredPid: handoff.restoredPid, done, observed: normalize(done.output) };
  };
  const criuBase = { case: CASE, scenario: SCENARIO, engine: 'criu' as const, conditions: { 'criu.version': criu.version } };

  await t.test('engine criu: CRIU dumps and restores the blocked daemon, and its log is the uninterrupted one', async (t) => {
    const r = await criuCycle(t, 'criu');
    if (r.kind === 'refused') {
      t.fail(r.refused);
      return recordRow(t, { ...criuBase, policy: 'criu defaults', control: false, expected: expectedLast, observed: r.refused, pass: false });
    }
    t.equal(r.restoredPid, r.original.pid, `CRIU kept the pid, ${r.original.pid}`);
    t.equal(r.done.run.code, 0);
    t.equal(r.observed, normalize(reference.log), `log: ${JSON.stringify(r.done.output)}`);
    recordRow(t, {
      ...criuBase,
      policy: 'criu defaults',
      control: false,
      expected: expectedLast,
      observed: r.observed.trim().split('\n').at(-1)!,
      pass: r.observed === normalize(reference.log) && r.done.run.code === 0 && r.restoredPid === r.original.pid,
    });
  });

  await t.test("engine criu, negative control: the log descriptor closed in CRIU's restored daemon (as omit=files loses it)", async (t) => {
    const r = await criuCycle(t, 'criu-closed', async (pid) => {
      const result = await injectSyscall(agent, pid, SYS_CLOSE, [3n]);
      if (result !== 0n) throw new Error(`close(3) in pid ${pid} returned ${result}`);
    });
    if (r.kind === 'refused') {
      t.fail(r.refused);
      return recordRow(t, {
        ...criuBase,
        policy: 'criu, fd 3 closed after the restore',
        control: true,
        expected: expectedLast,
        observed: r.refused,
        pass: false,
      });
    }
    const stdout = await readOutput(guest, '/tmp/daemon-criu-closed.log.out');
    const showed = r.observed !== normalize(reference.log) && r.done.run.code !== 0;
    t.ok(showed, `the daemon shows it: log ${JSON.stringify(r.observed)}, stdout ${JSON.stringify(stdout.trim())}, exit ${r.done.run.code}`);
    recordRow(t, {
      ...criuBase,
      policy: 'criu, fd 3 closed after the restore',
      control: true,
      expected: expectedLast,
      observed: normalize(stdout).trim() || r.observed.trim().split('\n').at(-1)!,
      pass: showed,
    });
  });
  // crh's controls are switches of its restore core: under CRIU each is a SKIP row saying so.
  for (const policy of [OMIT_FILES, SYSCALL_RESTART_OFF].map(describePolicy)) {
    await t.test(`engine criu: ${policy}`, async (t) => skipNotForCriu(t, { case: CASE, scenario: SCENARIO, policy }));
  }
});

/** x86-64 close(2). */
const SYS_CLOSE = 3;
