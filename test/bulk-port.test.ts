// expect: in a real guest the agent's bulk port carries page data byte-exact both ways, and stays in step with the requests when a BATCH fails before, at, or after a bulk write.
import t from 'tap';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { BULK_MIN_BYTES } from '../harness/agent/client.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import type { AgentOp } from '../harness/agent/ops.ts';

t.test('bulk port', async (t) => {
  const guest = await startGuest(t, 'bulk-port');
  const { agent } = guest;
  // Whole pages would go straight through guest RAM (test/guest-ram.test.ts): this test is the port's.
  agent.guestRamSuspended = true;
  t.ok(agent.hasBulk, `the guest has the bulk port (${agent.bulkUnavailable ?? 'attached'})`);
  const binary = guest.image.guestPaths.memfill!;
  const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv: [binary, '1'], envp: [], stdoutPath: '/tmp/bulk-port.out', noAslr: true });
  t.teardown(() => agent.call({ op: 'KILL', pid }).catch(() => {}));
  const maps = parseMaps((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: 1 << 20 })).toString());
  const stack = maps.find((m) => m.name === '[stack]')!;
  const text = maps.find((m) => m.perms.includes('x') && m.name === binary)!;
  const at = stack.end - 0x10000n;
  const pattern = (seed: number): Buffer => Buffer.from(Array.from({ length: 0x8000 }, (_, i) => (i * 7 + seed) & 0xff));

  const viaSsh = async (address: bigint, length: number): Promise<Buffer> => agent.call({ op: 'READ_MEM', pid, address, length });
  const viaBulk = async (address: bigint, length: number): Promise<Buffer> => agent.readMemory(pid, [{ address, length }]);

  t.same(
    await viaBulk(text.start, Number(text.end - text.start)),
    await viaSsh(text.start, Number(text.end - text.start)),
    'the program text read over the port equals READ_MEM over SSH',
  );
  const two = await agent.readMemory(pid, [
    { address: text.start, length: 4096 },
    { address: at, length: 4096 },
  ]);
  t.same(two, Buffer.concat([await viaSsh(text.start, 4096), await viaSsh(at, 4096)]), 'two ranges in one frame, in order');

  const write = (data: Buffer, address = at): AgentOp => ({ op: 'WRITE_MEM', pid, address, data });
  t.ok(pattern(1).length >= BULK_MIN_BYTES, 'the writes are large enough to take the port');
  let steps = await agent.batch([write(pattern(1))]);
  t.ok(
    steps.every((s) => s.ok),
    'a bulk write in a BATCH succeeds',
  );
  t.same(await viaSsh(at, 0x8000), pattern(1), 'its bytes are in the process (read back over SSH)');

  // A failing step first: the two bulk writes after it are not run, and their frames must be drained.
  steps = await agent.batch([write(Buffer.alloc(8), 0x10n), write(pattern(2)), write(pattern(3))]);
  t.equal(steps.length, 1, 'the BATCH stops at the failing write');
  t.notOk(steps[0]!.ok, 'which fails');
  t.same(await viaSsh(at, 0x8000), pattern(1), 'the skipped bulk writes wrote nothing');
  // A failing bulk write itself (an unmapped address): its frame is consumed, the next request still lines up.
  steps = await agent.batch([write(pattern(4), 0x1000n), write(pattern(5))]);
  t.equal(steps.length, 1, 'a bulk write to an unmapped address fails and stops the BATCH');
  t.notOk(steps[0]!.ok);
  steps = await agent.batch([write(pattern(6)), write(Buffer.alloc(8), 0x10n), write(pattern(7))]);
  t.same(
    steps.map((s) => s.ok),
    [true, false],
    'a bulk write, then a failure, then a skipped bulk write',
  );
  t.same(await viaBulk(at, 0x8000), pattern(6), 'the port still reads in step: the write before the failure landed, the one after did not');
  t.ok(agent.hasBulk, 'and the port is still attached');

  // The same through SSH, for comparison: the client falls back when the port is suspended.
  agent.bulkSuspended = true;
  steps = await agent.batch([write(pattern(8))]);
  t.ok(steps.every((s) => s.ok));
  t.same(await viaBulk(at, 0x8000), pattern(8), 'suspended: readMemory and the write go over SSH');
  agent.bulkSuspended = false;
  t.same(await viaBulk(at, 0x8000), pattern(8), 'resumed: the port reads what SSH wrote');
});
