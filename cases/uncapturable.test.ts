// expect: a checkpoint of a process holding state the restore core does not capture is refused at checkpoint time
// with a CheckpointError naming it — an eventfd (by fd), personality(READ_IMPLIES_EXEC), and several kinds at once,
// each named — and leaves no stopped process behind. Negative control: the same personality checkpoint with the
// check skipped (uncapturable=ignore) is taken and restored, and the restored run differs from the uninterrupted one
// (READ_IMPLIES_EXEC silently gone) — what the refusal prevents. A process holding nothing extra checkpoints and
// restores to the uninterrupted output.
import t from 'tap';
import { CheckpointError } from '../harness/errors.ts';
import { recordOutcome, recordVerdict } from '../harness/report/verdicts.ts';
import { DEFAULT_POLICY, describePolicy, type RestorePolicy } from '../harness/restore/policy.ts';
import { endedAs, nativeReference } from '../harness/testing/native-reference.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { checkpointAtHit, restoreAndFinish, runUninterrupted, type Workload } from '../harness/testing/scenario.ts';

const CASE = 'uncapturable';
const POLICY = describePolicy(DEFAULT_POLICY);

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.holdstate!;
  const breakAt = guest.symbols.resolve('holdstate:holdstate_checkpoint');
  const workload = (...states: string[]): Workload => ({ binary, argv: [binary, ...states], breakAt });
  const running = async (): Promise<string> => (await guest.machine.ssh.exec('pidof holdstate || true')).stdout.trim();

  const refused = async (tag: string, states: string[], names: string[]): Promise<void> => {
    await t.test(`refused at checkpoint time: ${states.join(' ')}`, async (t) => {
      const started = Date.now();
      const error = await checkpointAtHit(guest, workload(...states), 1, tag).then(
        () => undefined,
        (e: unknown) => e,
      );
      const ms = Date.now() - started;
      t.ok(error instanceof CheckpointError, `CheckpointError: ${(error as Error | undefined)?.message}`);
      const named = (error as CheckpointError | undefined)?.details.state?.split(', ') ?? [];
      t.same(named, names, `names ${names.join(', ')}`);
      t.equal(await running(), '', 'no holdstate process left behind');
      t.comment(`spawn, run to the breakpoint and the refused checkpoint: ${ms} ms`);
      recordVerdict({
        case: CASE,
        scenario: `holding ${states.join(' ')}, checkpoint at a breakpoint`,
        policy: POLICY,
        control: false,
        expected: `refused at checkpoint, naming ${names.join(', ')}`,
        observed: error instanceof CheckpointError ? `refused: ${error.message}` : 'checkpoint taken',
        pass: error instanceof CheckpointError && JSON.stringify(named) === JSON.stringify(names),
      });
    });
  };

  await refused('eventfd', ['eventfd'], ['eventfd']);
  await refused('personality', ['personality'], ['personality']);
  await refused(
    'several',
    ['eventfd', 'pipe', 'socket', 'timerfd', 'seccomp', 'timer', 'umask'],
    ['eventfd', 'pipe', 'socket', 'timerfd', 'seccomp', 'no_new_privs', 'POSIX timer'],
  );

  // expect: umask 077 is captured and given back (files.ts); omit=umask (the restoring agent's 0022) is the control.
  await t.test('holding umask 077: checkpointed and restored with it, and the control omit=umask', async (t) => {
    const { run: reference, output: expected } = await runUninterrupted(guest, workload('umask'), '/tmp/holdstate-umask-reference.out');
    const native = await nativeReference(guest, workload('umask'));
    t.equal(`${endedAs(reference)}\n${expected}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');
    t.match(expected, /umask=077/, `uninterrupted: ${expected.trim()}`);
    for (const policy of [DEFAULT_POLICY, { ...DEFAULT_POLICY, omit: ['umask'] } as RestorePolicy]) {
      const control = policy.omit !== undefined;
      const tag = control ? 'umask-omitted' : 'umask';
      const checkpointed = await checkpointAtHit(guest, workload('umask'), 1, tag, { disarm: true });
      const r = await restoreAndFinish(guest, checkpointed.file, policy, tag, {});
      if (control) t.not(r.output, expected, `omit=umask is caught: ${r.output.trim()}`);
      else t.equal(r.output, expected, `restored: ${r.output.trim()}`);
      recordOutcome({
        case: CASE,
        scenario: 'holding umask 077, checkpoint at a breakpoint',
        policy: describePolicy(policy),
        control,
        expected: expected.trim(),
        observed: r.output.trim(),
        matchedUninterrupted: r.output === expected && r.run.code === 0,
      });
    }
  });

  await t.test('holding nothing extra: checkpointed and restored as uninterrupted', async (t) => {
    const { run: reference, output: expected } = await runUninterrupted(guest, workload(), '/tmp/holdstate-reference.out');
    // The honest run's reference is a traced run: it must be what the program does with no tracer at all.
    const native = await nativeReference(guest, workload());
    t.equal(`${endedAs(reference)}\n${expected}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');
    const checkpointed = await checkpointAtHit(guest, workload(), 1, 'nothing', { disarm: true });
    const r = await restoreAndFinish(guest, checkpointed.file, DEFAULT_POLICY, 'nothing', {});
    t.equal(r.output, expected, `restored: ${r.output.trim()}`);
    recordOutcome({
      case: CASE,
      scenario: 'holding nothing extra, checkpoint at a breakpoint',
      policy: POLICY,
      control: false,
      expected: expected.trim(),
      observed: r.output.trim(),
      matchedUninterrupted: r.output === expected && r.run.code === 0,
    });
  });

  await t.test('negative control uncapturable=ignore: the personality is silently lost', async (t) => {
    const { output: expected } = await runUninterrupted(guest, workload('personality'), '/tmp/holdstate-personality-reference.out');
    t.match(expected, /personality=0x44/, `uninterrupted keeps READ_IMPLIES_EXEC: ${expected.trim()}`);
    const checkpointed = await checkpointAtHit(guest, workload('personality'), 1, 'ignore', { disarm: true, uncapturable: 'ignore' });
    const r = await restoreAndFinish(guest, checkpointed.file, DEFAULT_POLICY, 'ignore', {});
    t.match(r.output, /personality=0x4\d{4} /, `restored without it: ${r.output.trim()}`);
    t.not(r.output, expected, 'differs from the uninterrupted run');
    recordOutcome({
      case: CASE,
      scenario: 'holding personality READ_IMPLIES_EXEC, checkpoint at a breakpoint',
      policy: `${POLICY} uncapturable=ignore`,
      control: true,
      expected: expected.trim(),
      observed: r.output.trim(),
      matchedUninterrupted: r.output === expected,
    });
  });
});
