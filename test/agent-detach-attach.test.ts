// expect: DETACH (0x1e), REAP (0x1f) and ATTACH (0x20) encode as documented; through the real agent on the host's
// kernel a process stopped at a breakpoint hit is left untraced in a job-control stop (state T, TracerPid 0) with the
// debug registers still armed (the kernel keeps them across a detach), is
// taken back by ATTACH (TracerPid = the agent) and then runs to the same output as an untouched run; a detached
// process killed by someone else is reaped with its wait status; and each op refuses what it must (ESRCH, EEXIST).
import t, { type Test } from 'tap';
import { readFileSync, rmSync } from 'node:fs';
import { constants } from 'node:os';
import { AgentClient } from '../harness/agent/client.ts';
import { decodeResult, encodeOp, OPCODES } from '../harness/agent/ops.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { PayloadWriter } from '../harness/agent/wire.ts';
import { DR7_EXECUTE_DR0, spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { debugRegOffset } from '../harness/x86/registers.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { AgentError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';

const { ESRCH, EEXIST } = constants.errno;
const CALLS = '9';

async function refused(t: Test, call: Promise<unknown>, errno: number, what: string): Promise<void> {
  const error = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(error instanceof AgentError && error.errno === errno, `${what}: ${(error as Error | undefined)?.message ?? 'no error'}`);
}

/** State letter and TracerPid of a host process, from /proc. */
function procState(pid: number): { state: string; tracer: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { state: status.match(/^State:\s+(\S)/m)![1]!, tracer: Number(status.match(/^TracerPid:\s+(\d+)/m)![1]) };
}

t.test('wire: DETACH and ATTACH are a pid, REAP a pid and a timeout; ATTACH answers the threads, REAP a wait status', async (t) => {
  t.same([OPCODES.DETACH, OPCODES.REAP, OPCODES.ATTACH], [0x1e, 0x1f, 0x20]);
  t.same([...encodeOp({ op: 'DETACH', pid: 300 }).payload], [0x2c, 1, 0, 0]);
  t.same([...encodeOp({ op: 'ATTACH', pid: 300 }).payload], [0x2c, 1, 0, 0]);
  t.same([...encodeOp({ op: 'REAP', pid: 300, timeoutMs: 1000 }).payload], [0x2c, 1, 0, 0, 0xe8, 3, 0, 0]);
  t.same(decodeResult({ op: 'ATTACH', pid: 300 }, new PayloadWriter().u32(2).u32(300).u32(301).finish()), { threads: [300, 301] });
  t.same(decodeResult({ op: 'REAP', pid: 300, timeoutMs: 0 }, new PayloadWriter().u32(9).finish()), { waitStatus: 9 });
  t.equal(decodeResult({ op: 'DETACH', pid: 300 }, Buffer.alloc(0)), undefined);
});

t.test('detach at a hit, attach again, run to the end: the output of an untouched run', async (t) => {
  const bins = await buildGuestBinaries();
  const hwbreak = bins.hostPath.hwbreak!;
  const target = (await ElfFile.open(hwbreak)).symbolAddress('target');
  const { client: agent, hello } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-detach-attach-${process.pid}-${tag}.out`;
  t.teardown(() => ['reference', 'handed', 'reaped'].forEach((tag) => rmSync(out(tag), { force: true })));
  const argv = [hwbreak, CALLS];

  const { pid: refPid } = await agent.call({ op: 'SPAWN', path: hwbreak, argv, envp: [], stdoutPath: out('reference'), noAslr: true });
  await agent.call({ op: 'RUN', pid: refPid, stopAfterHits: 0, timeoutMs: 30_000 });
  const reference = readFileSync(out('reference'), 'utf8');
  t.match(reference, /checksum=[0-9a-f]{16} calls=9/, 'reference output');

  const pid = await spawnWithBreakpoint(agent, { binary: hwbreak, argv, breakAt: target }, out('handed'));
  const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 3, timeoutMs: 30_000 });
  t.equal(run.outcome, 'hit-limit', 'stopped at the third hit');
  const atHit = await agent.call({ op: 'GETREGS', pid });

  await agent.call({ op: 'DETACH', pid });
  t.same(procState(pid), { state: 'T', tracer: 0 }, 'detached: stopped (T), no tracer');
  await new Promise((r) => setTimeout(r, 200));
  t.same(procState(pid), { state: 'T', tracer: 0 }, 'and still stopped 200 ms later');
  await refused(t, agent.call({ op: 'GETREGS', pid }), ESRCH, 'GETREGS of a detached process');
  await refused(t, agent.call({ op: 'KILL', pid }), ESRCH, "KILL of a detached process: no longer the agent's");

  const attached = await agent.call({ op: 'ATTACH', pid });
  t.same(attached.threads, [pid], 'ATTACH answers its one thread');
  t.equal(procState(pid).tracer, hello.agentPid, 'traced by the agent again');
  const regs = await agent.call({ op: 'GETREGS', pid });
  t.equal(regs.rip, atHit.rip, 'at the same instruction as at the hit');
  // What the next checkpointer sees: the tracer's debug registers survive the detach (the kernel keeps them).
  t.equal(await agent.call({ op: 'PEEKUSER', pid, offset: debugRegOffset(0) }), target, 'DR0 still holds the breakpoint after DETACH');
  t.equal(await agent.call({ op: 'PEEKUSER', pid, offset: debugRegOffset(7) }), DR7_EXECUTE_DR0, 'DR7 still enables it');
  await refused(t, agent.call({ op: 'ATTACH', pid }), EEXIST, 'ATTACH of a process already traced');
  const end = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: 30_000 });
  t.same([end.outcome, end.code], ['exited', 0], 'runs to its end once continued');
  t.equal(end.hits.length, 6, 'the 6 calls after the third hit, each hit once: no re-trigger at the stop address (RF kept)');
  t.equal(readFileSync(out('handed'), 'utf8'), reference, 'same output as the untouched run');
  t.same(end.signals, [], 'no signal seen on the way (no SIGSTOP/SIGCONT left over)');

  // A detached process someone else kills (as `criu dump` does) is collected with REAP, and only then is its pid free.
  const victim = await spawnWithBreakpoint(agent, { binary: hwbreak, argv, breakAt: target }, out('reaped'));
  await agent.call({ op: 'RUN', pid: victim, stopAfterHits: 1, timeoutMs: 30_000 });
  await agent.call({ op: 'DETACH', pid: victim });
  await refused(t, agent.call({ op: 'REAP', pid: victim, timeoutMs: 100 }), constants.errno.ETIMEDOUT, 'REAP of a detached process still alive times out');
  process.kill(victim, 'SIGKILL');
  const reaped = await agent.call({ op: 'REAP', pid: victim, timeoutMs: 10_000 });
  t.equal(reaped.waitStatus & 0x7f, 9, 'wait status: killed by SIGKILL');
  t.throws(() => readFileSync(`/proc/${victim}/status`), 'its pid is gone');
  await refused(t, agent.call({ op: 'REAP', pid: victim, timeoutMs: 0 }), ESRCH, 'REAP twice');
  await refused(t, agent.call({ op: 'REAP', pid: refPid, timeoutMs: 0 }), ESRCH, 'REAP of a pid never detached');
  await refused(t, agent.call({ op: 'DETACH', pid: 1 }), ESRCH, 'DETACH of a process the agent did not spawn');
  await refused(t, agent.call({ op: 'ATTACH', pid: hello.agentPid }), constants.errno.EINVAL, 'ATTACH of the agent itself');
});
