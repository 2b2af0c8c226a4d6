/**
 * A session of the agent port held by the machine rather than opened by its
 * first user, so that a saved state holds a session already waiting:
 *
 * - before a cold-booted machine saves its state (fast-start.ts), it opens
 *   the session (the guest's supervisor forks it, it announces itself and
 *   blocks reading the port) and saves with the host connected; the state
 *   says so (saved-state.ts STATE_AGENT_SESSION);
 * - a machine started from that state connects to the agent port before
 *   the load (connectBeforeLoad): the port's host end is then connected, as
 *   it was at the save, so virtio-serial tells the guest nothing at the load
 *   and the waiting session takes the first request — no SIGIO, no fork, no
 *   start notice after `cont` (the start notice was read by the saver).
 *
 * A connection the load began without (the host came too late) would be
 * the guest's host going away and coming back: the supervisor hangs up the
 * session and forks another. That is why the connect is confirmed through
 * QMP (query-chardev) before migrate-incoming, never assumed.
 */
import net from 'node:net';
import { InfraError } from '../errors.ts';
import type { QmpClient } from '../qmp/client.ts';
import { Deadline, sleep } from '../util/deadline.ts';
import type { ConsoleLog } from './console.ts';

/**
 * How long the agent port may take to start a session. A guest without the
 * port says so on its console at boot (then the wait ends at once); a guest
 * from saved state of such a boot does not, and waits this long once.
 */
export const AGENT_PORT_START_MS = 20_000;
/** What the guest's agent supervisor prints when the guest has no agent port (guests/agent/port.c). */
export const NO_AGENT_PORT_LINE = /crh-agent: no agent port (\S+): (.*?); the host uses SSH/;
/** The agent port's chardev id (qemu-args.ts agentPortArgs). */
export const AGENT_CHARDEV = 'agent';
/** QEMU accepts a connection on its own socket within milliseconds; this long without it is a broken QEMU. */
const ACCEPT_MS = 10_000;

/** Resolves with the guest's reason when its console says it has no agent port. */
export function consoleSaysNoPort(console: ConsoleLog): Promise<string> {
  return new Promise((resolve) => {
    const said = (line: string): void => {
      const m = NO_AGENT_PORT_LINE.exec(line);
      if (m) resolve(`the guest has no agent port (${m[2]})`);
    };
    for (const line of console.lines) said(line);
    console.onLine(said);
  });
}

/** Whether QEMU's chardev `label` has a client (a socket chardev's filename says "disconnected:" when not). */
export async function chardevConnected(qmp: QmpClient, label: string): Promise<boolean> {
  const chardevs = await qmp.execute<Array<{ label: string; filename: string }>>('query-chardev');
  const mine = chardevs.find((c) => c.label === label);
  if (!mine) throw new InfraError(`QMP query-chardev names no chardev ${label}`, { chardevs: chardevs.map((c) => c.label).join(' ') });
  return !mine.filename.startsWith('disconnected:');
}

/**
 * Connects to the agent port at `socketPath` and returns once QEMU has
 * accepted the connection (its chardev reports a client), so a load that
 * starts now finds the port's host end connected.
 */
export async function connectBeforeLoad(qmp: QmpClient, socketPath: string): Promise<net.Socket> {
  const socket = net.connect(socketPath);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const deadline = Deadline.in(ACCEPT_MS);
    while (!(await chardevConnected(qmp, AGENT_CHARDEV))) {
      if (deadline.expired) throw new InfraError(`QEMU did not accept the agent port connection within ${ACCEPT_MS} ms`, { socket: socketPath });
      await sleep(2);
    }
    return socket;
  } catch (error) {
    socket.destroy();
    throw error instanceof InfraError ? error : new InfraError(`agent port ${socketPath}: ${(error as Error).message}`, {}, { cause: error });
  }
}
