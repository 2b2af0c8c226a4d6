// expect: the checkpoint/restore cycle works through the real agent on the host's own kernel (no QEMU), and a plan step that fails leaves no half-restored process and names the step.
import t from 'tap';
import { existsSync } from 'node:fs';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { RestoreStepError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import type { CheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { RESTORERS } from '../harness/restore/policy.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';

const CALLS = '17';

t.test('checkpoint at a breakpoint and restore, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const hwbreak = bins.hostPath.hwbreak!;
  const target = (await ElfFile.open(hwbreak)).symbolAddress('target');
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-restore-local-${process.pid}-${tag}.out`;
  const argv = [hwbreak, CALLS];

  const takeImage = async (tag: string): Promise<CheckpointImage> => {
    const pid = await spawnWithBreakpoint(agent, { binary: hwbreak, argv, breakAt: target }, out(tag));
    await agent.call({ op: 'RUN', pid, stopAfterHits: 2, timeoutMs: 30_000 });
    const image = await checkpointProcess(agent, { binary: hwbreak, argv, envp: [], noAslr: true, pid }, { host: true });
    await agent.call({ op: 'KILL', pid });
    return image;
  };

  const { pid: refPid } = await agent.call({ op: 'SPAWN', path: hwbreak, argv, envp: [], stdoutPath: out('reference'), noAslr: true });
  await agent.call({ op: 'RUN', pid: refPid, stopAfterHits: 0, timeoutMs: 30_000 });
  const reference = (await agent.call({ op: 'READ_FILE', path: out('reference'), maxSize: 4096 })).toString();

  for (const restorer of RESTORERS) {
    await t.test(`restorer=${restorer}`, async (t) => {
      const image = await takeImage(restorer);
      const restored = await restoreProcess(agent, image, { policy: { rf: 'keep-and-preserve', restorer }, stdoutPath: out(`${restorer}-restored`) });
      const run = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: 30_000 });
      t.equal(run.outcome, 'exited');
      t.equal(run.code, 0);
      const expectedHits = restorer === 'popf' ? Number(CALLS) - 1 : Number(CALLS) - 2;
      t.equal(run.hits.length, expectedHits, `${expectedHits} hits after restore${restorer === 'popf' ? ' (POPF loses RF: one re-trigger)' : ''}`);
      t.equal(
        (await agent.call({ op: 'READ_FILE', path: out(`${restorer}-restored`), maxSize: 4096 })).toString(),
        reference,
        'same output as the uninterrupted run',
      );
    });
  }

  await t.test('a failing plan step: the target is killed and the step named', async (t) => {
    const image = await takeImage('failing');
    // A heap below the binary: brk() cannot move the program break there, so the
    // kernel answers with the current break and the step's expectation fails.
    const maps = image.maps.replace(/^[0-9a-f]+-[0-9a-f]+( rw-p \S+ \S+ \S+\s+\[heap\])$/m, '00100000-00101000$1');
    t.not(maps, image.maps, 'the image had a heap to move');
    const broken: CheckpointImage = { ...image, maps };
    const error = await restoreProcess(agent, broken, { policy: { rf: 'keep-and-preserve' }, stdoutPath: out('failing-restored') }).then(
      () => undefined,
      (e: unknown) => e as RestoreStepError,
    );
    t.ok(error instanceof RestoreStepError, `RestoreStepError: ${error?.message}`);
    t.match(error?.stepDescription, /INJECT_SYSCALL pid \d+ nr 12 \(0x101000\): grow the heap to 0x101000/, 'the failing step is named with its reason');
    t.match(error?.message, /returned 0x[0-9a-f]+, expected 0x101000/);
    t.equal(error?.step, 0, 'it was the first step');
    const killed = /pid (\d+) killed/.exec(error?.details.target ?? '');
    t.ok(killed, `the error says what became of the target: ${error?.details.target}`);
    t.notOk(existsSync(`/proc/${killed?.[1]}`), 'no half-restored process is left');
  });
});
