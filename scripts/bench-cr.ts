/**
 * Checkpoint and restore of the same memfill process (guests/workloads/
 * memfill.c: every word written, checked by the process itself after the
 * restore) by four paths in the same guest (the image variant with CRIU),
 * in the same run: crh with page data straight from and into guest RAM (the
 * shared RAM file, agent/ram-transfer.ts), crh with page data over the bulk
 * port, crh with both suspended (row `ssh`: page data in the agent's own
 * frames, over whatever reaches the agent — the agent port now, SSH only as
 * the fallback; up to --ssh-max MiB), and CRIU's
 * `criu dump` + `criu restore -d`. N rounds of each, alternating (each round
 * starting one case later than the last); medians and ratios printed. Every restored process must finish with "memfill ok":
 * a fast wrong restore is not a result.
 *
 * What is timed (host wall clock; the TCG guest's clock runs fast):
 * - crh: checkpointProcess + the image written to the host as `crh cr` keeps
 *   it, and the image read and validated + restoreProcess; the process is
 *   killed between them, untimed. Beside them, image bytes and the raw
 *   channel moving the same bytes with nothing else (readMemory and a
 *   BATCH of 1 MiB WRITE_MEMs of the whole mapping, by the row's path).
 * - criu: `criu dump` and `criu restore -d` over one SSH exec each (images
 *   on the guest's tmpfs), the round trip of an empty exec reported beside;
 *   DETACH before and REAP/ATTACH after are not timed.
 *
 *   node --import tsx scripts/bench-cr.ts [--sizes 1,16,64,256] [--runs 3] [--ssh-max 64] [--untouched 64] [--criu-max 256] [--json FILE]
 */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { criuDumpArgs, criuRestoreArgs, runCriu } from '../harness/criu/commands.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { openGuest } from '../harness/guest/open-guest.ts';
import { bootstrapHost } from '../harness/host/bootstrap.ts';
import { debugRegOffset } from '../harness/x86/registers.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { readCheckpointImage, writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { median, summarize } from './stats.ts';

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '1,16,64,256' },
    runs: { type: 'string', default: '3' },
    'ssh-max': { type: 'string', default: '64' },
    'criu-max': { type: 'string', default: '256' },
    untouched: { type: 'string', default: '64' },
    json: { type: 'string' },
  },
});
const sizes = values.sizes.split(',').map(Number);
const runs = Number(values.runs);
const sshMax = Number(values['ssh-max']);
const criuMax = Number(values['criu-max']);
const untouchedMiB = Number(values.untouched);
const MiB = 1024 * 1024;
const RUN_TIMEOUT_MS = 600_000;

type Path = 'ram' | 'bulk' | 'ssh' | 'criu';
interface Sample {
  path: Path;
  sizeMiB: number;
  untouchedMiB: number;
  checkpointMs: number;
  restoreMs: number;
  /** crh only: the image file's size, and the raw channel's two directions */
  imageBytes?: number;
  rawOutMs?: number;
  rawInMs?: number;
  /** crh only: the checkpoint's capture and image write, the restore's image read and restore proper */
  parts?: { captureMs: number; writeMs: number; readMs: number; restoreMs: number };
}

await bootstrapHost();
const dir = await mkdtemp(path.join(tmpdir(), 'crh-bench-cr-'));
const guest = await openGuest({ artifactsDir: dir, criu: true, agentCwd: '/tmp/bench', log: (l) => console.error(l) });
const { agent, image } = guest;
const ssh = guest.machine.ssh;
const exec = (command: string) => ssh.exec(command);
const ms = (from: number): number => performance.now() - from;

try {
  if (!agent.hasBulk) throw new Error(`no bulk port: ${agent.bulkUnavailable}`);
  if (!agent.hasGuestRam) throw new Error(`no guest RAM file: ${agent.guestRamUnavailable}`);
  const criu = image.criu!;
  const memfill = image.guestPaths.memfill!;
  const breakAt = (await ElfFile.open(image.binaries.memfill!)).symbolAddress('memfill_checkpoint');
  await ssh.run('mkdir -p /tmp/bench');
  const roundTrips: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    await ssh.run('true');
    roundTrips.push(Math.round(ms(t0)));
  }

  const argvOf = (mib: number, untouched: number): string[] => [memfill, String(mib), ...(untouched ? [String(untouched)] : [])];
  /** memfill spawned and run to memfill_checkpoint(), every page written. */
  const stopped = async (mib: number, untouched: number, out: string): Promise<number> => {
    const pid = await spawnWithBreakpoint(agent, { binary: memfill, argv: argvOf(mib, untouched), breakAt }, out);
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: RUN_TIMEOUT_MS });
    if (run.outcome !== 'hit-limit') throw new Error(`memfill ${mib} never reached its checkpoint: ${run.outcome} ${run.code}`);
    return pid;
  };
  /** The restored process runs to its end and says it found every word intact. */
  const finishes = async (pid: number, out: string, mib: number, who: string): Promise<void> => {
    const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    const text = (await agent.call({ op: 'READ_FILE', path: out, maxSize: 4096 })).toString();
    if (end.outcome !== 'exited' || end.code !== 0 || !text.startsWith(`memfill ok ${mib} MiB`)) {
      throw new Error(`${who}-restored memfill ${mib} MiB: ${end.outcome} ${end.code}: ${JSON.stringify(text)}`);
    }
  };

  /** One crh checkpoint + restore of memfill MiB (+ untouched MiB), page data in guest RAM, on the bulk port or on SSH. */
  const crhOnce = async (channel: 'ram' | 'bulk' | 'ssh', mib: number, untouched: number): Promise<Sample> => {
    agent.guestRamSuspended = channel !== 'ram';
    agent.bulkSuspended = channel === 'ssh';
    const expected = { ram: 'guest-ram', bulk: 'bulk', ssh: 'ssh' }[channel];
    if (agent.dataPath !== expected) throw new Error(`the ${channel} row would move page data by ${agent.dataPath}`);
    const argv = argvOf(mib, untouched);
    const out = `/tmp/bench/crh-${mib}.out`;
    const pid = await stopped(mib, untouched, out);
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: 0n });
    const file = path.join(dir, `memfill-${mib}-${channel}.tar`);
    await rm(file, { force: true });

    let t = performance.now();
    const taken = await checkpointProcess(agent, { binary: memfill, argv, envp: [], noAslr: true, pid }, guest.platform);
    const captureMs = ms(t);
    await writeCheckpointImage(taken, file);
    const checkpointMs = ms(t);
    // The data mapping; the kernel merges the untouched one below it (mmap grows down) into the same VMA.
    const region = taken.regions.find((r) => r.end - r.start === BigInt((mib + untouched) * MiB) && r.file === null);
    if (!region) throw new Error(`memfill ${mib}: no ${mib + untouched} MiB anonymous region in the image`);

    // The raw channel: the same bytes, nothing else (the process still stopped).
    const ranges = [{ address: region.end - BigInt(mib * MiB), length: mib * MiB }];
    t = performance.now();
    const raw = await agent.readMemory(pid, ranges);
    const rawOutMs = ms(t);
    t = performance.now();
    const writes = [];
    for (let off = 0; off < raw.length; off += MiB)
      writes.push({ op: 'WRITE_MEM' as const, pid, address: ranges[0]!.address + BigInt(off), data: raw.subarray(off, off + MiB) });
    const steps = await agent.batch(writes);
    if (steps.some((s) => !s.ok)) throw new Error('raw write failed');
    const rawInMs = ms(t);
    await agent.call({ op: 'KILL', pid });

    t = performance.now();
    const back = await readCheckpointImage(file);
    const readMs = ms(t);
    const restored = await restoreProcess(agent, back, { policy: DEFAULT_POLICY, stdoutPath: out });
    const restoreMs = ms(t);
    await finishes(restored.pid, out, mib, `crh (${channel})`);
    const imageBytes = (await stat(file)).size;
    await rm(file, { force: true });
    agent.bulkSuspended = false;
    agent.guestRamSuspended = false;
    const parts = { captureMs, writeMs: checkpointMs - captureMs, readMs, restoreMs: restoreMs - readMs };
    return { path: channel, sizeMiB: mib, untouchedMiB: untouched, checkpointMs, restoreMs, imageBytes, rawOutMs, rawInMs, parts };
  };

  /** One CRIU dump + restore of the same process, handed over by DETACH and taken back by ATTACH. */
  const criuOnce = async (mib: number, untouched: number): Promise<Sample> => {
    const out = `/tmp/bench/criu-${mib}.out`;
    const imgDir = `/tmp/bench/criu-img-${mib}`;
    await ssh.run(`rm -rf ${imgDir} && mkdir -p ${imgDir}`);
    const pid = await stopped(mib, untouched, out);
    await agent.call({ op: 'DETACH', pid });
    const dump = await runCriu(exec, criuDumpArgs(criu.command, pid, imgDir));
    if (!dump.ok) throw new Error(`criu dump failed: ${dump.stderr}\n${await ssh.run(`tail -5 ${imgDir}/dump.log`)}`);
    await agent.call({ op: 'REAP', pid, timeoutMs: 10_000 });
    const restore = await runCriu(exec, criuRestoreArgs(criu.command, imgDir, `${imgDir}/pid`));
    if (!restore.ok) throw new Error(`criu restore failed: ${restore.stderr}\n${await ssh.run(`tail -5 ${imgDir}/restore.log`)}`);
    const restoredPid = Number((await ssh.run(`cat ${imgDir}/pid`)).trim());
    await agent.call({ op: 'ATTACH', pid: restoredPid });
    await finishes(restoredPid, out, mib, 'criu');
    await ssh.run(`rm -rf ${imgDir}`);
    return { path: 'criu', sizeMiB: mib, untouchedMiB: untouched, checkpointMs: dump.wallMs, restoreMs: restore.wallMs };
  };

  const cases: Array<[Path, number, number]> = [];
  for (const size of sizes) {
    cases.push(['ram', size, 0], ['bulk', size, 0]);
    if (size <= sshMax) cases.push(['ssh', size, 0]);
    if (size <= criuMax) cases.push(['criu', size, 0]);
  }
  if (untouchedMiB > 0) cases.push(['ram', 64, untouchedMiB], ['bulk', 64, untouchedMiB], ['criu', 64, untouchedMiB]);
  const samples: Sample[] = [];
  for (let round = 0; round < runs; round++) {
    // Each round starts one case later: no path always runs first, or always right after CRIU's 64 MiB
    // (whose aftermath in the guest slowed whatever came next by up to 1.5 s).
    const order = cases.map((_, i) => cases[(i + round) % cases.length]!);
    for (const [which, size, untouched] of order) {
      const s = which === 'criu' ? await criuOnce(size, untouched) : await crhOnce(which, size, untouched);
      const p = s.parts;
      const extra =
        s.imageBytes === undefined
          ? ''
          : ` (capture ${p!.captureMs.toFixed(0)} + write ${p!.writeMs.toFixed(0)}; read ${p!.readMs.toFixed(0)} + restore ${p!.restoreMs.toFixed(0)}), image ${s.imageBytes} B, raw out ${s.rawOutMs!.toFixed(0)} ms, raw in ${s.rawInMs!.toFixed(0)} ms`;
      console.error(
        `round ${round + 1}/${runs} ${which} ${size} MiB${untouched ? ` +${untouched} untouched` : ''}: checkpoint ${s.checkpointMs.toFixed(0)} ms, restore ${s.restoreMs.toFixed(0)} ms${extra}`,
      );
      samples.push(s);
    }
  }

  const mbps = (bytes: number, t: number): string => (bytes / 1e6 / (t / 1000)).toFixed(0);
  const of = (which: Path, size: number, untouched: number) => samples.filter((s) => s.path === which && s.sizeMiB === size && s.untouchedMiB === untouched);
  const total = (mine: Sample[]): number => median(mine.map((s) => s.checkpointMs)) + median(mine.map((s) => s.restoreMs));
  const header = [
    'process',
    'path',
    'checkpoint ms',
    'restore ms',
    'C+R MB/s',
    'image bytes',
    'raw out ms (MB/s)',
    'raw in ms (MB/s)',
    'C+R vs bulk',
    'C+R vs criu',
  ];
  const rows: string[][] = [];
  for (const [which, size, untouched] of cases) {
    const mine = of(which, size, untouched);
    const c = median(mine.map((s) => s.checkpointMs));
    const r = median(mine.map((s) => s.restoreMs));
    const bytes = size * MiB;
    const crh = which !== 'criu';
    const o = crh ? median(mine.map((s) => s.rawOutMs!)) : 0;
    const i = crh ? median(mine.map((s) => s.rawInMs!)) : 0;
    const bulk = of('bulk', size, untouched);
    const criuRuns = of('criu', size, untouched);
    rows.push([
      `${size} MiB${untouched ? ` + ${untouched} MiB untouched` : ''}`,
      which,
      c.toFixed(0),
      r.toFixed(0),
      mbps(2 * bytes, c + r),
      crh ? String(median(mine.map((s) => s.imageBytes!))) : '—',
      crh ? `${o.toFixed(0)} (${mbps(bytes, o)})` : '—',
      crh ? `${i.toFixed(0)} (${mbps(bytes, i)})` : '—',
      bulk.length ? ((c + r) / total(bulk)).toFixed(2) : '—',
      criuRuns.length ? ((c + r) / total(criuRuns)).toFixed(2) : '—',
    ]);
  }
  console.log(
    `CRIU ${criu.version} (Debian ${criu.suite}), image ${image.key}, guest ${guest.profile.accel ?? ''} ${guest.hello.release}; medians of ${runs} runs; empty SSH exec round trip: ${summarize(roundTrips)}`,
  );
  console.log(`| ${header.join(' | ')} |\n|${header.map(() => '---').join('|')}|\n${rows.map((r) => `| ${r.join(' | ')} |`).join('\n')}`);
  if (values.json) await writeFile(values.json, `${JSON.stringify(samples, null, 2)}\n`);
} finally {
  await guest.close();
  await rm(dir, { recursive: true, force: true });
}
