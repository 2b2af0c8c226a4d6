/**
 * Boot benchmark: launch → SSH-ready over N cold boots of the default guest,
 * with the guest's own "crh: ready" console marker measured in the same boots
 * as the peer (how much of the wait is SSH itself). Prints median/min/max and
 * the ratio; no absolute-time assertions anywhere.
 *
 *   node --import tsx scripts/bench-boot.ts [--boots 5]
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { bootstrapHost } from '../harness/host/bootstrap.ts';
import { buildImage } from '../harness/image/build.ts';
import { QemuMachine } from '../harness/machine/machine.ts';
import { median, summarize } from './stats.ts';

const { values } = parseArgs({ options: { boots: { type: 'string', default: '5' } } });
const boots = Number(values.boots);

await bootstrapHost();
const image = await buildImage({ log: (l) => console.error(l) });
const sshReady: number[] = [];
const consoleReady: number[] = [];
let accel = '';
for (let i = 0; i < boots; i++) {
  const started = Date.now();
  let markerAt = NaN;
  const machine = new QemuMachine({
    image,
    artifactsDir: await mkdtemp(path.join(tmpdir(), 'crh-bench-')),
    onEvent: (e) => {
      if (e.type === 'console' && /crh: ready/.test(e.line)) markerAt = Date.now() - started;
    },
  });
  try {
    await machine.launch();
    sshReady.push(Date.now() - started);
    consoleReady.push(markerAt);
    accel = `${machine.accel?.accel} (${machine.accel?.reason})`;
  } finally {
    await machine.shutdown();
  }
  console.error(`boot ${i + 1}/${boots}: console marker ${markerAt} ms, SSH ready ${sshReady.at(-1)} ms`);
}

console.log(`accelerator: ${accel}`);
console.log(`kernel: ${image.kernel.origin}`);
console.log(`launch -> "crh: ready" on the console (${boots} boots): ${summarize(consoleReady)}`);
console.log(`launch -> SSH answers (${boots} boots): ${summarize(sshReady)}`);
console.log(`ratio SSH-ready / console-ready (medians): ${(median(sshReady) / median(consoleReady)).toFixed(2)}`);
