/**
 * The task's place among processes and files: its process group and
 * session, and its open file descriptors above stdio — regular files,
 * directories and character devices, each by path, open flags and offset.
 * Descriptors 0-2 belong to whoever starts the restored process (the
 * harness points them at its own output file) and are not restored.
 *
 * A userfaultfd is its own kind (userfaultfd.ts). A descriptor the image
 * cannot express (socket, pipe, any other anonymous inode, a deleted file) fails the checkpoint, naming it: a process restored without
 * it would fail later, far from the cause.
 */
import type { AgentClient } from '../agent/client.ts';
import { CheckpointError } from '../errors.ts';
import type { FdTable } from './fd-table.ts';
import type { FileKind, OpenFile, TaskState, UserfaultfdState } from './image-model.ts';
import type { PlanStep } from './plan-step.ts';

export { CheckpointError };
import { DescriptorTable } from './descriptors.ts';
import { ScratchLayout } from './scratch.ts';
import { TIMERFD_LINK } from './timers.ts';
import { EVENTFD_LINK, SIGNALFD_LINK } from './event-fds.ts';
import { parseUserfaultfdFdinfo, USERFAULTFD_LINK } from './userfaultfd.ts';

export const FIRST_RESTORED_FD = 3;
export const MAX_FD = 65535;
/** Devices a restored process may open again: harmless, and the same in every guest. */
export const RESTORABLE_DEVICES = ['/dev/null', '/dev/zero', '/dev/full', '/dev/urandom', '/dev/random'];

export const O = {
  WRONLY: 0o1,
  RDWR: 0o2,
  CREAT: 0o100,
  EXCL: 0o200,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DSYNC: 0o10000,
  ASYNC: 0o20000,
  DIRECT: 0o40000,
  LARGEFILE: 0o100000,
  DIRECTORY: 0o200000,
  NOFOLLOW: 0o400000,
  NOATIME: 0o1000000,
  CLOEXEC: 0o2000000,
  SYNC: 0o4010000,
  PATH: 0o10000000,
} as const;
export const O_KNOWN = Object.values(O).reduce((a, b) => a | b, 0);
/** Flags that change the file when it is opened again; never passed to the restoring open. */
const O_SIDE_EFFECTS = O.CREAT | O.EXCL | O.TRUNC | O.NOCTTY;

const NR = { lseek: 8, umask: 95, openat: 257, setsid: 112, setpgid: 109 } as const;
const AT_FDCWD = BigInt.asUintN(64, -100n);

/** pgrp and session from /proc/PID/stat (fields 5 and 6, after the parenthesised name). */
export function parseStatSession(stat: string): { pgid: number; sid: number } {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const pgid = Number(fields[2]);
  const sid = Number(fields[3]);
  if (!Number.isInteger(pgid) || !Number.isInteger(sid)) throw new CheckpointError(`cannot read pgrp and session from /proc/PID/stat: ${stat.slice(0, 120)}`);
  return { pgid, sid };
}

/** pos and flags from /proc/PID/fdinfo/N. */
export function parseFdinfo(text: string): { pos: bigint; flags: number } {
  const pos = /^pos:\s+(\d+)$/m.exec(text)?.[1];
  const flags = /^flags:\s+([0-7]+)$/m.exec(text)?.[1];
  if (pos === undefined || flags === undefined) throw new CheckpointError(`unreadable fdinfo: ${text.slice(0, 120)}`);
  return { pos: BigInt(pos), flags: parseInt(flags, 8) };
}

export function fileKind(path: string, flags: number): FileKind | undefined {
  if (!path.startsWith('/') || path.endsWith(' (deleted)')) return undefined;
  if (RESTORABLE_DEVICES.includes(path)) return 'device';
  if (path.startsWith('/dev/') || path.startsWith('/proc/') || path.startsWith('/sys/')) return undefined;
  return (flags & O.DIRECTORY) !== 0 ? 'directory' : 'file';
}

/**
 * `fds`: the process's descriptor table (fd-table.ts). `skipPipes`: pipe,
 * socket and memfd descriptors are someone else's (a tree's: tree-pipes.ts,
 * tree-sockets.ts, tree-memfds.ts), left out instead of refused.
 */
export async function captureTask(agent: AgentClient, pid: number, fds: FdTable, { skipPipes = false }: { skipPipes?: boolean } = {}): Promise<TaskState> {
  const held = fds.filter(({ fd }) => fd >= FIRST_RESTORED_FD);
  // Every read at once: the agent answers them back to back.
  const [stat, status, fdinfos] = await Promise.all([
    agent.call({ op: 'READ_FILE', path: `/proc/${pid}/stat`, maxSize: 4096 }),
    agent.call({ op: 'READ_FILE', path: `/proc/${pid}/status`, maxSize: 65536 }),
    Promise.all(held.map(({ fd }) => agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 65536 }))),
  ]);
  const session = parseStatSession(stat.toString('utf8'));
  const files: OpenFile[] = [];
  const userfaultfds: UserfaultfdState[] = [];
  for (const [i, { fd, link: path }] of held.entries()) {
    const fdinfo = fdinfos[i]!.toString('utf8');
    // A timerfd is timers.ts's: created again with its clock, flags and settings; eventfds and signalfds event-fds.ts's.
    if (path === TIMERFD_LINK || path === EVENTFD_LINK || path === SIGNALFD_LINK) continue;
    if (skipPipes && (/^(pipe|socket):\[\d+\]$/.test(path) || /^\/memfd:.* \(deleted\)$/.test(path))) continue;
    if (path === USERFAULTFD_LINK) {
      userfaultfds.push({ fd, ...parseUserfaultfdFdinfo(fdinfo) });
      continue;
    }
    const { pos, flags } = parseFdinfo(fdinfo);
    const kind = fileKind(path, flags);
    if (!kind)
      throw new CheckpointError(
        `fd ${fd} of pid ${pid} is ${path}, which a checkpoint image cannot hold (regular files, directories and ${RESTORABLE_DEVICES.join(' ')} only)`,
        { fd: String(fd), target: path },
      );
    files.push({ fd, path, flags, pos, kind });
  }
  const umask = parseUmask(status.toString('utf8'));
  return { ...session, files, ...(userfaultfds.length > 0 ? { userfaultfds } : {}), ...(umask !== undefined ? { umask } : {}) };
}

/** /proc/PID/status's Umask line (kernels from 4.7); undefined where the kernel shows none. Pure. */
export function parseUmask(status: string): number | undefined {
  const m = /^Umask:\s*([0-7]{1,4})$/m.exec(status);
  return m ? parseInt(m[1]!, 8) : undefined;
}

/** The process's umask as it was: umask(2) returns the old mask, whatever it is, so no result is expected. */
export function umaskSteps(pid: number, task: TaskState): PlanStep[] {
  if (task.umask === undefined) return [];
  return [
    {
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.umask, args: [BigInt(task.umask)] },
      why: `umask 0o${task.umask.toString(8).padStart(3, '0')}, the process's own`,
    },
  ];
}

/**
 * Steps that open the image's files again at their descriptor numbers, with
 * their offsets. `targetFds` is what the fresh target has open (from its
 * /proc/PID/fd): open() returns the lowest free descriptor, so every result
 * is known when the plan is made. `scratch` is a free page address for the
 * path strings.
 */
export function fileSteps(pid: number, files: readonly OpenFile[], targetFds: readonly number[], scratch: bigint): PlanStep[] {
  if (files.length === 0) return [];
  const table = new DescriptorTable(targetFds);
  const layout = new ScratchLayout(scratch);
  const steps: PlanStep[] = [];
  for (const f of files) {
    const got = table.lowestFree();
    const flags = BigInt(f.flags & ~O_SIDE_EFFECTS);
    steps.push({
      op: { op: 'INJECT_SYSCALL', pid, nr: NR.openat, args: [AT_FDCWD, layout.place(Buffer.from(`${f.path}\0`)), flags, 0n] },
      why: `open ${f.path} (${f.kind}, flags 0o${f.flags.toString(8)}) for fd ${f.fd}`,
      expect: BigInt(got),
    });
    steps.push(...table.place(pid, got, f.fd, (f.flags & O.CLOEXEC) !== 0, f.path));
    // A directory's offset is a file-system cookie, and a device has none worth keeping.
    if (f.kind === 'file' && f.pos !== 0n)
      steps.push({ op: { op: 'INJECT_SYSCALL', pid, nr: NR.lseek, args: [BigInt(f.fd), f.pos, 0n] }, why: `offset ${f.pos} on fd ${f.fd}`, expect: f.pos });
  }
  return layout.steps(pid, `${files.length} path(s), NUL-terminated`, steps);
}

/**
 * The session and process group: a task that led its own session (a daemon
 * after setsid) leads one again — which only keeps its meaning when the pid
 * is the checkpointed one.
 */
export function sessionSteps(pid: number, imagePid: number, task: TaskState): PlanStep[] {
  if (task.sid === imagePid)
    return [{ op: { op: 'INJECT_SYSCALL', pid, nr: NR.setsid, args: [] }, why: `setsid: pid ${imagePid} led its own session`, expect: BigInt(pid) }];
  if (task.pgid === imagePid)
    return [{ op: { op: 'INJECT_SYSCALL', pid, nr: NR.setpgid, args: [0n, 0n] }, why: `setpgid(0, 0): pid ${imagePid} led its own process group`, expect: 0n }];
  return [];
}

/** A message naming the field, or undefined: checks that need no other part of the image. */
export function taskStateProblem(task: TaskState): { field: string; why: string } | undefined {
  // 0: /proc's word for a leader in an ancestor pid namespace (the process ran in a container).
  const isPidOrOutside = (n: number): boolean => Number.isInteger(n) && n >= 0 && n <= 4194304;
  if (!isPidOrOutside(task.pgid)) return { field: 'pgid', why: `${task.pgid} is not a pid` };
  if (!isPidOrOutside(task.sid)) return { field: 'sid', why: `${task.sid} is not a pid` };
  if (task.files.length > 1024) return { field: 'files', why: `${task.files.length} descriptors, limit 1024` };
  const seen = new Set<number>();
  for (const [i, f] of task.files.entries()) {
    const at = `files[${i}]`;
    if (!Number.isInteger(f.fd) || f.fd < FIRST_RESTORED_FD || f.fd > MAX_FD)
      return { field: `${at}.fd`, why: `${f.fd} is not a descriptor ${FIRST_RESTORED_FD}-${MAX_FD}` };
    if (seen.has(f.fd)) return { field: `${at}.fd`, why: `fd ${f.fd} appears twice` };
    seen.add(f.fd);
    if (typeof f.path !== 'string' || !/^\/[^\0]{0,4094}$/.test(f.path) || f.path.split('/').includes('..'))
      return { field: `${at}.path`, why: `${JSON.stringify(f.path)?.slice(0, 60)} is not an absolute path without ".."` };
    if (!Number.isInteger(f.flags) || f.flags < 0 || f.flags >= 2 ** 31 || (f.flags & ~O_KNOWN) !== 0)
      return { field: `${at}.flags`, why: `0o${Number(f.flags).toString(8)} has unknown bits` };
    if ((f.flags & O.PATH) !== 0 && (f.flags & (O.WRONLY | O.RDWR)) !== 0) return { field: `${at}.flags`, why: 'O_PATH with a write mode' };
    if (f.pos < 0n || f.pos >= 1n << 62n) return { field: `${at}.pos`, why: `${f.pos} is out of range` };
    if (fileKind(f.path, f.flags) !== f.kind) return { field: `${at}.kind`, why: `${f.kind} does not match ${f.path} with flags 0o${f.flags.toString(8)}` };
  }
  return undefined;
}
