// expect: --shard i/n splits case files deterministically into disjoint shards that together hold every case,
// balanced by recorded durations; a run starts its cases longest first; malformed shards are usage errors.
import t from 'tap';
import { casesOfShard, longestFirst, splitIntoShards } from '../harness/report/shard.ts';
import { parseShard } from '../harness/flags/run-flags.ts';
import { UsageError } from '../harness/repro/usage-error.ts';

const cases = ['a.test.ts', 'b.test.ts', 'c.test.ts', 'd.test.ts', 'e.test.ts', 'f.test.ts', 'g.test.ts'];
const durations = { 'a.test.ts': 45_000, 'b.test.ts': 26_000, 'c.test.ts': 14_000, 'd.test.ts': 13_800, 'e.test.ts': 13_200, 'f.test.ts': 5_000 };

t.test('shards are disjoint, complete and deterministic', async (t) => {
  for (const n of [1, 2, 3, 5, 9]) {
    const shards = splitIntoShards(cases, durations, n);
    t.equal(shards.length, n, `${n} shards`);
    const all = shards.flat();
    t.same([...all].sort(), [...cases].sort(), `n=${n}: every case exactly once`);
    t.equal(new Set(all).size, all.length, `n=${n}: no case twice`);
    t.same(
      splitIntoShards([...cases].reverse(), durations, n).map((s) => [...s].sort()),
      shards.map((s) => [...s].sort()),
      `n=${n}: the input order does not change the split`,
    );
    for (let i = 1; i <= n; i++) t.same(casesOfShard(cases, durations, { index: i, count: n }), shards[i - 1], `n=${n}: shard ${i} alone is the same`);
  }
});

t.test('balanced by duration: the longest case sits alone, the rest share', async (t) => {
  const [one, two, three] = splitIntoShards(cases, durations, 3);
  t.same(one, ['a.test.ts'], 'the 45 s case has a shard of its own');
  const sum = (s: string[]) => s.reduce((n, c) => n + (durations[c as keyof typeof durations] ?? 13_800), 0);
  t.ok(Math.abs(sum(two!) - sum(three!)) <= 14_000, `the others within one case of each other (${sum(two!)} vs ${sum(three!)} ms)`);
  t.ok(two!.includes('g.test.ts') || three!.includes('g.test.ts'), 'a case never timed counts as the median, not as zero');
});

t.test('--shard text', async (t) => {
  t.same(parseShard('2/3'), { index: 2, count: 3 });
  for (const bad of ['0/3', '4/3', '1/0', '1', 'a/b', '1/3/5', '-1/3', ' 1/3']) t.throws(() => parseShard(bad), UsageError, `"${bad}" refused`);
});

t.test('a run starts its cases longest first; a case never timed counts as the median', async (t) => {
  t.same(longestFirst(['a', 'b', 'c', 'd'], { a: 10, b: 300, c: 20, d: 300 }), ['b', 'd', 'c', 'a'], 'by duration, ties by name');
  t.same(
    longestFirst(['new', 'long', 'short', 'mid'], { long: 100, short: 1, mid: 50 }),
    ['long', 'mid', 'new', 'short'],
    'the new case takes the median (50), after mid by name',
  );
  t.same(longestFirst(['b', 'a'], {}), ['a', 'b'], 'nothing timed: by name');
});
