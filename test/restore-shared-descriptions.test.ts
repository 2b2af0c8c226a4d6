// expect: a description several processes of a tree share is let through only where one description per process
// cannot be told apart (a directory, a restorable device, a write-only O_APPEND file) and refused otherwise, naming
// its flags; only descriptors of different processes on the same path are compared, each pair once.
import t from 'tap';
import { candidatePairs, sharedDescriptionProblem, type HeldFile } from '../harness/restore/shared-descriptions.ts';

t.test('which shared descriptions a restore may open once per process', async (t) => {
  t.equal(sharedDescriptionProblem('/work', 0o200000), undefined, 'a directory: its offset is not kept in any case');
  t.equal(sharedDescriptionProblem('/dev/null', 0o2), undefined, 'a restorable device: no offset');
  t.equal(sharedDescriptionProblem('/work/T.out.inprogress', 0o102001), undefined, 'write-only O_APPEND: every write at the end');
  t.match(sharedDescriptionProblem('/work/data', 0o100002), /^flags 0o100002: one offset the processes share/, 'read-write');
  t.match(sharedDescriptionProblem('/work/data', 0o100000), /^flags 0o100000: /, 'read-only: a shared read offset');
  t.match(sharedDescriptionProblem('/work/log', 0o102002), /^flags 0o102002: /, 'read-write O_APPEND: reads at a shared offset');
  t.match(sharedDescriptionProblem('/work/log', 0o100001), /^flags 0o100001: /, 'write-only without O_APPEND: writes at a shared offset');
});

t.test('candidate pairs: the same path in different processes', async (t) => {
  const f = (pid: number, fd: number, path: string): HeldFile => ({ pid, fd, path, flags: 0 });
  const pairs = candidatePairs([f(10, 3, '/a'), f(10, 4, '/a'), f(11, 3, '/a'), f(11, 4, '/b'), f(12, 5, '/a')]);
  t.same(
    pairs.map(([a, b]) => `${a.pid}/${a.fd}-${b.pid}/${b.fd}`),
    ['10/3-11/3', '10/3-12/5', '10/4-11/3', '10/4-12/5', '11/3-12/5'],
    'never two descriptors of one process, never two paths',
  );
  t.same(candidatePairs([f(10, 3, '/a'), f(10, 4, '/a')]), [], 'one process: nothing to compare');
});
