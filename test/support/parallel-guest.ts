/**
 * A case for test/parallel-jobs.test.ts: it boots a guest as every case does
 * (startGuest), then waits at a barrier in the run's artifacts folder until
 * `CRH_PARALLEL_GUESTS` guests are up at the same moment — which only
 * happens when `crh run --jobs N` really runs them at once — and checks that
 * its SSH forward and its QMP socket lead to its own guest and no other: a
 * token written over SSH before the barrier must read back unchanged after
 * it, and QMP must answer with this machine's name.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { artifactsRoot, recordVerdict } from '../../harness/report/verdicts.ts';
import { startGuest } from '../../harness/testing/guest-fixture.ts';
import { sleep } from '../../harness/util/deadline.ts';

/** What each guest publishes at the barrier, read back by the test. */
export interface BarrierRecord {
  case: string;
  machineName: string;
  /** started from the saved VM state rather than booted */
  fromSavedState: boolean;
  qemuPid: number | undefined;
  sshPort: number;
  gdbSocket: string;
  upAtMs: number;
}

async function barrier(name: string, caseName: string, record: object): Promise<boolean> {
  const dir = path.join(artifactsRoot(), `barrier-${name}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, `${caseName}.json`), JSON.stringify(record));
  const expected = Number(process.env.CRH_PARALLEL_GUESTS ?? 3);
  const deadline = Date.now() + Number(process.env.CRH_PARALLEL_BARRIER_MS ?? 90_000);
  while (readdirSync(dir).length < expected) {
    if (Date.now() > deadline) {
      // Gone from the barrier: a guest that starts later must not count this one as up.
      rmSync(path.join(dir, `${caseName}.json`), { force: true });
      return false;
    }
    await sleep(100);
  }
  return true;
}

export function parallelGuestCase(caseName: string): void {
  t.test(caseName, async (t) => {
    const guest = await startGuest(t, caseName);
    const { machine } = guest;
    const token = randomBytes(8).toString('hex');
    await machine.ssh.run(`echo ${token} > /tmp/crh-who`);
    const record: BarrierRecord = {
      case: caseName,
      machineName: machine.name,
      fromSavedState: machine.fromSavedState,
      qemuPid: machine.pid,
      sshPort: machine.sshPort,
      gdbSocket: machine.gdbSocket,
      upAtMs: Date.now(),
    };
    const together = await barrier('up', caseName, record);
    const who = (await machine.ssh.run('cat /tmp/crh-who')).trim();
    const { name } = await machine.qmp.execute<{ name: string }>('query-name');
    // Stay up until every guest has read back: one that shut down early would free its port for another to take.
    const stayed = together && (await barrier('read', caseName, {}));
    const pass = together && stayed && who === token && name === machine.name;
    t.ok(together, 'every guest was up at the same time');
    t.equal(who, token, 'the SSH forward leads to this guest');
    t.equal(name, machine.name, 'the QMP socket belongs to this machine');
    recordVerdict({
      case: caseName,
      scenario: 'guest up while the others are',
      policy: '-',
      control: false,
      expected: `all guests up at once; token ${token}; QMP name ${machine.name}`,
      observed: `${together ? 'all up at once' : 'alone at the barrier'}; token ${who}; QMP name ${name}; ssh 127.0.0.1:${machine.sshPort}; qemu pid ${machine.pid}`,
      pass,
    });
  });
}
