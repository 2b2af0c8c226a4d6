// expect: with guest RAM in a shared file or a saved RAM file mapped copy-on-write (a saved-state start), whole pages are read from and written into that file at the frames the agent names — byte-exact against READ_MEM over SSH, a read-only file mapping copied on write (its file untouched), BATCH failures in order — and a checkpointed memfill restored through it prints "memfill ok", while one byte changed in guest RAM from the host makes the restored process report the difference; the saved RAM file a copy-on-write start maps is never written.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import t from 'tap';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { describeGuestRam, GuestRam, GUEST_PAGE_BYTES, type GuestRamSource } from '../harness/agent/guest-ram.ts';
import type { AgentOp } from '../harness/agent/ops.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { parseMaps } from '../harness/restore/proc-maps.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { debugRegOffset } from '../harness/x86/registers.ts';

const MiB = 1024 * 1024;

t.test('page data in guest RAM', async (t) => {
  const guest = await startGuest(t, 'guest-ram');
  const { agent, machine } = guest;
  const source = machine.guestRam!;
  t.equal(agent.dataPath, 'guest-ram', `page data goes through guest RAM (${agent.guestRamUnavailable ?? describeGuestRam(source)})`);
  // A saved-state start maps the saved RAM private: the file is every later machine's start, and must never change.
  const savedRamHash = source.kind === 'private-mapping' ? sha256File(source.file) : undefined;
  const ram = GuestRam.of(source);
  t.teardown(() => ram.close());
  const binary = guest.image.guestPaths.memfill!;
  const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv: [binary, '1'], envp: [], stdoutPath: '/tmp/guest-ram.out', noAslr: true });
  t.teardown(() => agent.call({ op: 'KILL', pid }).catch(() => {}));
  const maps = parseMaps((await agent.call({ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: 1 << 20 })).toString());
  const stack = maps.find((m) => m.name === '[stack]')!;
  const text = maps.find((m) => m.perms.includes('x') && m.name === binary)!;
  const at = stack.end - 0x10000n;
  const viaSsh = (address: bigint, length: number): Promise<Buffer> => agent.call({ op: 'READ_MEM', pid, address, length });
  const pattern = (seed: number, length = 0x8000): Buffer => Buffer.from(Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff));
  const stats = { ...agent.ramStats };

  const textLength = Number(text.end - text.start);
  t.same(
    await agent.readMemory(pid, [{ address: text.start, length: textLength }]),
    await viaSsh(text.start, textLength),
    'the program text read from guest RAM equals READ_MEM over SSH',
  );
  t.ok(
    agent.ramStats.pagesRead >= stats.pagesRead + textLength / GUEST_PAGE_BYTES - agent.ramStats.pagesThroughAgent,
    `its pages came from the RAM file (${agent.ramStats.pagesRead - stats.pagesRead} pages read there)`,
  );

  const write = (data: Buffer, address = at): AgentOp => ({ op: 'WRITE_MEM', pid, address, data });
  const written = agent.ramStats.pagesWritten;
  let steps = await agent.batch([write(pattern(1))]);
  t.ok(
    steps.every((s) => s.ok),
    'a whole-page write in a BATCH succeeds',
  );
  t.equal(agent.ramStats.pagesWritten, written + 8, 'its 8 pages went into the RAM file');
  t.same(await viaSsh(at, 0x8000), pattern(1), 'and the process reads them (READ_MEM over SSH)');

  // The program text is a read-only private file mapping: the write must land in a private copy, never in the file's page.
  const fileBefore = await agent.call({ op: 'READ_FILE', path: binary, maxSize: 64 * MiB });
  steps = await agent.batch([write(pattern(2, 4096), text.start)]);
  t.ok(
    steps.every((s) => s.ok),
    'a write over the read-only text succeeds',
  );
  t.same(await viaSsh(text.start, 4096), pattern(2, 4096), 'the process sees it');
  t.same(
    await agent.call({ op: 'READ_FILE', path: binary, maxSize: 64 * MiB }),
    fileBefore,
    'the program file (its page cache) is unchanged: the write went to a copy on write',
  );

  // BATCH order and failures, as a plain BATCH.
  steps = await agent.batch([write(Buffer.alloc(8), 0x10n), write(pattern(3))]);
  t.same(
    steps.map((s) => s.ok),
    [false],
    'a failing op before a page write stops the BATCH there',
  );
  t.same(await viaSsh(at, 0x8000), pattern(1), 'the page write after it did not happen');
  steps = await agent.batch([write(pattern(4), 0x1000n), write(pattern(5))]);
  t.same(
    steps.map((s) => s.ok),
    [false],
    'a page write to an unmapped address fails (no frame, then WRITE_MEM fails) and stops the BATCH',
  );
  steps = await agent.batch([write(pattern(6)), write(Buffer.alloc(8), 0x10n), write(pattern(7))]);
  t.same(
    steps.map((s) => s.ok),
    [true, false],
    'a page write, a failure, a skipped page write',
  );
  t.same(await viaSsh(at, 0x8000), pattern(6), 'the write before the failure landed, the one after did not');

  // Control: guest RAM at frame × 4096 is the guest's page — one byte changed there from the host is seen by the process.
  const [frame] = await agent.call({ op: 'PAGE_FRAMES', pid, mode: 'check', ranges: [{ address: at, length: GUEST_PAGE_BYTES }] });
  t.ok(frame, `the stack page has a frame (0x${frame?.toString(16)})`);
  poke(ram, frame! * GUEST_PAGE_BYTES + 5, pattern(6)[5]! ^ 0xff);
  t.equal((await viaSsh(at + 5n, 1))[0], pattern(6)[5]! ^ 0xff, 'a byte changed in guest RAM at frame × 4096 + 5 is what the process reads at page + 5');

  t.test('memfill checkpointed and restored through guest RAM', async (t) => {
    const restoredOnce = async (corrupt: boolean): Promise<string> => {
      const out = `/tmp/guest-ram-memfill-${corrupt ? 'control' : 'plain'}.out`;
      const argv = [binary, '4'];
      const breakAt = (await ElfFile.open(guest.image.binaries.memfill!)).symbolAddress('memfill_checkpoint');
      const mpid = await spawnWithBreakpoint(agent, { binary, argv, breakAt }, out);
      const run = await agent.call({ op: 'RUN', pid: mpid, stopAfterHits: 1, timeoutMs: 300_000 });
      t.equal(run.outcome, 'hit-limit', 'memfill reached its checkpoint');
      await agent.call({ op: 'POKEUSER', pid: mpid, offset: debugRegOffset(7), value: 0n });
      const before = { ...agent.ramStats };
      const image = await checkpointProcess(agent, { binary, argv, envp: [], noAslr: true, pid: mpid }, guest.platform);
      t.ok(
        agent.ramStats.pagesRead - before.pagesRead >= 1024,
        `the checkpoint read its 4 MiB from guest RAM (${agent.ramStats.pagesRead - before.pagesRead} pages; ${agent.ramStats.pagesThroughAgent - before.pagesThroughAgent} through the agent)`,
      );
      await agent.call({ op: 'KILL', pid: mpid });
      const restored = await restoreProcess(agent, image, { policy: DEFAULT_POLICY, stdoutPath: out });
      t.ok(
        agent.ramStats.pagesWritten - before.pagesWritten >= 1024,
        `the restore wrote its 4 MiB into guest RAM (${agent.ramStats.pagesWritten - before.pagesWritten} pages)`,
      );
      if (corrupt) {
        const region = image.regions.find((r) => r.file === null && r.end - r.start === BigInt(4 * MiB))!;
        const target = region.start + BigInt(3 * MiB) + 0x123n;
        const [f] = await agent.call({
          op: 'PAGE_FRAMES',
          pid: restored.pid,
          mode: 'check',
          ranges: [{ address: target & ~0xfffn, length: GUEST_PAGE_BYTES }],
        });
        const offset = f! * GUEST_PAGE_BYTES + Number(target & 0xfffn);
        poke(ram, offset, peek(ram, offset) ^ 0x01);
      }
      const end = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: 300_000 });
      const text = (await agent.call({ op: 'READ_FILE', path: out, maxSize: 4096 })).toString();
      t.comment(`${corrupt ? 'control' : 'restore'}: ${end.outcome} ${end.code}: ${text.trim()}`);
      return text;
    };
    t.match(await restoredOnce(false), /^memfill ok 4 MiB sum=/, 'the restored memfill finds every word intact');
    t.match(
      await restoredOnce(true),
      /^memfill mismatch at offset 3146016\b/,
      'control: one bit flipped in guest RAM at the restored page is the mismatch the process reports',
    );
  });

  if (savedRamHash !== undefined)
    t.test('the saved RAM file is untouched', async (t) => {
      t.equal(
        sha256File((source as Extract<GuestRamSource, { kind: 'private-mapping' }>).file),
        savedRamHash,
        'its SHA-256 after all the writes is the one before',
      );
    });
});

function sha256File(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** The page of guest RAM holding byte `offset` (from guest-physical 0), read from the host. */
function pageAt(ram: GuestRam, offset: number): { frames: Uint32Array; page: Buffer } {
  const frames = Uint32Array.of(Math.floor(offset / GUEST_PAGE_BYTES));
  const page = Buffer.alloc(GUEST_PAGE_BYTES);
  ram.readPages(frames, page, 0);
  return { frames, page };
}

function peek(ram: GuestRam, offset: number): number {
  return pageAt(ram, offset).page[offset % GUEST_PAGE_BYTES]!;
}

function poke(ram: GuestRam, offset: number, value: number): void {
  const { frames, page } = pageAt(ram, offset);
  page[offset % GUEST_PAGE_BYTES] = value & 0xff;
  ram.writePages(frames, page, 0);
}
