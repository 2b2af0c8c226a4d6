// expect: on the host's own kernel, our ZDTM-protocol tests go through crh zdtm's run (zdtm/test-run.ts with the real
// agent, no QEMU): each passes natively and, checkpointed, killed and restored with the same pid (once, and three
// times in a chain), passes again with its outfile renamed to T.out; the negative controls fail — omit=mapping-kinds
// (the shared page made private) for the waiting test, omit=timers for the interval-timer test, omit=pipe-contents
// for the pipe test (its daemon and child restored as one tree) — a daemon whose child no setsid/setpgid sequence
// can place again is refused by name, and a test that fails natively is reported as such, with no C/R verdict.
import t from 'tap';
import { copyFile, chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';
import { cleanStartCommand, killedPids } from '../harness/repro/clean-start.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';
import { prepareZdtmGuest, runZdtmTest, type ZdtmDirs, type ZdtmSession } from '../harness/zdtm/test-run.ts';
import { zdtmExitCode } from '../harness/zdtm/verdict.ts';

const TIMEOUT_MS = 60_000;

t.test('crh zdtm runs on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const root = await makeTempDir('crh-zdtm-local-');
  t.teardown(() => removeTempDir(root));
  const dirs: ZdtmDirs = { bin: path.join(root, 'bin'), work: path.join(root, 'work'), out: path.join(root, 'out') };
  const shell = async (command: string): Promise<string> => (await execa('sh', ['-c', command])).stdout;
  await prepareZdtmGuest({ shell }, dirs);
  // The agent under a name of its own: a clean start kills the descendants of every process of that name, and
  // other agents may run on this host.
  const agentName = `zag${process.pid % 1_000_000}`;
  const agentPath = path.join(root, agentName);
  await copyFile(bins.hostPath['crh-agent']!, agentPath);
  await chmod(agentPath, 0o755);
  // The agent's working directory is the tests': a restored process inherits the agent's.
  const cwd = process.cwd();
  process.chdir(dirs.work);
  const { client: agent } = await AgentClient.open(localAgentTransport(agentPath));
  process.chdir(cwd);
  t.teardown(() => agent.close());

  const session: ZdtmSession = {
    agent,
    platform: { host: true },
    shell,
    upload: async (file, data, mode) => {
      await writeFile(file, data);
      await chmod(file, mode);
    },
    note: (line) => t.comment(line),
    phase: async (name, detail) => void t.comment(`${name}${detail ? `: ${detail}` : ''}`),
  };
  const run = async (name: string, options: { args?: string[]; policy?: RestorePolicy; iters?: number } = {}) => {
    const binary = path.join(dirs.bin, name);
    await copyFile(bins.hostPath[name]!, binary);
    await chmod(binary, 0o755);
    return runZdtmTest(
      session,
      { name, binary, args: options.args ?? [], files: [] },
      {
        policy: options.policy ?? DEFAULT_POLICY,
        iters: options.iters ?? 1,
        settleMs: 200,
        timeoutMs: TIMEOUT_MS,
        imageFile: path.join(root, `${name}.tar`),
        dirs,
        agentName,
        nativeRunner: bins.hostPath['crh-native']!,
      },
    );
  };

  for (const name of ['zdtm-wait', 'zdtm-spin', 'zdtm-itimer', 'zdtm-pipe']) {
    await t.test(`${name}: PASS natively and after a checkpoint/restore`, async (t) => {
      const r = await run(name);
      t.ok(r.native.pass, `natively: ${r.native.summary}`);
      t.ok(r.checkpointed?.pass, `checkpointed: ${r.checkpointed?.summary}`);
      t.equal(r.checkpointedRun?.restoredPid, r.checkpointedRun?.pid, 'restored with its own pid');
      t.equal(r.checkpointedOutfile?.file, 'T.out', 'its exit handler renamed the outfile (same pid)');
      t.equal(zdtmExitCode([r]), 0);
    });
  }

  await t.test('zdtm-spin: three checkpoint/restore cycles in a chain', async (t) => {
    const r = await run('zdtm-spin', { iters: 3 });
    t.equal(r.checkpointedRun?.cycles.length, 3, 'three cycles');
    t.ok(r.checkpointed?.pass, `checkpointed: ${r.checkpointed?.summary}`);
  });

  await t.test('negative control omit=mapping-kinds: zdtm-wait sees its shared page made private', async (t) => {
    const r = await run('zdtm-wait', { policy: { ...DEFAULT_POLICY, omit: ['mapping-kinds'] } });
    t.ok(r.native.pass, 'natively it passes');
    t.notOk(r.checkpointed?.pass, `checkpointed: ${r.checkpointed?.summary}`);
    t.match(r.checkpointed?.summary, /no longer a shared mapping/);
    t.equal(zdtmExitCode([r]), 1, 'exit 1');
  });

  await t.test('negative control omit=timers: zdtm-itimer sees its timer stall', async (t) => {
    const r = await run('zdtm-itimer', { policy: { ...DEFAULT_POLICY, omit: ['timers'] } });
    t.notOk(r.checkpointed?.pass, `checkpointed: ${r.checkpointed?.summary}`);
    t.match(r.checkpointed?.summary, /timer stalled|ticks in/);
    t.equal(zdtmExitCode([r]), 1, 'exit 1');
  });

  await t.test('zdtm-pipe: the daemon and its child restored as one tree, the bytes in flight in the pipe between them kept', async (t) => {
    const r = await run('zdtm-pipe');
    t.ok(r.checkpointed?.pass, `checkpointed: ${r.checkpointed?.summary}`);
    const [cycle] = r.checkpointedRun?.cycles ?? [];
    t.equal(cycle?.processes, 2, 'two processes checkpointed and restored: the daemon and its child');
    t.comment(`zdtm-pipe: checkpoint ${cycle?.checkpointMs} ms, image ${cycle?.imageBytes} bytes, restore ${cycle?.restoreMs} ms`);
  });

  await t.test('negative control omit=pipe-contents: zdtm-pipe finds the pipe from its child empty', async (t) => {
    const r = await run('zdtm-pipe', { policy: { ...DEFAULT_POLICY, omit: ['pipe-contents'] } });
    t.ok(r.native.pass, 'natively it passes');
    t.notOk(r.checkpointed?.pass, `checkpointed: ${r.checkpointed?.summary}`);
    t.match(r.checkpointed?.summary, /the pipe from the child held 0 bytes, not 6000/);
    t.equal(zdtmExitCode([r]), 1, 'exit 1');
  });

  await t.test('a test whose daemon forked a child before its setsid: the native run leaves nothing behind, the tree is refused by name', async (t) => {
    const r = await run('zdtm-wait', { args: ['child'] });
    t.ok(r.native.pass, `natively: ${r.native.summary}`);
    t.notOk(r.checkpointed?.pass, `checkpointed: ${r.checkpointed?.summary}`);
    t.match(
      r.checkpointed?.summary,
      /CheckpointError: process tree: pid \d+ is in session \d+, led by no process of the tree and not the root's: it cannot be created again/,
    );
    t.equal(zdtmExitCode([r]), 1, 'exit 1: a C/R limitation');
    // The refused tree is killed whole: nothing of it is left for the next clean start.
    const killed = killedPids(await shell(cleanStartCommand(dirs.work, agentName)));
    t.same(killed, [], `the refused tree was killed at the refusal (${killed.join(', ')})`);
    // Killed is enough: a zombie waiting for its parent to collect it runs nothing.
    const left = await execa('sh', ['-c', 'for p in $(pgrep -x zdtm-wait); do sed -n "s/.*) \\([^Z]\\) .*/$p/p" /proc/$p/stat 2>/dev/null; done'], {
      reject: false,
    });
    t.equal(left.stdout.trim(), '', "no zdtm-wait process left running: the native run's child was killed too");
  });

  await t.test('a test that fails natively is reported as such, with no C/R verdict', async (t) => {
    const r = await run('zdtm-wait', { args: ['fail'] });
    t.notOk(r.native.pass, `natively: ${r.native.summary}`);
    t.match(r.native.summary, /FAIL: asked to fail/);
    t.equal(r.checkpointed, undefined, 'not checkpointed');
    t.equal(zdtmExitCode([r]), 2, 'exit 2');
  });
});
