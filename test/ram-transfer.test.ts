// expect: the guest-RAM path copies runs of consecutive frames at frame × 4096 of the RAM file, refuses a frame beyond it, and moves through the agent exactly the pages with no frame or whose frame changed between the copy and the check — on reads and on writes.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { GuestRam, GUEST_PAGE_BYTES } from '../harness/agent/guest-ram.ts';
import type { AgentOp, MemoryRange } from '../harness/agent/ops.ts';
import { batchThroughRam, readThroughRam, type RamAgent, type RamBatchStep, type RamStats } from '../harness/agent/ram-transfer.ts';

const PAGES = 16;
const page = (i: number): Buffer => Buffer.alloc(GUEST_PAGE_BYTES, i + 1);

function ramFile(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'crh-ram-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'ram');
  writeFileSync(file, Buffer.concat(Array.from({ length: PAGES }, (_, i) => page(i))));
  return file;
}

/**
 * The agent's side of the protocol as seen from the host: the frames it
 * names, then the frames a check finds (here scripted, since a guest kernel
 * moving a page cannot be provoked on demand), and what went through it.
 */
function scriptedAgent(named: number[], checked: number[]): RamAgent & { calls: string[]; throughAgent: MemoryRange[]; writes: AgentOp[] } {
  const calls: string[] = [];
  const throughAgent: MemoryRange[] = [];
  const writes: AgentOp[] = [];
  return {
    calls,
    throughAgent,
    writes,
    async frames(op) {
      calls.push(`PAGE_FRAMES ${op.mode}`);
      return Uint32Array.from(op.mode === 'check' ? checked : named);
    },
    async readThroughAgent(_pid, ranges) {
      throughAgent.push(...ranges);
      return Buffer.concat(ranges.map((r) => Buffer.alloc(r.length, 0xee)));
    },
    async batchThroughAgent(ops) {
      calls.push(`BATCH ${ops.map((o) => o.op).join(',')}`);
      const steps: RamBatchStep[] = [];
      for (const op of ops) {
        if (op.op === 'PAGE_FRAMES') steps.push({ ok: true, op, result: Uint32Array.from(named) });
        else if (op.op === 'WRITE_MEM' && op.address === 0n) {
          steps.push({ ok: false, op, errno: 14, message: 'EFAULT' });
          break;
        } else {
          if (op.op === 'WRITE_MEM') writes.push(op);
          steps.push({ ok: true, op, result: undefined });
        }
      }
      return steps;
    },
  };
}

const stats = (): RamStats => ({ pagesRead: 0, pagesWritten: 0, pagesThroughAgent: 0 });

t.test('reads: runs of frames from the file, no-frame and moved pages through the agent', async (t) => {
  const ram = GuestRam.open(ramFile(t), PAGES * GUEST_PAGE_BYTES);
  t.teardown(() => ram.close());
  // pages 0-1 in frames 3-4 (one run), page 2 has no frame, page 3 in frame 9 moves to 10 during the copy.
  const agent = scriptedAgent([3, 4, 0, 9], [3, 4, 0, 10]);
  const s = stats();
  const out = await readThroughRam(agent, ram, s, 1, [{ address: 0x10000n, length: 4 * GUEST_PAGE_BYTES }]);
  t.same(out.subarray(0, 2 * GUEST_PAGE_BYTES), Buffer.concat([page(3), page(4)]), 'pages 0 and 1 are frames 3 and 4 of the file');
  t.same(out.subarray(2 * GUEST_PAGE_BYTES), Buffer.alloc(2 * GUEST_PAGE_BYTES, 0xee), 'pages 2 (no frame) and 3 (moved) are what the agent read');
  t.same(agent.throughAgent, [{ address: 0x12000n, length: 2 * GUEST_PAGE_BYTES }], 'as one range through the agent');
  t.same(s, { pagesRead: 2, pagesWritten: 0, pagesThroughAgent: 2 });
  t.same(agent.calls, ['PAGE_FRAMES read', 'PAGE_FRAMES check'], 'frames named, copied, checked');
});

t.test('a frame beyond the file is an error, never a read of something else', async (t) => {
  const ram = GuestRam.open(ramFile(t), PAGES * GUEST_PAGE_BYTES);
  t.teardown(() => ram.close());
  await t.rejects(readThroughRam(scriptedAgent([PAGES], [PAGES]), ram, stats(), 1, [{ address: 0n, length: GUEST_PAGE_BYTES }]), /beyond guest RAM/);
  t.throws(
    () => GuestRam.open(ramFile(t), 2 * PAGES * GUEST_PAGE_BYTES),
    /holds 65536 bytes, the machine has 131072/,
    "a file of another size than the machine's RAM is refused",
  );
});

t.test('writes: into the file at the frames; a moved page again through the agent; BATCH order kept', async (t) => {
  const file = ramFile(t);
  const ram = GuestRam.open(file, PAGES * GUEST_PAGE_BYTES);
  t.teardown(() => ram.close());
  const agent = scriptedAgent([5, 7], [5, 8]);
  const s = stats();
  const data = Buffer.concat([Buffer.alloc(GUEST_PAGE_BYTES, 0xa1), Buffer.alloc(GUEST_PAGE_BYTES, 0xa2)]);
  const before: AgentOp = { op: 'POKEUSER', pid: 1, offset: 0, value: 0n };
  const after: AgentOp = { op: 'POKEUSER', pid: 1, offset: 8, value: 0n };
  const steps = await batchThroughRam(agent, ram, s, [before, { op: 'WRITE_MEM', pid: 1, address: 0x20000n, data }, after]);
  t.same(
    steps.map((x) => [x.op.op, x.ok]),
    [
      ['POKEUSER', true],
      ['WRITE_MEM', true],
      ['POKEUSER', true],
    ],
    'one step per op, in order',
  );
  const now = readFileSync(file);
  t.same(now.subarray(5 * GUEST_PAGE_BYTES, 6 * GUEST_PAGE_BYTES), Buffer.alloc(GUEST_PAGE_BYTES, 0xa1), 'page 0 is in frame 5');
  t.same(now.subarray(7 * GUEST_PAGE_BYTES, 8 * GUEST_PAGE_BYTES), Buffer.alloc(GUEST_PAGE_BYTES, 0xa2), 'page 1 went into frame 7 too');
  t.same(
    agent.writes.map((w) => (w.op === 'WRITE_MEM' ? [w.address, w.data.length, w.data[0]] : [])),
    [[0x21000n, GUEST_PAGE_BYTES, 0xa2]],
    'and, its frame having moved, again as a WRITE_MEM through the agent',
  );
  t.same(
    agent.calls,
    ['BATCH POKEUSER,PAGE_FRAMES', 'PAGE_FRAMES check', 'BATCH WRITE_MEM', 'BATCH POKEUSER'],
    'the op before the run goes with the frames request',
  );
  t.same(s, { pagesRead: 0, pagesWritten: 1, pagesThroughAgent: 1 });

  const failing = scriptedAgent([5], [5]);
  const stopped = await batchThroughRam(failing, ram, stats(), [
    { op: 'WRITE_MEM', pid: 1, address: 0n, data: Buffer.alloc(8) },
    { op: 'WRITE_MEM', pid: 1, address: 0x20000n, data: Buffer.alloc(GUEST_PAGE_BYTES) },
  ]);
  t.same(
    stopped.map((x) => x.ok),
    [false],
    'a failing op before a page write stops the BATCH; the page write is not done',
  );
  t.same(failing.calls, ['BATCH WRITE_MEM,PAGE_FRAMES'], 'no copy after the failure');
});
