// expect: an LDT installed with modify_ldt survives checkpoint and restore through the real agent on the host's own kernel — a data segment held in %gs at the checkpoint still reads, a not-present entry still raises #NP (SIGBUS) — and omit=ldt, run as the control, does not.
import t from 'tap';
import { AgentClient } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { spawnWithBreakpoint } from '../harness/agent/breakpoint-spawn.ts';
import { ElfFile } from '../harness/elf/elf64.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { DEFAULT_POLICY, type RestorePolicy } from '../harness/restore/policy.ts';

t.test('LDT across checkpoint and restore, on the host kernel', async (t) => {
  const bins = await buildGuestBinaries();
  const ldt = bins.hostPath.ldt!;
  const breakAt = (await ElfFile.open(ldt)).symbolAddress('ldt_checkpoint');
  const { client: agent } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => agent.close());
  const out = (tag: string): string => `/tmp/crh-restore-ldt-${process.pid}-${tag}.out`;
  const read = async (tag: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: out(tag), maxSize: 4096 })).toString();

  const { pid: refPid } = await agent.call({ op: 'SPAWN', path: ldt, argv: [ldt], envp: [], stdoutPath: out('reference'), noAslr: true });
  const ref = await agent.call({ op: 'RUN', pid: refPid, stopAfterHits: 0, timeoutMs: 30_000 });
  const reference = await read('reference');
  t.equal(ref.code, 0, `uninterrupted: ${reference.trim()}`);
  t.match(reference, /absent=SIGBUS\/128/, 'uninterrupted: the not-present entry raises #NP, delivered as SIGBUS with si_code SI_KERNEL');

  const restoreUnder = async (tag: string, policy: RestorePolicy) => {
    const pid = await spawnWithBreakpoint(agent, { binary: ldt, argv: [ldt], breakAt }, out(`${tag}-original`));
    const hit = await agent.call({ op: 'RUN', pid, stopAfterHits: 1, timeoutMs: 30_000 });
    t.equal(hit.outcome, 'hit-limit', 'stopped at ldt_checkpoint');
    const image = await checkpointProcess(agent, { binary: ldt, argv: [ldt], envp: [], noAslr: true, pid }, { host: true });
    await agent.call({ op: 'KILL', pid });
    const restored = await restoreProcess(agent, image, { policy, stdoutPath: out(`${tag}-restored`) });
    const run = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: 30_000 });
    return { image, restored, run, output: await read(`${tag}-restored`) };
  };

  await t.test('default policy: the same output as uninterrupted', async (t) => {
    const r = await restoreUnder('default', DEFAULT_POLICY);
    t.same(
      r.image.ldt.map((e) => [e.entry_number, e.seg_not_present, e.useable]),
      [
        [3, 0, 1],
        [5, 1, 1],
      ],
      'the image holds entries 3 and 5, 5 not present',
    );
    t.equal(r.image.regs.gs, 0x1fn, "gs holds entry 3's selector (TI = 1, RPL 3) at the checkpoint");
    t.ok(
      r.restored.plan.findIndex((s) => s.why.startsWith('LDT entry')) < r.restored.plan.findIndex((s) => s.op.op === 'SETREGS'),
      'the LDT is installed before the registers are written',
    );
    t.same(r.restored.differences, [], 'read back: as requested');
    t.equal(r.output, reference, `restored: ${r.output.trim()}`);
    t.equal(r.run.code, 0);
  });

  await t.test('control omit=ldt: the selectors fault with #GP', async (t) => {
    const r = await restoreUnder('omit-ldt', { ...DEFAULT_POLICY, omit: ['ldt'] });
    t.comment(`omit=ldt: ${r.output.trim()}`);
    t.not(r.output, reference, 'differs from uninterrupted');
    t.match(r.output, /absent=SIGSEGV\/128/, 'the not-present selector raises #GP (SIGSEGV), not #NP');
    t.equal(r.run.code, 1);
  });
});
