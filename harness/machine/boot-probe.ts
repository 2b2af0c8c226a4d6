/**
 * The accelerator's evidence: the actual guest kernel and initramfs booted
 * under it, with console and QMP only (no network, no gdbstub), until the
 * guest init prints its ready marker, the VM stalls (stall-watch.ts), QEMU
 * exits, the kernel dies, or a short deadline passes. A real-mode firmware
 * that runs proves little: on a paravirtualized nested KVM it runs fine and
 * the kernel then dies at its first `lock cmpxchg16b`.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { makeTempDir, removeTempDir } from '../util/temp-dir.ts';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { QmpClient } from '../qmp/client.ts';
import { sleep } from '../util/deadline.ts';
import { ConsoleLog, KERNEL_DEATH } from './console.ts';
import { qemuBinary } from './qemu-binary.ts';
import { bootArgs, consoleArgs, machineArgs, panicArgs, qmpArgs, type Accelerator, type BootFiles } from './qemu-args.ts';
import { forgetMachine, recordMachine } from './reaper.ts';
import { watchForStall, type LaunchEvidence } from './stall-watch.ts';

/** The guest init's line once dropbear is started (images/debian-cloud/rcS): user space ran end to end. */
export const READY_MARKER = /crh: ready/;

export interface BootProbeOptions {
  /** give up after this long without the marker */
  timeoutMs: number;
  /** where console.log of the probe goes ('' for nowhere) */
  consoleLogPath?: string;
  memoryMiB?: number;
}

export interface BootProbeResult {
  booted: boolean;
  evidence: LaunchEvidence;
}

export async function probeBoot(accel: Accelerator, boot: BootFiles, options: BootProbeOptions): Promise<BootProbeResult> {
  const runDir = await makeTempDir('crh-bootprobe-');
  // The reaper kills a leftover only when its -name is crh-… and matches the record.
  const name = `crh-accel-probe-${accel}-${process.pid}`;
  const qmpSocket = path.join(runDir, 'qmp.sock');
  const argv = [
    qemuBinary(),
    '-name',
    name,
    ...machineArgs({ accel, memoryMiB: options.memoryMiB ?? 512, cpus: 1 }),
    ...bootArgs(boot),
    ...consoleArgs(),
    ...qmpArgs(qmpSocket),
    ...panicArgs(),
  ];
  const launchedAt = Date.now();
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-8192);
  });
  let exitDescription: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitDescription = signal ? `killed by ${signal}` : `exited with status ${code}`;
      resolve();
    });
    child.once('error', (error) => {
      exitDescription = `could not be started: ${error.message}`;
      resolve();
    });
  });
  const consoleSink = options.consoleLogPath ? options.consoleLogPath : path.join(runDir, 'console.log');
  const serial = new ConsoleLog(consoleSink, child.stdout ?? new PassThrough());
  if (child.pid) await recordMachine(child.pid, name);

  let qmp: QmpClient | undefined;
  let stopWatch = (): void => {};
  let settled = false;
  try {
    const outcome = await new Promise<{ booted: boolean; seen: string; error?: Error }>((resolve) => {
      const timer = setTimeout(
        () => resolve({ booted: false, seen: `no "${READY_MARKER.source}" on the console within ${options.timeoutMs} ms` }),
        options.timeoutMs,
      );
      const settle = (result: { booted: boolean; seen: string; error?: Error }): void => {
        settled = true;
        clearTimeout(timer);
        resolve(result);
      };
      serial.onLine((line) => {
        if (READY_MARKER.test(line)) settle({ booted: true, seen: `console: ${line.trim()}` });
        else if (KERNEL_DEATH.test(line)) settle({ booted: false, seen: `console: ${line.trim()}` });
      });
      void exited.then(() => settle({ booted: false, seen: `QEMU ${exitDescription} before the marker` }));
      void (async () => {
        // QEMU creates the socket before it accepts: retry until it does or QEMU is gone.
        while (!settled && exitDescription === undefined && Date.now() - launchedAt < options.timeoutMs) {
          if (existsSync(qmpSocket)) {
            try {
              qmp = await QmpClient.connect(qmpSocket);
              break;
            } catch {
              // not accepting yet
            }
          }
          await sleep(20);
        }
        if (!qmp) return;
        if (settled) {
          qmp.close(); // the probe already ended: finally may have run before the connect finished
          return;
        }
        const watch = watchForStall({
          qmp,
          stderr: () => stderr,
          console: serial,
          launchedAt,
          silentConsoleMs: Math.min(options.timeoutMs, 15_000),
          onStall: (error) => settle({ booted: false, seen: (error as { evidence?: LaunchEvidence }).evidence?.seen ?? error.message, error }),
        });
        stopWatch = watch.stop;
      })();
    });
    const status = await readStatus(qmp);
    const evidence: LaunchEvidence =
      outcome.error && 'evidence' in outcome.error
        ? (outcome.error as { evidence: LaunchEvidence }).evidence
        : { seen: outcome.seen, qmpStatus: status, stderrTail: stderr.slice(-2048), consoleTail: serial.tail(20), elapsedMs: Date.now() - launchedAt };
    return { booted: outcome.booted, evidence: { ...evidence, qmpStatus: status || evidence.qmpStatus } };
  } finally {
    stopWatch();
    qmp?.close();
    // A probe's guest is disposable: no quit ladder, just gone.
    if (exitDescription === undefined) child.kill('SIGKILL');
    await exited;
    if (child.pid) await forgetMachine(child.pid);
    await serial.close();
    await removeTempDir(runDir);
  }
}

async function readStatus(qmp: QmpClient | undefined): Promise<string> {
  if (!qmp) return '';
  const bound = new Promise<string>((resolve) => setTimeout(() => resolve(''), 1000).unref());
  return Promise.race([
    qmp.execute<{ status: string }>('query-status').then(
      (r) => r.status,
      () => '',
    ),
    bound,
  ]);
}
