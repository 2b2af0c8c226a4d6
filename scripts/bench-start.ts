/**
 * Cold boot vs start from saved VM state, to a running machine and to an
 * agent that answers HELLO (over the agent port, as open-guest.ts opens it:
 * a saved-state start then waits for no SSH, and is re-seeded through the
 * agent), measured in the same run: N of each, alternating, medians, the
 * ratio, and where a saved-state start spends its time (its phases).
 * --copy-ram adds saved-state starts that copy the saved RAM into a shared
 * file first (as before the copy-on-write mapping), alternating with the rest.
 *
 *   node --import tsx scripts/bench-start.ts [--runs 5] [--copy-ram]
 */
import { mkdtemp } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { bootstrapHost } from '../harness/host/bootstrap.ts';
import { buildImage } from '../harness/image/build.ts';
import { launchMachine, reseedGuest } from '../harness/machine/fast-start.ts';
import { openAgentChannel } from '../harness/guest/agent-channel.ts';
import { median, summarize } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, 'copy-ram': { type: 'boolean', default: false } } });
console.error(
  `load average at the start: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`,
);
const runs = Number(values.runs);
await bootstrapHost();
const image = await buildImage({ log: (l) => console.error(l) });
const artifactsDir = await mkdtemp(path.join(tmpdir(), 'crh-bench-'));
// Make sure a saved state exists before timing anything.
await (await launchMachine({ image, artifactsDir })).shutdown();

/** The kinds of start, alternating within each run. */
const kinds = [
  { name: 'cold boot', fastStart: false, copySavedRam: false },
  { name: 'saved state, RAM mapped copy-on-write', fastStart: true, copySavedRam: false },
  ...(values['copy-ram'] ? [{ name: 'saved state, RAM copied first', fastStart: true, copySavedRam: true }] : []),
] as const;
const toRunning = new Map<string, number[]>(kinds.map((k) => [k.name, []]));
const toAgent = new Map<string, number[]>(kinds.map((k) => [k.name, []]));
/** each saved-state kind's phases (machine.ts launchPhases), ms after the start began */
const phases = new Map<string, Map<string, number[]>>(kinds.map((k) => [k.name, new Map()]));
for (let i = 0; i < runs; i++) {
  for (const kind of kinds) {
    const started = Date.now();
    const machine = await launchMachine({ image, artifactsDir, fastStart: kind.fastStart, callerReseeds: true, copySavedRam: kind.copySavedRam });
    toRunning.get(kind.name)!.push(Date.now() - started);
    // The agent answering HELLO, the guest re-seeded: what a case waits for before its first request.
    const channel = await openAgentChannel(machine, image.guestPaths['crh-agent']!, undefined, (l) => console.error(l));
    machine.markPhase(`agent HELLO (${channel.via})`);
    await reseedGuest(machine, channel.via === 'port' ? channel.client : undefined);
    toAgent.get(kind.name)!.push(Date.now() - started);
    await channel.client.close();
    if (machine.fromSavedState !== kind.fastStart) throw new Error(`expected fromSavedState=${kind.fastStart}`);
    if (kind.fastStart) {
      const mine = phases.get(kind.name)!;
      for (const { phase, ms } of machine.launchPhases) mine.set(phase, [...(mine.get(phase) ?? []), ms]);
    }
    await machine.shutdown();
  }
  console.error(`run ${i + 1}/${runs}: ${kinds.map((k) => `${k.name} ${toAgent.get(k.name)!.at(-1)} ms`).join(', ')} (load ${loadavg()[0]!.toFixed(1)})`);
}
const [coldName, savedName] = [kinds[0].name, kinds[1].name];
for (const kind of kinds) {
  console.log(
    `${kind.name} (${runs}): launch -> ${kind.fastStart ? 'running (SSH connects on first use)' : 'SSH ready'}: ${summarize(toRunning.get(kind.name)!)}`,
  );
  console.log(`  launch -> agent HELLO answered and guest re-seeded: ${summarize(toAgent.get(kind.name)!)}`);
}
console.log(`ratio cold / saved to a ready agent (medians): ${(median(toAgent.get(coldName)!) / median(toAgent.get(savedName)!)).toFixed(2)}`);
for (const kind of kinds.filter((k) => k.fastStart)) {
  console.log(`${kind.name}: each phase done at (ms after the start began, medians):`);
  for (const [phase, at] of phases.get(kind.name)!) console.log(`  ${phase}: ${median(at).toFixed(0)} (${summarize(at)})`);
}
console.log(
  `load average at the end: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`,
);
