/**
 * Zombies in a tree: a child that has exited and that its parent has not
 * waited for yet (state Z). It has no registers or memory left, only its
 * pid, its parent and the wait status the parent's wait will collect
 * (/proc/PID/stat field 52, exit_code, in waitpid's form). A restore makes
 * it again: cloned in its parent's stub with its pid (set_tid) and exit
 * signal, like any child of the tree, and then ended the way it ended —
 * exit_group(code) for an exit, its signal (default action) for a kill —
 * before its parent's own restore. Its parent's wait then collects the same
 * pid with the same status.
 *
 * The SIGCHLD that ending generates is not the parent's to see: it had its
 * own SIGCHLD when the child really ended (handled then, or pending and so
 * in its image). So the parent's stub blocks SIGCHLD while its zombies end,
 * and takes the new one off its queue with rt_sigtimedwait before anything
 * of its own is restored.
 *
 * Refused by name at the checkpoint (the state 'zombie'): one that leads
 * its own group or session, or is in another group or session than its
 * parent (it would have to setsid/setpgid before ending, not done); one
 * whose exit signal is not SIGCHLD; one killed by a signal whose default
 * action dumps core, or that dumped one (killing it again could write a
 * core file and set the core bit differently); a wait status that is
 * neither an exit nor a kill.
 */
import type { AgentClient } from '../agent/client.ts';
import { CrhError } from '../errors.ts';
import type { Difference } from './read-back.ts';
import type { TreeMember, TreeZombie } from './tree.ts';
import { SIGCHLD } from './tree.ts';
import type { Uncapturable } from './uncapturable.ts';

const NR = { exitGroup: 231n, rtSigtimedwait: 128n } as const;
/** Signals whose default action is to terminate without a core dump (signal(7)); real-time signals too. */
const TERMINATING = new Set([1, 2, 9, 10, 12, 13, 14, 15, 16, 26, 27, 29, 30]);
const FIRST_RT = 34;
const LAST_SIGNAL = 64;
const CORE_BIT = 0x80;
const ZOMBIE_END_TIMEOUT_MS = 10_000;

/** How a wait status says the process ended, or why a restore cannot end one so again. */
export function zombieEnd(status: number): { exit: number } | { signal: number } | { problem: string } {
  if (!Number.isInteger(status) || status < 0 || status > 0xffff) return { problem: `wait status ${status} is not a 16-bit wait status` };
  const low = status & 0x7f;
  if (low === 0) return { exit: (status >> 8) & 0xff };
  if (low === 0x7f) return { problem: `wait status 0x${status.toString(16)} is a stop, not an end` };
  if ((status & CORE_BIT) !== 0) return { problem: `killed by signal ${low} with a core dump (wait status 0x${status.toString(16)})` };
  if ((status & 0xff00) !== 0) return { problem: `wait status 0x${status.toString(16)} has bits neither an exit nor a kill sets` };
  if (!(TERMINATING.has(low) || (low >= FIRST_RT && low <= LAST_SIGNAL)))
    return { problem: `killed by signal ${low}, whose default action dumps core (or is no termination): a restore's kill could write a core file` };
  return { signal: low };
}

/** /proc/PID/stat field 52, exit_code (Linux 3.5+): the wait status of a zombie. */
export function parseExitCode(stat: string): number | undefined {
  const fields = stat
    .slice(stat.lastIndexOf(')') + 2)
    .trim()
    .split(' ');
  const value = Number(fields[52 - 3]);
  return Number.isInteger(value) ? value : undefined;
}

/** Why a zombie of the tree cannot be made again, or undefined. `parent` is its parent's stat. */
export function zombieCaptureProblem(z: TreeZombie, parent: Pick<TreeMember, 'pgid' | 'sid'>, threads: number): Uncapturable | undefined {
  const refuse = (seen: string): Uncapturable => ({
    state: 'zombie',
    where: `pid ${z.pid}`,
    seen: `exited, not yet waited for by its parent ${z.ppid}: ${seen}`,
  });
  const end = zombieEnd(z.waitStatus);
  if ('problem' in end) return refuse(end.problem);
  if (z.pgid === z.pid || z.sid === z.pid) return refuse(`it leads its own ${z.sid === z.pid ? 'session' : 'process group'}`);
  if (z.pgid !== parent.pgid || z.sid !== parent.sid)
    return refuse(`it is in group ${z.pgid} of session ${z.sid}, its parent in group ${parent.pgid} of session ${parent.sid}`);
  if (z.exitSignal !== SIGCHLD) return refuse(`its exit signal is ${z.exitSignal}, not SIGCHLD`);
  if (threads > 1) return refuse(`${threads} threads left: its leader ended before its other threads`);
  return undefined;
}

/** Why tree.json's `zombies` is not a list a restore may make (checked as hostile input), or undefined. */
export function zombiesProblem(raw: unknown, members: readonly TreeMember[]): { field: string; why: string } | undefined {
  if (!Array.isArray(raw) || raw.length === 0 || raw.length > 1024) return { field: 'zombies', why: 'must be a non-empty list of at most 1024 zombies' };
  const isPid = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 1 && (n as number) <= 4194304;
  const byPid = new Map(members.map((m) => [m.pid, m]));
  const seen = new Set<number>();
  for (const [i, z] of (raw as unknown[]).entries()) {
    const at = `zombies[${i}]`;
    if (typeof z !== 'object' || z === null) return { field: at, why: 'must be an object' };
    const r = z as Record<string, unknown>;
    for (const key of ['pid', 'ppid'] as const) if (!isPid(r[key])) return { field: `${at}.${key}`, why: `${String(r[key])} is not a pid` };
    // 0: a group or session led outside the pid namespace (as for members).
    for (const key of ['pgid', 'sid'] as const)
      if (r[key] !== 0 && !isPid(r[key])) return { field: `${at}.${key}`, why: `${String(r[key])} is not a pid (or 0: led outside the pid namespace)` };
    const pid = r.pid as number;
    if (byPid.has(pid) || seen.has(pid)) return { field: `${at}.pid`, why: `pid ${pid} appears twice in the tree` };
    seen.add(pid);
    const parent = byPid.get(r.ppid as number);
    if (!parent) return { field: `${at}.ppid`, why: `${String(r.ppid)} is no live process of the tree` };
    if (r.exitSignal !== SIGCHLD) return { field: `${at}.exitSignal`, why: `${String(r.exitSignal)}: a zombie is made with SIGCHLD only` };
    if (r.pgid !== parent.pgid || r.sid !== parent.sid) return { field: `${at}.pgid`, why: "a zombie's group and session must be its parent's" };
    const end = zombieEnd(r.waitStatus as number);
    if ('problem' in end) return { field: `${at}.waitStatus`, why: end.problem };
  }
  return undefined;
}

/** One zombie as tree.json holds it (all numbers). */
export function zombieJson(z: TreeZombie): TreeZombie {
  return { pid: z.pid, ppid: z.ppid, pgid: z.pgid, sid: z.sid, exitSignal: z.exitSignal, waitStatus: z.waitStatus };
}

/**
 * Ends every zombie (each already cloned in its parent's stub and traced,
 * in its first stop) as it ended, its parents' SIGCHLD blocked meanwhile
 * and taken off their queue afterwards. `scratch` is writable memory in
 * every stub (the skeleton's clone_args area).
 */
export async function endZombies(agent: AgentClient, zombies: readonly TreeZombie[], scratch: bigint): Promise<void> {
  const parents = [...new Set(zombies.map((z) => z.ppid))];
  for (const parent of parents) {
    const mask = await agent.call({ op: 'GETSIGMASK', pid: parent });
    const sigchld = 1n << BigInt(SIGCHLD - 1);
    await agent.call({ op: 'SETSIGMASK', pid: parent, mask: mask | sigchld });
    for (const z of zombies.filter((x) => x.ppid === parent)) await endZombie(agent, z);
    // rt_sigtimedwait({SIGCHLD}, NULL, {0, 0}, 8): the SIGCHLD the ending queued, taken (one: a standard signal is queued once).
    const args = Buffer.alloc(24);
    args.writeBigUInt64LE(sigchld, 0);
    await agent.call({ op: 'WRITE_MEM', pid: parent, address: scratch, data: args });
    const taken = await agent.call({ op: 'INJECT_SYSCALL', pid: parent, nr: Number(NR.rtSigtimedwait), args: [scratch, 0n, scratch + 8n, 8n] });
    if (taken !== BigInt(SIGCHLD))
      throw new CrhError(`pid ${parent}: rt_sigtimedwait for the SIGCHLD its zombies' ending queued returned ${taken}`, { target: `pid ${parent}` });
    await agent.call({ op: 'SETSIGMASK', pid: parent, mask });
  }
}

/** Runs one traced stub to the end the zombie had: exit_group(code) from its own instruction pointer, or its signal. */
async function endZombie(agent: AgentClient, z: TreeZombie): Promise<void> {
  const end = zombieEnd(z.waitStatus);
  if ('problem' in end) throw new CrhError(`zombie pid ${z.pid}: ${end.problem}`, { target: `pid ${z.pid}` });
  if ('exit' in end) {
    // The stub's own copy of its text page gets a syscall instruction where it stands (the page is private: copied on write).
    const regs = await agent.call({ op: 'GETREGS', pid: z.pid });
    await agent.call({ op: 'WRITE_MEM', pid: z.pid, address: regs.rip, data: Buffer.from([0x0f, 0x05]) });
    await agent.call({ op: 'SETREGS', pid: z.pid, regs: { ...regs, rax: NR.exitGroup, rdi: BigInt(end.exit), orig_rax: BigInt.asUintN(64, -1n) } });
  } else {
    await agent.call({ op: 'SIGNAL', pid: z.pid, signo: end.signal });
  }
  const run = await agent.call({ op: 'RUN', pid: z.pid, stopAfterHits: 0, timeoutMs: ZOMBIE_END_TIMEOUT_MS });
  const got = run.outcome === 'exited' ? { exit: run.code } : run.outcome === 'killed' ? { signal: run.code } : { problem: run.outcome };
  if (JSON.stringify(got) !== JSON.stringify(end))
    throw new CrhError(`zombie pid ${z.pid} was to end with ${JSON.stringify(end)} and ended ${JSON.stringify(got)}`, { target: `pid ${z.pid}` });
}

/** Each zombie as /proc shows it now: a zombie, its parent, its wait status. */
export async function readBackZombies(agent: AgentClient, zombies: readonly TreeZombie[]): Promise<Difference[]> {
  const differences: Difference[] = [];
  for (const z of zombies) {
    const stat = await agent
      .call({ op: 'READ_FILE', path: `/proc/${z.pid}/stat`, maxSize: 4096 })
      .then((b) => b.toString('utf8'))
      .catch(() => '');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const requested = `zombie (Z), child of ${z.ppid}, wait status 0x${z.waitStatus.toString(16)}`;
    const accepted = stat
      ? `${fields[0] === 'Z' ? 'zombie' : 'state'} (${fields[0]}), child of ${fields[1]}, wait status 0x${(parseExitCode(stat) ?? -1).toString(16)}`
      : 'no process';
    if (accepted !== requested) differences.push({ what: `pid ${z.pid} (zombie)`, requested, accepted });
  }
  return differences;
}
