/**
 * Cold boot vs start from saved VM state, to SSH-ready, measured in the same
 * run: N of each, alternating, medians and the ratio.
 *
 *   node --import tsx scripts/bench-start.ts [--runs 5]
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { bootstrapHost } from '../harness/host/bootstrap.ts';
import { buildImage } from '../harness/image/build.ts';
import { launchMachine } from '../harness/machine/fast-start.ts';
import { median, summarize } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' } } });
const runs = Number(values.runs);
await bootstrapHost();
const image = await buildImage({ log: (l) => console.error(l) });
const artifactsDir = await mkdtemp(path.join(tmpdir(), 'crh-bench-'));
// Make sure a saved state exists before timing anything.
await (await launchMachine({ image, artifactsDir })).shutdown();

const cold: number[] = [];
const saved: number[] = [];
for (let i = 0; i < runs; i++) {
  for (const [fastStart, into] of [[false, cold], [true, saved]] as const) {
    const started = Date.now();
    const machine = await launchMachine({ image, artifactsDir, fastStart });
    into.push(Date.now() - started);
    if (machine.fromSavedState !== fastStart) throw new Error(`expected fromSavedState=${fastStart}`);
    await machine.shutdown();
  }
  console.error(`run ${i + 1}/${runs}: cold ${cold.at(-1)} ms, saved state ${saved.at(-1)} ms`);
}
console.log(`launch -> SSH ready, cold boot (${runs}): ${summarize(cold)}`);
console.log(`launch -> SSH ready, saved state + re-seed (${runs}): ${summarize(saved)}`);
console.log(`ratio cold / saved (medians): ${(median(cold) / median(saved)).toFixed(2)}`);
