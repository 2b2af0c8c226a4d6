/**
 * Reading 1 MiB of guest memory through the gdbstub: our client against GNU
 * gdb (Debian's gdb package) attached to the same QEMU in the same run, each
 * timed from inside its own session (connection setup excluded), alternating,
 * N rounds. Prints medians and the ratio gdb / ours.
 *
 *   node --import tsx scripts/bench-gdb-read.ts [--rounds 5]
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { GdbClient } from '../harness/gdb/client.ts';
import { bootstrapHost } from '../harness/host/bootstrap.ts';
import { buildImage } from '../harness/image/build.ts';
import { launchMachine } from '../harness/machine/fast-start.ts';
import { freeLoopbackPort } from '../harness/machine/free-port.ts';
import { median, summarize } from './stats.ts';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
const rounds = Number(values.rounds);
const BYTES = 1024 * 1024;
/** Kernel text: mapped in every vCPU context under nokaslr. */
const ADDRESS = 0xffffffff81000000n;

await bootstrapHost();
const gdbPath = (await execa('sh', ['-c', 'command -v gdb'], { reject: false })).stdout.trim();
if (!gdbPath) {
  console.error('GNU gdb is the peer of this benchmark: apt-get install -y gdb');
  process.exit(69);
}
const image = await buildImage({ log: (l) => console.error(l) });
const dir = await mkdtemp(path.join(tmpdir(), 'crh-bench-gdb-'));
const machine = await launchMachine({ image, artifactsDir: dir });
try {
  // GNU gdb speaks TCP; move the gdbstub to a loopback port for both clients.
  const port = await freeLoopbackPort();
  const said = await machine.qmp.execute<string>('human-monitor-command', { 'command-line': `gdbserver tcp:127.0.0.1:${port}` });
  if (/could not|error/i.test(said)) throw new Error(`gdbserver: ${said}`);

  const ours: number[] = [];
  const theirs: number[] = [];
  let reference: Buffer | undefined;
  for (let round = 0; round < rounds; round++) {
    const client = await GdbClient.connect({ host: '127.0.0.1', port });
    const started = process.hrtime.bigint();
    const data = await client.readMemory(ADDRESS, BYTES);
    ours.push(Number(process.hrtime.bigint() - started) / 1e6);
    await client.close();
    reference ??= data;

    const out = path.join(dir, `gdb-${round}.bin`);
    const gdb = await execa(
      gdbPath,
      [
        '-nx',
        '-batch',
        '-ex',
        'set pagination off',
        '-ex',
        `target remote 127.0.0.1:${port}`,
        '-ex',
        'python import time; t0 = time.perf_counter()',
        '-ex',
        `dump binary memory ${out} 0x${ADDRESS.toString(16)} 0x${(ADDRESS + BigInt(BYTES)).toString(16)}`,
        '-ex',
        'python print("ELAPSED_MS", (time.perf_counter() - t0) * 1000)',
        '-ex',
        'detach',
      ],
      { reject: false },
    );
    const elapsed = /ELAPSED_MS ([0-9.]+)/.exec(gdb.stdout)?.[1];
    if (!elapsed) throw new Error(`gdb did not report a time:\n${gdb.stdout}\n${gdb.stderr}`);
    theirs.push(Number(elapsed));
    if (!(await readFile(out)).equals(data)) throw new Error('gdb and our client read different bytes');
    console.error(`round ${round + 1}/${rounds}: ours ${ours.at(-1)!.toFixed(1)} ms, gdb ${theirs.at(-1)!.toFixed(1)} ms`);
  }
  const fmt = (xs: number[]): string => summarize(xs.map((x) => Math.round(x * 10) / 10));
  console.log(`read 1 MiB of guest memory through the gdbstub (${rounds} rounds, same QEMU, ${machine.accel?.accel})`);
  console.log(`  cr-harness GdbClient: ${fmt(ours)}`);
  console.log(`  GNU gdb ${(await execa(gdbPath, ['--version'])).stdout.split('\n')[0]}: ${fmt(theirs)}`);
  console.log(`  ratio gdb / ours (medians): ${(median(theirs) / median(ours)).toFixed(2)}`);
} finally {
  await machine.shutdown();
}
