/**
 * A daemon's descriptors 0-2. The restore core leaves 0-2 to whoever starts
 * the restored process (restore/files.ts): for a program crh spawned they
 * are crh's own output file, and the restored copy gets a fresh one. A
 * daemon has made them its own — a ZDTM test opens its outfile O_APPEND as
 * fds 1 and 2 and puts fd 0 on /dev/null — so whoever restores a daemon
 * gives it those back: the same files, by path, with their flags and
 * offsets. That is this module: read at the checkpoint, reopened after the
 * restore (before the process runs again) by injected system calls.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError, RestoreStepError } from '../errors.ts';
import { fileKind, parseFdinfo } from '../restore/files.ts';
import { withScratchPage } from '../restore/scratch.ts';

const NR = { open: 2, close: 3, lseek: 8, dup3: 292 } as const;
const ENOENT = 2;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_NOCTTY = 0o400;
const O_TRUNC = 0o1000;
const O_APPEND = 0o2000;
const O_CLOEXEC = 0o2000000;
const SEEK_SET = 0n;
/** Room for a path in the scratch page, with its NUL. */
const PATH_MAX = 4095;

export interface StdioFile {
  fd: 0 | 1 | 2;
  /** absent: the descriptor was closed */
  path?: string;
  flags: number;
  pos: bigint;
}

/**
 * Descriptors 0-2 of the stopped process `pid`, except those on one of
 * `harnessFiles` (the harness's own output file: the restored process gets
 * its own from the restore). A descriptor with no path to open again (a
 * pipe, a socket, a deleted file) is refused by name, as the restore core
 * refuses such descriptors above 2.
 */
export async function captureStdio(agent: AgentClient, pid: number, harnessFiles: readonly string[] = []): Promise<StdioFile[]> {
  const files: StdioFile[] = [];
  for (const fd of [0, 1, 2] as const) {
    let link: string;
    try {
      link = await agent.call({ op: 'READLINK', path: `/proc/${pid}/fd/${fd}` });
    } catch (error) {
      if (error instanceof AgentError && error.errno === ENOENT) {
        files.push({ fd, flags: 0, pos: 0n });
        continue;
      }
      throw error;
    }
    if (harnessFiles.includes(link)) continue;
    const { flags, pos } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 4096 })).toString('utf8'));
    // The restore core's rule for descriptors above 2: a file or directory by path, or one of its harmless devices.
    if (fileKind(link, flags) === undefined || link.length > PATH_MAX) {
      throw new CheckpointError(
        `fd ${fd} of pid ${pid} is ${link}: a daemon's descriptors 0-2 are opened again by path after a restore, and this is no file, directory or restorable device`,
      );
    }
    files.push({ fd, path: link, flags, pos });
  }
  return files;
}

/**
 * Gives the restored, stopped process `pid` its descriptors 0-2 as
 * `captureStdio` read them: each path opened again with its flags (never
 * creating or truncating), moved to its number, set to its offset (an
 * O_APPEND descriptor writes at the end whatever its offset); a descriptor
 * that was closed is closed. A call the kernel refuses is a failed restore
 * step (RestoreStepError), naming the descriptor and the path.
 */
export async function reattachStdio(agent: AgentClient, pid: number, files: readonly StdioFile[]): Promise<void> {
  if (files.length === 0) return;
  await withScratchPage(agent, pid, async (scratch) => {
    for (const [i, f] of files.entries()) {
      const call = async (what: string, nr: number, args: bigint[]): Promise<bigint> => {
        const result = await agent.call({ op: 'INJECT_SYSCALL', pid, nr, args });
        if (result < 0n && result > -4096n) throw new RestoreStepError(`errno ${-result}`, i, `${what} for fd ${f.fd}${f.path ? ` (${f.path})` : ''}`);
        return result;
      };
      if (f.path === undefined) {
        await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.close, args: [BigInt(f.fd)] });
        continue;
      }
      await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: Buffer.from(`${f.path}\0`) });
      // Never create or truncate; never acquire a controlling terminal.
      const flags = (f.flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_NOCTTY;
      const opened = await call('open', NR.open, [scratch, BigInt(flags), 0n]);
      if (opened !== BigInt(f.fd)) {
        await call('dup3', NR.dup3, [opened, BigInt(f.fd), BigInt(f.flags & O_CLOEXEC)]);
        await call('close', NR.close, [opened]);
      }
      if (!(f.flags & O_APPEND) && f.pos > 0n) await call('lseek', NR.lseek, [BigInt(f.fd), f.pos, SEEK_SET]);
    }
  });
}
