// expect: REAP_ORPHANS (0x2a) encodes as documented; through the real agent on the host's kernel, the children of a
// process the agent killed — two zombies and one that ends once its parent is gone — come to the agent (a child
// subreaper) and are reaped with their own wait statuses (exit 42, SIGUSR1, exit 5), after which their pids are free;
// a tracee the agent tracks that has ended is never reaped by it (the agent's own KILL still collects it), nor is a
// detached child (REAP still collects it); and a pid that does not end makes it fail with ETIMEDOUT naming that pid.
import t from 'tap';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { constants } from 'node:os';
import { AgentClient } from '../harness/agent/client.ts';
import { decodeResult, encodeOp, OPCODES } from '../harness/agent/ops.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { PayloadWriter } from '../harness/agent/wire.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { descendants } from '../harness/criu/handoff.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { AgentError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';

const SIGUSR1 = 10;

t.test('wire: REAP_ORPHANS is a timeout and a pid list; it answers (pid, wait status) pairs', async (t) => {
  t.equal(OPCODES.REAP_ORPHANS, 0x2a);
  t.same([...encodeOp({ op: 'REAP_ORPHANS', pids: [300, 301], timeoutMs: 1000 }).payload], [0xe8, 3, 0, 0, 2, 0, 0, 0, 0x2c, 1, 0, 0, 0x2d, 1, 0, 0]);
  t.same(
    decodeResult(
      { op: 'REAP_ORPHANS', pids: [], timeoutMs: 0 },
      new PayloadWriter()
        .u32(1)
        .u32(300)
        .u32(42 << 8)
        .finish(),
    ),
    { reaped: [{ pid: 300, waitStatus: 42 << 8 }] },
  );
});

t.test('orphaned zombies are reaped; tracked and detached children are left to their own waits', async (t) => {
  const bins = await buildGuestBinaries();
  const binary = bins.hostPath['vmflags-zombies']!;
  const checkpointAt = (await ElfFile.open(binary)).symbolAddress('zombies_checkpoint');
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = `/tmp/crh-reap-orphans-${process.pid}.out`;
  t.teardown(() => rmSync(out, { force: true }));

  // A parent with two zombie children and one alive, stopped at its checkpoint.
  const parent = await spawnWithBreakpoint(agent, { binary, argv: [binary, 'zombies'], breakAt: checkpointAt }, out);
  const run = await agent.call({ op: 'RUN', pid: parent, stopAfterHits: 1, timeoutMs: 30_000 });
  t.equal(run.outcome, 'hit-limit', 'the parent stopped at zombies_checkpoint');
  const children = await descendants(agent, parent);
  t.equal(children.length, 3, `three children: ${children.join(' ')}`);
  const states = children.map((pid) => /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))![1]);
  t.same(states.filter((s) => s === 'Z').length, 2, `two of them zombies (${states.join(' ')})`);

  // A tracee that ended and a detached child that ended, neither collected yet.
  const tracee = await spawnWithBreakpoint(agent, { binary, argv: [binary, 'zombies'], breakAt: checkpointAt }, `${out}.t`);
  const detached = await spawnWithBreakpoint(agent, { binary, argv: [binary, 'zombies'], breakAt: checkpointAt }, `${out}.d`);
  t.teardown(() => ['t', 'd'].forEach((s) => rmSync(`${out}.${s}`, { force: true })));
  await agent.call({ op: 'DETACH', pid: detached });

  const timedOut = await agent.call({ op: 'REAP_ORPHANS', pids: [tracee], timeoutMs: 100 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(timedOut instanceof AgentError && timedOut.errno === constants.errno.ETIMEDOUT, `a pid that does not end: ${String(timedOut)}`);
  t.match(String(timedOut), new RegExp(`process ${tracee} still exists`), 'naming it');

  process.kill(tracee, 'SIGKILL');
  process.kill(detached, 'SIGKILL');
  await agent.call({ op: 'KILL', pid: parent });
  const { reaped } = await agent.call({ op: 'REAP_ORPHANS', pids: children, timeoutMs: 10_000 });
  t.same(
    reaped.map((r) => r.pid).sort((a, b) => a - b),
    [...children].sort((a, b) => a - b),
    'exactly the killed parent’s three children were reaped',
  );
  const statuses = reaped.map((r) => r.waitStatus).sort((a, b) => a - b);
  t.same(
    statuses,
    [SIGUSR1, 5 << 8, 42 << 8].sort((a, b) => a - b),
    'each with its own wait status: SIGUSR1, exit 5 (its pipe closed), exit 42',
  );
  for (const pid of children) t.notOk(existsSync(`/proc/${pid}`), `pid ${pid} is free`);

  t.ok(existsSync(`/proc/${tracee}`), 'the ended tracee was not reaped by REAP_ORPHANS');
  const killed = await agent.call({ op: 'KILL', pid: tracee });
  t.equal(killed.waitStatus & 0x7f, 9, "the agent's own KILL still collects it (SIGKILL)");
  t.ok(existsSync(`/proc/${detached}`), 'the ended detached child was not reaped either');
  const collected = await agent.call({ op: 'REAP', pid: detached, timeoutMs: 10_000 });
  t.equal(collected.waitStatus & 0x7f, 9, 'REAP still collects it');
  const none = await agent.call({ op: 'REAP_ORPHANS', pids: [], timeoutMs: 0 });
  t.same(none.reaped, [], 'nothing left to reap');
});
