// expect: through the real agent on the host's kernel, the selfstep workload (TF single-stepping under its own SIGTRAP
// handler, then an int3) prints the same trap list under RUN with nothing armed, with an execute breakpoint on its
// handler (where SIGTRAP is blocked: the hit's forced SIGTRAP resets the handler, the agent puts it back — 12 hits, 12
// traps), and with a write watchpoint that the stepped store hits in the same #DB as the program's step (DR6 B0 and
// BS: counted as a hit and delivered as its trap); stopped at that hit it is left at its handler's first instruction.
// RUN's legacy flag shows what the agent did before: killed by SIGTRAP (handler), one trap lost (watchpoint). The
// wire: RUN sends a flags field only when a flag is set.
import t from 'tap';
import { readFile } from 'node:fs/promises';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { dr7WriteWatch, spawnWithBreakpoint, type ArmedProgram } from '../harness/agent/breakpoint-spawn.ts';
import { encodeOp } from '../harness/agent/ops.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';

const DR6_BS = 0x4000n;

t.test('wire: RUN carries flags only when set', async (t) => {
  t.equal(encodeOp({ op: 'RUN', pid: 1, stopAfterHits: 0, timeoutMs: 0 }).payload.length, 12, 'three u32 as before');
  t.same([...encodeOp({ op: 'RUN', pid: 1, stopAfterHits: 0, timeoutMs: 0, legacyTraps: true }).payload.subarray(12)], [1, 0, 0, 0], 'flag 1: legacy');
});

t.test('breakpoints the program cannot feel (host kernel)', async (t) => {
  const bins = await buildGuestBinaries();
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const binary = bins.hostPath.selfstep!;
  const elf = ElfFile.parse(binary, await readFile(binary));
  const sym = (name: string): bigint => elf.symbols().find((s) => s.name === name)!.value;
  let n = 0;
  const run = async (program: ArmedProgram, legacyTraps = false) => {
    const out = `/tmp/crh-agent-invisible-${process.pid}-${n++}.out`;
    const pid = await spawnWithBreakpoint(agent, program, out);
    const result = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 20_000, legacyTraps });
    return { result, output: await readFile(out, 'utf8'), ended: `${result.outcome} ${result.code}` };
  };
  const plain = await run({ binary, argv: [binary] });
  t.equal(plain.ended, 'exited 0');
  t.match(plain.output, /^selfstep traps=12 sum=28$/m, 'nothing armed: 12 traps');
  const onHandler: ArmedProgram = { binary, argv: [binary], breakAt: sym('selfstep_handler') };
  const watched: ArmedProgram = { binary, argv: [binary], debugRegs: { 0: sym('self_cell'), 7: dr7WriteWatch(0, 8) } };

  const handler = await run(onHandler);
  t.equal(handler.ended, 'exited 0');
  t.equal(handler.output, plain.output, 'breakpoint on the handler: the same output');
  t.equal(handler.result.hits.length, 12, 'one hit per handler entry');

  const watch = await run(watched);
  t.equal(watch.output, plain.output, 'watchpoint hit by a stepped store: the same output');
  t.equal(watch.result.hits.length, 1);
  t.ok(((watch.result.hits[0]?.dr6 ?? 0n) & DR6_BS) !== 0n, `that hit came with the program's step (DR6 0x${watch.result.hits[0]?.dr6.toString(16)})`);

  const out = `/tmp/crh-agent-invisible-${process.pid}-limit.out`;
  const pid = await spawnWithBreakpoint(agent, watched, out);
  const limit = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 20_000 });
  t.equal(limit.outcome, 'hit-limit');
  t.equal((await agent.call({ op: 'GETREGS', pid })).rip, sym('selfstep_handler'), "at the limit: left at the handler's first instruction, its trap delivered");
  const rest = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 20_000 });
  t.equal(`${rest.outcome} ${rest.code}`, 'exited 0');
  t.equal(await readFile(out, 'utf8'), plain.output, 'and it finishes as natively');

  const legacyHandler = await run(onHandler, true);
  t.equal(legacyHandler.ended, 'killed 5', 'legacy, breakpoint on the handler: killed by SIGTRAP');
  t.equal(legacyHandler.output, '');
  const legacyWatch = await run(watched, true);
  t.match(legacyWatch.output, /^selfstep traps=11 sum=28$/m, 'legacy, watchpoint: the step trap that came with the hit is lost');
});
