/**
 * The network rule made checkable: every socket a process of ours listens on
 * (TCP in LISTEN, UDP bound and unconnected) must be on loopback or a unix
 * socket. Read from /proc, not from `ss`, so it needs no package and sees
 * exactly the sockets the given processes hold.
 */
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

export interface Listener {
  protocol: 'tcp' | 'tcp6' | 'udp' | 'udp6';
  /** dotted IPv4 or full IPv6 text, as bound */
  address: string;
  port: number;
  inode: number;
}

const TCP_LISTEN = '0A';
const UDP_UNCONNECTED = '07';

/** /proc/net/tcp stores an IPv4 address as one little-endian 32-bit hex word. */
function ipv4(hex: string): string {
  const n = Number.parseInt(hex, 16);
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].join('.');
}

/** /proc/net/tcp6 stores an IPv6 address as four little-endian 32-bit hex words. */
function ipv6(hex: string): string {
  const bytes: number[] = [];
  for (let w = 0; w < 4; w++) {
    const word = Number.parseInt(hex.slice(w * 8, w * 8 + 8), 16);
    bytes.push(word & 0xff, (word >>> 8) & 0xff, (word >>> 16) & 0xff, (word >>> 24) & 0xff);
  }
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return groups.join(':');
}

/** The listening sockets in one /proc/net/{tcp,tcp6,udp,udp6} table. */
export function parseSocketTable(protocol: Listener['protocol'], text: string): Listener[] {
  const listening = protocol.startsWith('tcp') ? TCP_LISTEN : UDP_UNCONNECTED;
  const out: Listener[] = [];
  for (const line of text.split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10 || fields[3] !== listening) continue;
    const [addr, port] = fields[1]!.split(':');
    out.push({
      protocol,
      address: protocol.endsWith('6') ? ipv6(addr!) : ipv4(addr!),
      port: Number.parseInt(port!, 16),
      inode: Number(fields[9]),
    });
  }
  return out;
}

/** 127.0.0.0/8, ::1, and ::ffff:127.x.y.z. */
export function isLoopback(l: Listener): boolean {
  if (!l.protocol.endsWith('6')) return l.address.startsWith('127.');
  if (l.address === '0:0:0:0:0:0:0:1') return true;
  return /^0:0:0:0:0:ffff:7f[0-9a-f]{2}:/.test(l.address);
}

/** The socket inodes open in `pid` (empty when it is gone). */
export function socketInodes(pid: number): Set<number> {
  const inodes = new Set<number>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return inodes;
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(Number(m[1]));
    } catch {
      // closed between readdir and readlink
    }
  }
  return inodes;
}

/**
 * Every listener held by one of `pids`, across the four tables of the
 * network namespace `pids[0]` is in (ours all share one).
 */
export function listenersOf(pids: readonly number[]): Listener[] {
  const owned = new Set<number>();
  for (const pid of pids) for (const inode of socketInodes(pid)) owned.add(inode);
  const tables: Listener['protocol'][] = ['tcp', 'tcp6', 'udp', 'udp6'];
  return tables.flatMap((protocol) => {
    let text = '';
    try {
      text = readFileSync(`/proc/${pids[0] ?? 'self'}/net/${protocol}`, 'utf8');
    } catch {
      return []; // no IPv6 in this kernel
    }
    return parseSocketTable(protocol, text).filter((l) => owned.has(l.inode));
  });
}
