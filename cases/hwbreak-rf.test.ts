// expect: a process checkpointed at the 2nd of N hardware-breakpoint hits (RF=1 at that stop)
// resumes with exactly N hits in all and the uninterrupted checksum under the default RF policy;
// rf=clear (the first 2009 patch) shows one spurious re-trigger, rf=reject refuses the image
// naming RF before touching the guest.
import t, { type Test } from 'tap';
import path from 'node:path';
import { ElfFile } from '../harness/elf/elf64.ts';
import { ImageRejectedError } from '../harness/errors.ts';
import { recordVerdict } from '../harness/report/verdicts.ts';
import { checkpointProcess } from '../harness/restore/checkpoint.ts';
import { readCheckpointImage, writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import type { RfPolicy } from '../harness/restore/policy.ts';
import { restoreProcess } from '../harness/restore/restore.ts';
import { startGuest } from '../harness/testing/guest-fixture.ts';
import { EFLAGS, debugRegOffset, hex } from '../harness/x86/registers.ts';

const CASE = 'hwbreak-rf';
const CALLS = 5;
const CHECKPOINT_AT_HIT = 2;
/** DR7: L0 enable, R/W0 = 00 (execute), LEN0 = 00 (1 byte). */
const DR7_EXECUTE_DR0 = 0x1n;
const RUN_TIMEOUT_MS = 60_000;

interface Outcome {
  totalHits: number;
  checksum: string | undefined;
  exitCode: number;
}

t.test(CASE, async (t) => {
  const guest = await startGuest(t, CASE);
  const { agent } = guest;
  const binary = guest.image.guestPaths.hwbreak!;
  const target = (await ElfFile.open(guest.image.binaries.hwbreak!)).symbolAddress('target');
  t.comment(`hwbreak:target = ${hex(target)}`);
  const argv = [binary, String(CALLS)];
  const outputOf = async (file: string): Promise<string> => (await agent.call({ op: 'READ_FILE', path: file, maxSize: 65536 })).toString('utf8');
  const checksumIn = (text: string): string | undefined => /checksum=([0-9a-f]{16}) calls=(\d+)/.exec(text)?.[1];

  const spawnArmed = async (stdoutPath: string): Promise<number> => {
    const { pid } = await agent.call({ op: 'SPAWN', path: binary, argv, envp: [], stdoutPath, noAslr: true });
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(0), value: target });
    await agent.call({ op: 'POKEUSER', pid, offset: debugRegOffset(7), value: DR7_EXECUTE_DR0 });
    return pid;
  };

  // The reference: the same program with the same breakpoint, never checkpointed.
  const reference = await (async (): Promise<Outcome> => {
    const pid = await spawnArmed('/tmp/hwbreak-reference.out');
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    return { totalHits: run.hits.length, checksum: checksumIn(await outputOf('/tmp/hwbreak-reference.out')), exitCode: run.code };
  })();
  t.equal(reference.exitCode, 0, 'uninterrupted run exits 0');
  t.equal(reference.totalHits, CALLS, `uninterrupted run: one hit per call (${CALLS})`);
  t.ok(reference.checksum, `uninterrupted checksum ${reference.checksum}`);

  /** The case's main assertion: the restored run is indistinguishable from the reference. */
  const resumedExactly = (o: Outcome): boolean => o.totalHits === CALLS && o.checksum === reference.checksum && o.exitCode === 0;

  /** Runs the original to the checkpoint hit, checkpoints it, kills it; returns the image file and hits so far. */
  const checkpointAtHit = async (t: Test, tag: string): Promise<{ file: string; hitsBefore: number; rfAtStop: boolean }> => {
    const pid = await spawnArmed(`/tmp/hwbreak-${tag}.original.out`);
    const run = await agent.call({ op: 'RUN', pid, stopAfterHits: CHECKPOINT_AT_HIT, timeoutMs: RUN_TIMEOUT_MS });
    t.equal(run.outcome, 'hit-limit', `${tag}: original stopped at hit ${CHECKPOINT_AT_HIT}`);
    const stop = run.hits.at(-1)!;
    t.equal(stop.rip, target, `${tag}: stopped at hwbreak:target`);
    const image = await checkpointProcess(agent, { binary, argv, envp: [], noAslr: true, pid }, guest.platform);
    const file = path.join(guest.artifactsDir, `checkpoint-${tag}.tar`);
    await writeCheckpointImage(image, file);
    await agent.call({ op: 'KILL', pid });
    return { file, hitsBefore: run.hits.length, rfAtStop: (image.regs.eflags & EFLAGS.RF) !== 0n };
  };

  const restoreAndFinish = async (t: Test, tag: string, rf: RfPolicy): Promise<Outcome & { rfAtStop: boolean; differences: string[] }> => {
    const { file, hitsBefore, rfAtStop } = await checkpointAtHit(t, tag);
    const image = await readCheckpointImage(file);
    const out = `/tmp/hwbreak-${tag}.restored.out`;
    const restored = await restoreProcess(agent, image, { policy: { rf }, stdoutPath: out });
    const run = await agent.call({ op: 'RUN', pid: restored.pid, stopAfterHits: 0, timeoutMs: RUN_TIMEOUT_MS });
    return {
      totalHits: hitsBefore + run.hits.length,
      checksum: checksumIn(await outputOf(out)),
      exitCode: run.outcome === 'exited' ? run.code : 128 + run.code,
      rfAtStop,
      differences: restored.differences.map((d) => `${d.what}: asked ${d.requested}, kernel has ${d.accepted}`),
    };
  };

  await t.test('default policy (keep-and-preserve): exactly N hits and the reference checksum', async (t) => {
    const o = await restoreAndFinish(t, 'default', 'keep-and-preserve');
    t.ok(o.rfAtStop, 'EFLAGS.RF is set at the breakpoint stop (precondition of the scenario)');
    t.same(o.differences, [], 'the kernel accepted every restored register as requested');
    t.equal(o.totalHits, CALLS, `${CALLS} hits across original and restored process`);
    t.equal(o.checksum, reference.checksum, 'same checksum as the uninterrupted run');
    t.ok(resumedExactly(o), 'resumed exactly as the uninterrupted run');
    recordVerdict({
      case: CASE, scenario: 'hw breakpoint, checkpoint at hit 2 (RF=1)', policy: 'rf=keep-and-preserve', control: false,
      expected: `${CALLS} hits, checksum ${reference.checksum}`, observed: `${o.totalHits} hits, checksum ${o.checksum}`, pass: resumedExactly(o),
    });
  });

  await t.test('negative control rf=clear: the spurious re-trigger makes the main assertion fail', async (t) => {
    const o = await restoreAndFinish(t, 'clear', 'clear');
    t.equal(o.totalHits, CALLS + 1, `${CALLS + 1} hits: the restored task re-hits the breakpoint it stopped at`);
    t.equal(o.checksum, reference.checksum, 'the extra trap changes no data, only the hit count');
    t.notOk(resumedExactly(o), 'the main assertion fails on this control');
    recordVerdict({
      case: CASE, scenario: 'hw breakpoint, checkpoint at hit 2 (RF=1)', policy: 'rf=clear', control: true,
      expected: `${CALLS + 1} hits (spurious re-trigger)`, observed: `${o.totalHits} hits`, pass: o.totalHits === CALLS + 1 && !resumedExactly(o),
    });
  });

  await t.test('negative control rf=reject: refused before any guest operation, naming RF', async (t) => {
    const { file } = await checkpointAtHit(t, 'reject');
    const image = await readCheckpointImage(file);
    const before = agent.requestsSent;
    const processesBefore = await guest.machine.ssh.run('ls /proc | grep -c "^[0-9]"');
    const error = await restoreProcess(agent, image, { policy: { rf: 'reject' }, stdoutPath: '/tmp/hwbreak-reject.restored.out' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(error instanceof ImageRejectedError, 'restore refused with ImageRejectedError');
    t.match(String((error as Error | undefined)?.message), /RF/, `the error names RF: ${(error as Error | undefined)?.message}`);
    t.equal(agent.requestsSent, before, 'no request reached the agent');
    t.equal(await guest.machine.ssh.run('ls /proc | grep -c "^[0-9]"'), processesBefore, 'guest process count unchanged');
    recordVerdict({
      case: CASE, scenario: 'hw breakpoint, checkpoint at hit 2 (RF=1)', policy: 'rf=reject', control: true,
      expected: 'refused, naming RF, guest untouched', observed: error instanceof ImageRejectedError ? `refused at ${error.entry} ${error.field}, ${agent.requestsSent - before} requests sent` : 'restored',
      pass: error instanceof ImageRejectedError && /RF/.test(error.message) && agent.requestsSent === before,
    });
  });
});

