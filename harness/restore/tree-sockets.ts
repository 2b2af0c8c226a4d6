/**
 * Unix socketpairs between the processes of a tree (SOCK_STREAM and
 * SOCK_DGRAM), with the data queued in each direction.
 *
 * Checkpoint: every socket descriptor of every process, grouped by the
 * socket's inode (/proc/PID/fd/N reads socket:[inode]). Each socket is
 * looked up with sock_diag (NETLINK_SOCK_DIAG, UNIX_DIAG_PEER, _NAME,
 * _SHUTDOWN), asked by a netlink socket injected into a holder for the
 * time of the query: its type, its peer, whether it is bound to a name,
 * shut down. What each socket would read next is copied without consuming
 * it: recvmsg(MSG_PEEK) with SO_PEEK_OFF moving over the queue (for a
 * datagram socket one datagram per call, boundaries kept), the holder's
 * own SO_PEEK_OFF put back after.
 *
 * Restore: the pair is created once (socketpair) in a holder that is an
 * ancestor of every other holder, right after that process exists and
 * before its children are cloned, so they inherit it; O_NONBLOCK set; the
 * queued data sent from each socket's peer (datagrams one by one,
 * MSG_DONTWAIT: a queue the kernel will not take fails by name instead of
 * blocking); both ends parked above every descriptor of the tree, then
 * dup3'ed to their numbers (tree-pipes.ts withPipes does the same for pipes).
 *
 * Refused by name: a socket that is not a unix socket (sock_diag has no
 * such unix inode), of another type (SOCK_SEQPACKET), bound to a name, shut
 * down, whose peer is not held in the tree, that has control messages in
 * flight (SCM_RIGHTS, credentials: MSG_CTRUNC), a zero-length datagram
 * (a peek cannot move past it), more than MAX_QUEUED_BYTES queued, or one
 * reached through descriptors with and without O_NONBLOCK.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CheckpointError } from '../errors.ts';
import { parseFdinfo, O } from './files.ts';
import { withScratchPage } from './scratch.ts';
import { MAX_QUEUED_BYTES } from './tree-pipes.ts';
import { creatorOf, endProblem, endsListProblem, withSharedObjects, type FieldProblem, type SharedObject } from './tree-shared-objects.ts';
import type { SocketEnd, TreeAction, TreeMember, TreeSocketPair } from './tree.ts';
import { readFdTable } from './fd-table.ts';

export type { SocketEnd, TreeSocketPair };

const NR = { close: 3, socket: 41, sendto: 44, recvfrom: 45, recvmsg: 47, setsockopt: 54, getsockopt: 55 } as const;
const AF_NETLINK = 16n;
const AF_UNIX = 1;
const SOCK_RAW = 3n;
const SOCK_CLOEXEC = 0o2000000n;
const NETLINK_SOCK_DIAG = 4n;
const SOCK_DIAG_BY_FAMILY = 20;
const NLMSG_ERROR = 2;
const NLM_F_REQUEST = 1;
const UDIAG_SHOW = { NAME: 0x1, PEER: 0x4 } as const;
const UNIX_DIAG_ATTR = { NAME: 0, PEER: 2, SHUTDOWN: 6 } as const;
export const SOCK_TYPE = { 1: 'stream', 2: 'dgram' } as const;
const SOL_SOCKET = 1n;
const SO_PEEK_OFF = 42n;
const MSG_PEEK = 0x2n;
const MSG_DONTWAIT = 0x40n;
const MSG_CTRUNC = 0x8;
const MSG_TRUNC = 0x20;
const EAGAIN = 11n;
const SOCKET_LINK = /^socket:\[(\d+)\]$/;

function failed(result: bigint): boolean {
  return result < 0n && result > -4096n;
}

/** What sock_diag says of one unix socket. */
export interface UnixDiag {
  inode: number;
  /** SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5 */
  type: number;
  peer: number;
  named: boolean;
  shutdown: number;
}

/** The sock_diag request for one unix socket by inode (nlmsghdr + unix_diag_req). Pure. */
export function unixDiagRequest(inode: number): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(40, 0);
  b.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
  b.writeUInt16LE(NLM_F_REQUEST, 6);
  b.writeUInt32LE(1, 8);
  b.writeUInt8(AF_UNIX, 16);
  b.writeUInt32LE(0xffffffff, 20); // every state
  b.writeUInt32LE(inode, 24);
  b.writeUInt32LE(UDIAG_SHOW.NAME | UDIAG_SHOW.PEER, 28);
  b.writeUInt32LE(0xffffffff, 32); // no cookie
  b.writeUInt32LE(0xffffffff, 36);
  return b;
}

/** Parses sock_diag's answer: the socket, or the errno it answered with. Pure. */
export function parseUnixDiag(reply: Buffer): UnixDiag | { errno: number } {
  if (reply.length < 16) throw new CheckpointError(`sock_diag answered ${reply.length} bytes`, { state: 'socket' });
  const type = reply.readUInt16LE(4);
  if (type === NLMSG_ERROR) return { errno: -reply.readInt32LE(16) };
  if (type !== SOCK_DIAG_BY_FAMILY || reply.length < 32)
    throw new CheckpointError(`sock_diag answered message type ${type} (${reply.length} bytes)`, { state: 'socket' });
  const end = Math.min(reply.readUInt32LE(0), reply.length);
  const diag: UnixDiag = { inode: reply.readUInt32LE(20), type: reply.readUInt8(17), peer: 0, named: false, shutdown: 0 };
  for (let at = 32; at + 4 <= end;) {
    const len = reply.readUInt16LE(at);
    const attr = reply.readUInt16LE(at + 2);
    if (len < 4) break;
    if (attr === UNIX_DIAG_ATTR.PEER && len >= 8) diag.peer = reply.readUInt32LE(at + 4);
    if (attr === UNIX_DIAG_ATTR.NAME) diag.named = true;
    if (attr === UNIX_DIAG_ATTR.SHUTDOWN && len >= 5) diag.shutdown = reply.readUInt8(at + 4);
    at += (len + 3) & ~3;
  }
  return diag;
}

/** Asks sock_diag about each inode through a netlink socket injected into the stopped process `pid` (closed again). */
async function diagnose(agent: AgentClient, pid: number, inodes: readonly number[]): Promise<Map<number, UnixDiag | { errno: number }>> {
  const found = new Map<number, UnixDiag | { errno: number }>();
  await withScratchPage(agent, pid, async (scratch) => {
    const call = async (nr: number, args: bigint[], what: string): Promise<bigint> => {
      const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr, args });
      if (failed(r)) throw new AgentError(`${what} in pid ${pid}: errno ${-r}`, 'INJECT_SYSCALL', Number(-r));
      return r;
    };
    const sock = await call(NR.socket, [AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG], 'socket(AF_NETLINK, NETLINK_SOCK_DIAG)');
    try {
      for (const inode of inodes) {
        await agent.call({ op: 'WRITE_MEM', pid, address: scratch, data: unixDiagRequest(inode) });
        await call(NR.sendto, [sock, scratch, 40n, 0n, 0n, 0n], `sock_diag request for socket:[${inode}]`);
        const n = await call(NR.recvfrom, [sock, scratch + 512n, 3072n, 0n, 0n, 0n], `sock_diag answer for socket:[${inode}]`);
        found.set(inode, parseUnixDiag(await agent.call({ op: 'READ_MEM', pid, address: scratch + 512n, length: Number(n) })));
      }
    } finally {
      await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.close, args: [sock] });
    }
  });
  return found;
}

/** What a socket would read next, peeked through `end` (one buffer for a stream socket, each datagram for a datagram socket). */
async function peekQueue(agent: AgentClient, inode: number, end: SocketEnd, dgram: boolean): Promise<Buffer[]> {
  const { pid, fd } = end;
  const refuse = (why: string): never => {
    throw new CheckpointError(`socket:[${inode}] (pid ${pid} fd ${fd}): ${why}`, { state: 'socketpair', target: `socket:[${inode}]` });
  };
  return withScratchPage(
    agent,
    pid,
    async (scratch) => {
      const call = async (nr: number, args: bigint[], what: string): Promise<bigint> => {
        const r = await agent.call({ op: 'INJECT_SYSCALL', pid, nr, args });
        if (failed(r)) throw new AgentError(`${what} on fd ${fd} of pid ${pid}: errno ${-r}`, 'INJECT_SYSCALL', Number(-r));
        return r;
      };
      const data = scratch + 4096n;
      // The holder's own peek offset, put back after (-1: none).
      await agent.call({ op: 'WRITE_MEM', pid, address: scratch + 8n, data: Buffer.from([4, 0, 0, 0]) });
      await call(NR.getsockopt, [BigInt(fd), SOL_SOCKET, SO_PEEK_OFF, scratch, scratch + 8n], 'getsockopt(SO_PEEK_OFF)');
      const own = (await agent.call({ op: 'READ_MEM', pid, address: scratch, length: 4 })).readInt32LE(0);
      await agent.call({ op: 'WRITE_MEM', pid, address: scratch + 16n, data: Buffer.alloc(4) });
      await call(NR.setsockopt, [BigInt(fd), SOL_SOCKET, SO_PEEK_OFF, scratch + 16n, 4n], 'setsockopt(SO_PEEK_OFF, 0)');
      const queued: Buffer[] = [];
      let total = 0;
      try {
        // struct iovec at +128, struct msghdr at +64 (msg_flags at +48 of it).
        const iov = Buffer.alloc(16);
        iov.writeBigUInt64LE(data, 0);
        iov.writeBigUInt64LE(BigInt(MAX_QUEUED_BYTES + 1), 8);
        await agent.call({ op: 'WRITE_MEM', pid, address: scratch + 128n, data: iov });
        for (;;) {
          const msg = Buffer.alloc(56);
          msg.writeBigUInt64LE(scratch + 128n, 16);
          msg.writeBigUInt64LE(1n, 24);
          await agent.call({ op: 'WRITE_MEM', pid, address: scratch + 64n, data: msg });
          const n = await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.recvmsg, args: [BigInt(fd), scratch + 64n, MSG_PEEK | MSG_DONTWAIT] });
          if (n === -EAGAIN) break;
          if (failed(n)) throw new AgentError(`recvmsg(MSG_PEEK) on fd ${fd} of pid ${pid}: errno ${-n}`, 'INJECT_SYSCALL', Number(-n));
          if (n === 0n) {
            if (dgram) refuse('a zero-length datagram is queued (a peek cannot move past it)');
            break; // a stream at its end: the peer shut down (refused by the caller)
          }
          const flags = (await agent.call({ op: 'READ_MEM', pid, address: scratch + 64n + 48n, length: 4 })).readInt32LE(0);
          if (flags & MSG_CTRUNC) refuse('control messages are in flight (SCM_RIGHTS or credentials), which an image does not hold');
          if (flags & MSG_TRUNC) refuse(`a datagram longer than the ${MAX_QUEUED_BYTES} bytes an image holds is queued`);
          total += Number(n);
          if (total > MAX_QUEUED_BYTES) refuse(`more than the ${MAX_QUEUED_BYTES} queued bytes an image holds`);
          queued.push(await agent.call({ op: 'READ_MEM', pid, address: data, length: Number(n) }));
        }
      } finally {
        await agent.call({ op: 'WRITE_MEM', pid, address: scratch + 16n, data: Buffer.from(Uint32Array.of(own >>> 0).buffer) });
        await agent.call({ op: 'INJECT_SYSCALL', pid, nr: NR.setsockopt, args: [BigInt(fd), SOL_SOCKET, SO_PEEK_OFF, scratch + 16n, 4n] });
      }
      return dgram ? queued : queued.length > 0 ? [Buffer.concat(queued)] : [];
    },
    4096 + MAX_QUEUED_BYTES + 1,
  );
}

/** Every socket the processes `pids` hold (all stopped): socketpairs of the tree, with their queues, or a refusal naming the socket. */
export async function captureSocketpairs(agent: AgentClient, pids: readonly number[]): Promise<TreeSocketPair[]> {
  const byInode = new Map<number, { ends: SocketEnd[] }>();
  for (const pid of pids) {
    for (const { fd, link } of await readFdTable(agent, pid)) {
      const inode = Number(SOCKET_LINK.exec(link)?.[1] ?? 0);
      if (!inode) continue;
      const { flags } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/fdinfo/${fd}`, maxSize: 65536 })).toString('utf8'));
      const socket = byInode.get(inode) ?? { ends: [] };
      socket.ends.push({ pid, fd, cloexec: (flags & O.CLOEXEC) !== 0, nonblock: (flags & O.NONBLOCK) !== 0 });
      byInode.set(inode, socket);
    }
  }
  if (byInode.size === 0) return [];
  const diags = await diagnose(agent, byInode.values().next().value!.ends[0]!.pid, [...byInode.keys()]);
  const pairs: TreeSocketPair[] = [];
  const done = new Set<number>();
  for (const [inode, s] of byInode) {
    if (done.has(inode)) continue;
    const refuse = (why: string): never => {
      throw new CheckpointError(`socket:[${inode}] (${s.ends.map((e) => `pid ${e.pid} fd ${e.fd}`).join(', ')}): ${why}`, {
        state: 'socket',
        target: `socket:[${inode}]`,
      });
    };
    const d = diags.get(inode)!;
    if ('errno' in d)
      return refuse(
        `sock_diag knows no unix socket with this inode (errno ${d.errno}): not a unix socket — only unix socketpairs are restored — or a kernel without unix_diag (CONFIG_UNIX_DIAG), which pairing the sockets needs`,
      );
    const type =
      SOCK_TYPE[d.type as keyof typeof SOCK_TYPE] ?? refuse(`a unix socket of type ${d.type}: only SOCK_STREAM and SOCK_DGRAM socketpairs are restored`);
    if (d.named) refuse('bound to a name: only unnamed socketpairs are restored');
    if (d.shutdown !== 0) refuse(`shut down (${d.shutdown}): only open socketpairs are restored`);
    const peer = byInode.get(d.peer);
    const peerDiag = diags.get(d.peer);
    if (!peer || !peerDiag || 'errno' in peerDiag)
      return refuse(`its peer ${d.peer ? `socket:[${d.peer}]` : '(none: closed or never connected)'} is not held in the tree`);
    if (peerDiag.peer !== inode || peerDiag.shutdown !== 0) refuse(`its peer socket:[${d.peer}] is not connected back to it (or shut down): not a socketpair`);
    for (const side of [s, peer]) if (new Set(side.ends.map((e) => e.nonblock)).size > 1) refuse('one of its sockets is open with and without O_NONBLOCK');
    const queued: [Buffer[], Buffer[]] = [
      await peekQueue(agent, inode, s.ends[0]!, type === 'dgram'),
      await peekQueue(agent, d.peer, peer.ends[0]!, type === 'dgram'),
    ];
    pairs.push({ type, inodes: [inode, d.peer], ends: [s.ends, peer.ends], queued });
    done.add(inode).add(d.peer);
  }
  return pairs;
}

/** A socketpair as the shared-object planner places it: its two sockets parked, created with their queues. Pure. */
export function socketpairObject(pair: TreeSocketPair): SharedObject {
  const name = `socketpair socket:[${pair.inodes[0]}]/socket:[${pair.inodes[1]}]`;
  const bytes = pair.queued.flat().reduce((n, b) => n + b.length, 0);
  return {
    name,
    slots: [`socket:[${pair.inodes[0]}] of ${name}`, `socket:[${pair.inodes[1]}] of ${name}`],
    ends: ([0, 1] as const).flatMap((side) =>
      pair.ends[side].map((e) => ({ pid: e.pid, fd: e.fd, cloexec: e.cloexec, slot: side, what: `socket:[${pair.inodes[side]}] of ${name} (${pair.type})` })),
    ),
    create: (pid, [first, second]) => ({
      kind: 'socketpair-create',
      pid,
      type: pair.type,
      fds: [first!, second!],
      nonblock: [pair.ends[0][0]!.nonblock, pair.ends[1][0]!.nonblock],
      queued: pair.queued,
      why: `${name} (${pair.type}) created in pid ${pid}, parked at fds ${first} and ${second}, ${bytes} queued bytes sent again`,
    }),
  };
}

/** The holder of a socketpair that is an ancestor of all its holders; PlanError when none is. */
export function socketpairCreator(members: readonly TreeMember[], pair: TreeSocketPair): number {
  return creatorOf(members, socketpairObject(pair));
}

/** The skeleton with the socketpairs in it (tree-shared-objects.ts withSharedObjects). Pure. */
export function withSocketpairs(actions: readonly TreeAction[], members: readonly TreeMember[], pairs: readonly TreeSocketPair[], base: number): TreeAction[] {
  return withSharedObjects(actions, members, pairs.map(socketpairObject), base);
}

/** Why a socketpairs list from tree.json is malformed, or undefined; `used` collects every descriptor of the tree's objects. */
export function socketpairsProblem(pairs: readonly TreeSocketPair[], pids: ReadonlySet<number>, used = new Set<string>()): FieldProblem | undefined {
  for (const [i, p] of pairs.entries()) {
    if (p.type !== 'stream' && p.type !== 'dgram')
      return { field: `socketpairs[${i}].type`, why: `${JSON.stringify(p.type)?.slice(0, 20)} is not stream or dgram` };
    if (!Array.isArray(p.inodes) || p.inodes.length !== 2 || !p.inodes.every((n) => Number.isInteger(n) && n >= 1))
      return { field: `socketpairs[${i}].inodes`, why: 'not two inodes' };
    const bytes = p.queued.flat().reduce((n, b) => n + b.length, 0);
    if (bytes > 2 * MAX_QUEUED_BYTES) return { field: `socketpairs[${i}].queued`, why: `${bytes} bytes, more than ${2 * MAX_QUEUED_BYTES}` };
    if (p.queued.some((q) => q.length > 4096)) return { field: `socketpairs[${i}].queued`, why: 'more than 4096 datagrams' };
    if (p.type === 'dgram' && p.queued.flat().some((b) => b.length === 0)) return { field: `socketpairs[${i}].queued`, why: 'a zero-length datagram' };
    for (const side of [0, 1] as const) {
      const ends = p.ends[side];
      const list = endsListProblem(ends, `socketpairs[${i}].ends[${side}]`);
      if (list) return list;
      for (const [j, e] of ends.entries()) {
        const at = `socketpairs[${i}].ends[${side}][${j}]`;
        if (typeof e.nonblock !== 'boolean') return { field: `${at}.nonblock`, why: 'must be a boolean' };
        const problem = endProblem(e, at, pids, used);
        if (problem) return problem;
      }
    }
  }
  return undefined;
}
