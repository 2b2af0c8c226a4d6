// expect: the reaper kills a leftover QEMU only when pid, start time and a `-name crh-…` QEMU command line all match its record and its owner is dead; an unrelated process that now holds a recorded pid survives, and the stale record goes.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isQemuNamed, processStartTime, reapOrphans, recordsDir, type MachineRecord } from '../harness/machine/reaper.ts';

// Records of this test only: the real run directory belongs to every crh on this host.
process.env.CRH_CACHE_DIR = await mkdtemp(path.join(tmpdir(), 'crh-reaper-cache-'));

const children: ChildProcess[] = [];
t.teardown(() => {
  for (const c of children) c.kill('SIGKILL');
});

/** A process that lives until killed; `argv0` sets what /proc/PID/cmdline shows first. */
async function longLived(args: string[], argv0?: string): Promise<ChildProcess> {
  // node, not sleep: sleep would refuse `-name` among its arguments; node takes everything after -- as the script's.
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)', '--', ...args], { stdio: 'ignore', ...(argv0 ? { argv0 } : {}) });
  children.push(child);
  for (let i = 0; i < 100 && processStartTime(child.pid!) === undefined; i++) await sleep(10);
  return child;
}

function isAlive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null && processStartTime(child.pid!) !== undefined;
}

/** An owner that is dead: this process's pid under a start time it never had (the pid reused). */
function deadOwner(): Pick<MachineRecord, 'ownerPid' | 'ownerStartTime'> {
  return { ownerPid: process.pid, ownerStartTime: String(Number(processStartTime(process.pid)) + 1) };
}

async function writeRecord(record: MachineRecord): Promise<string> {
  // Named by the machine: two records here may name one owner and one pid.
  const file = path.join(await recordsDir(), `${record.name}.json`);
  await writeFile(file, JSON.stringify(record));
  return file;
}

async function exited(child: ChildProcess, ms: number): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 20) {
    if (child.exitCode !== null || child.signalCode !== null) return true;
    await sleep(20);
  }
  return false;
}

t.test('start time is field 22 of /proc/PID/stat and tells two processes apart', async (t) => {
  const a = await longLived([]);
  const mine = processStartTime(process.pid);
  t.match(mine, /^\d+$/, `this process started at tick ${mine}`);
  t.ok(Number(processStartTime(a.pid!)) >= Number(mine), 'a child started no earlier than its parent');
  t.equal(processStartTime(2 ** 22 + 1), undefined, 'no such process: undefined');
});

t.test('isQemuNamed wants a qemu-system program and -name with the crh- name', async (t) => {
  t.ok(isQemuNamed(['qemu-system-x86_64', '-machine', 'pc', '-name', 'crh-1-1'], 'crh-1-1'));
  t.ok(isQemuNamed(['/usr/bin/qemu-system-x86_64', '-name', 'crh-boot'], 'crh-boot'));
  t.notOk(isQemuNamed(['qemu-system-x86_64', '-name', 'crh-1-2'], 'crh-1-1'), 'another machine');
  t.notOk(isQemuNamed(['sleep', '-name', 'crh-1-1'], 'crh-1-1'), 'not QEMU');
  t.notOk(isQemuNamed(['qemu-system-x86_64', '-name', 'guest'], 'guest'), 'a QEMU not named crh-…');
  t.notOk(isQemuNamed(['qemu-system-x86_64', 'crh-1-1'], 'crh-1-1'), 'no -name');
});

t.test('an unrelated process holding a recorded pid survives; the stale record is removed', async (t) => {
  // The pid reused by some other program: another start time, and no QEMU command line.
  const sleeper = await longLived(['1000']);
  const started = processStartTime(sleeper.pid!)!;
  const reused = await writeRecord({
    qemuPid: sleeper.pid!,
    qemuStartTime: String(Number(started) - 1),
    ...deadOwner(),
    name: 'crh-stale-1',
    startedAt: new Date().toISOString(),
  });
  // Same start time, but the program is not a crh QEMU (a record written wrong, or a name someone else chose).
  const notQemu = await writeRecord({
    qemuPid: sleeper.pid!,
    qemuStartTime: started,
    ...deadOwner(),
    name: 'crh-stale-2',
    startedAt: new Date().toISOString(),
  });
  // A QEMU-looking process, start time right, but running under another name.
  const other = await longLived(['-name', 'crh-other'], 'qemu-system-x86_64');
  const otherName = await writeRecord({
    qemuPid: other.pid!,
    qemuStartTime: processStartTime(other.pid!)!,
    ownerPid: 2 ** 22 + 1,
    ownerStartTime: '1',
    name: 'crh-mine',
    startedAt: new Date().toISOString(),
  });
  const reaped = await reapOrphans();
  t.same(reaped, [], 'nothing reaped');
  await sleep(200);
  t.ok(isAlive(sleeper), `the unrelated process ${sleeper.pid} is alive`);
  t.ok(isAlive(other), `the QEMU named otherwise ${other.pid} is alive`);
  for (const f of [reused, notQemu, otherName]) t.notOk(existsSync(f), `stale record ${path.basename(f)} removed`);
});

t.test('a matching leftover QEMU with a dead owner is reaped; one whose owner lives is left alone', async (t) => {
  const orphan = await longLived(['-machine', 'pc', '-name', 'crh-test', '1000'], 'qemu-system-x86_64');
  const orphanRecord = await writeRecord({
    qemuPid: orphan.pid!,
    qemuStartTime: processStartTime(orphan.pid!)!,
    ...deadOwner(),
    name: 'crh-test',
    startedAt: new Date().toISOString(),
  });
  const owned = await longLived(['-name', 'crh-owned'], 'qemu-system-x86_64');
  const ownedRecord = await writeRecord({
    qemuPid: owned.pid!,
    qemuStartTime: processStartTime(owned.pid!)!,
    ownerPid: process.pid,
    ownerStartTime: processStartTime(process.pid)!,
    name: 'crh-owned',
    startedAt: new Date().toISOString(),
  });
  const reaped = await reapOrphans();
  t.equal(reaped.length, 1, `one reaped: ${reaped.join('; ')}`);
  t.match(reaped[0], new RegExp(`reaped QEMU pid ${orphan.pid} \\(crh-test\\)`));
  t.ok(await exited(orphan, 5000), 'the orphan is dead');
  t.equal(orphan.signalCode, 'SIGKILL', 'by SIGKILL');
  t.notOk(existsSync(orphanRecord), 'its record is removed');
  t.ok(isAlive(owned), 'the QEMU whose owner runs is alive');
  t.ok(existsSync(ownedRecord), 'and its record kept');
  t.same((await readdir(await recordsDir())).sort(), [path.basename(ownedRecord)], 'no other record left');
});

t.test('an unreadable record or one from before start times is removed once its owner is gone, without a kill', async (t) => {
  const victim = await longLived(['-name', 'crh-old'], 'qemu-system-x86_64');
  const dir = await recordsDir();
  const garbage = path.join(dir, 'garbage.json');
  await writeFile(garbage, '{not json');
  const old = path.join(dir, `old.json`);
  await writeFile(old, JSON.stringify({ qemuPid: victim.pid, ownerPid: 2 ** 22 + 1, name: 'crh-old', startedAt: '' }));
  const oldLiveOwner = path.join(dir, `old-live.json`);
  await writeFile(oldLiveOwner, JSON.stringify({ qemuPid: victim.pid, ownerPid: process.pid, name: 'crh-old', startedAt: '' }));
  t.same(await reapOrphans(), [], 'nothing reaped');
  t.ok(isAlive(victim), 'the process a record without a start time names is alive');
  t.notOk(existsSync(garbage), 'unreadable record removed');
  t.notOk(existsSync(old), 'old record of a dead owner removed');
  t.ok(existsSync(oldLiveOwner), 'old record of a live owner kept');
});

t.test("a dead owner's guest RAM directory on /dev/shm goes with its record; a path not ours stays", async (t) => {
  const ram = await mkdtemp('/dev/shm/crh-ram-');
  await writeFile(path.join(ram, 'ram'), Buffer.alloc(4096));
  const foreign = await mkdtemp(path.join(tmpdir(), 'crh-ram-'));
  t.teardown(() => rm(foreign, { recursive: true, force: true }));
  t.teardown(() => rm(ram, { recursive: true, force: true }));
  const gone = 2 ** 22 + 1;
  await writeRecord({ qemuPid: gone, qemuStartTime: '1', ...deadOwner(), name: 'crh-ram-1', startedAt: new Date().toISOString(), ramDir: ram });
  await writeRecord({ qemuPid: gone, qemuStartTime: '1', ...deadOwner(), name: 'crh-ram-2', startedAt: new Date().toISOString(), ramDir: foreign });
  const reaped = await reapOrphans();
  t.same(reaped, [`removed guest RAM ${ram} of dead process ${process.pid}`], 'the reap says what it removed');
  t.notOk(existsSync(ram), 'the /dev/shm RAM directory is gone');
  t.ok(existsSync(foreign), 'a directory that is not a /dev/shm/crh-ram-XXXXXX is left alone');
  const live = await mkdtemp('/dev/shm/crh-ram-');
  t.teardown(() => rm(live, { recursive: true, force: true }));
  await writeRecord({
    qemuPid: gone,
    qemuStartTime: '1',
    ownerPid: process.pid,
    ownerStartTime: processStartTime(process.pid)!,
    name: 'crh-ram-3',
    startedAt: new Date().toISOString(),
    ramDir: live,
  });
  t.same(await reapOrphans(), [], "a live owner's machine is not reaped");
  t.ok(existsSync(live), 'nor its RAM');
});
