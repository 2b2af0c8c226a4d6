/**
 * The ZDTM-protocol scenario, as `crh zdtm` runs it (zdtm/test-run.ts): a
 * test's daemon run natively (the reference: no tracer, no checkpoint), then
 * again with checkpoint → kill → restore of the tree rooted at the daemon its
 * pid file names, each in a fresh working directory; the test's own verdict
 * is the oracle. The protocol takes its reference with each run (a test's
 * native run is what it is judged against), so an attempt is both runs,
 * judged once as an Attempt: matched when the checkpointed run passed.
 */
import path from 'node:path';
import type { Test } from 'tap';
import type { RestorePolicy } from '../restore/policy.ts';
import type { Guest } from '../testing/guest-fixture.ts';
import { prepareZdtmGuest, runZdtmTest, ZDTM_DIRS, type ZdtmSession, type ZdtmTestRecord } from '../zdtm/test-run.ts';
import type { Attempt } from './attempt.ts';

/** Which test, how: its arguments, the restore policy and how many checkpoint/restore cycles. */
export interface ZdtmRun {
  /** the test program (guest image path name) */
  name: string;
  args?: readonly string[];
  policy: RestorePolicy;
  iters?: number;
}

/** One attempt: the judged Attempt, and the protocol's record of both runs for a row's own assertions. */
export interface ZdtmAttempt extends Attempt {
  record: ZdtmTestRecord;
}

export interface ZdtmScenario {
  attempt(run: ZdtmRun, tag: string): Promise<ZdtmAttempt>;
}

export interface ZdtmTiming {
  /** how long the daemon runs before the first checkpoint (long enough under TCG to reach its wait or its loop) */
  settleMs: number;
  timeoutMs: number;
}

/** Prepares `guest` (started with its agent in ZDTM_DIRS.work) for ZDTM-protocol tests, their phases as comments in `t`. */
export async function zdtmScenario(t: Test, guest: Guest, timing: ZdtmTiming): Promise<ZdtmScenario> {
  const { ssh } = guest.machine;
  await prepareZdtmGuest({ shell: (c) => ssh.run(c) });
  const session: ZdtmSession = {
    agent: guest.agent,
    platform: guest.platform,
    shell: (c) => ssh.run(c),
    upload: (p, d, m) => ssh.upload(p, d, m),
    note: (line) => t.comment(line),
    phase: async (name, detail) => void t.comment(`${name}${detail ? `: ${detail}` : ''}`),
  };
  return {
    async attempt(run, tag) {
      const record = await runZdtmTest(
        session,
        { name: run.name, binary: guest.image.guestPaths[run.name]!, args: run.args ?? [], files: [] },
        {
          policy: run.policy,
          iters: run.iters ?? 1,
          ...timing,
          imageFile: path.join(guest.artifactsDir, `checkpoint-${tag}.tar`),
        },
      );
      const notCheckpointed = record.checkpointed ? undefined : `not checkpointed: ${record.native.summary}`;
      return {
        record,
        matched: record.checkpointed?.pass === true,
        observed: record.checkpointed?.summary ?? notCheckpointed!,
        witnesses: notCheckpointed ? { notRestored: notCheckpointed } : { output: record.checkpointed!.summary },
      };
    },
  };
}

export { ZDTM_DIRS };
