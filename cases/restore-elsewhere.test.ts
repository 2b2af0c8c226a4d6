// expect: a program holding its state in ymm0-15 (AVX upper halves), checkpointed at a breakpoint in a `-cpu max`
// guest, records XCR0 with YMM, YMM in use and the avx flag in the image (depends.json); restored in another guest of
// the same model it finishes with the native run's output; restored in a `-cpu max,-avx` guest it is refused before
// any plan step, the error naming avx (IncompatibleTargetError); restored there anyway (dependencies 'try'), the row
// says what happened. Conditioned on the measured profiles: the checkpoint guest has avx, the restore guest has not.
// Negative control: omit=xstate on the same model (the upper halves lost: ymm=0/16, exit 1).
import t from 'tap';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { readCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { IncompatibleTargetError } from '../harness/restore/platform-dependencies.ts';
import { recordRow, recordRowOutcome } from '../harness/testing/verdict-rows.ts';
import { restoreWitnessed } from '../harness/testing/restore-witness.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest, type Guest } from '../harness/testing/guest-fixture.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { checkpointAtHit, readOutput, restoreAndFinish, runUninterrupted, RUN_TIMEOUT_MS, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'restore-elsewhere';
const SCENARIO = 'ymm0-15 holding distinct patterns at a breakpoint, checkpointed under -cpu max, restored in another guest';
const NO_AVX = 'max,-avx';
const YMM_BIT = 1n << 2n;

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
    t.same(r.differences.filter((d) => d.what !== 'session'), [], 'read back: as requested, but for the session');
    const session = r.differences.find((d) => d.what === 'session');
    if (session) {
      t.equal(session.requested, await agentSession(guest), 'the image holds the checkpoint guest\'s agent session');
      t.equal(session.accepted, await agentSession(same), 'the restored process joined the restore guest\'s agent session');
    }
    t.equal(r.output, expected, `the restored run is the native run: ${r.output.trim()}`);
    t.equal(r.run.code, 0);
    recordRowOutcome(t, { case: CASE, scenario: `${SCENARIO}: -cpu ${same.profile.cpuModel}`, policy: describePolicy(DEFAULT_POLICY), control: false, expected: expected.trim(), observed: r.output.trim(), matchedUninterrupted: r.output === expected && r.run.code === 0, conditions });
  });

  await t.test(`-cpu ${NO_AVX}: refused, naming avx; and what happens when tried anyway`, async (t) => {
    const noAvx = await startGuest(t, CASE, { name: 'restore-max-no-avx', cpuModel: NO_AVX });
    const measured = noAvx.profile.cpuFlags.includes('avx');
    t.notOk(measured, `measured: the ${NO_AVX} guest has no avx (flags ${noAvx.profile.cpuFlags.join(' ')}, XCR0 ${noAvx.profile.xcr0})`);
    const rowConditions = { ...conditions, 'restore cpu': NO_AVX, 'restore flags': noAvx.profile.cpuFlags.join(' '), 'restore xcr0': String(noAvx.profile.xcr0) };
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
      case: CASE, scenario: `${SCENARIO}: -cpu ${NO_AVX}`, policy: describePolicy(DEFAULT_POLICY), control: false,
      expected: 'refused, naming avx (in use), nothing left running',
      observed: refused instanceof IncompatibleTargetError ? `refused: ${refused.missing.map((m) => m.feature).join(', ')}` : 'restored',
      pass: named && left === '',
      conditions: rowConditions,
    });

    // Anyway: the row says what happened (the kernel's refusal of the YMM state, or the program's own finding).
    const tried = await restoreWitnessed(noAvx.agent, image, { policy: DEFAULT_POLICY, stdoutPath: '/tmp/avxhold-anyway.restored.out', dependencies: 'try' }, 'avx-anyway').then(
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
      case: CASE, scenario: `${SCENARIO}: -cpu ${NO_AVX}, restored anyway`, policy: `${describePolicy(DEFAULT_POLICY)} dependencies=try`, control: true,
      expected: 'not the uninterrupted run (the target has no YMM state)',
      observed: [tried.ended, ...tried.notes].join('; '),
      pass: wrong,
      conditions: rowConditions,
    });
  });

  await t.test('negative control omit=xstate (same guest): the upper halves lost', async (t) => {
    const policy: RestorePolicy = { ...DEFAULT_POLICY, omit: ['xstate'] };
    const again = await checkpointAtHit(guest, workload, 1, 'avx-omit', { disarm: true });
    const r = await restoreAndFinish(guest, again.file, policy, 'avx-omit-xstate', {});
    const line = r.output.trim();
    t.not(r.output, expected, `caught: ${line}`);
    t.match(line, /^avxhold ymm=\d+\/16 /, 'the program itself reports the lost registers');
    t.equal(r.run.code, 1, 'and exits 1');
    recordRowOutcome(t, { case: CASE, scenario: SCENARIO, policy: describePolicy(policy), control: true, expected: expected.trim(), observed: line, matchedUninterrupted: r.output === expected });
  });
});

/** "pgid P, sid S" of the guest's agent, as the restore's read-back words a session (/proc/PID/stat fields 5 and 6). */
async function agentSession(guest: Guest): Promise<string> {
  const stat = (await guest.agent.call({ op: 'READ_FILE', path: `/proc/${guest.hello.agentPid}/stat`, maxSize: 4096 })).toString('latin1');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return `pgid ${fields[2]}, sid ${fields[3]}`;
}
