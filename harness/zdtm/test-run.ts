/**
 * One ZDTM-protocol test in a booted guest: natively first, then with
 * checkpoint → kill → restore, each run from a clean start (repro/
 * clean-start.ts: nothing the previous run left running, the working
 * directory at the same path emptied and the --file inputs copied again).
 * Used by `crh zdtm` and by cases/zdtm.test.ts alike.
 */
import type { AgentClient } from '../agent/client.ts';
import { AgentError, CrhError } from '../errors.ts';
import type { PlatformFacts } from '../restore/checkpoint-image.ts';
import type { RestorePolicy } from '../restore/policy.ts';
import { shellQuote } from '../machine/qemu-args.ts';
import { cleanStartCommand, killedPids } from '../repro/clean-start.ts';
import { readIfPresent } from '../repro/pid-file.ts';
import { checkpointedZdtmRun, type CheckpointedZdtmRun } from './checkpointed.ts';
import { criuZdtmRun } from './criu-checkpointed.ts';
import type { CriuInGuest } from '../criu/handoff.ts';
import type { Engine } from '../report/verdicts.ts';
import path from 'node:path';
import { parseNativeReport } from '../guest/native-run.ts';
import { nativeProblem, nativeZdtmCommand, parseNativeZdtm, underNativeRunner, type NativeZdtmRun, type ZdtmLaunch } from './native.ts';
import { describeOutfile, INPROGRESS, OUTFILE, outfileVerdict, type OutfileVerdict, type ZdtmResult } from './verdict.ts';

/** Where things live in the guest; fixed, so every run sees the same paths. */
export const ZDTM_DIRS: ZdtmDirs = {
  bin: '/tmp/crh-zdtm/bin',
  work: '/tmp/crh-zdtm/work',
  out: '/tmp/crh-zdtm/out',
};

export interface ZdtmDirs {
  bin: string;
  /** the tests' working directory (the agent runs there: a restored process inherits it) */
  work: string;
  /** the launchers' and restored processes' own stdout files */
  out: string;
}

const OUTFILE_MAX_BYTES = 4 * 1024 * 1024;

export interface ZdtmSession {
  agent: AgentClient;
  platform: PlatformFacts;
  /** a guest shell command over its own SSH exec channel, its stdout */
  shell: (command: string) => Promise<string>;
  upload: (guestPath: string, data: Uint8Array, mode: number) => Promise<void>;
  note: (line: string) => void;
  phase: (name: string, detail?: string) => Promise<void>;
}

export interface ZdtmTest {
  /** as rows show it */
  name: string;
  /** guest path */
  binary: string;
  args: readonly string[];
  /** copied into the working directory before each run */
  files: readonly { name: string; data: Uint8Array; mode: number }[];
}

export interface ZdtmTestOptions {
  policy: RestorePolicy;
  iters: number;
  settleMs: number;
  timeoutMs: number;
  /** host path for the checkpoint image (the last cycle's is kept) */
  imageFile: string;
  /** default ZDTM_DIRS */
  dirs?: ZdtmDirs;
  /** the agent's process name, whose descendants a clean start kills (default crh-agent) */
  agentName?: string;
  /** the native runner's path (default guest/native-run.ts NATIVE_RUNNER) */
  nativeRunner?: string;
  /**
   * Restore in another guest (--restore-cpu, --restore-kernel), prepared
   * with prepareZdtmGuest and holding the test binary at the same path: the
   * checkpointed run's working directory is cleaned there too, carried over
   * at the move, and the verdict read there.
   */
  elsewhere?: { session: Pick<ZdtmSession, 'agent' | 'shell' | 'upload'>; anyway: boolean };
  /** which engine checkpoints and restores (default crh); criu needs `criu`, and keeps its logs beside imageFile */
  engine?: Engine;
  criu?: CriuInGuest;
  /** this test's record under another engine (--engine crh,criu): its native run is reused, not run again */
  nativeFrom?: ZdtmTestRecord;
}

export interface ZdtmTestRecord extends ZdtmResult {
  /** absent when the native run itself timed out */
  nativeRun?: NativeZdtmRun;
  nativeOutfile: OutfileVerdict;
  checkpointedRun?: CheckpointedZdtmRun;
  checkpointedOutfile?: OutfileVerdict;
}

/** Prepares the guest directories once per guest. */
export async function prepareZdtmGuest(session: Pick<ZdtmSession, 'shell'>, dirs: ZdtmDirs = ZDTM_DIRS): Promise<void> {
  await session.shell(`mkdir -p ${[dirs.bin, dirs.work, dirs.out].map(shellQuote).join(' ')}`);
}

export async function runZdtmTest(session: ZdtmSession, test: ZdtmTest, options: ZdtmTestOptions): Promise<ZdtmTestRecord> {
  const started = Date.now();
  const dirs = options.dirs ?? ZDTM_DIRS;
  const title = [test.name, ...test.args].join(' ');
  const cleanStart = async (run: string): Promise<void> => {
    const killed = killedPids(await session.shell(cleanStartCommand(dirs.work, options.agentName)));
    if (killed.length > 0) session.note(`before the ${run}: killed what the previous run left running (pid ${killed.join(', ')})`);
    for (const f of test.files) await session.upload(`${dirs.work}/${f.name}`, f.data, f.mode);
  };
  const outfiles = async (): Promise<OutfileVerdict> =>
    outfileVerdict(
      await readIfPresent(session.agent, `${dirs.work}/${OUTFILE}`, OUTFILE_MAX_BYTES),
      await readIfPresent(session.agent, `${dirs.work}/${INPROGRESS}`, OUTFILE_MAX_BYTES),
    );

  const engine = options.engine ?? 'crh';
  const nativeLaunch: ZdtmLaunch = { binary: test.binary, args: test.args, cwd: dirs.work, launcherOut: `${dirs.out}/launcher-native.out` };
  let nativeRun: NativeZdtmRun | undefined;
  let nativeOutfile: OutfileVerdict;
  if (options.nativeFrom) {
    ({ nativeRun, nativeOutfile } = options.nativeFrom);
    if (!options.nativeFrom.native.pass) return { ...options.nativeFrom, engine, durationMs: 0 };
  } else {
    await cleanStart('native run');
    await session.phase('native run', `${title}: no tracer, no checkpoint`);
    // The script's own waits are bounded by the timeout: the launcher, then the daemon's end after SIGTERM.
    const boundMs = 2 * options.timeoutMs + options.settleMs;
    const report = `${dirs.out}/native-report.txt`;
    const runner = parseNativeReport(
      await session.shell(underNativeRunner(nativeZdtmCommand(nativeLaunch, options.settleMs, options.timeoutMs), report, boundMs, options.nativeRunner)),
    );
    nativeRun = runner.outcome === 'timed-out' ? undefined : parseNativeZdtm((await readIfPresent(session.agent, report)) ?? '');
    nativeOutfile = await outfiles();
    const runProblem = nativeRun ? nativeProblem(nativeRun) : `the launcher did not exit within ${boundMs} ms (killed)`;
    // The test says why in its outfile (a launcher that failed wrote its error there): the row carries its last line.
    const problem =
      runProblem !== undefined
        ? `${runProblem}${nativeOutfile.tail.length > 0 ? ` (${nativeOutfile.file}: ${nativeOutfile.tail.at(-1)})` : ''}`
        : nativeOutfile.pass
          ? undefined
          : describeOutfile(nativeOutfile);
    session.note(`natively: ${problem ?? describeOutfile(nativeOutfile)}`);
    if (problem)
      return {
        test: title,
        engine,
        native: { pass: false, summary: problem },
        durationMs: Date.now() - started,
        ...(nativeRun ? { nativeRun } : {}),
        nativeOutfile,
      };
  }

  await cleanStart(`checkpointed run (${engine})`);
  const moved = options.elsewhere;
  if (moved) {
    const killed = killedPids(await moved.session.shell(cleanStartCommand(dirs.work, options.agentName)));
    if (killed.length > 0) session.note(`restore guest: killed what the previous run left running (pid ${killed.join(', ')})`);
  }
  const launch: ZdtmLaunch = { ...nativeLaunch, launcherOut: `${dirs.out}/launcher.out` };
  const elsewhere = moved && {
    agent: moved.session.agent,
    anyway: moved.anyway,
    carry: (files: readonly string[]) => carryFiles(session.agent, moved.session, dirs.work, files),
  };
  const checkpointedRun =
    engine === 'criu'
      ? await criuZdtmRun(
          {
            agent: session.agent,
            criu: criuOf(options),
            cycles: options.iters,
            settleMs: options.settleMs,
            timeoutMs: options.timeoutMs,
            imagesDir: `${dirs.out}/criu-img`,
            logsDir: path.dirname(options.imageFile),
            phase: session.phase,
          },
          launch,
        )
      : await checkpointedZdtmRun(
          {
            agent: session.agent,
            platform: session.platform,
            policy: options.policy,
            cycles: options.iters,
            settleMs: options.settleMs,
            timeoutMs: options.timeoutMs,
            outDir: dirs.out,
            imageFile: options.imageFile,
            phase: session.phase,
            ...(elsewhere ? { elsewhere } : {}),
          },
          launch,
        );
  const verdictAgent = moved?.session.agent ?? session.agent;
  const checkpointedOutfile =
    checkpointedRun.failure === undefined
      ? outfileVerdict(
          await readIfPresent(verdictAgent, `${dirs.work}/${OUTFILE}`, OUTFILE_MAX_BYTES),
          await readIfPresent(verdictAgent, `${dirs.work}/${INPROGRESS}`, OUTFILE_MAX_BYTES),
        )
      : undefined;
  const pass = checkpointedOutfile?.pass ?? false;
  const pidNote =
    checkpointedRun.restoredPid !== undefined && checkpointedRun.restoredPid !== checkpointedRun.pid
      ? ` (restored as pid ${checkpointedRun.restoredPid}, not ${checkpointedRun.pid})`
      : '';
  const summary = checkpointedRun.failure ?? `${describeOutfile(checkpointedOutfile!)}${pidNote}`;
  session.note(`after ${checkpointedRun.cycles.length} checkpoint/restore cycle(s): ${summary}`);
  return {
    test: title,
    engine,
    native: { pass: true, summary: describeOutfile(nativeOutfile) },
    checkpointed: { pass, summary },
    durationMs: Date.now() - started,
    nativeRun,
    nativeOutfile,
    checkpointedRun,
    ...(checkpointedOutfile ? { checkpointedOutfile } : {}),
  };
}

/** Bytes one carried file may hold: a ZDTM test's working files are small; a bigger one fails the move by name. */
const CARRY_MAX_BYTES = 16 * 1024 * 1024;
const ENOENT = 2;
const EISDIR = 21;

/**
 * At a move: every regular file of the checkpoint guest's working
 * directory, and `files` (the daemon's own output), written at the same
 * paths in the restore guest — what the restored process reopens by path.
 * Their modes are not carried (0644): the restored process holds them open.
 */
async function carryFiles(from: AgentClient, to: Pick<ZdtmSession, 'upload'>, work: string, files: readonly string[]): Promise<void> {
  const names = await from.call({ op: 'LISTDIR', path: work });
  const paths = [
    ...names.filter((n) => n !== '.' && n !== '..').map((n) => `${work}/${n}`),
    ...files.filter((f) => f.startsWith('/') && !f.startsWith('/dev/')),
  ];
  for (const file of new Set(paths)) {
    let data: Buffer;
    try {
      data = await from.call({ op: 'READ_FILE', path: file, maxSize: CARRY_MAX_BYTES + 1 });
    } catch (error) {
      // Gone meanwhile, or a directory: nothing a restored descriptor reopens.
      if (error instanceof AgentError && (error.errno === ENOENT || error.errno === EISDIR)) continue;
      throw error;
    }
    if (data.length > CARRY_MAX_BYTES) throw new CrhError(`${file} holds more than ${CARRY_MAX_BYTES} bytes: too much to carry to the restore guest`, { file });
    await to.upload(file, data, 0o644);
  }
}

function criuOf(options: ZdtmTestOptions): CriuInGuest {
  if (!options.criu) throw new CrhError('the criu engine was asked for but this guest was booted from the image without CRIU');
  return options.criu;
}
