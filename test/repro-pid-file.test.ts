// expect: through `crh repro`/`crh cr --pid-file` against a real guest, the process checkpointed is the daemon the
// launcher names in its pid file: a daemon with a shared page waiting for SIGUSR1 ends with its uninterrupted output
// (exit 0), our ZDTM-protocol test passes with its outfile as fds 1 and 2 given back; the control --omit
// mapping-kinds shows the shared page made private (exit 1); a daemon with a child is checkpointed and restored with
// it as a process tree (exit 0); a daemon whose child no setsid/setpgid sequence can place again is refused by name
// (exit 1).
import t from 'tap';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { readBundle } from '../harness/repro/bundle.ts';
import { parseVerdict } from '../harness/repro/verdict.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
const daemon = path.join(REPO_ROOT, 'examples', 'repro', 'pid-file-daemon.c');
const ready = ['--when-ready', '--pid-file', 'daemon.pid', '--finish-signal', 'USR1'];

async function crhRun(args: string[]): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const r = await execa(process.execPath, [crh, ...args], { reject: false, cwd: REPO_ROOT });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

/** `crh cr` of our ZDTM-protocol test zdtm-wait, ready when its launcher has written T.pid, finished with SIGTERM; `testArgs` after its own. */
async function crZdtmWait(out: string, artifacts: string, ...testArgs: string[]): Promise<Awaited<ReturnType<typeof crhRun>>> {
  const binary = (await buildGuestBinaries()).hostPath['zdtm-wait']!;
  const launch = ['--binary', binary, '--when-ready', '--pid-file', 'T.pid', '--finish-signal', 'TERM'];
  return crhRun(['cr', ...launch, '--out', out, '--artifacts', artifacts, '--', '--pidfile=T.pid', '--outfile=T.out', ...testArgs]);
}

const WOKE = 'woke: session=1 shared=0x5a17ed private=0x9121 still-shared=1\n';

t.test('crh repro/cr --pid-file', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-repro-pid-file-'));
  const artifacts = path.join(dir, 'artifacts');
  /** `crh repro` of the daemon, ready by its pid file; `rest` after the common flags. */
  const reproDaemon = (bundle: string, ...rest: string[]) =>
    crhRun(['repro', daemon, ...ready, '--out', path.join(dir, bundle), '--artifacts', artifacts, ...rest]);

  // The daemon alone and the daemon with a child: the same uninterrupted output after the restore.
  const restoredAsUninterrupted = [
    {
      title: 'a daemon named by its pid file: checkpointed, restored, its uninterrupted output',
      bundle: 'daemon.tar',
      args: [],
      stderr: /the launcher exited 0 and \/tmp\/crh-repro\/work\/daemon\.pid names pid \d+/,
      why: 'the daemon, not the launcher, was checkpointed',
    },
    {
      title: 'a daemon with a child: checkpointed and restored as a process tree, its uninterrupted output',
      bundle: 'tree.tar',
      args: ['--', 'tree'],
      stderr: /2 processes \(pid \d+, \d+\)/,
      why: 'the daemon and its child were restored together',
    },
  ];
  for (const run of restoredAsUninterrupted) {
    await t.test(run.title, async (t) => {
      const r = await reproDaemon(run.bundle, ...run.args);
      if (!t.equal(r.exitCode, 0, 'exit 0')) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
      const verdict = parseVerdict((await readBundle(path.join(dir, run.bundle))).get('verdict.json')!.data.toString('utf8'));
      t.equal(verdict.restored?.output, WOKE, "the restored daemon's output");
      t.match(r.stderr, run.stderr, run.why);
    });
  }

  await t.test('control --omit mapping-kinds: the shared page comes back private, exit 1', async (t) => {
    const r = await reproDaemon('omit.tar', '--omit', 'mapping-kinds');
    t.equal(r.exitCode, 1, 'exit 1');
    t.match(r.stdout, /^verdict: FAIL/m);
    t.match(r.stdout, /still-shared=0/);
  });

  await t.test('a ZDTM-protocol test whose daemon forked a child before its setsid, through crh cr --pid-file: refused by name, exit 1', async (t) => {
    const r = await crZdtmWait(path.join(dir, 'zdtm-tree.tar'), artifacts, 'child');
    t.equal(r.exitCode, 1, 'exit 1: a C/R limitation, not a usage error');
    t.match(r.stderr, /process tree: pid \d+ is in session \d+, led by no process of the tree and not the root's: it cannot be created again/);
  });

  await t.test('a ZDTM-protocol test through crh cr --pid-file: its outfile as fds 1 and 2 after the restore', async (t) => {
    const r = await crZdtmWait(path.join(dir, 'zdtm-wait.tar'), artifacts);
    // zdtm-wait exits 1 with a FAIL line when its descriptors, session or shared page are not what they were.
    if (!t.equal(r.exitCode, 0, 'exit 0: the restored test exited 0, as uninterrupted')) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
  });
});
