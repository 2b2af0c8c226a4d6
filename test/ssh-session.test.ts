// SshSession.connect against a real ssh2 server on loopback: connections the server closes before the identification
// exchange (dropbear's per-address limit on unauthenticated connections) are tried again; a wrong host key is not.
// ECDSA keys: ssh2's own ed25519 generator makes a key its parser rejects about once in 300 (measured), which failed a run.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import ssh2 from 'ssh2';
import { InfraError } from '../harness/errors.ts';
import { SshSession } from '../harness/ssh/session.ts';

const { Server, utils } = ssh2;

interface Fixture {
  port: number;
  keyPath: string;
  hostPublicKey: string;
  connections: () => number;
  close: () => Promise<void>;
}

/** An SSH server that closes the first `dropFirst` connections at once, then accepts the client key and runs `echo`. */
async function fixture(t: Test, dropFirst: number): Promise<Fixture> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'crh-ssh-test-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const host = utils.generateKeyPairSync('ecdsa', { bits: 256 });
  const client = utils.generateKeyPairSync('ecdsa', { bits: 256 });
  const keyPath = path.join(dir, 'id_ed25519');
  await writeFile(keyPath, client.private, { mode: 0o600 });
  const server = new Server({ hostKeys: [host.private] }, (conn) => {
    conn.on('authentication', (ctx) => (ctx.method === 'publickey' ? ctx.accept() : ctx.reject(['publickey'])));
    conn.on('session', (accept) =>
      accept().once('exec', (acceptExec) => {
        const stream = acceptExec();
        stream.write('hello\n');
        stream.exit(0);
        stream.end();
      }),
    );
    conn.on('error', () => {});
  });
  let seen = 0;
  const tcp = net.createServer((socket) => {
    seen++;
    if (seen <= dropFirst) socket.destroy();
    else server.injectSocket(socket);
  });
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  return {
    port: (tcp.address() as net.AddressInfo).port,
    keyPath,
    hostPublicKey: host.public.trim(),
    connections: () => seen,
    close: () => new Promise<void>((resolve) => tcp.close(() => resolve())),
  };
}

t.test('two connections closed before the handshake, then a login: connected on the third', async (t) => {
  const f = await fixture(t, 2);
  t.teardown(f.close);
  const session = await SshSession.connect({ host: '127.0.0.1', port: f.port, privateKeyPath: f.keyPath, hostPublicKey: f.hostPublicKey }, 10_000);
  t.equal(await session.run('echo hello'), 'hello\n', 'the session runs a command');
  t.equal(f.connections(), 3, 'three connections: two closed by the server, one logged in');
  session.close();
});

t.test('a server that closes every connection: an infrastructure error naming the cause and the attempts', async (t) => {
  const f = await fixture(t, 1000);
  t.teardown(f.close);
  const error = await SshSession.connect({ host: '127.0.0.1', port: f.port, privateKeyPath: f.keyPath, hostPublicKey: f.hostPublicKey }, 10_000).catch(
    (e: unknown) => e,
  );
  t.type(error, InfraError);
  t.match((error as Error).message, /Connection lost before handshake \(after 5 connection\(s\) closed before the handshake\)/);
  t.equal(f.connections(), 6, 'six attempts, then given up');
});

t.test('a host key that is not the pinned one is refused at once, never retried', async (t) => {
  const f = await fixture(t, 0);
  t.teardown(f.close);
  const other = utils.generateKeyPairSync('ecdsa', { bits: 256 }).public.trim();
  const error = await SshSession.connect({ host: '127.0.0.1', port: f.port, privateKeyPath: f.keyPath, hostPublicKey: other }, 10_000).catch((e: unknown) => e);
  t.type(error, InfraError);
  t.notMatch((error as Error).message, /closed before the handshake/);
  t.equal(f.connections(), 1, 'one connection only');
});
