// expect: while a guest runs, every socket QEMU and this process listen on is on loopback (the SSH forward at
// 127.0.0.1) or a unix socket; the check itself flags 0.0.0.0 and [::] listeners in a recorded table (it can fail).
import t from 'tap';
import path from 'node:path';
import { isLoopback, listenersOf, parseSocketTable } from '../harness/host/listeners.ts';
import { openGuest } from '../harness/guest/open-guest.ts';
import { artifactsRoot } from '../harness/report/verdicts.ts';

// Recorded from a host with one wildcard and one loopback listener per family.
const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1122 1 0000000000000000 100 0 0 10 0
   1: 0100007F:8AE2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2233 1 0000000000000000 100 0 0 10 0
   2: 0100007F:8AE2 0100007F:D0A4 01 00000000:00000000 00:00000000 00000000     0        0 3344 1 0000000000000000 20 4 30 10 -1`;
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4455 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0017 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5566 1 0000000000000000 100 0 0 10 0`;

t.test('the check flags wildcard listeners and accepts loopback ones', async (t) => {
  const v4 = parseSocketTable('tcp', TCP);
  t.same(
    v4.map((l) => [l.address, l.port, isLoopback(l)]),
    [
      ['0.0.0.0', 2024, false],
      ['127.0.0.1', 35554, true],
    ],
    'IPv4: the established connection is no listener',
  );
  const v6 = parseSocketTable('tcp6', TCP6);
  t.same(
    v6.map((l) => [l.address, l.port, isLoopback(l)]),
    [
      ['0:0:0:0:0:0:0:0', 22, false],
      ['0:0:0:0:0:0:0:1', 23, true],
    ],
    'IPv6: [::] flagged, [::1] accepted',
  );
});

t.test('a running guest listens on loopback and unix sockets only', async (t) => {
  const guest = await openGuest({ artifactsDir: path.join(artifactsRoot(), 'listeners') });
  t.teardown(() => guest.close());
  const qemuPid = guest.machine.pid!;
  const listeners = listenersOf([qemuPid, process.pid]);
  t.comment(listeners.map((l) => `${l.protocol} ${l.address}:${l.port}`).join('\n'));
  t.ok(
    listeners.some((l) => l.protocol === 'tcp' && l.address === '127.0.0.1' && l.port === guest.machine.sshPort),
    `the SSH forward is found at 127.0.0.1:${guest.machine.sshPort} (the check sees QEMU's sockets)`,
  );
  const offLoopback = listeners.filter((l) => !isLoopback(l));
  t.same(offLoopback, [], 'no listener of QEMU or this process is off loopback');
});
