/**
 * State the restore core does not capture, refused at checkpoint time by
 * name. A process restored without it would run on and fail later, far from
 * the cause — or worse, not fail (the report that started this: an LDT left
 * out of the image, and a not-present segment answering #GP instead of #NP).
 *
 * What is checked, before anything is injected into the target:
 * - descriptors of a kind no module handles (files.ts holds regular files,
 *   directories and a few devices; userfaultfd.ts a userfaultfd): sockets,
 *   pipes, memfds, namespace descriptors, and every anonymous inode but a
 *   timerfd, an eventfd and a signalfd (event-fds.ts; one eventfd held by
 *   two descriptors is refused there: sharedEventfdProblems) — eventpoll, io_uring, perf_event, inotify,
 *   fanotify, pidfd, bpf maps and programs — each named with its fd; a
 *   timerfd timers.ts cannot create again (TFD_TIMER_CANCEL_ON_SET, an
 *   alarm clock); a path that names a FIFO, a socket file or a device node
 *   outside /dev (specialFileProblems: fstat injected, so checkpoint.ts
 *   calls it with signals blocked; opened again by path it would block, or
 *   come back empty; a process tree's FIFOs excepted, tree-fifos.ts);
 * - the personality (/proc/PID/personality) other than what a process the
 *   agent spawns gets — the agent's own, with ADDR_NO_RANDOMIZE when ASLR is
 *   off: a restore re-execs the binary under that;
 * - seccomp (Seccomp:) and no_new_privs (NoNewPrivs:) of any thread, other
 *   than the agent's own (a spawned process inherits both);
 * - the process (any of its threads) tracing another process: its
 *   tracees' TracerPid names it (every process's main thread is looked at);
 * - POSIX timers (/proc/PID/timers) timers.ts cannot create again:
 *   SIGEV_THREAD notify, a clock other than the ones it names, an id past
 *   its bound. Interval timers (setitimer, alarm), the other POSIX timers
 *   and timerfds are captured (timers.ts);
 * - namespaces (/proc/PID/ns/*), resource limits (/proc/PID/limits) and
 *   working directory other than the agent's: a restored process gets the
 *   agent's. (The umask is captured: files.ts.)
 * The LDT is captured (ldt.ts); a descriptor there that modify_ldt cannot
 * make is refused by ldt.ts, naming the slot. A tree's checkpoint
 * (tree-checkpoint.ts) captures the pipes between its processes and its
 * zombies (tree-zombies.ts), and refuses an open file description its
 * processes share at an offset (shared-descriptions.ts).
 */
import type { AgentClient } from '../agent/client.ts';
import { CheckpointError } from '../errors.ts';
import { unlessGone, type FdTable } from './fd-table.ts';
import { withScratchPage } from './scratch.ts';
import { USERFAULTFD_LINK } from './userfaultfd.ts';
import { EVENTFD_LINK, SIGNALFD_LINK } from './event-fds.ts';
import { parseProcTimers, parseTimerfdFdinfo, procTimerProblem, TIMERFD_LINK, timerfdProblem, type ProcTimer } from './timers.ts';

/** One piece of state the image cannot hold: what it is, where it was seen, and the evidence. */
export interface Uncapturable {
  /** the kind of state, e.g. "eventfd", "personality", "seccomp" */
  state: string;
  /** where: "fd 4", "thread 812", "/proc/812/personality" */
  where: string;
  /** what was read there */
  seen: string;
}

/** personality(2) flags (uapi linux/personality.h), for naming them. */
export const PERSONALITY_FLAGS: ReadonlyArray<readonly [string, number]> = [
  ['UNAME26', 0x0020000],
  ['ADDR_NO_RANDOMIZE', 0x0040000],
  ['FDPIC_FUNCPTRS', 0x0080000],
  ['MMAP_PAGE_ZERO', 0x0100000],
  ['ADDR_COMPAT_LAYOUT', 0x0200000],
  ['READ_IMPLIES_EXEC', 0x0400000],
  ['ADDR_LIMIT_32BIT', 0x0800000],
  ['SHORT_INODE', 0x1000000],
  ['WHOLE_SECONDS', 0x2000000],
  ['STICKY_TIMEOUTS', 0x4000000],
  ['ADDR_LIMIT_3GB', 0x8000000],
];
export const ADDR_NO_RANDOMIZE = 0x0040000;

export function describePersonality(value: number): string {
  const names = PERSONALITY_FLAGS.filter(([, bit]) => (value & bit) !== 0).map(([name]) => name);
  const domain = value & 0xff;
  if (domain !== 0) names.unshift(`execution domain 0x${domain.toString(16)}`);
  const unknown = value & ~0xff & ~PERSONALITY_FLAGS.reduce((a, [, bit]) => a | bit, 0);
  if (unknown !== 0) names.push(`0x${unknown.toString(16)}`);
  return names.length > 0 ? names.join('|') : 'PER_LINUX';
}

/**
 * The personality (/proc/PID/personality: hex) against what a restore's
 * spawn gives: the agent's own (`agentText`), ADDR_NO_RANDOMIZE added when
 * ASLR is off.
 */
export function personalityProblem(pid: number, text: string, agentText: string, noAslr: boolean): Uncapturable | undefined {
  const value = parseInt(text.trim(), 16);
  const spawned = parseInt(agentText.trim(), 16) | (noAslr ? ADDR_NO_RANDOMIZE : 0);
  if (!Number.isInteger(value)) return { state: 'personality', where: `/proc/${pid}/personality`, seen: `unreadable: ${JSON.stringify(text.slice(0, 40))}` };
  if (value === spawned) return undefined;
  return {
    state: 'personality',
    where: `/proc/${pid}/personality`,
    seen: `0x${value.toString(16)} (${describePersonality(value)}), a restored process gets 0x${spawned.toString(16)} (${describePersonality(spawned)})`,
  };
}

/** The kinds of descriptor link (readlink /proc/PID/fd/N) no module captures; undefined when one does. */
export function descriptorState(link: string): string | undefined {
  if (link === USERFAULTFD_LINK || link === TIMERFD_LINK || link === EVENTFD_LINK || link === SIGNALFD_LINK) return undefined;
  if (link.startsWith('/memfd:')) return 'memfd';
  // A path: files.ts decides (regular files, directories, a few devices; a deleted file it refuses itself).
  if (link.startsWith('/')) return undefined;
  const kind = /^(socket|pipe):\[\d+\]$/.exec(link)?.[1];
  if (kind) return kind;
  const anon = /^anon_inode:\[?([^\]]+)\]?$/.exec(link)?.[1];
  if (anon) return anon;
  const ns = /^([a-z_]+):\[\d+\]$/.exec(link)?.[1];
  if (ns) return `${ns} namespace`;
  return link;
}

const NR_FSTAT = 5;
/** struct stat on x86-64: st_dev (8), st_ino (8), st_nlink (8), then st_mode. */
const ST_MODE_OFFSET = 24;

/** Whether a descriptor's link is a path the restore opens again (files.ts): not deleted, not under /dev, /proc, /sys (refused or handled there by files.ts). */
function opensByPath(link: string): boolean {
  return link.startsWith('/') && !link.endsWith(' (deleted)') && !/^\/(dev|proc|sys)\//.test(link);
}

/** The kind of a file a path names that no restore by path gives back (a FIFO, a socket file, a device node), from st_mode; undefined for a regular file or directory. */
export function fileTypeState(mode: number): string | undefined {
  switch (mode & 0o170000) {
    case 0o010000:
      return 'fifo';
    case 0o140000:
      return 'unix socket file';
    case 0o020000:
      return 'character device';
    case 0o060000:
      return 'block device';
    default:
      return undefined;
  }
}

/** Seccomp: and NoNewPrivs: of a thread's status, against the agent's (a spawned process inherits both). */
export function statusProblems(where: string, status: string, agentStatus: string): Uncapturable[] {
  const field = (text: string, name: string): string | undefined => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim();
  const problems: Uncapturable[] = [];
  for (const [name, state] of [
    ['Seccomp', 'seccomp'],
    ['NoNewPrivs', 'no_new_privs'],
  ] as const) {
    const value = field(status, name);
    const agent = field(agentStatus, name);
    if (value !== undefined && value !== agent) problems.push({ state, where, seen: `${name}: ${value}, a restored process gets ${agent ?? 'none'}` });
  }
  return problems;
}

/** TracerPid: of a process's status, when one of `tids` (the target's threads) traces it. */
export function tracerProblem(tracee: number, status: string, tids: ReadonlySet<number>): Uncapturable | undefined {
  const tracer = Number(/^TracerPid:\s*(\d+)$/m.exec(status)?.[1] ?? 0);
  return tids.has(tracer)
    ? { state: 'ptrace tracee', where: `pid ${tracee}`, seen: `TracerPid: ${tracer} (a restored process is nobody's tracer)` }
    : undefined;
}

/** /proc/PID/timers: the POSIX timers timers.ts cannot create again, each named with its id. */
export function timersProblems(pid: number, text: string): Uncapturable[] {
  let timers: ProcTimer[];
  try {
    timers = parseProcTimers(text);
  } catch (error) {
    return [{ state: 'POSIX timer', where: `/proc/${pid}/timers`, seen: (error as Error).message }];
  }
  return timers.flatMap((t) => {
    const problem = procTimerProblem(t);
    return problem ? [{ state: 'POSIX timer', where: `/proc/${pid}/timers id ${t.id}`, seen: problem }] : [];
  });
}

/** A timerfd's fdinfo, when timers.ts cannot create it again. */
export function timerfdUncapturable(fd: number, fdinfo: string): Uncapturable | undefined {
  let problem: string | undefined;
  try {
    problem = timerfdProblem(parseTimerfdFdinfo(fdinfo));
  } catch (error) {
    problem = (error as Error).message;
  }
  return problem ? { state: 'timerfd', where: `fd ${fd}`, seen: problem } : undefined;
}

/** Something of the target's that must equal the agent's: a namespace, limits, cwd. */
export function sameAsAgent(state: string, where: string, target: string, agent: string): Uncapturable | undefined {
  return target === agent
    ? undefined
    : {
        state,
        where,
        seen: `${target.trim().split('\n').length > 1 ? 'differs' : target.trim()}, a restored process gets ${agent.trim().split('\n').length > 1 ? "the agent's" : agent.trim()}`,
      };
}

/** /proc/PID/limits, one line per resource, whose values differ. */
export function limitsDiffer(target: string, agent: string): string[] {
  const lines = (text: string): Map<string, string> =>
    new Map(
      text
        .split('\n')
        .slice(1)
        .filter(Boolean)
        .map((l) => [l.slice(0, 26).trim(), l.slice(26).trim().replace(/\s+/g, ' ')]),
    );
  const mine = lines(agent);
  return [...lines(target)].filter(([name, value]) => mine.get(name) !== value).map(([name, value]) => `${name} ${value} (agent: ${mine.get(name) ?? 'none'})`);
}

const NAMESPACES = ['cgroup', 'ipc', 'mnt', 'net', 'pid', 'time', 'user', 'uts'] as const;
/** The kernel's thread-making thread, parent of every other kernel thread: pid 2 in the initial pid namespace. */
const KTHREADD = 2;
/** task_struct flags: a kernel thread (include/linux/sched.h). */
const PF_KTHREAD = 0x0020_0000;

/**
 * The kernel threads by pid — kthreadd and its children — from
 * /proc/2/stat and /proc/2/task/2/children; none unless pid 2 is a kernel
 * thread named kthreadd (a pid namespace has no kthreadd, its pid 2 a
 * process like any other).
 */
export function kernelThreadPids(stat: string | undefined, children: string | undefined): Set<number> {
  const m = /^(\d+) \((.*)\) (.*)$/s.exec(stat?.trim() ?? '');
  // After "pid (comm)": state, ppid, pgrp, session, tty_nr, tpgid, then flags (proc(5) fields 3-9).
  const flags = Number(m?.[3]?.split(' ')[6]);
  if (!m || Number(m[1]) !== KTHREADD || m[2] !== 'kthreadd' || !Number.isInteger(flags) || (flags & PF_KTHREAD) === 0 || children === undefined)
    return new Set();
  return new Set([KTHREADD, ...children.trim().split(/\s+/).filter(Boolean).map(Number)]);
}

/**
 * Everything above, read through the agent; [] when the process holds
 * nothing the image cannot. `fds` is the process's descriptor table
 * (fd-table.ts). The reads are independent of each other, so they go out
 * together (the agent answers them back to back) and are judged in the
 * order the problems are listed.
 */
export async function findUncapturable(agent: AgentClient, pid: number, noAslr: boolean, fds: FdTable): Promise<Uncapturable[]> {
  const read = async (path: string, maxSize = 65536): Promise<string> => (await agent.call({ op: 'READ_FILE', path, maxSize })).toString('utf8');
  const found: Uncapturable[] = [];
  const add = (u: Uncapturable | undefined): void => void (u && found.push(u));

  const timerfdInfo = await Promise.all(fds.map(({ fd, link }) => (link === TIMERFD_LINK ? unlessGone(read(`/proc/${pid}/fdinfo/${fd}`)) : undefined)));
  fds.forEach(({ fd, link }, i) => {
    const state = descriptorState(link);
    if (state) found.push({ state, where: `fd ${fd}`, seen: link });
    const fdinfo = timerfdInfo[i];
    if (fdinfo !== undefined) add(timerfdUncapturable(fd, fdinfo));
  });

  const [personality, ownPersonality, agentStatus, taskEntries, procEntries, timers, nsLinks, limits, ownLimits, cwd, ownCwd, kthreadd, kthreads] =
    await Promise.all([
      read(`/proc/${pid}/personality`),
      read('/proc/self/personality'),
      read('/proc/self/status'),
      agent.call({ op: 'LISTDIR', path: `/proc/${pid}/task` }),
      agent.call({ op: 'LISTDIR', path: '/proc' }),
      unlessGone(read(`/proc/${pid}/timers`)),
      Promise.all(
        NAMESPACES.map((ns) =>
          Promise.all([
            unlessGone(agent.call({ op: 'READLINK', path: `/proc/${pid}/ns/${ns}` })),
            unlessGone(agent.call({ op: 'READLINK', path: `/proc/self/ns/${ns}` })),
          ]),
        ),
      ),
      read(`/proc/${pid}/limits`),
      read('/proc/self/limits'),
      agent.call({ op: 'READLINK', path: `/proc/${pid}/cwd` }),
      agent.call({ op: 'READLINK', path: '/proc/self/cwd' }),
      unlessGone(read(`/proc/${KTHREADD}/stat`)),
      unlessGone(read(`/proc/${KTHREADD}/task/${KTHREADD}/children`)),
    ]);
  add(personalityProblem(pid, personality, ownPersonality, noAslr));

  const tids = taskEntries.map(Number).sort((a, b) => a - b);
  const mine = new Set(tids);
  // Kernel threads are nobody's tracees (ptrace refuses them): their status, most of /proc in a small guest and ~0.3 ms
  // of TCG each to generate, is not read.
  const kernelThreads = kernelThreadPids(kthreadd, kthreads);
  const others = procEntries.filter((entry) => /^\d+$/.test(entry) && !mine.has(Number(entry)) && !kernelThreads.has(Number(entry)));
  const [threadStatus, otherStatus] = await Promise.all([
    Promise.all(tids.map((tid) => unlessGone(read(`/proc/${pid}/task/${tid}/status`)))),
    Promise.all(others.map((entry) => unlessGone(read(`/proc/${entry}/status`)))),
  ]);
  tids.forEach((tid, i) => {
    const status = threadStatus[i];
    if (status !== undefined) found.push(...statusProblems(`thread ${tid}`, status, agentStatus));
  });
  others.forEach((entry, i) => {
    const status = otherStatus[i];
    if (status !== undefined) add(tracerProblem(Number(entry), status, mine));
  });

  if (timers !== undefined) found.push(...timersProblems(pid, timers));
  NAMESPACES.forEach((ns, i) => {
    const [target, own] = nsLinks[i]!;
    if (target !== undefined && own !== undefined) add(sameAsAgent(`${ns} namespace`, `/proc/${pid}/ns/${ns}`, target, own));
  });
  const differ = limitsDiffer(limits, ownLimits);
  if (differ.length > 0) found.push({ state: 'resource limits', where: `/proc/${pid}/limits`, seen: differ.join('; ') });
  add(sameAsAgent('working directory', `/proc/${pid}/cwd`, cwd, ownCwd));
  return found;
}

/**
 * The descriptors whose path names a FIFO, a socket file or a device node
 * (fileTypeState), found by an fstat injected into the stopped process: a
 * path the restore would open again, which would block or come back empty.
 * Injected calls: the caller runs it with the process's signals blocked and
 * its rseq critical section parked, as every injected capture.
 */
export async function specialFileProblems(agent: AgentClient, pid: number, fds: FdTable): Promise<Uncapturable[]> {
  const byPath = fds.filter(({ link }) => opensByPath(link));
  if (byPath.length === 0) return [];
  return withScratchPage(agent, pid, async (scratch) => {
    const found: Uncapturable[] = [];
    for (const { fd, link } of byPath) {
      const result = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR_FSTAT, args: [BigInt(fd), scratch] });
      if (result !== 0n) continue; // closed meanwhile: nothing to restore
      const mode = (await agent.call({ op: 'READ_MEM', pid, address: scratch + BigInt(ST_MODE_OFFSET), length: 4 })).readUInt32LE(0);
      const state = fileTypeState(mode);
      if (state) found.push({ state, where: `fd ${fd}`, seen: `${link} (mode 0o${mode.toString(8)}): opened again by path, it would not be the same object` });
    }
    return found;
  });
}

/** The refusal: one CheckpointError naming every piece found (state, where, what was seen). */
export function uncapturableError(pid: number, found: readonly Uncapturable[]): CheckpointError {
  const list = found.map((u) => `${u.state} (${u.where}: ${u.seen})`);
  return new CheckpointError(`pid ${pid} holds state the restore core does not capture: ${list.join('; ')}`, {
    state: [...new Set(found.map((u) => u.state))].join(', '),
    where: found.map((u) => `${u.where}: ${u.state}`).join('\n'),
  });
}

/** Throws uncapturableError when the process holds anything the image cannot. */
export async function refuseUncapturable(
  agent: AgentClient,
  pid: number,
  noAslr: boolean,
  fds: FdTable,
  { pipesCaptured = false }: { pipesCaptured?: boolean } = {},
): Promise<void> {
  // A tree's checkpoint captures the pipes, socketpairs and memfds between its processes itself (tree-pipes.ts,
  // tree-sockets.ts, which refuses every other socket by name, tree-memfds.ts, their mappings too), and its FIFOs
  // (checkpoint.ts lets them through specialFileProblems, tree-fifos.ts captures them).
  const found = (await findUncapturable(agent, pid, noAslr, fds)).filter(
    (u) => !(pipesCaptured && (u.state === 'pipe' || u.state === 'socket' || u.state === 'memfd')),
  );
  if (found.length > 0) throw uncapturableError(pid, found);
}
