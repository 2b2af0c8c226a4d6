// expect: a program `crh cr` cannot checkpoint (it holds an epoll instance, which no module restores) makes crh exit 1 — a limitation of the C/R under test, never a usage error (2) — with a CheckpointError that names the state and where it was seen.
import t from 'tap';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

t.test('crh cr on a process holding an epoll instance: exit 1 with the reason', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-repro-uncheckpointable-'));
  const holdstate = (await buildGuestBinaries()).hostPath.holdstate!;
  const r = await execa(
    process.execPath,
    [
      path.join(REPO_ROOT, 'bin', 'crh.js'),
      'cr',
      '--binary',
      holdstate,
      '--checkpoint-at',
      'holdstate_checkpoint',
      '--out',
      path.join(dir, 'b.tar'),
      '--artifacts',
      path.join(dir, 'artifacts'),
      '--',
      'epoll',
    ],
    { reject: false, cwd: REPO_ROOT },
  );
  t.equal(r.exitCode, 1, 'exit 1, not 2');
  t.match(
    r.stderr,
    /CheckpointError: the program could not be checkpointed at this point: pid \d+ holds state the restore core does not capture: eventpoll \(fd \d+: anon_inode:\[eventpoll\]\)/,
    'the reason, naming the state',
  );
  t.notMatch(r.stderr, /UsageError/);
});
