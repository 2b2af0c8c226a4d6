/**
 * One planner for every object the processes of a tree share through
 * descriptors — a pipe, a unix socketpair, a memfd, an open file
 * description (tree-pipes.ts, tree-sockets.ts, tree-memfds.ts,
 * tree-files.ts describe them; this module places them).
 *
 * Each object is created once, in the holder that is an ancestor of every
 * other holder (its creator), right after that process exists and before it
 * clones its first child, so every descendant inherits the very same
 * object; it is parked at descriptors above every descriptor of the tree, so
 * no creation and no process's own descriptors collide with it. Once every
 * process exists, each holder dup3s the parked descriptors to the numbers it
 * held (close-on-exec as it was), and every process that inherited them
 * closes the parked ones. All creations come before any dup3: a creator
 * then has only 0-2 and parked descriptors open, so what pipe2, socketpair,
 * memfd_create and open return is known when the plan is made (fd 3 and up).
 *
 * Also the one check of a descriptor on such an object (an "end") read from
 * tree.json as hostile input: endProblem.
 */
import { PlanError } from './plan-step.ts';
import { holdingAncestor, isAncestor, type TreeAction, type TreeMember } from './tree.ts';

/** A descriptor a process holds on one of a shared object's parked descriptors. */
export interface PlacedEnd {
  pid: number;
  fd: number;
  cloexec: boolean;
  /** which parked descriptor it is a dup of (0 for an object parked at one) */
  slot: number;
  /** what it is, for the plan's why: "the read end of pipe:[77]" */
  what: string;
}

/** What the planner needs to know of one shared object. */
export interface SharedObject {
  /** its name in messages: "pipe:[77]", "memfd:x (inode 9001)" */
  name: string;
  /** what each parked descriptor is, for the plan's why (a pipe's two ends, a socketpair's two sockets, a memfd's one) */
  slots: readonly string[];
  ends: readonly PlacedEnd[];
  /** processes that hold it otherwise than through a descriptor (a memfd's mappings): its creator is an ancestor of them too */
  holders?: readonly number[];
  /** the action that creates it in `pid`, parked at `fds` (one per slot) */
  create: (pid: number, fds: readonly number[]) => TreeAction;
}

/** The holder of `object` that is an ancestor of all its holders; PlanError naming the object when none is. */
export function creatorOf(members: readonly TreeMember[], object: Pick<SharedObject, 'name' | 'ends' | 'holders'>): number {
  const holders = [...new Set([...object.ends.map((e) => e.pid), ...(object.holders ?? [])])];
  const creator = holdingAncestor(members, holders);
  if (creator === undefined)
    throw new PlanError(
      `${object.name} is held by ${holders.map((p) => `pid ${p}`).join(', ')}, none an ancestor of the others: it cannot be created once and inherited`,
    );
  return creator;
}

/** The lowest descriptor above every descriptor the tree uses (`fds`, and 99 at least): where shared objects are parked. */
export function parkingBase(fds: readonly number[]): number {
  return Math.max(99, ...fds) + 1;
}

/**
 * The skeleton with the shared objects in it, parked from `base` up (each
 * object's slots in turn): each created right after its creator's own
 * actions (before its first clone), then, once every process exists, each
 * process's descriptors dup3'ed to their numbers and the parked ones closed.
 * Throws PlanError when an object has no holding ancestor. Pure.
 */
export function withSharedObjects(
  actions: readonly TreeAction[],
  members: readonly TreeMember[],
  objects: readonly SharedObject[],
  base: number,
): TreeAction[] {
  if (objects.length === 0) return [...actions];
  let next = base;
  const parked = objects.map((object) => {
    const fds = object.slots.map(() => next++);
    return { object, fds, creator: creatorOf(members, object) };
  });
  const out: TreeAction[] = [];
  const created = new Set<number>();
  const createFor = (pid: number): void => {
    if (created.has(pid)) return;
    created.add(pid);
    for (const k of parked.filter((x) => x.creator === pid)) out.push(k.object.create(pid, k.fds));
  };
  for (const a of actions) {
    // A process's objects come after its own actions, before the first child it clones: the child inherits them.
    if (a.kind === 'clone') createFor(a.parent);
    out.push(a);
  }
  for (const m of members) createFor(m.pid);
  for (const m of members) {
    const inherited = parked.filter((k) => isAncestor(members, k.creator, m.pid));
    for (const k of inherited) {
      for (const e of k.object.ends.filter((x) => x.pid === m.pid)) {
        out.push({
          kind: 'fd-dup',
          pid: m.pid,
          from: k.fds[e.slot]!,
          to: e.fd,
          cloexec: e.cloexec,
          why: `pid ${m.pid} fd ${e.fd}: ${e.what}${e.cloexec ? ' (close-on-exec)' : ''}`,
        });
      }
    }
    for (const k of inherited) {
      for (const [slot, fd] of k.fds.entries())
        out.push({ kind: 'fd-close', pid: m.pid, fd, why: `pid ${m.pid}: close the parked ${k.object.slots[slot]} (fd ${fd})` });
    }
  }
  return out;
}

/** A field of tree.json and why it is refused. */
export interface FieldProblem {
  field: string;
  why: string;
}

/** The number of descriptors one object may be held at, in tree.json. */
export const MAX_ENDS = 4096;

/** Why a list of ends from tree.json (at `at`) is no list of ends, or undefined. */
export function endsListProblem(ends: unknown, at: string): FieldProblem | undefined {
  if (!Array.isArray(ends) || ends.length === 0 || ends.length > MAX_ENDS) return { field: at, why: 'no end, or too many' };
  return undefined;
}

/**
 * Why one end from tree.json (at `at`: a process's descriptor on a shared
 * object) is malformed, or undefined: its pid is a process of the tree, its
 * fd a descriptor number, close-on-exec a boolean, and the descriptor is
 * none other (`used` collects "pid:fd" across every object of the tree:
 * one descriptor is one thing).
 */
export function endProblem(
  e: { pid: unknown; fd: unknown; cloexec: unknown },
  at: string,
  pids: ReadonlySet<number>,
  used: Set<string>,
): FieldProblem | undefined {
  if (!pids.has(e.pid as number)) return { field: `${at}.pid`, why: `${String(e.pid).slice(0, 20)} is no process of the tree` };
  if (!Number.isInteger(e.fd) || (e.fd as number) < 0 || (e.fd as number) > 65535)
    return { field: `${at}.fd`, why: `${String(e.fd).slice(0, 20)} is no descriptor` };
  if (typeof e.cloexec !== 'boolean') return { field: `${at}.cloexec`, why: 'must be a boolean' };
  const key = `${e.pid as number}:${e.fd as number}`;
  if (used.has(key)) return { field: `${at}.fd`, why: `pid ${e.pid as number} fd ${e.fd as number} appears twice (in this object or another of the tree)` };
  used.add(key);
  return undefined;
}
