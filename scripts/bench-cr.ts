/**
 * Checkpoint and restore of a process holding 1, 16, 64 and 256 MiB
 * (guests/workloads/memfill.c: every word written, checked by the process
 * itself after the restore), the image on the host as `crh cr` keeps it.
 * For each size: checkpoint (capture + image written) and restore (image
 * read and validated + restore + read-back) times, MB/s, image bytes; and
 * the raw channel moving the same bytes with nothing else (READ_MEM_BULK /
 * WRITE_MEM_BULK of the whole mapping, or READ_MEM / WRITE_MEM over SSH).
 * Each size runs over the bulk port and, up to --ssh-max MiB, with the bulk
 * port suspended (page data over SSH), in the same guest.
 *
 *   node --import tsx scripts/bench-cr.ts [--sizes 1,16,64,256] [--runs 3] [--ssh-max 64] [--json FILE]
 *
 * Peers: PEERS below is where another engine (CRIU, in the same guest)
 * plugs in a column — a function that checkpoints and restores the same
 * workload and reports its two times; none is registered here.
 */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { openGuest, type Guest } from '../harness/guest/open-guest.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { debugRegOffset } from '../harness/x86/registers.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { readCheckpointImage, writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { readGuestText } from '../harness/agent/read-file.ts';
import { median } from './stats.ts';

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '1,16,64,256' },
    runs: { type: 'string', default: '3' },
    'ssh-max': { type: 'string', default: '64' },
    untouched: { type: 'string', default: '64' },
    json: { type: 'string' },
  },
});
const sizes = values.sizes.split(',').map(Number);
const runs = Number(values.runs);
const sshMax = Number(values['ssh-max']);
const untouchedMiB = Number(values.untouched);
const MiB = 1024 * 1024;
const RUN_TIMEOUT_MS = 120_000;

/** Another engine's checkpoint + restore of `memfill sizeMiB` in the same guest (a CRIU column). */
export interface PeerEngine {
  name: string;
  checkpointRestore(guest: Guest, sizeMiB: number): Promise<{ checkpointMs: number; restoreMs: number }>;
}
/** Register peers here (e.g. CRIU once the guest has it); each gets its own columns. */
const PEERS: PeerEngine[] = [];

interface Sample {
  channel: 'bulk' | 'ssh';
  sizeMiB: number;
  untouchedMiB: number;
  checkpointMs: number;
  restoreMs: number;
  imageBytes: number;
  rawOutMs: number;
  rawInMs: number;
}

const dir = await mkdtemp(path.join(tmpdir(), 'crh-bench-cr-'));
const guest = await openGuest({ artifactsDir: dir, log: (l) => console.error(l) });
const ms = (from: bigint): number => Number(process.hrtime.bigint() - from) / 1e6;
try {
  if (!guest.agent.hasBulk) throw new Error(`no bulk port: ${guest.agent.bulkUnavailable}`);
  const binary = guest.image.guestPaths['memfill']!;
  const ready = guest.symbols.resolve('memfill:ready');
  const samples: Sample[] = [];

  /** One checkpoint + restore of memfill MiB (+ untouched MiB), checked by the process itself. */
  const once = async (channel: 'bulk' | 'ssh', sizeMiB: number, untouched: number): Promise<Sample> => {
    guest.agent.bulkSuspended = channel === 'ssh';
    const argv = [binary, String(sizeMiB), String(untouched)];
    const out = `/tmp/memfill-${sizeMiB}.out`;
    const pid = await spawnWithBreakpoint(guest.agent, { binary, argv, breakAt: ready }, out);
    const run = await guest.agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
    if (run.outcome !== 'hit-limit') throw new Error(`memfill ${sizeMiB}: ${run.outcome} ${run.code} before ready()`);
    await guest.agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
    const file = path.join(dir, `memfill-${sizeMiB}-${channel}.tar`);
    await rm(file, { force: true });

    let t = process.hrtime.bigint();
    const image = await checkpointProcess(guest.agent, { binary, argv, envp: [], noAslr: true, pid }, guest.platform);
    await writeCheckpointImage(image, file);
    const checkpointMs = ms(t);
    // The data mapping; the kernel merges the untouched one below it (mmap grows down) into the same VMA.
    const region = image.regions.find((r) => r.end - r.start === BigInt((sizeMiB + untouched) * MiB) && r.file === null);
    if (!region) throw new Error(`memfill ${sizeMiB}: no ${sizeMiB + untouched} MiB anonymous region in the image`);

    // The raw channel: the same bytes, nothing else (the process still stopped).
    const ranges = [{ address: region.end - BigInt(sizeMiB * MiB), length: sizeMiB * MiB }];
    t = process.hrtime.bigint();
    const raw = await guest.agent.readMemory(pid, ranges);
    const rawOutMs = ms(t);
    t = process.hrtime.bigint();
    if (channel === 'bulk' || sizeMiB <= sshMax) {
      const writes = [];
      for (let off = 0; off < raw.length; off += MiB) writes.push({ op: 'WRITE_MEM' as const, pid, address: ranges[0]!.address + BigInt(off), data: raw.subarray(off, off + MiB) });
      const steps = await guest.agent.batch(writes);
      if (steps.some((s) => !s.ok)) throw new Error('raw write failed');
    }
    const rawInMs = ms(t);
    await guest.agent.call({ op: 'KILL', pid });

    t = process.hrtime.bigint();
    const back = await readCheckpointImage(file);
    const restored = await restoreProcess(guest.agent, back, { policy: DEFAULT_POLICY, stdoutPath: out });
    const restoreMs = ms(t);
    const end = await guest.agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    const said = (await readGuestText(guest.agent, out, 4096)).trim();
    if (end.outcome !== 'exited' || end.code !== 0 || said !== `ok ${sizeMiB} MiB`) throw new Error(`memfill ${sizeMiB} (${channel}) after restore: ${end.outcome} ${end.code}: ${said}`);
    const imageBytes = (await stat(file)).size;
    await rm(file, { force: true });
    return { channel, sizeMiB, untouchedMiB: untouched, checkpointMs, restoreMs, imageBytes, rawOutMs, rawInMs };
  };

  const cases: Array<[('bulk' | 'ssh'), number, number]> = [];
  for (const size of sizes) {
    cases.push(['bulk', size, 0]);
    if (size <= sshMax) cases.push(['ssh', size, 0]);
  }
  if (untouchedMiB > 0) cases.push(['bulk', 64, untouchedMiB]);
  for (let round = 0; round < runs; round++) {
    for (const [channel, size, untouched] of cases) {
      const s = await once(channel, size, untouched);
      console.error(`${channel} ${size} MiB${untouched ? ` +${untouched} untouched` : ''}: checkpoint ${s.checkpointMs.toFixed(0)} ms, restore ${s.restoreMs.toFixed(0)} ms, image ${s.imageBytes} B, raw out ${s.rawOutMs.toFixed(0)} ms, raw in ${s.rawInMs.toFixed(0)} ms`);
      samples.push(s);
    }
  }
  guest.agent.bulkSuspended = false;

  const peerCells: Record<string, string> = {};
  for (const peer of PEERS) {
    for (const size of sizes) {
      const r = await peer.checkpointRestore(guest, size);
      peerCells[`${peer.name}:${size}`] = `${r.checkpointMs.toFixed(0)} + ${r.restoreMs.toFixed(0)}`;
    }
  }
  const mbps = (bytes: number, t: number): string => (bytes / 1e6 / (t / 1000)).toFixed(0);
  const header = ['process', 'channel', 'checkpoint ms', 'restore ms', 'C+R MB/s', 'image bytes', 'raw out ms (MB/s)', 'raw in ms (MB/s)', ...PEERS.map((p) => `${p.name} C + R ms`)];
  const rows: string[][] = [];
  for (const [channel, size, untouched] of cases) {
    const mine = samples.filter((s) => s.channel === channel && s.sizeMiB === size && s.untouchedMiB === untouched);
    const c = median(mine.map((s) => s.checkpointMs));
    const r = median(mine.map((s) => s.restoreMs));
    const o = median(mine.map((s) => s.rawOutMs));
    const i = median(mine.map((s) => s.rawInMs));
    const bytes = size * MiB;
    rows.push([
      `${size} MiB${untouched ? ` + ${untouched} MiB untouched` : ''}`, channel, c.toFixed(0), r.toFixed(0), mbps(2 * bytes, c + r), String(median(mine.map((s) => s.imageBytes))),
      `${o.toFixed(0)} (${mbps(bytes, o)})`, channel === 'ssh' && size > sshMax ? '—' : `${i.toFixed(0)} (${mbps(bytes, i)})`,
      ...PEERS.map((p) => peerCells[`${p.name}:${size}`] ?? '—'),
    ]);
  }
  console.log(`| ${header.join(' | ')} |\n|${header.map(() => '---').join('|')}|\n${rows.map((r) => `| ${r.join(' | ')} |`).join('\n')}`);
  console.log(`\nmedians of ${runs} runs; guest ${guest.profile.accel ?? ''} ${guest.hello.release}`);
  if (values.json) await writeFile(values.json, `${JSON.stringify(samples, null, 2)}\n`);
} finally {
  await guest.close();
  await rm(dir, { recursive: true, force: true });
}
