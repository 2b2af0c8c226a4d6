// expect: a checkpoint of a process holding state the restore core does not capture is refused at checkpoint time
// with a CheckpointError naming it — an epoll instance (by fd), personality(READ_IMPLIES_EXEC), and several kinds at once,
// each named — and leaves no stopped process behind. Negative control: the same personality checkpoint with the
// check skipped (uncapturable=ignore) is taken and restored, and the restored run differs from the uninterrupted one
// (READ_IMPLIES_EXEC silently gone) — what the refusal prevents. A process holding nothing extra, or umask 077
// (captured, files.ts), checkpoints and restores to the uninterrupted output; omit=umask is the umask's control.
import t from 'tap';
import { CheckpointError } from '../harness/errors.ts';
import { DEFAULT_POLICY, describePolicy } from '../harness/restore/policy.ts';
import { kernelNeeds } from '../harness/testing/kernel-needs.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { runsEngine } from '../harness/testing/criu-engine.ts';
import type { Workload } from '../harness/testing/scenario.ts';
import { breakpointScenario } from '../harness/scenarios/breakpoint-scenario.ts';
import { refusalScenario, settleRefusal } from '../harness/scenarios/refusal-scenario.ts';
import { runTable } from '../harness/scenarios/table.ts';

const CASE = 'uncapturable';
const POLICY = describePolicy(DEFAULT_POLICY);
const holding = (states: string): string => `holding ${states}, checkpoint at a breakpoint`;

t.test(CASE, await kernelNeeds(t, CASE), async (t) => {
  const guest = await startGuest(t, CASE);
  const binary = guest.image.guestPaths.holdstate!;
  const breakAt = guest.symbols.resolve('holdstate:holdstate_checkpoint');
  const workload = (...states: string[]): Workload => ({ binary, argv: [binary, ...states], breakAt });

  // Provoke and checkpoint: the process stops at holdstate_checkpoint holding the states; the checkpoint refuses them by name.
  const refusals: Array<{ tag: string; states: string[]; names: string[] }> = [
    { tag: 'epoll', states: ['epoll'], names: ['eventpoll'] },
    { tag: 'personality', states: ['personality'], names: ['personality'] },
    {
      tag: 'several',
      states: ['epoll', 'pipe', 'socket', 'timerfd', 'seccomp', 'timer', 'umask'],
      names: ['eventpoll', 'pipe', 'socket', 'timerfd', 'seccomp', 'no_new_privs', 'POSIX timer'],
    },
  ];
  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
  for (const { tag, states, names } of refusals) {
    const scenario = refusalScenario(guest, { name: holding(states.join(' ')), workload: workload(...states), names });
    await t.test(`refused at checkpoint time: ${states.join(' ')}`, crhOnly, async (t) => {
      const a = await scenario.attempt(tag);
      t.ok(a.error instanceof CheckpointError, `CheckpointError: ${(a.error as Error | undefined)?.message}`);
      t.same(a.named, names, `names ${names.join(', ')}`);
      t.equal(a.leftBehind, '', 'no holdstate process left behind');
      t.comment(`spawn, run to the breakpoint and the refused checkpoint: ${a.ms} ms`);
      settleRefusal(t, { case: CASE, scenario: scenario.name, policy: POLICY }, scenario, a);
    });
  }

  // Restore and oracle: umask 077 is captured and given back; omit=umask (the restoring agent's 0022) is the control.
  const umask = await breakpointScenario(t, guest, { name: holding('umask 077'), workload: workload('umask') });
  t.match(umask.expected, /umask=077/, `uninterrupted: ${umask.expected}`);
  await runTable(t, CASE, umask, [
    { title: 'holding umask 077: checkpointed and restored with it', policy: DEFAULT_POLICY, tag: 'umask', expect: 'resumes' },
    {
      title: "negative control omit=umask: the restoring agent's umask",
      policy: { ...DEFAULT_POLICY, omit: ['umask'] },
      tag: 'umask-omitted',
      expect: 'differs',
      check: (t, a) => void t.not(a.restoredRun?.output.trim(), umask.expected, `omit=umask is caught: ${a.observed}`),
    },
  ]);

  const nothing = await breakpointScenario(t, guest, { name: holding('nothing extra'), workload: workload() });
  await runTable(t, CASE, nothing, [
    { title: 'holding nothing extra: checkpointed and restored as uninterrupted', policy: DEFAULT_POLICY, tag: 'nothing', expect: 'resumes' },
  ]);

  // The control the refusal exists for: the personality checkpoint taken anyway (uncapturable=ignore) loses READ_IMPLIES_EXEC.
  const personality = await breakpointScenario(t, guest, {
    name: holding('personality READ_IMPLIES_EXEC'),
    workload: workload('personality'),
    checkpoint: { disarm: true, uncapturable: 'ignore' },
  });
  t.match(personality.expected, /personality=0x44/, `uninterrupted keeps READ_IMPLIES_EXEC: ${personality.expected}`);
  await runTable(t, CASE, personality, [
    {
      title: 'negative control uncapturable=ignore: the personality is silently lost',
      policy: DEFAULT_POLICY,
      policyName: `${POLICY} uncapturable=ignore`,
      tag: 'ignore',
      expect: 'differs',
      check: (t, a) => {
        t.match(a.restoredRun?.output, /personality=0x4\d{4} /, `restored without it: ${a.observed}`);
        t.not(a.restoredRun?.output.trim(), personality.expected, 'differs from the uninterrupted run');
      },
    },
  ]);
});
