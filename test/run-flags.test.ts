import t from 'tap';
import { UsageError } from '../harness/errors.ts';
import { DEFAULT_JOBS, parseGrep, parseJobs } from '../harness/flags/run-flags.ts';

t.test('--jobs: a whole number from 1, the default without the flag, anything else refused by name', async (t) => {
  t.equal(parseJobs(undefined), DEFAULT_JOBS);
  t.equal(parseJobs('3'), 3);
  for (const bad of ['0', '-1', '1.5', 'two', '', '03', ' 2']) t.throws(() => parseJobs(bad), { name: 'UsageError', message: /--jobs/ }, `"${bad}" refused`);
});

t.test('--grep: a pattern, or a UsageError naming the flag', async (t) => {
  t.equal(parseGrep(undefined), undefined);
  t.ok(parseGrep('^fsgs')!.test('fsgs.test.ts'));
  t.throws(() => parseGrep('('), UsageError);
  t.throws(() => parseGrep('('), /--grep/);
});
