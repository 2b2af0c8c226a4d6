/**
 * Restores a process tree with its pids, parent links, process groups and
 * sessions. First the skeleton (tree.ts plans it): the root's stub spawned
 * by the agent with its pid; each child made by clone3 injected into its
 * parent's stub (set_tid = its pid, its exit signal, no CLONE_VM: a copy of
 * the parent's fresh process, traced from its first instruction through
 * TRACE_FORKS), before that parent's memory is restored, so the kernel links
 * it to the right parent; setsid in a session leader before its children
 * exist, groups once all do; the tree's shared anonymous objects mapped in
 * their creator before its children are cloned, so they inherit one object.
 * The tree's zombies are cloned last and ended as they ended, their parents
 * still stubs (tree-zombies.ts).
 * Then every process is restored by the single-process restore
 * (restore.ts restoreInto), and the tree is read back from /proc.
 * A failure kills every process created so far, the root first (its
 * children are then the agent's, which reaps them), and names the step.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CrhError, RestoreStepError } from '../errors.ts';
import { parseFdinfo, parseStatSession } from './files.ts';
import { PlanError, type PlanStep } from './plan-step.ts';
import { DEFAULT_PIPE_BYTES, pipeObject } from './tree-pipes.ts';
import { socketpairObject } from './tree-sockets.ts';
import { fdinfoInode, memfdName, memfdObject, memfdUnmaps, privateCopies } from './tree-memfds.ts';
import { parkingBase, withSharedObjects } from './tree-shared-objects.ts';
import { imageDescriptors } from './descriptors.ts';
import { identityProblem, privateDescriptions, sharedFileObject, statPaths } from './tree-files.ts';
import { fifoObject, fifoPathProblem, FIFO_FLAGS } from './tree-fifos.ts';
import { omits, assertPolicyAdmits, type RestorePolicy } from './policy.ts';
import type { Mapping } from './proc-maps.ts';
import { checkSteps, PidInUseError, restoreInto, type Difference, type RestoreResult } from './restore.ts';
import { PROT } from './syscall-steps.ts';
import { assertThreadsAdmitted } from './threads.ts';
import {
  planTreeSkeleton,
  sharedAnonymousObjects,
  type ProcessTree,
  type SharedAnonymous,
  type TreeAction,
  type TreeMemfd,
  type TreePipe,
  type TreeFifo,
  type TreeSharedFile,
  type TreeSocketPair,
  type TreeZombie,
} from './tree.ts';
import { endZombies, readBackZombies } from './tree-zombies.ts';

const NR = {
  write: 1,
  close: 3,
  mmap: 9,
  munmap: 11,
  sendto: 44,
  socketpair: 53,
  fcntl: 72,
  setpgid: 109,
  setsid: 112,
  dup3: 292,
  pipe2: 293,
  clone3: 435,
  pwrite64: 18,
  lseek: 8,
  ftruncate: 77,
  memfdCreate: 319,
  openat: 257,
  kcmp: 312,
} as const;
const AT_FDCWD = BigInt.asUintN(64, -100n);
const KCMP_FILE = 0n;
const MFD_ALLOW_SEALING = 2n;
const F_ADD_SEALS = 1033n;
const F_SEAL_WRITE = 0x8;
const F_SEAL_FUTURE_WRITE = 0x10;
const SEEK_SET = 0n;
/** Bytes of a memfd's contents written back per pwrite, from the stub's stack below the clone_args scratch. */
const MEMFD_CHUNK = 32 * 1024;
const AF_UNIX = 1n;
const SOCK_TYPE_NUMBER = { stream: 1n, dgram: 2n } as const;
const MSG_DONTWAIT = 0x40n;
const F_SETFL = 4n;
const F_SETPIPE_SZ = 1031n;
const O_NONBLOCK = 0o4000n;
const O_RDWR = 2n;
const O_CLOEXEC = 0o2000000n;
/** Where a fresh stub's pipe2 puts a new pipe: the lowest free descriptors, above its 0-2 (every parked one is higher). */
const FRESH_PIPE = { read: 3n, write: 4n } as const;
const EEXIST = 17;
const MAP_SHARED = 0x01n;
const MAP_ANONYMOUS = 0x20n;
const MAP_FIXED_NOREPLACE = 0x100000n;
const NO_FD = BigInt.asUintN(64, -1n);
/** struct clone_args up to cgroup (CLONE_ARGS_SIZE_VER2), then the one set_tid entry. */
export const CLONE_ARGS_BYTES = 88;

export interface TreeRestoreOptions {
  policy: RestorePolicy;
  /** guest file the restored processes write their stdout/stderr to (the root's stub opens it; every child inherits it) */
  stdoutPath: string;
}

export interface TreeRestoreResult {
  /** the skeleton's steps: clones, sessions, groups, shared objects */
  skeleton: PlanStep[];
  /** each process's own restore, in the tree's order (the root first) */
  members: RestoreResult[];
  /** pid, parent, group and session as /proc shows them, where they differ from the image; each process's own read-back differences, named with its pid */
  differences: Difference[];
}

/** Where a stub's injected clone3 finds its arguments, and the text word its injection patches (put back in each new child, which got a copy of the patched page). */
export interface StubFacts {
  /** a writable address in the stub's stack, below its stack pointer (every stub is a copy: the same in all) */
  scratch: bigint;
  rip: bigint;
  word: Buffer;
}

/** struct clone_args for a child process: no flags (a fork), its exit signal, set_tid = its pid; the pid follows at +88. */
export function cloneArgs(pid: number, exitSignal: number, scratch: bigint): Buffer {
  const b = Buffer.alloc(CLONE_ARGS_BYTES + 8);
  b.writeBigUInt64LE(BigInt(exitSignal), 32);
  b.writeBigUInt64LE(scratch + BigInt(CLONE_ARGS_BYTES), 64);
  b.writeBigUInt64LE(1n, 72);
  b.writeInt32LE(pid, CLONE_ARGS_BYTES);
  return b;
}

/** Queued pipe bytes go this far below the clone_args scratch, in the fresh stub's stack (its VMA reaches 128 KiB below the arguments). */
const PIPE_DATA_BELOW_SCRATCH = 0x9000;

/** The agent steps of the skeleton's actions (the root's spawn is not one: restoreTree does it first). Pure. */
export function skeletonSteps(actions: readonly TreeAction[], stub: StubFacts): PlanStep[] {
  const steps: PlanStep[] = [];
  for (const a of actions) {
    switch (a.kind) {
      case 'spawn-root':
        break;
      case 'clone':
        steps.push(
          { op: { op: 'TRACE_FORKS', pid: a.parent, on: true }, why: `trace what pid ${a.parent} forks: the child is traced from its first instruction` },
          {
            op: { op: 'WRITE_MEM', pid: a.parent, address: stub.scratch, data: cloneArgs(a.pid, a.exitSignal, stub.scratch) },
            why: `clone_args for pid ${a.pid}: exit signal ${a.exitSignal}, set_tid ${a.pid}`,
          },
          { op: { op: 'INJECT_SYSCALL', pid: a.parent, nr: NR.clone3, args: [stub.scratch, BigInt(CLONE_ARGS_BYTES)] }, why: a.why, expect: BigInt(a.pid) },
          {
            op: { op: 'WRITE_MEM', pid: a.pid, address: stub.rip, data: stub.word },
            why: `pid ${a.pid}: put back the text its parent's injection had patched when the page was copied`,
          },
          { op: { op: 'TRACE_FORKS', pid: a.parent, on: false }, why: `pid ${a.parent}: stop tracing forks` },
          { op: { op: 'TRACE_FORKS', pid: a.pid, on: false }, why: `pid ${a.pid}: inherited the fork tracing; off` },
        );
        break;
      case 'setsid':
        steps.push({ op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.setsid, args: [] }, why: a.why, expect: BigInt(a.pid) });
        break;
      case 'setpgid':
        steps.push({ op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.setpgid, args: [0n, a.pgid === a.pid ? 0n : BigInt(a.pgid)] }, why: a.why, expect: 0n });
        break;
      case 'map-shared':
        steps.push({
          op: {
            op: 'INJECT_SYSCALL',
            pid: a.pid,
            nr: NR.mmap,
            args: [a.start, a.end - a.start, PROT.READ | PROT.WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, NO_FD, 0n],
          },
          why: a.why,
          expect: a.start,
        });
        break;
      case 'unmap-inherited':
        steps.push({ op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.munmap, args: [a.start, a.end - a.start] }, why: a.why, expect: 0n });
        break;
      case 'pipe-create': {
        const [r, w] = [BigInt(a.read), BigInt(a.write)];
        steps.push(
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.pipe2, args: [stub.scratch + 128n, 0n] }, why: a.why, expect: 0n },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.dup3, args: [FRESH_PIPE.read, r, 0n] }, why: `park the read end at fd ${a.read}`, expect: r },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.dup3, args: [FRESH_PIPE.write, w, 0n] }, why: `park the write end at fd ${a.write}`, expect: w },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [FRESH_PIPE.read] }, why: 'close the unparked read end', expect: 0n },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [FRESH_PIPE.write] }, why: 'close the unparked write end', expect: 0n },
        );
        if (a.nonblockRead)
          steps.push({ op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.fcntl, args: [r, F_SETFL, O_NONBLOCK] }, why: 'O_NONBLOCK on the read end', expect: 0n });
        if (a.nonblockWrite)
          steps.push({
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.fcntl, args: [w, F_SETFL, O_NONBLOCK] },
            why: 'O_NONBLOCK on the write end',
            expect: 0n,
          });
        if (a.size !== DEFAULT_PIPE_BYTES)
          steps.push({
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.fcntl, args: [w, F_SETPIPE_SZ, BigInt(a.size)] },
            why: `pipe size ${a.size} bytes`,
            expect: BigInt(a.size),
          });
        if (a.queued.length > 0) {
          const at = stub.scratch - BigInt(PIPE_DATA_BELOW_SCRATCH);
          steps.push(
            { op: { op: 'WRITE_MEM', pid: a.pid, address: at, data: a.queued }, why: `the ${a.queued.length} queued bytes, in the stub's stack` },
            {
              op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.write, args: [w, at, BigInt(a.queued.length)] },
              why: `write the ${a.queued.length} queued bytes back into the pipe`,
              expect: BigInt(a.queued.length),
            },
          );
        }
        break;
      }
      case 'socketpair-create': {
        const parked = [BigInt(a.fds[0]), BigInt(a.fds[1])] as const;
        steps.push(
          {
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.socketpair, args: [AF_UNIX, SOCK_TYPE_NUMBER[a.type], 0n, stub.scratch + 128n] },
            why: a.why,
            expect: 0n,
          },
          {
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.dup3, args: [FRESH_PIPE.read, parked[0], 0n] },
            why: `park the first socket at fd ${a.fds[0]}`,
            expect: parked[0],
          },
          {
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.dup3, args: [FRESH_PIPE.write, parked[1], 0n] },
            why: `park the second socket at fd ${a.fds[1]}`,
            expect: parked[1],
          },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [FRESH_PIPE.read] }, why: 'close the unparked first socket', expect: 0n },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [FRESH_PIPE.write] }, why: 'close the unparked second socket', expect: 0n },
        );
        for (const side of [0, 1] as const) {
          if (a.nonblock[side])
            steps.push({
              op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.fcntl, args: [parked[side], F_SETFL, O_NONBLOCK] },
              why: `O_NONBLOCK on fd ${a.fds[side]}`,
              expect: 0n,
            });
          // What socket `side` would read was sent by its peer: send it again from there, a datagram at a time.
          const from = parked[1 - side]!;
          for (const [i, data] of a.queued[side].entries()) {
            const at = stub.scratch - BigInt(PIPE_DATA_BELOW_SCRATCH);
            steps.push(
              {
                op: { op: 'WRITE_MEM', pid: a.pid, address: at, data },
                why: `${a.type === 'dgram' ? `datagram ${i + 1} of ${a.queued[side].length}` : 'the queued bytes'} for fd ${a.fds[side]}, in the stub's stack`,
              },
              {
                op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.sendto, args: [from, at, BigInt(data.length), MSG_DONTWAIT, 0n, 0n] },
                why: `send ${data.length} bytes from fd ${a.fds[1 - side]} to fd ${a.fds[side]} (queued there at checkpoint)`,
                expect: BigInt(data.length),
              },
            );
          }
        }
        break;
      }
      case 'memfd-create': {
        const parked = BigInt(a.fd);
        const name = stub.scratch + 256n;
        steps.push(
          { op: { op: 'WRITE_MEM', pid: a.pid, address: name, data: Buffer.from(`${a.name}\0`) }, why: `the name "${a.name}", in the stub's stack` },
          // The lowest free descriptor of a stub: fd 3 (every parked one is higher).
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.memfdCreate, args: [name, MFD_ALLOW_SEALING] }, why: a.why, expect: FRESH_PIPE.read },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.dup3, args: [FRESH_PIPE.read, parked, 0n] }, why: `park it at fd ${a.fd}`, expect: parked },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [FRESH_PIPE.read] }, why: 'close the unparked memfd', expect: 0n },
        );
        const at = stub.scratch - BigInt(PIPE_DATA_BELOW_SCRATCH);
        for (let off = 0; off < a.contents.length; off += MEMFD_CHUNK) {
          const chunk = a.contents.subarray(off, off + MEMFD_CHUNK);
          steps.push(
            {
              op: { op: 'WRITE_MEM', pid: a.pid, address: at, data: chunk },
              why: `bytes ${off}-${off + chunk.length} of memfd:${a.name}, in the stub's stack`,
            },
            {
              op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.pwrite64, args: [parked, at, BigInt(chunk.length), BigInt(off)] },
              why: `write them back at offset ${off}`,
              expect: BigInt(chunk.length),
            },
          );
        }
        steps.push({
          op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.ftruncate, args: [parked, BigInt(a.contents.length)] },
          why: `its size, ${a.contents.length} bytes`,
          expect: 0n,
        });
        if (a.seals !== 0)
          steps.push({
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.fcntl, args: [parked, F_ADD_SEALS, BigInt(a.seals)] },
            why: `seals 0x${a.seals.toString(16)}`,
            expect: 0n,
          });
        if (a.flags !== 0)
          steps.push({
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.fcntl, args: [parked, F_SETFL, BigInt(a.flags)] },
            why: `status flags 0o${a.flags.toString(8)}`,
            expect: 0n,
          });
        if (a.pos !== 0)
          steps.push({
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.lseek, args: [parked, BigInt(a.pos), SEEK_SET] },
            why: `offset ${a.pos}`,
            expect: BigInt(a.pos),
          });
        // Mapped here, before the children are cloned: they inherit the very mapping (their own restore finds it in place).
        // Read-write: the process's restore writes its pages and gives them their protections; a memfd sealed against
        // writing is mapped read-only.
        const prot = (a.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) !== 0 ? PROT.READ : PROT.READ | PROT.WRITE;
        for (const m of a.maps ?? [])
          steps.push({
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.mmap, args: [m.start, m.end - m.start, prot, MAP_SHARED | MAP_FIXED_NOREPLACE, parked, m.offset] },
            why: `map memfd:${a.name} shared at ${m.start.toString(16)}-${m.end.toString(16)} (file offset 0x${m.offset.toString(16)}) in pid ${a.pid}, before its children are cloned`,
            expect: m.start,
          });
        break;
      }
      case 'fifo-open': {
        const at = stub.scratch - BigInt(PIPE_DATA_BELOW_SCRATCH);
        const helper = FRESH_PIPE.read;
        steps.push(
          { op: { op: 'WRITE_MEM', pid: a.pid, address: at, data: Buffer.from(`${a.path}\0`) }, why: `the path ${a.path}, in the stub's stack` },
          // Read-write never blocks on a FIFO, and is a reader: the write-only opens below succeed (O_NONBLOCK would fail them with ENXIO without one).
          {
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.openat, args: [AT_FDCWD, at, O_RDWR | O_NONBLOCK, 0n] },
            why: `${a.why}: a read-write helper first`,
            expect: helper,
          },
        );
        for (const [i, fd] of a.fds.entries()) {
          const flags = a.flags[i]!;
          steps.push(
            {
              op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.openat, args: [AT_FDCWD, at, BigInt(flags & 3) | O_NONBLOCK, 0n] },
              why: `description ${i} of ${a.path} (flags 0o${flags.toString(8)})`,
              expect: FRESH_PIPE.write,
            },
            { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.dup3, args: [FRESH_PIPE.write, BigInt(fd), 0n] }, why: `park it at fd ${fd}`, expect: BigInt(fd) },
            { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [FRESH_PIPE.write] }, why: 'close the unparked descriptor', expect: 0n },
            {
              op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.fcntl, args: [BigInt(fd), F_SETFL, BigInt(flags & FIFO_FLAGS & ~3)] },
              why: `its status flags 0o${(flags & ~3).toString(8)} (O_NONBLOCK only if it had it)`,
              expect: 0n,
            },
          );
        }
        if (a.size !== DEFAULT_PIPE_BYTES)
          steps.push({
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.fcntl, args: [helper, F_SETPIPE_SZ, BigInt(a.size)] },
            why: `FIFO size ${a.size} bytes`,
            expect: BigInt(a.size),
          });
        if (a.queued.length > 0)
          steps.push(
            { op: { op: 'WRITE_MEM', pid: a.pid, address: at, data: a.queued }, why: `the ${a.queued.length} queued bytes, in the stub's stack` },
            {
              op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.write, args: [helper, at, BigInt(a.queued.length)] },
              why: `write the ${a.queued.length} queued bytes back into the FIFO`,
              expect: BigInt(a.queued.length),
            },
          );
        steps.push({ op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [helper] }, why: 'close the helper', expect: 0n });
        break;
      }
      case 'file-open': {
        const parked = BigInt(a.fd);
        const at = stub.scratch - BigInt(PIPE_DATA_BELOW_SCRATCH);
        steps.push(
          { op: { op: 'WRITE_MEM', pid: a.pid, address: at, data: Buffer.from(`${a.path}\0`) }, why: `the path ${a.path}, in the stub's stack` },
          // Never O_CREAT or O_TRUNC (the plan has none): the file the processes shared, as it is. The lowest free descriptor of a stub: fd 3.
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.openat, args: [AT_FDCWD, at, BigInt(a.flags), 0n] }, why: a.why, expect: FRESH_PIPE.read },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.dup3, args: [FRESH_PIPE.read, parked, 0n] }, why: `park it at fd ${a.fd}`, expect: parked },
          { op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [FRESH_PIPE.read] }, why: 'close the unparked descriptor', expect: 0n },
        );
        if (a.pos !== 0)
          steps.push({
            op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.lseek, args: [parked, BigInt(a.pos), SEEK_SET] },
            why: `the shared offset, ${a.pos}`,
            expect: BigInt(a.pos),
          });
        break;
      }
      case 'fd-dup':
        steps.push({
          op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.dup3, args: [BigInt(a.from), BigInt(a.to), a.cloexec ? O_CLOEXEC : 0n] },
          why: a.why,
          expect: BigInt(a.to),
        });
        break;
      case 'fd-close':
        steps.push({ op: { op: 'INJECT_SYSCALL', pid: a.pid, nr: NR.close, args: [BigInt(a.fd)] }, why: a.why, expect: 0n });
        break;
    }
  }
  return steps;
}

/** The shared objects a process holds, as the mappings its stub has for them when its own restore starts (its memfds' mappings too). */
export function inheritedShared(shared: readonly SharedAnonymous[], pid: number, memfds: readonly TreeMemfd[] = []): Mapping[] {
  return [
    ...shared
      .filter((o) => o.holders.includes(pid))
      .map((o) => ({ start: o.start, end: o.end, perms: 'rw-s', offset: 0n, device: '00:00', inode: o.inode, name: '/dev/zero (deleted)' })),
    ...memfds.flatMap((m) =>
      (m.maps ?? [])
        .filter((x) => x.pid === pid)
        .map((x) => ({ start: x.start, end: x.end, perms: 'rw-s', offset: x.offset, device: '00:00', inode: m.inode, name: `/memfd:${m.name} (deleted)` })),
    ),
  ];
}

/**
 * The pure part of a tree's restore under `policy`: its shared objects, its
 * pipes as they will be made, and the skeleton's actions. Throws PlanError
 * (naming the process, object or pipe) when the tree cannot be rebuilt.
 */
export function planTreeRestore(
  tree: ProcessTree,
  policy: RestorePolicy,
): {
  shared: SharedAnonymous[];
  pipes: TreePipe[];
  socketpairs: TreeSocketPair[];
  memfds: TreeMemfd[];
  sharedFiles: TreeSharedFile[];
  fifos: TreeFifo[];
  zombies: TreeZombie[];
  actions: TreeAction[];
} {
  // omit=mapping-kinds: no shared object is created; each process maps private memory of its own (the control).
  const shared = omits(policy, 'mapping-kinds') ? [] : sharedAnonymousObjects(tree);
  // omit=pipe-contents: the pipes and socketpairs without their queued data (the control).
  const pipes = (tree.pipes ?? []).map((p) => (omits(policy, 'pipe-contents') ? { ...p, queued: Buffer.alloc(0) } : p));
  const socketpairs = (tree.socketpairs ?? []).map((p): TreeSocketPair => (omits(policy, 'pipe-contents') ? { ...p, queued: [[], []] } : p));
  // omit=mapping-kinds: each holder gets a memfd of its own, a copy (the control).
  const memfds = omits(policy, 'mapping-kinds') ? privateCopies(tree.memfds ?? []) : (tree.memfds ?? []);
  // omit=pipe-contents: the FIFOs opened again without their queued bytes (the control).
  const fifos = (tree.fifos ?? []).map((f) => (omits(policy, 'pipe-contents') ? { ...f, queued: Buffer.alloc(0) } : f));
  // omit=shared-descriptions: each holder opens a shared file itself, an offset of its own (the control).
  const sharedFiles = omits(policy, 'shared-descriptions') ? privateDescriptions(tree.sharedFiles ?? []) : (tree.sharedFiles ?? []);
  const fdsInTree = tree.members.flatMap((m) => [...imageDescriptors(m.image.task), ...m.image.timers.timerfds.map((x) => x.fd)]);
  // One planner places every object shared through descriptors: each created in its holding ancestor, parked above
  // every descriptor of the tree, then dup3'ed into its holders.
  const objects = [
    ...pipes.map(pipeObject),
    ...socketpairs.map(socketpairObject),
    ...memfds.map(memfdObject),
    ...sharedFiles.map(sharedFileObject),
    ...fifos.map(fifoObject),
  ];
  const base = parkingBase([...fdsInTree, ...objects.flatMap((o) => o.ends.map((e) => e.fd))]);
  // A memfd mapping a process inherited without holding it is unmapped right after its clone, before it creates
  // anything of its own there (under omit=mapping-kinds, its own copy of that memfd at the very range).
  const unmaps = memfdUnmaps(tree.members, memfds);
  // omit=zombies: the zombies are not made again (the control: their parents' waits find no such child).
  const zombies = omits(policy, 'zombies') ? [] : (tree.zombies ?? []);
  const actions = withSharedObjects(planTreeSkeleton(tree.members, shared), tree.members, objects, base).flatMap((a) =>
    a.kind === 'clone' ? [a, ...unmaps.filter((u) => u.kind === 'unmap-inherited' && u.pid === a.pid)] : [a],
  );
  // Zombies last, once each parent has its session, group and objects (they end at once, tree-zombies.ts): cloned in
  // their parent's stub like any child.
  for (const z of zombies)
    actions.push({
      kind: 'clone',
      parent: z.ppid,
      pid: z.pid,
      exitSignal: z.exitSignal,
      why: `pid ${z.pid}, a zombie of ${z.ppid}: clone3 in its parent with set_tid, ended next`,
    });
  return { shared, pipes, socketpairs, memfds, sharedFiles, fifos, zombies, actions };
}

export async function restoreTree(agent: AgentClient, tree: ProcessTree, options: TreeRestoreOptions): Promise<TreeRestoreResult> {
  const { policy } = options;
  const [root] = tree.members;
  if (!root) throw new RangeError('a process tree has at least its root');
  // Everything that can refuse does so before the guest is touched.
  for (const m of tree.members) {
    assertPolicyAdmits(m.image.regs.eflags, policy);
    assertThreadsAdmitted(m.image, policy);
  }
  const { shared, pipes, socketpairs, memfds, sharedFiles, fifos, zombies, actions } = planTreeRestore(tree, policy);

  const created: number[] = [];
  try {
    const process = root.image.process;
    try {
      await agent.call({
        op: 'SPAWN',
        path: process.binary,
        argv: process.argv,
        envp: process.envp,
        stdoutPath: options.stdoutPath,
        noAslr: process.noAslr,
        pid: root.pid,
      });
    } catch (error) {
      if (error instanceof AgentError && error.errno === EEXIST)
        throw new PidInUseError(`cannot restore the tree's root as pid ${root.pid}: another process has it (is the original still alive?)`, {
          agent: error.message,
        });
      throw error;
    }
    created.push(root.pid);
    const regs = await agent.call({ op: 'GETREGS', pid: root.pid });
    // Pipes are created where pipe2 puts them in a fresh stub (fds 3 and 4): the stub must have 0-2 open, nothing else.
    const stubFds = (await agent.call({ op: 'LISTDIR', path: `/proc/${root.pid}/fd` })).map(Number).sort((a, b) => a - b);
    if (pipes.length + socketpairs.length + memfds.length + sharedFiles.length + fifos.length > 0 && stubFds.join(' ') !== '0 1 2')
      throw new PlanError(
        `the root's stub has fds ${stubFds.join(' ')} open, not 0-2: its pipe2, socketpair, memfd_create and open would not return fds 3 and 4`,
      );
    const stub: StubFacts = {
      scratch: (regs.rsp - 4096n) & ~0xfn,
      rip: regs.rip,
      word: await agent.call({ op: 'READ_MEM', pid: root.pid, address: regs.rip, length: 8 }),
    };
    // A shared file is opened again only if it is the file the processes shared: gone, replaced or changed is refused now.
    // So is a FIFO whose path no longer names a FIFO.
    const statArea = stub.scratch - BigInt(PIPE_DATA_BELOW_SCRATCH);
    const problem =
      (sharedFiles.length > 0
        ? identityProblem(
            sharedFiles,
            await statPaths(
              agent,
              root.pid,
              statArea,
              sharedFiles.map((f) => f.path),
            ),
          )
        : undefined) ??
      (fifos.length > 0
        ? fifoPathProblem(
            fifos,
            await statPaths(
              agent,
              root.pid,
              statArea,
              fifos.map((f) => f.path),
            ),
          )
        : undefined);
    if (problem) throw problem;
    const skeleton = skeletonSteps(actions, stub);
    for (const a of actions) if (a.kind === 'clone') created.push(a.pid);
    const results = await agent.batch(skeleton.map((s) => s.op));
    try {
      checkSteps(skeleton, results);
    } catch (error) {
      if (error instanceof RestoreStepError && results.some((r) => !r.ok && r.errno === EEXIST)) {
        throw new PidInUseError(`cannot restore the tree: ${error.message} (a pid of the tree is in use: is the original still alive?)`, {
          step: error.message,
        });
      }
      throw error;
    }
    // Each zombie ends as it ended, while its parent is still a stub that has restored nothing of its own.
    await endZombies(agent, zombies, stub.scratch);
    // While every process is still a stub (an injected kcmp is harmless there): one description behind each shared file's descriptors.
    const differences: Difference[] = [...(await readBackSharedFiles(agent, sharedFiles)), ...(await readBackFifos(agent, fifos))];
    const members: RestoreResult[] = [];
    for (const m of tree.members) {
      const restored = await restoreInto(agent, m.image, m.pid, policy, { inheritedShared: inheritedShared(shared, m.pid, memfds) });
      members.push(restored);
      differences.push(...restored.differences.map((d) => ({ ...d, what: `pid ${m.pid} ${d.what}` })));
    }
    differences.push(
      ...(await readBackTree(agent, tree)),
      ...(await readBackPipes(agent, pipes)),
      ...(await readBackSocketpairs(agent, socketpairs)),
      ...(await readBackMemfds(agent, memfds)),
      ...(await readBackZombies(agent, zombies)),
    );
    return { skeleton, members, differences };
  } catch (error) {
    const killed: string[] = [];
    for (const pid of created) {
      killed.push(
        await agent.call({ op: 'KILL', pid }).then(
          () => `pid ${pid} killed`,
          (e: unknown) => `pid ${pid}: ${(e as Error).message}`,
        ),
      );
    }
    if (error instanceof CrhError) error.details.target = killed.join('; ');
    throw error;
  }
}

/**
 * Parent, group and session of every process as /proc shows them now. The
 * root's parent is the agent, and a session or group the root did not lead
 * is whatever started it ("outside"), in the image and now alike.
 */
async function readBackTree(agent: AgentClient, tree: ProcessTree): Promise<Difference[]> {
  const now = new Map<number, { ppid: number; pgid: number; sid: number }>();
  for (const m of tree.members) {
    const stat = (await agent.call({ op: 'READ_FILE', path: `/proc/${m.pid}/stat`, maxSize: 4096 })).toString('utf8');
    now.set(m.pid, { ...parseStatSession(stat), ppid: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) });
  }
  const root = tree.members[0]!;
  const rootNow = now.get(root.pid)!;
  const name = (v: number, outside: number, rootPid: number): string => (v === outside && v !== rootPid ? 'outside' : String(v));
  const differences: Difference[] = [];
  for (const [i, m] of tree.members.entries()) {
    const got = now.get(m.pid)!;
    if (i > 0 && got.ppid !== m.ppid) differences.push({ what: `pid ${m.pid} parent`, requested: String(m.ppid), accepted: String(got.ppid) });
    for (const key of ['pgid', 'sid'] as const) {
      const requested = name(m[key], root[key], root.pid);
      const accepted = name(got[key], rootNow[key], root.pid);
      if (requested !== accepted) differences.push({ what: `pid ${m.pid} ${key}`, requested, accepted });
    }
  }
  return differences;
}

/**
 * Every pipe end where the image has one: the same pipe behind all the ends
 * of one image pipe, another behind each other pipe, the access mode and
 * close-on-exec as they were. (The queued bytes cannot be read back without
 * running the tree; the workload checks them itself.)
 */
async function readBackPipes(agent: AgentClient, pipes: readonly TreePipe[]): Promise<Difference[]> {
  const differences: Difference[] = [];
  const seen = new Map<string, number>();
  for (const [i, p] of pipes.entries()) {
    for (const e of p.ends) {
      const what = `pid ${e.pid} fd ${e.fd}`;
      const requested = `${e.write ? 'write' : 'read'} end of pipe ${i}${e.cloexec ? ', close-on-exec' : ''}`;
      const link = await agent.call({ op: 'READLINK', path: `/proc/${e.pid}/fd/${e.fd}` }).catch(() => 'closed');
      const inode = /^pipe:\[(\d+)\]$/.exec(link)?.[1];
      if (!inode) {
        differences.push({ what, requested, accepted: link });
        continue;
      }
      const { flags } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${e.pid}/fdinfo/${e.fd}`, maxSize: 65536 })).toString('utf8'));
      const owner = seen.get(inode) ?? i;
      seen.set(inode, owner);
      const accepted = `${(flags & 3) === 1 ? 'write' : 'read'} end of pipe ${owner}${(flags & 0o2000000) !== 0 ? ', close-on-exec' : ''}`;
      if (accepted !== requested) differences.push({ what, requested, accepted });
    }
  }
  return differences;
}

/**
 * Every socketpair end where the image has one: one socket behind all the
 * descriptors of one side, another behind the other side, none shared with
 * another pair, O_NONBLOCK and close-on-exec as they were. (The queued data
 * cannot be read back without running the tree; the workload checks it.)
 */
async function readBackSocketpairs(agent: AgentClient, pairs: readonly TreeSocketPair[]): Promise<Difference[]> {
  const differences: Difference[] = [];
  const owner = new Map<string, string>();
  for (const [i, p] of pairs.entries()) {
    for (const side of [0, 1] as const) {
      for (const e of p.ends[side]) {
        const what = `pid ${e.pid} fd ${e.fd}`;
        const requested = `socket ${side} of socketpair ${i}${e.nonblock ? ', O_NONBLOCK' : ''}${e.cloexec ? ', close-on-exec' : ''}`;
        const link = await agent.call({ op: 'READLINK', path: `/proc/${e.pid}/fd/${e.fd}` }).catch(() => 'closed');
        if (!/^socket:\[\d+\]$/.test(link)) {
          differences.push({ what, requested, accepted: link });
          continue;
        }
        const { flags } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${e.pid}/fdinfo/${e.fd}`, maxSize: 65536 })).toString('utf8'));
        const name = owner.get(link) ?? `socket ${side} of socketpair ${i}`;
        owner.set(link, name);
        const accepted = `${name}${(flags & 0o4000) !== 0 ? ', O_NONBLOCK' : ''}${(flags & 0o2000000) !== 0 ? ', close-on-exec' : ''}`;
        if (accepted !== requested) differences.push({ what, requested, accepted });
      }
    }
  }
  return differences;
}

/**
 * Every memfd descriptor where the image has one: a memfd of the same name,
 * one memfd (one inode) behind all the descriptors of one image memfd,
 * another behind each other, its size and offset as they were, close-on-exec
 * as it was. (Its contents and seals are the workload's to check.)
 */
async function readBackMemfds(agent: AgentClient, memfds: readonly TreeMemfd[]): Promise<Difference[]> {
  const differences: Difference[] = [];
  const owner = new Map<number, number>();
  for (const [i, m] of memfds.entries()) {
    for (const e of m.ends) {
      const what = `pid ${e.pid} fd ${e.fd}`;
      const requested = `memfd ${i} (memfd:${m.name}) at offset ${m.pos}${e.cloexec ? ', close-on-exec' : ''}`;
      const link = await agent.call({ op: 'READLINK', path: `/proc/${e.pid}/fd/${e.fd}` }).catch(() => 'closed');
      const name = memfdName(link);
      const fdinfo = name === undefined ? '' : (await agent.call({ op: 'READ_FILE', path: `/proc/${e.pid}/fdinfo/${e.fd}`, maxSize: 65536 })).toString('utf8');
      const inode = fdinfoInode(fdinfo);
      if (name === undefined || inode === undefined) {
        differences.push({ what, requested, accepted: link });
        continue;
      }
      const { flags, pos } = parseFdinfo(fdinfo);
      const index = owner.get(inode) ?? i;
      owner.set(inode, index);
      const accepted = `memfd ${index} (memfd:${name}) at offset ${pos}${(flags & 0o2000000) !== 0 ? ', close-on-exec' : ''}`;
      if (accepted !== requested) differences.push({ what, requested, accepted });
    }
  }
  return differences;
}

/**
 * Every descriptor of a shared file where the image has one: the file at
 * its path, the description's flags and offset, close-on-exec as it was,
 * and one open file description behind all the descriptors of one image
 * file (kcmp against its first, injected into the stub of that holder).
 */
async function readBackSharedFiles(agent: AgentClient, files: readonly TreeSharedFile[]): Promise<Difference[]> {
  const differences: Difference[] = [];
  for (const [i, f] of files.entries()) {
    const first = f.ends[0]!;
    for (const e of f.ends) {
      const what = `pid ${e.pid} fd ${e.fd}`;
      const requested = `${f.path} (shared file ${i}: flags 0o${f.flags.toString(8)}, offset ${f.pos}${e.cloexec ? ', close-on-exec' : ''}), one description with pid ${first.pid} fd ${first.fd}`;
      const link = await agent.call({ op: 'READLINK', path: `/proc/${e.pid}/fd/${e.fd}` }).catch(() => 'closed');
      if (link !== f.path) {
        differences.push({ what, requested, accepted: link });
        continue;
      }
      const { flags, pos } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${e.pid}/fdinfo/${e.fd}`, maxSize: 65536 })).toString('utf8'));
      const same = await agent.call({
        op: 'INJECT_SYSCALL',
        pid: first.pid,
        nr: NR.kcmp,
        args: [BigInt(first.pid), BigInt(e.pid), KCMP_FILE, BigInt(first.fd), BigInt(e.fd)],
      });
      const accepted = `${link} (shared file ${i}: flags 0o${(flags & ~0o2000000).toString(8)}, offset ${pos}${(flags & 0o2000000) !== 0 ? ', close-on-exec' : ''}), ${same === 0n ? 'one description' : `another description (kcmp ${same})`} with pid ${first.pid} fd ${first.fd}`;
      if (accepted !== requested) differences.push({ what, requested, accepted });
    }
  }
  return differences;
}

/**
 * Every descriptor of a FIFO where the image has one: the FIFO's path, its
 * description's access mode and status flags, close-on-exec as it was, and
 * one open file description behind all the descriptors of one image
 * description (kcmp against its first, injected into that holder's stub).
 * (The queued bytes cannot be read back without running the tree.)
 */
async function readBackFifos(agent: AgentClient, fifos: readonly TreeFifo[]): Promise<Difference[]> {
  const differences: Difference[] = [];
  for (const [i, f] of fifos.entries()) {
    for (const [k, d] of f.descriptions.entries()) {
      const first = d.ends[0]!;
      for (const e of d.ends) {
        const what = `pid ${e.pid} fd ${e.fd}`;
        const requested = `${f.path} (fifo ${i} description ${k}: flags 0o${d.flags.toString(8)}${e.cloexec ? ', close-on-exec' : ''}), one description with pid ${first.pid} fd ${first.fd}`;
        const link = await agent.call({ op: 'READLINK', path: `/proc/${e.pid}/fd/${e.fd}` }).catch(() => 'closed');
        if (link !== f.path) {
          differences.push({ what, requested, accepted: link });
          continue;
        }
        const { flags } = parseFdinfo((await agent.call({ op: 'READ_FILE', path: `/proc/${e.pid}/fdinfo/${e.fd}`, maxSize: 65536 })).toString('utf8'));
        const same = await agent.call({
          op: 'INJECT_SYSCALL',
          pid: first.pid,
          nr: NR.kcmp,
          args: [BigInt(first.pid), BigInt(e.pid), KCMP_FILE, BigInt(first.fd), BigInt(e.fd)],
        });
        const accepted = `${link} (fifo ${i} description ${k}: flags 0o${(flags & FIFO_FLAGS).toString(8)}${(flags & 0o2000000) !== 0 ? ', close-on-exec' : ''}), ${same === 0n ? 'one description' : `another description (kcmp ${same})`} with pid ${first.pid} fd ${first.fd}`;
        if (accepted !== requested) differences.push({ what, requested, accepted });
      }
    }
  }
  return differences;
}

/** Lets every process but the root run on untraced (RELEASE), so the root can be RUN while its descendants run too. */
export async function releaseDescendants(agent: AgentClient, tree: ProcessTree): Promise<void> {
  for (const m of tree.members.slice(1)) await agent.call({ op: 'RELEASE', pid: m.pid });
}
