/**
 * No QEMU may outlive the process that started it. Three layers:
 * 1. QEMU runs under `setpriv --pdeathsig KILL`: the kernel kills it when
 *    its parent (this process) dies, even by SIGKILL.
 * 2. A watchdog notices when this process itself is orphaned (the test
 *    runner above it was killed) and kills its machines, then exits.
 * 3. Every machine is recorded under the run directory; the next launch
 *    reaps records whose owner is dead and says so.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cacheDir } from '../util/cache-dir.ts';

export interface MachineRecord {
  qemuPid: number;
  ownerPid: number;
  name: string;
  startedAt: string;
}

const live = new Map<number, string>(); // qemu pid -> record file

function runDir(): string {
  return cacheDir('run');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function isQemu(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system');
  } catch {
    return false;
  }
}

export async function recordMachine(record: MachineRecord): Promise<void> {
  await mkdir(runDir(), { recursive: true });
  const file = path.join(runDir(), `${record.ownerPid}-${record.qemuPid}.json`);
  await writeFile(file, JSON.stringify(record));
  live.set(record.qemuPid, file);
  startWatchdog();
}

export async function forgetMachine(qemuPid: number): Promise<void> {
  const file = live.get(qemuPid);
  live.delete(qemuPid);
  if (file) await rm(file, { force: true });
}

/** Kills QEMUs whose owning process is gone; returns one line per machine reaped. */
export async function reapOrphans(): Promise<string[]> {
  let files: string[];
  try {
    files = (await readdir(runDir())).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
  const reaped: string[] = [];
  for (const f of files) {
    const file = path.join(runDir(), f);
    let record: MachineRecord;
    try {
      record = JSON.parse(await readFile(file, 'utf8')) as MachineRecord;
    } catch {
      await rm(file, { force: true });
      continue;
    }
    if (alive(record.ownerPid)) continue;
    if (alive(record.qemuPid) && isQemu(record.qemuPid)) {
      process.kill(record.qemuPid, 'SIGKILL');
      reaped.push(`reaped QEMU pid ${record.qemuPid} (${record.name}) left running by dead process ${record.ownerPid}`);
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
}

process.once('exit', killAllNow);
