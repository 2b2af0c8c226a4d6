/**
 * `crh zdtm BINARY... [policy switches] [--iters N] [-- ARGS]`: tests that
 * follow CRIU's ZDTM protocol (docs/zdtm.md), each run natively and then
 * through checkpoint → kill → restore in one guest (or, with --restore-cpu
 * or --restore-kernel, restored once in a second guest), one verdict row per
 * test in crh run's report formats. Exit 0 every test passed as natively,
 * 1 one failed under C/R, 2 one fails natively (or a usage error), 69
 * infrastructure (the reports then carry it as an infrastructure failure).
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { kernelChoiceFromFlags } from '../flags/kernel-flags.ts';
import { CrhError } from '../errors.ts';
import { openGuest } from '../guest/open-guest.ts';
import { bootstrapHost } from '../host/bootstrap.ts';
import { markGuestLog } from '../agent/guest-run.ts';
import { isInfraFailure, type InfraFailure } from '../report/infra-failures.ts';
import { artifactsRoot, type Verdict } from '../report/verdicts.ts';
import { writeReports } from '../report/write-reports.ts';
import { describePolicy } from '../restore/policy.ts';
import { loadProgram } from '../repro/program.ts';
import { Progress } from '../repro/progress.ts';
import { UsageError } from '../repro/usage-error.ts';
import { NotOwnedError, replaceOwnedDir } from '../util/owned-dir.ts';
import { escapeControl } from '../util/terminal-text.ts';
import { parseZdtmArgs } from './options.ts';
import { describeElsewhere } from '../repro/restore-elsewhere.ts';
import { prepareZdtmGuest, runZdtmTest, ZDTM_DIRS, type ZdtmTest } from './test-run.ts';
import { CRIU_POLICY, rowLabel, zdtmExitCode, zdtmRows, type ZdtmResult } from './verdict.ts';

/** Entry point for `crh zdtm ...`; returns the exit code. */
export async function zdtmCommand(argv: readonly string[]): Promise<number> {
  const request = parseZdtmArgs(argv);
  // Everything wrong with the inputs fails here, before a guest starts.
  const programs = await Promise.all(request.binaries.map((b) => loadProgram(b)));
  const files = await Promise.all(
    request.files.map(async (file) => {
      try {
        return { name: path.basename(file), data: await readFile(file), mode: (await stat(file)).mode & 0o777 };
      } catch (error) {
        throw new UsageError(`--file ${file}: ${(error as Error).message}`);
      }
    }),
  );
  const runDir = path.join(request.artifacts ?? artifactsRoot(), 'zdtm');
  await replaceOwnedDir(runDir).catch((error: unknown) => {
    throw error instanceof NotOwnedError ? new UsageError(`${error.message}; choose another --artifacts`, {}, { cause: error }) : error;
  });
  const progress = new Progress('crh zdtm');
  // A move is part of what the rows were run under: the policy column says where the restore happened.
  const policy = `${describePolicy(request.policy)}${request.elsewhere ? `, restored in another guest (${describeElsewhere(request.elsewhere)})${request.elsewhere.anyway ? ' anyway' : ''}` : ''}`;
  const results: ZdtmResult[] = [];
  let criuPolicy = CRIU_POLICY;
  const reports = async (infrastructureFailures: InfraFailure[]): Promise<Verdict[]> => {
    const verdicts = zdtmRows(results, policy, request.iters, criuPolicy);
    await writeReports(
      { verdicts, infrastructureFailures },
      { ...(request.json ? { json: request.json } : {}), ...(request.junit ? { junit: request.junit } : {}) },
      { artifactsRoot: runDir, sinceMs: 0 },
    );
    return verdicts;
  };

  try {
    progress.phase('boot');
    await bootstrapHost((line) => progress.note(line));
    const kernel = kernelChoiceFromFlags(request.kernel);
    const withCriu = request.engines.includes('criu');
    const guest = await openGuest({
      artifactsDir: runDir,
      log: (line) => progress.note(line),
      agentCwd: ZDTM_DIRS.work,
      ...(kernel ? { kernel } : {}),
      ...(withCriu ? { criu: true } : {}),
    });
    let restoreGuest: Awaited<ReturnType<typeof openGuest>> | undefined;
    try {
      const { ssh } = guest.machine;
      const criu = guest.image.criu
        ? { command: guest.image.criu.command, version: guest.image.criu.version, exec: (command: string) => ssh.exec(command) }
        : undefined;
      if (criu) criuPolicy = `${CRIU_POLICY} (criu ${criu.version})`;
      await prepareZdtmGuest({ shell: (c) => ssh.run(c) });
      if (request.elsewhere) {
        // The restore guest: the same image recipe, another CPU model or kernel, the tests at the same paths.
        progress.phase('boot the restore guest', describeElsewhere(request.elsewhere));
        restoreGuest = await openGuest({
          artifactsDir: path.join(runDir, 'restore-guest'),
          log: (line) => progress.note(`restore guest: ${line}`),
          agentCwd: ZDTM_DIRS.work,
          ...(request.elsewhere.cpu !== undefined ? { cpuModel: request.elsewhere.cpu } : {}),
          ...(request.elsewhere.kernel !== undefined ? { kernel: kernelChoiceFromFlags({ kernel: request.elsewhere.kernel }) } : {}),
        });
        await prepareZdtmGuest({ shell: (c) => restoreGuest!.machine.ssh.run(c) });
        progress.note(
          `restore guest: -cpu ${restoreGuest.profile.cpuModel}, kernel ${restoreGuest.profile.kernelRelease}, CPU flags ${restoreGuest.profile.cpuFlags.join(' ')}`,
        );
      }
      const there = restoreGuest && {
        session: {
          agent: restoreGuest.agent,
          shell: restoreGuest.machine.ssh.run.bind(restoreGuest.machine.ssh),
          upload: restoreGuest.machine.ssh.upload.bind(restoreGuest.machine.ssh),
        },
        anyway: request.elsewhere!.anyway,
      };
      const tests: ZdtmTest[] = [];
      for (const program of programs) {
        const name = path.basename(program.file);
        const binary = `${ZDTM_DIRS.bin}/${name}`;
        await ssh.upload(binary, program.data, 0o755);
        if (there) await there.session.upload(binary, program.data, 0o755);
        tests.push({ name, binary, args: request.args, files });
      }
      for (const test of tests) {
        // With crh,criu the test runs natively once; each engine's checkpointed run is judged against it.
        let first: Awaited<ReturnType<typeof runZdtmTest>> | undefined;
        for (const engine of request.engines) {
          const record = await runZdtmTest(
            {
              agent: guest.agent,
              platform: guest.platform,
              shell: (c) => ssh.run(c),
              upload: (p, d, m) => ssh.upload(p, d, m),
              note: (line) => progress.note(escapeControl(line)),
              phase: async (name, detail) => {
                progress.phase(name, detail && escapeControl(detail));
                await markGuestLog(guest.agent, `crh zdtm: ${test.name}: ${name}`);
              },
            },
            test,
            {
              policy: request.policy,
              iters: request.iters,
              settleMs: request.settleMs,
              timeoutMs: request.timeoutMs,
              imageFile: path.join(runDir, `${test.name}.checkpoint.tar`),
              engine,
              ...(criu ? { criu } : {}),
              ...(first ? { nativeFrom: first } : {}),
              ...(there ? { elsewhere: there } : {}),
            },
          );
          first ??= record;
          results.push(record);
        }
      }
    } finally {
      progress.phase('shut down');
      try {
        await restoreGuest?.close();
      } finally {
        await guest.close();
      }
      progress.endPhase();
    }
  } catch (error) {
    if (isInfraFailure(error)) await reports([{ case: 'zdtm', error: error instanceof CrhError ? error.describe() : String(error) }]);
    throw error;
  }

  const verdicts = await reports([]);
  // Engines side by side: each test's rows follow one another, the engine named on each.
  const engineColumn = (row: Verdict): string => (request.engines.length > 1 ? `${(row.engine ?? 'crh').padEnd(4)}  ` : '');
  for (const row of verdicts)
    process.stdout.write(`${rowLabel(row)}  ${engineColumn(row)}${escapeControl(row.scenario)}: ${escapeControl(row.skipped ?? row.observed)}\n`);
  const code = zdtmExitCode(results);
  const tally = (engine: string): string => {
    const mine = results.filter((r) => (r.engine ?? 'crh') === engine);
    return `${mine.filter((r) => r.checkpointed?.pass).length} passed as natively, ${mine.filter((r) => r.checkpointed && !r.checkpointed.pass).length} failed under checkpoint/restore, ${mine.filter((r) => !r.native.pass).length} fail natively (${engine === 'criu' ? criuPolicy : `policy ${policy}`}`;
  };
  for (const engine of request.engines)
    process.stdout.write(
      `zdtm${request.engines.length > 1 ? ` [${engine}]` : ''}: ${tally(engine)}${engine === request.engines.at(-1) ? `; artifacts ${escapeControl(runDir)}` : ''})\n`,
    );
  return code;
}
