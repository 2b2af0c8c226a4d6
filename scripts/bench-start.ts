/**
 * Cold boot vs start from saved VM state, to a running machine and to an
 * agent that answers HELLO (over the agent port, as open-guest.ts opens it:
 * a saved-state start then waits for no SSH, and is re-seeded through the
 * agent), measured in the same run: N of each, alternating, medians, the
 * ratio, and where a saved-state start spends its time (its phases).
 *
 *   node --import tsx scripts/bench-start.ts [--runs 5]
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { bootstrapHost } from '../harness/host/bootstrap.ts';
import { buildImage } from '../harness/image/build.ts';
import { launchMachine, reseedGuest } from '../harness/machine/fast-start.ts';
import { openAgentChannel } from '../harness/guest/agent-channel.ts';
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
const agentCold: number[] = [];
const agentSaved: number[] = [];
/** the saved-state starts' phases (machine.ts launchPhases), ms after QEMU was spawned */
const phases = new Map<string, number[]>();
for (let i = 0; i < runs; i++) {
  for (const [fastStart, into] of [
    [false, cold],
    [true, saved],
  ] as const) {
    const started = Date.now();
    const machine = await launchMachine({ image, artifactsDir, fastStart, callerReseeds: true });
    into.push(Date.now() - started);
    // The agent answering HELLO, the guest re-seeded: what a case waits for before its first request.
    const channel = await openAgentChannel(machine, image.guestPaths['crh-agent']!, undefined, (l) => console.error(l));
    machine.markPhase(`agent HELLO (${channel.via})`);
    await reseedGuest(machine, channel.via === 'port' ? channel.client : undefined);
    (fastStart ? agentSaved : agentCold).push(Date.now() - started);
    await channel.client.close();
    if (machine.fromSavedState !== fastStart) throw new Error(`expected fromSavedState=${fastStart}`);
    if (fastStart) for (const { phase, ms } of machine.launchPhases) phases.set(phase, [...(phases.get(phase) ?? []), ms]);
    await machine.shutdown();
  }
  console.error(`run ${i + 1}/${runs}: cold ${cold.at(-1)} ms, saved state ${saved.at(-1)} ms`);
}
console.log(`launch -> SSH ready, cold boot (${runs}): ${summarize(cold)}`);
console.log(`launch -> running, saved state (SSH connecting in the background) (${runs}): ${summarize(saved)}`);
console.log(`launch -> agent HELLO answered and guest re-seeded, cold boot: ${summarize(agentCold)}; saved state: ${summarize(agentSaved)}`);
console.log(`ratio cold / saved (medians): ${(median(cold) / median(saved)).toFixed(2)}`);
console.log('saved-state start, each phase done at (ms after QEMU was spawned, medians):');
for (const [phase, at] of phases) console.log(`  ${phase}: ${median(at).toFixed(0)} (${summarize(at)})`);
