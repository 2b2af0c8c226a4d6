/**
 * crh's checkpoint + restore vs CRIU's dump + restore, side by side: the same
 * memfill process (1 MiB and 64 MiB of written anonymous memory) stopped at
 * the same breakpoint by the agent, in the same guest (the image variant
 * with CRIU), N runs of each alternating, medians and ratios. Every run's
 * restored process must finish with "memfill ok": a fast wrong restore is
 * not a result.
 *
 * What is timed (host wall clock; the TCG guest's clock runs fast):
 * - crh: checkpointProcess (memory read through the agent to the host) and
 *   restoreProcess (the plan, memory included, sent back); the process is
 *   killed between them, untimed.
 * - criu: `criu dump` and `criu restore -d` over one SSH exec each (images
 *   on the guest's tmpfs), the round trip of an empty exec reported beside;
 *   DETACH before and REAP/ATTACH after are not timed.
 *
 *   node --import tsx scripts/bench-cr.ts [--runs 3] [--sizes 1,64]
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { criuDumpArgs, criuRestoreArgs, runCriu } from '../harness/criu/commands.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { openGuest } from '../harness/guest/open-guest.ts';
import { bootstrapHost } from '../harness/host/bootstrap.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { DEFAULT_POLICY } from '../harness/restore/policy.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { median, summarize } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' }, sizes: { type: 'string', default: '1,64' } } });
const runs = Number(values.runs);
const sizes = values.sizes!.split(',').map(Number);
await bootstrapHost();
const artifactsDir = await mkdtemp(path.join(tmpdir(), 'crh-bench-cr-'));
const guest = await openGuest({ artifactsDir, criu: true, agentCwd: '/tmp/bench', log: (l) => console.error(l) });
const { agent, image } = guest;
const ssh = guest.machine.ssh;
const criu = image.criu!;
const memfill = image.guestPaths.memfill!;
const breakAt = (await ElfFile.open(image.binaries.memfill!)).symbolAddress('memfill_checkpoint');
const exec = (command: string) => ssh.exec(command);

const roundTrips: number[] = [];
for (let i = 0; i < 5; i++) {
  const t0 = performance.now();
  await ssh.run('true');
  roundTrips.push(Math.round(performance.now() - t0));
}

async function ok(out: string, mib: number): Promise<void> {
  const text = (await agent.call({ op: 'READ_FILE', path: out, maxSize: 4096 })).toString();
  if (!text.startsWith(`memfill ok ${mib} MiB`)) throw new Error(`the restored memfill ${mib} MiB did not check out: ${JSON.stringify(text)}`);
}

async function stopped(mib: number, out: string): Promise<number> {
  const pid = await spawnWithBreakpoint(agent, { binary: memfill, argv: [memfill, String(mib)], breakAt }, out);
  const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 600_000 });
  if (run.outcome !== 'hit-limit') throw new Error(`memfill ${mib} never reached its checkpoint: ${run.outcome} ${run.code}`);
  return pid;
}

async function crhOnce(mib: number): Promise<{ checkpoint: number; restore: number }> {
  const out = `/tmp/bench/crh-${mib}.out`;
  const pid = await stopped(mib, out);
  const t0 = performance.now();
  const taken = await checkpointProcess(agent, { binary: memfill, argv: [memfill, String(mib)], envp: [], noAslr: true, pid }, guest.platform);
  const checkpoint = performance.now() - t0;
  await agent.call({ op: 'KILL', pid });
  const t1 = performance.now();
  const restored = await restoreProcess(agent, taken, { policy: DEFAULT_POLICY, stdoutPath: out });
  const restore = performance.now() - t1;
  const end = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: 600_000 });
  if (end.outcome !== 'exited' || end.code !== 0) throw new Error(`crh-restored memfill ${mib}: ${end.outcome} ${end.code}`);
  await ok(out, mib);
  return { checkpoint: Math.round(checkpoint), restore: Math.round(restore) };
}

async function criuOnce(mib: number): Promise<{ checkpoint: number; restore: number }> {
  const out = `/tmp/bench/criu-${mib}.out`;
  const dir = `/tmp/bench/criu-img-${mib}`;
  await ssh.run(`rm -rf ${dir} && mkdir -p ${dir}`);
  const pid = await stopped(mib, out);
  await agent.call({ op: 'DETACH', pid });
  const dump = await runCriu(exec, criuDumpArgs(criu.command, pid, dir));
  if (!dump.ok) throw new Error(`criu dump failed: ${dump.stderr}\n${await ssh.run(`tail -5 ${dir}/dump.log`)}`);
  await agent.call({ op: 'REAP', pid, timeoutMs: 10_000 });
  const restore = await runCriu(exec, criuRestoreArgs(criu.command, dir, `${dir}/pid`));
  if (!restore.ok) throw new Error(`criu restore failed: ${restore.stderr}\n${await ssh.run(`tail -5 ${dir}/restore.log`)}`);
  const restoredPid = Number((await ssh.run(`cat ${dir}/pid`)).trim());
  await agent.call({ op: 'ATTACH', pid: restoredPid });
  const end = await agent.call({ op: 'RUN', pid: restoredPid, stopAfterHits: 0, timeoutMs: 600_000 });
  if (end.outcome !== 'exited' || end.code !== 0) throw new Error(`criu-restored memfill ${mib}: ${end.outcome} ${end.code}`);
  await ok(out, mib);
  await ssh.run(`rm -rf ${dir}`);
  return { checkpoint: dump.wallMs, restore: restore.wallMs };
}

try {
  await ssh.run('mkdir -p /tmp/bench');
  const lines: string[] = [`CRIU ${criu.version} (Debian ${criu.suite}), image ${image.key}, ${runs} runs per cell; empty SSH exec round trip: ${summarize(roundTrips)}`];
  for (const mib of sizes) {
    const crh = { checkpoint: [] as number[], restore: [] as number[] };
    const cr = { checkpoint: [] as number[], restore: [] as number[] };
    for (let i = 0; i < runs; i++) {
      const a = await crhOnce(mib);
      const b = await criuOnce(mib);
      crh.checkpoint.push(a.checkpoint);
      crh.restore.push(a.restore);
      cr.checkpoint.push(b.checkpoint);
      cr.restore.push(b.restore);
      console.error(`${mib} MiB run ${i + 1}/${runs}: crh ${a.checkpoint}+${a.restore} ms, criu ${b.checkpoint}+${b.restore} ms`);
    }
    const ratio = (x: number[], y: number[]): string => (median(x) / median(y)).toFixed(2);
    lines.push(
      `${mib} MiB  crh checkpoint ${summarize(crh.checkpoint)} | criu dump ${summarize(cr.checkpoint)} | crh/criu ${ratio(crh.checkpoint, cr.checkpoint)}`,
      `${mib} MiB  crh restore    ${summarize(crh.restore)} | criu restore ${summarize(cr.restore)} | crh/criu ${ratio(crh.restore, cr.restore)}`,
      `${mib} MiB  total          crh ${median(crh.checkpoint) + median(crh.restore)} ms | criu ${median(cr.checkpoint) + median(cr.restore)} ms | crh/criu ${((median(crh.checkpoint) + median(crh.restore)) / (median(cr.checkpoint) + median(cr.restore))).toFixed(2)}`,
    );
  }
  console.log(lines.join('\n'));
} finally {
  await guest.close();
}
