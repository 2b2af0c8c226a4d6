/**
 * No QEMU may outlive the process that started it. Three layers:
 * 1. QEMU runs under `setpriv --pdeathsig KILL`: the kernel kills it when
 *    its parent (this process) dies, even by SIGKILL.
 * 2. A watchdog notices when this process itself is orphaned (the test
 *    runner above it was killed) and kills its machines, then exits.
 * 3. Every machine is recorded under the run directory; the next launch
 *    reaps records whose owner is dead and says so.
 *
 * A pid alone names nothing once its process is gone: the kernel hands it
 * to the next process. A record therefore also holds the process's start
 * time (field 22 of /proc/PID/stat, clock ticks since boot — fixed at fork,
 * kept across exec), and a leftover is killed only when the pid, that start
 * time and a `-name crh-…` QEMU command line all match. Node 20 has no
 * pidfd API, which would make this airtight.
 */
import { readFileSync, rmSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { ensureCacheDir } from '../util/cache-dir.ts';

export interface MachineRecord {
  qemuPid: number;
  /** field 22 of /proc/<qemuPid>/stat at launch */
  qemuStartTime: string;
  ownerPid: number;
  /** field 22 of /proc/<ownerPid>/stat: a reused owner pid is a dead owner */
  ownerStartTime: string;
  /** QEMU's -name: crh-… */
  name: string;
  startedAt: string;
  /** the machine's guest RAM directory on /dev/shm (machine.ts), removed with a reaped machine: it holds memory */
  ramDir?: string;
}

/** What a guest RAM directory of ours is named (makeTempDir('crh-ram-', '/dev/shm')): nothing else is removed by a reap. */
const RAM_DIR = /^\/dev\/shm\/crh-ram-[A-Za-z0-9]{6}$/;

export const MACHINE_NAME_PREFIX = 'crh-';

const live = new Map<number, string>(); // qemu pid -> record file
const liveRamDirs = new Map<number, string>(); // qemu pid -> its guest RAM directory

/** The directory of machine records; CRH_CACHE_DIR moves it with the rest of the cache. */
export function recordsDir(): Promise<string> {
  return ensureCacheDir('run');
}

/** Field 22 of /proc/PID/stat (start time in clock ticks since boot), or undefined when there is no such process. */
export function processStartTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Field 2 (comm) is in parentheses and may hold spaces or ')': fields 3… follow the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields[22 - 3];
}

function commandLine(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      .split('\0')
      .filter((a) => a !== '');
  } catch {
    return undefined;
  }
}

/** Whether `argv` is a QEMU started as machine `name`: a qemu-system program and `-name <name>`. */
export function isQemuNamed(argv: readonly string[], name: string): boolean {
  if (!name.startsWith(MACHINE_NAME_PREFIX)) return false;
  if (!path.basename(argv[0] ?? '').startsWith('qemu-system')) return false;
  const at = argv.indexOf('-name');
  return at >= 0 && argv[at + 1] === name;
}

/** Whether the process at `pid` is still the one the record names: same start time, a QEMU with the record's name. */
export function isRecordedQemu(record: MachineRecord): boolean {
  const started = processStartTime(record.qemuPid);
  if (started === undefined || started !== record.qemuStartTime) return false;
  const argv = commandLine(record.qemuPid);
  return argv !== undefined && isQemuNamed(argv, record.name);
}

/** Whether the record's owner still runs: its pid with the start time recorded (a record without one: the pid alone). */
function ownerAlive(record: Pick<MachineRecord, 'ownerPid'> & Partial<MachineRecord>): boolean {
  const started = processStartTime(record.ownerPid);
  return started !== undefined && (record.ownerStartTime === undefined || started === record.ownerStartTime);
}

/** Records a QEMU just spawned (pid `qemuPid`) by this process. */
export async function recordMachine(qemuPid: number, name: string, ramDir?: string): Promise<void> {
  const qemuStartTime = processStartTime(qemuPid);
  const ownerStartTime = processStartTime(process.pid);
  // Already gone: nothing to record; the launch notices the exit by itself.
  if (qemuStartTime === undefined || ownerStartTime === undefined) return;
  const record: MachineRecord = {
    qemuPid,
    qemuStartTime,
    ownerPid: process.pid,
    ownerStartTime,
    name,
    startedAt: new Date().toISOString(),
    ...(ramDir ? { ramDir } : {}),
  };
  const file = path.join(await recordsDir(), `${record.ownerPid}-${record.qemuPid}.json`);
  await writeFileAtomic(file, JSON.stringify(record), 0o600);
  live.set(record.qemuPid, file);
  if (ramDir) liveRamDirs.set(qemuPid, ramDir);
  startWatchdog();
}

export async function forgetMachine(qemuPid: number): Promise<void> {
  const file = live.get(qemuPid);
  live.delete(qemuPid);
  liveRamDirs.delete(qemuPid);
  if (file) await rm(file, { force: true });
}

/** The record files this process wrote and has not removed (for tests). */
export function liveRecordFiles(): string[] {
  return [...live.values()];
}

const isPid = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) > 0;

/** A complete record; `owner` alone when only the owner can be read (a record from before start times). */
function parseRecord(text: string): { record?: MachineRecord; owner?: Pick<MachineRecord, 'ownerPid'> } {
  let r: Partial<MachineRecord>;
  try {
    r = JSON.parse(text) as Partial<MachineRecord>;
  } catch {
    return {};
  }
  if (!isPid(r.ownerPid)) return {};
  const complete = isPid(r.qemuPid) && typeof r.qemuStartTime === 'string' && typeof r.ownerStartTime === 'string' && typeof r.name === 'string';
  return complete ? { record: r as MachineRecord, owner: r as MachineRecord } : { owner: { ownerPid: r.ownerPid } };
}

/**
 * Kills QEMUs whose owning process is gone and removes their records;
 * returns one line per machine reaped. A record whose pid now belongs to
 * another process (another start time, not a crh QEMU) is removed and its
 * process left alone; so is a record that cannot be read or predates start
 * times.
 */
export async function reapOrphans(): Promise<string[]> {
  const dir = await recordsDir();
  const files = (await readdir(dir)).filter((f) => f.endsWith('.json'));
  const reaped: string[] = [];
  for (const f of files) {
    const file = path.join(dir, f);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue; // removed by its owner meanwhile
    }
    const { record, owner } = parseRecord(text);
    if (owner && ownerAlive(owner)) continue;
    if (record && isRecordedQemu(record)) {
      try {
        process.kill(record.qemuPid, 'SIGKILL');
        reaped.push(`reaped QEMU pid ${record.qemuPid} (${record.name}) left running by dead process ${record.ownerPid}`);
      } catch {
        // exited between the check and the kill
      }
    }
    // Its guest RAM file is memory (/dev/shm) that no one else frees.
    if (record?.ramDir !== undefined && RAM_DIR.test(record.ramDir)) {
      await rm(record.ramDir, { recursive: true, force: true });
      reaped.push(`removed guest RAM ${record.ramDir} of dead process ${record.ownerPid}`);
    }
    await rm(file, { force: true });
  }
  return reaped;
}

let watchdog: NodeJS.Timeout | undefined;

function startWatchdog(): void {
  if (watchdog) return;
  const parent = process.ppid;
  watchdog = setInterval(() => {
    if (process.ppid === parent) return;
    for (const pid of live.keys()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    process.stderr.write(`cr-harness: parent process ${parent} died; killed ${live.size} QEMU and exiting\n`);
    process.exit(70);
  }, 500);
  watchdog.unref();
}

/** Synchronously kills every QEMU this process started (for 'exit' handlers). */
export function killAllNow(): void {
  for (const pid of live.keys()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  // The guest RAM files hold memory: gone with their machines.
  for (const dir of liveRamDirs.values()) if (RAM_DIR.test(dir)) rmSync(dir, { recursive: true, force: true });
}

process.once('exit', killAllNow);
