// expect: the clean-start command kills every live descendant of the agent (a daemon reparented to it, and that daemon's own child), leaves the agent and unrelated processes alone, and empties the working directory in place (dot files too) — run for real in a host shell, with a stand-in agent under a name of its own.
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { copyFile, mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { cleanStartCommand, killedPids } from '../harness/repro/clean-start.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';

const run = promisify(execFile);
const alive = (pid: number): boolean => {
  if (!existsSync(`/proc/${pid}`)) return false;
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

t.test('killedPids reads the rounds it printed', async (t) => {
  t.same(killedPids(''), []);
  t.same(killedPids('killed 12 13\nkilled 13 40\n'), [12, 13, 40]);
});

t.test('a daemon below the agent is killed, the work directory emptied in place', async (t) => {
  const dir = await makeTempDir('crh-clean-start-');
  t.teardown(() => removeTempDir(dir));
  // A name no real agent has: pidof must not find another test's agent on this host.
  const agentName = `crhA${process.pid % 100000}`;
  const agentBinary = path.join(dir, agentName);
  await copyFile('/bin/sh', agentBinary);
  const work = path.join(dir, 'work');
  await mkdir(work);
  await writeFile(path.join(work, 'made-by-the-run'), 'x');
  await writeFile(path.join(work, '.hidden'), 'x');
  await mkdir(path.join(work, 'sub'));
  // The stand-in agent: a shell that starts a "daemon" (a shell with a child of its own) and waits.
  const agent = spawn(agentBinary, ['-c', 'sh -c "sleep 300 & sleep 301" & echo $!; wait'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => void agent.kill('SIGKILL'));
  const daemon = Number(await new Promise<string>((resolve) => agent.stdout.once('data', (d: Buffer) => resolve(d.toString().trim()))));
  const bystander = spawn('sleep', ['300'], { stdio: 'ignore' });
  t.teardown(() => void bystander.kill('SIGKILL'));
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.ok(alive(daemon), `the daemon ${daemon} runs`);

  const { stdout } = await run('sh', ['-c', cleanStartCommand(work, agentName)]);
  const killed = killedPids(stdout);
  t.ok(killed.includes(daemon), `the daemon was killed (${killed.join(', ')})`);
  t.ok(killed.length >= 3, 'and its children');
  t.ok(
    killed.every((p) => p !== agent.pid && p !== bystander.pid),
    'neither the agent nor a bystander',
  );
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.notOk(alive(daemon), 'the daemon is gone');
  t.ok(alive(bystander.pid!), 'the bystander runs on');
  t.same(await readdir(work), [], 'the working directory is empty');
  t.equal((await stat(work)).mode & 0o777, 0o755);
});

t.test("an agent port's session below its supervisor (both named as the agent) is no leftover; the session's daemon is", async (t) => {
  const dir = await makeTempDir('crh-clean-start-');
  t.teardown(() => removeTempDir(dir));
  const agentName = `crhS${process.pid % 100000}`;
  const agentBinary = path.join(dir, agentName);
  await copyFile('/bin/sh', agentBinary);
  const work = path.join(dir, 'work');
  await mkdir(work);
  const fifo = path.join(dir, 'fifo');
  await run('mkfifo', [fifo]);
  // The supervisor forks a session (the same binary, as guests/agent/port.c does); the session starts a daemon
  // and waits with no child of its own (reading a FIFO it holds open for writing too).
  const supervisor = spawn(agentBinary, ['-c', `${agentBinary} -c 'sleep 300 & echo daemon $!; exec 3<>${fifo}; read x <&3' & echo session $!; wait`], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  t.teardown(() => void supervisor.kill('SIGKILL'));
  const pids = new Map<string, number>();
  await new Promise<void>((resolve) =>
    supervisor.stdout.on('data', (d: Buffer) => {
      for (const [, what, pid] of d.toString().matchAll(/(daemon|session) (\d+)/g)) pids.set(what!, Number(pid));
      if (pids.size === 2) resolve();
    }),
  );
  t.teardown(() => {
    for (const pid of pids.values()) if (alive(pid)) process.kill(pid, 'SIGKILL');
  });
  await new Promise((resolve) => setTimeout(resolve, 300));
  const { stdout } = await run('sh', ['-c', cleanStartCommand(work, agentName)]);
  const killed = killedPids(stdout);
  t.ok(killed.includes(pids.get('daemon')!), `the session's daemon was killed (${killed.join(', ')})`);
  t.notOk(killed.includes(pids.get('session')!), 'the session was not');
  t.ok(alive(pids.get('session')!), 'the session runs on');
});
