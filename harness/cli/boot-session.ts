/**
 * The guest `crh boot` keeps running, as `crh ssh` finds it: the SSH forward
 * port, the client key, and a known_hosts file that pins the guest's host
 * key (the image's, generated with it), so no ssh ever trusts on first use.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { UsageError } from '../errors.ts';

export interface BootSession {
  sshPort: number;
  clientKey: string;
  knownHosts: string;
  /** QEMU's pid: a session whose QEMU is gone is stale */
  qemuPid: number;
  /** the pid of the `crh boot` that owns the guest */
  ownerPid: number;
}

export function sessionFile(artifactsDir: string): string {
  return path.join(artifactsDir, 'session.json');
}

export async function writeBootSession(artifactsDir: string, session: Omit<BootSession, 'knownHosts'>, hostPublicKey: string): Promise<BootSession> {
  const knownHosts = path.join(artifactsDir, 'known_hosts');
  await writeFileAtomic(knownHosts, `[127.0.0.1]:${session.sshPort} ${hostPublicKey.trim()}\n`);
  const full = { ...session, knownHosts };
  await writeFileAtomic(sessionFile(artifactsDir), `${JSON.stringify(full, null, 2)}\n`);
  return full;
}

export function removeBootSession(artifactsDir: string): void {
  rmSync(sessionFile(artifactsDir), { force: true });
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** The running guest, or a UsageError saying how to start one. */
export function readBootSession(artifactsDir: string): BootSession {
  const file = sessionFile(artifactsDir);
  if (!existsSync(file)) throw new UsageError(`no guest is running: start one with \`crh boot\` (looked for ${file})`);
  const session = JSON.parse(readFileSync(file, 'utf8')) as BootSession;
  if (!Number.isInteger(session.qemuPid) || !alive(session.qemuPid))
    throw new UsageError(`the guest of ${file} is gone (QEMU pid ${session.qemuPid} is not running): start one with \`crh boot\``);
  return session;
}

/** The ssh arguments that reach the guest, host key pinned. */
export function sshArgs(session: BootSession, command: readonly string[] = []): string[] {
  return [
    '-i',
    session.clientKey,
    '-p',
    String(session.sshPort),
    '-o',
    `UserKnownHostsFile=${session.knownHosts}`,
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    'BatchMode=yes',
    'root@127.0.0.1',
    ...command,
  ];
}
