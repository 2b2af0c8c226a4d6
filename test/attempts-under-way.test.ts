// expect: attemptsUnderWay starts a table's crh attempts at once, one after another (one guest's agent runs one program
// at a time), and answers each row with its own attempt's result later; a failed attempt is its row's failure and the
// next still runs; a row it did not start, or under another policy, is refused by name; under --engine criu alone
// nothing starts. Fake scenarios: this is the ordering, not a restore.
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { adoptRunConfiguration, runConfiguration } from '../harness/flags/run-configuration.ts';
import type { Attempt } from '../harness/scenarios/attempt.ts';
import { attemptsUnderWay, type Row, type TableScenario } from '../harness/scenarios/table.ts';

const OFF = { ...DEFAULT_POLICY, syscallRestart: 'off' as const };
const rows: Row<Attempt>[] = [
  { title: 'a', policy: DEFAULT_POLICY, tag: 'a', expect: 'resumes' },
  { title: 'b', policy: OFF, tag: 'b', expect: 'differs' },
  { title: 'c', policy: DEFAULT_POLICY, tag: 'c', expect: 'resumes' },
];

/** A scenario whose attempts log when they start and end, take a while, and fail for the tags in `failing`. */
function recording(failing: readonly string[] = []) {
  const log: string[] = [];
  const scenario: TableScenario<Attempt> = {
    name: 'recording',
    expected: 'ok',
    attempt: async (_policy, tag) => {
      log.push(`start ${tag}`);
      await sleep(20);
      log.push(`end ${tag}`);
      if (failing.includes(tag)) throw new Error(`attempt ${tag} failed`);
      return { matched: true, observed: `observed ${tag}`, witnesses: {} };
    },
  };
  return { log, scenario };
}

t.test('every attempt starts now, one after another, and each row gets its own', async (t) => {
  const { log, scenario } = recording();
  const table = attemptsUnderWay(scenario, rows);
  await sleep(0);
  t.same(log, ['start a'], 'the first is under way before any row asks');
  await table.done;
  t.same(log, ['start a', 'end a', 'start b', 'end b', 'start c', 'end c'], 'never two at once');
  t.equal((await table.attempt(OFF, 'b')).observed, 'observed b');
  t.equal((await table.attempt(DEFAULT_POLICY, 'a')).observed, 'observed a');
  t.equal(table.name, 'recording', 'the scenario otherwise as it was');
});

t.test('a failed attempt is its own row’s failure; the next one still runs', async (t) => {
  const { log, scenario } = recording(['a']);
  const table = attemptsUnderWay(scenario, rows);
  await table.done;
  t.same(log, ['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
  await t.rejects(table.attempt(DEFAULT_POLICY, 'a'), /attempt a failed/);
  t.equal((await table.attempt(DEFAULT_POLICY, 'c')).observed, 'observed c');
});

t.test('a row it did not start is refused, by name', async (t) => {
  const table = attemptsUnderWay(recording().scenario, rows);
  await table.done;
  t.throws(() => table.attempt(DEFAULT_POLICY, 'z'), /recording: no attempt under way for row z/);
  t.throws(() => table.attempt(DEFAULT_POLICY, 'b'), /no attempt under way for row b under this policy/, 'b was started under syscall-restart=off');
});

t.test('under --engine criu alone (crh rows skipped) nothing starts', async (t) => {
  const before = runConfiguration();
  adoptRunConfiguration({ ...before, engines: ['criu'] });
  t.teardown(() => adoptRunConfiguration(before));
  const { log, scenario } = recording();
  const table = attemptsUnderWay(scenario, rows);
  await table.done;
  await sleep(30);
  t.same(log, []);
});
