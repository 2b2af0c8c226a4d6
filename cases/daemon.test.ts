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
import { criuIn, policyRowsNotForCriu, runsEngine } from '../harness/testing/criu-engine.ts';
import { recordRow } from '../harness/testing/verdict-rows.ts';
import { AgentError } from '../harness/errors.ts';
import { recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { readCheckpointImage, writeCheckpointImage, type ProcessInfo } from '../harness/restore/checkpoint-image.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { endedAs } from '../harness/testing/native-reference.ts';
import { runNatively } from '../harness/guest/native-run.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { readOutput, RUN_TIMEOUT_MS } from '../harness/testing/scenario.ts';
import { hex } from '../harness/x86/registers.ts';
import path from 'node:path';

const CASE = 'daemon';
const SCENARIO = 'daemon blocked in FUTEX_WAIT: log file, own session, own pid';
const SIGUSR1 = 10;
const ETIMEDOUT = 110;
const FUTEX = 202;
/** Long enough for the daemon to reach its futex wait under TCG. */
const SETTLE_MS = 1000;

t.test(CASE, await kernelNeeds(t, CASE, ['CONFIG_FUTEX']), async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent } = guest;
  const binary = guest.image.guestPaths.daemon!;
  const normalize = (text: string): string => text.replace(/(^|\s)pid=\d+/gm, '$1pid=P');

  /** Runs the daemon until it has been blocked for a while: the agent interrupts it when the time is up. */
  const runUntilBlocked = async (pid: number): Promise<void> => {
    const waited = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: SETTLE_MS }).then(
      (r) => r,
      (e: unknown) => e,
    );
    if (!(waited instanceof AgentError && waited.errno === ETIMEDOUT)) throw new Error(`the daemon did not block: ${String(waited)}`);
  };
  const startBlocked = async (log: string): Promise<ProcessInfo> => {
    const argv = [binary, log];
    const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv, envp: [], stdoutPath: `${log}.out`, noAslr: true });
    await runUntilBlocked(pid);
    return { binary, argv, envp: [], noAslr: true, pid };
  };
  /** Lets it run (and block again) before the signal comes, as a daemon's wake-up would. */
  const finish = async (pid: number, log: string) => {
    await runUntilBlocked(pid);
    await agent.call({ op: 'SIGNAL', pid, signo: SIGUSR1 });
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    return { run, log: await readOutput(guest, log) };
  };

  const reference = await (async () => {
    const p = await startBlocked('/tmp/daemon-reference.log');
    return finish(p.pid, '/tmp/daemon-reference.log');
  })();
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

  const cycle = async (t: Test, policy: RestorePolicy, tag: string, samePid = true) => {
    const log = `/tmp/daemon-${tag}.log`;
    const original = await startBlocked(log);
    const image = await checkpointProcess(agent, original, guest.platform);
    const file = path.join(guest.artifactsDir, `checkpoint-${tag}.tar`);
    await writeCheckpointImage(image, file);
    await agent.call({ op: 'KILL', pid: original.pid });
    const checked = await readCheckpointImage(file);
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
    t.equal(checked.task.sid, original.pid, 'the image records its own session');
    const restored = await restoreWitnessed(agent, checked, { policy, stdoutPath: `${log}.restored.out`, samePid }, tag);
    t.comment(`restored as pid ${restored.pid} (checkpointed as ${original.pid}); read back: ${JSON.stringify(restored.differences)}`);
    const done = await finish(restored.pid, log);
    return { original, restored, done, observed: normalize(done.log) };
  };

  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
  await t.test('kill-and-restore under the default policy: the log is the uninterrupted one', crhOnly, async (t) => {
    const { original, restored, done, observed } = await cycle(t, DEFAULT_POLICY, 'default');
    t.equal(restored.pid, original.pid, `the same pid, ${original.pid}`);
    t.same(restored.differences, [], 'read back: every register, descriptor and the session as requested');
    t.equal(done.run.code, 0);
    t.equal(observed, normalize(reference.log), `log: ${JSON.stringify(done.log)}`);
    recordRowOutcome(t, {
      case: CASE,
      scenario: SCENARIO,
      policy: describePolicy(DEFAULT_POLICY),
      control: false,
      expected: normalize(reference.log).trim().split('\n').at(-1)!,
      observed: observed.trim().split('\n').at(-1)!,
      matchedUninterrupted: observed === normalize(reference.log) && done.run.code === 0,
    });
  });

  const controls: { name: string; policy: RestorePolicy; samePid: boolean; shows: RegExp }[] = [
    { name: 'a restore under a new pid', policy: DEFAULT_POLICY, samePid: false, shows: /same-pid=0 session=0/ },
    {
      name: 'omit=files (descriptors and session not restored)',
      policy: { ...DEFAULT_POLICY, omit: ['files'] },
      samePid: true,
      shows: /^started pid=P\nwaiting\n$/,
    },
    { name: 'syscall-restart=off (registers copied verbatim)', policy: { ...DEFAULT_POLICY, syscallRestart: 'off' }, samePid: true, shows: /futex-errno=512/ },
  ];
  for (const [i, c] of controls.entries()) {
    await t.test(`negative control: ${c.name}`, crhOnly, async (t) => {
      const { done, observed } = await cycle(t, c.policy, `control-${i}`, c.samePid);
      const stdout = await readOutput(guest, `/tmp/daemon-control-${i}.log.restored.out`);
      t.match(observed, c.shows, `the daemon shows it: log ${JSON.stringify(observed)}, stdout ${JSON.stringify(stdout.trim())}`);
      t.equal(done.run.code, 1, 'and exits 1');
      recordRowOutcome(t, {
        case: CASE,
        scenario: SCENARIO,
        policy: `${describePolicy(c.policy)}${c.samePid ? '' : ' new-pid'}`,
        control: true,
        expected: normalize(reference.log).trim().split('\n').at(-1)!,
        observed: normalize(stdout).trim() || observed.trim().split('\n').at(-1)!,
        matchedUninterrupted: observed === normalize(reference.log),
      });
    });
  }

  if (!runsEngine('criu')) return;
  const criu = criuIn(guest);
  const expectedLast = normalize(reference.log).trim().split('\n').at(-1)!;
  /** The blocked daemon handed to CRIU and taken back; `afterRestore` changes the restored one before it goes on (a control). */
  const criuCycle = async (t: Test, tag: string, afterRestore?: (pid: number) => Promise<void>) => {
    const log = `/tmp/daemon-${tag}.log`;
    const original = await startBlocked(log);
    const handoff = await handOffToCriu(agent, criu, original.pid, `/tmp/criu-${tag}`);
    await writeFile(path.join(guest.artifactsDir, `criu-${tag}-dump.log`), handoff.dumpLog);
    if (handoff.restoreLog !== undefined) await writeFile(path.join(guest.artifactsDir, `criu-${tag}-restore.log`), handoff.restoreLog);
    if (!handoff.ok) return { kind: 'refused' as const, refused: `CRIU ${criu.version}: ${handoff.reason}` };
    t.comment(
      `CRIU: ${handoff.dumpMs} ms dump, ${handoff.restoreMs} ms restore, ${handoff.imageBytes} bytes of images; pid ${original.pid} → ${handoff.restoredPid}`,
    );
    if (afterRestore) await afterRestore(handoff.restoredPid);
    const done = await finish(handoff.restoredPid, log);
    return { kind: 'restored' as const, original, restoredPid: handoff.restoredPid, done, observed: normalize(done.log) };
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
    t.equal(r.observed, normalize(reference.log), `log: ${JSON.stringify(r.done.log)}`);
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
      const result = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: SYS_CLOSE, args: [3n] });
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
  for (const row of policyRowsNotForCriu(
    CASE,
    SCENARIO,
    controls.filter((c) => c.policy !== DEFAULT_POLICY).map((c) => describePolicy(c.policy)),
  )) {
    await t.test(`engine criu: ${row.policy} ${row.skipped}`, async (t) => {
      t.pass(row.skipped);
      recordRow(t, row);
    });
  }
});

/** x86-64 close(2). */
const SYS_CLOSE = 3;
