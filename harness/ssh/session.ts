/**
 * SSH to the guest with ssh2: key login as root, the guest's host key pinned
 * (the image generated it), commands run to completion or as raw channels
 * (the agent's transport).
 */
import { readFile } from 'node:fs/promises';
import { Client, type ClientChannel } from 'ssh2';
import { CrhError, InfraError } from '../errors.ts';
import type { AgentTransport } from '../agent/client.ts';
import { CappedBuffer } from '../util/capped-buffer.ts';

/** Most of one stream of a command's output kept in memory (/proc/kallsyms of a large kernel is ~10 MiB). */
export const EXEC_OUTPUT_MAX_BYTES = 64 * 1024 * 1024;

export interface SshTarget {
  host: '127.0.0.1';
  port: number;
  privateKeyPath: string;
  /** "ssh-ed25519 AAAA..." — the only host key accepted */
  hostPublicKey: string;
}

export interface ExecResult {
  /** at most EXEC_OUTPUT_MAX_BYTES, then a line saying how much more there was */
  stdout: string;
  stderr: string;
  code: number | null;
  signal?: string;
  /** set when either stream was cut at the limit */
  truncated?: true;
}

/** How often a connection closed before the SSH identification exchange is tried. */
const CONNECT_ATTEMPTS = 6;
/** ssh2's words for a TCP connection that ended before the identification exchange, and a reset one. */
const CLOSED_BEFORE_HANDSHAKE = /Connection lost before handshake|ECONNRESET/;

export class SshCommandError extends CrhError {
  override readonly name = 'SshCommandError';
}

/** How a command run as a raw channel ended: its exit status, or the signal that killed it. */
export interface ChannelExit {
  code: number | null;
  signal?: string;
}

export class SshSession {
  private closing = false;
  private dropped = false;
  /** the connection ended unasked (lost has rejected) */
  private lostNow = false;
  private lostReject: ((error: Error) => void) | undefined;
  /**
   * Rejects (never resolves) when the connection ends without close() being
   * called: the TCP link to the guest dropped, or the guest's sshd went away
   * (or, for a session connecting in the background, never answered).
   * Whoever waits on the guest races against it, as against a lost machine.
   */
  readonly lost: Promise<never> = new Promise<never>((_, reject) => {
    this.lostReject = reject;
  });

  /** the client, once a connection was asked for (onDemand: at the first command) */
  private clientPromise: Promise<Client> | undefined;

  private constructor(private readonly connectClientNow: () => Promise<Client>) {
    this.lost.catch(() => {}); // observed by whoever races against it
  }

  /** The connected client, connecting now if nothing asked before; every command waits for it. */
  private get client(): Promise<Client> {
    if (!this.clientPromise) {
      const client = this.connectClientNow();
      this.clientPromise = client;
      client.then(
        (c) => this.watch(c),
        (error: Error) => this.lostReject?.(error),
      );
    }
    return this.clientPromise;
  }

  private watch(client: Client): void {
    let lastError = '';
    // After the handshake an 'error' event with no listener would end crh; it is one cause of a lost connection.
    client.on('error', (e: Error) => void (lastError = e.message));
    client.once('close', () => {
      if (this.closing) return;
      this.lostNow = true;
      this.lostReject?.(new InfraError(`SSH connection to the guest lost${lastError ? `: ${lastError}` : ''}`));
    });
    if (this.closing) client.end();
    else if (this.dropped) client.destroy();
  }

  /** Connects and logs in; resolves once the session can run commands. */
  static async connect(target: SshTarget, timeoutMs = 20_000): Promise<SshSession> {
    const client = await connectClient(target, timeoutMs);
    const session = new SshSession(() => Promise.resolve(client));
    void session.client;
    return session;
  }

  /**
   * A session that connects when first used (a command, a transport): a
   * guest started from saved state, whose sshd already listens, while the
   * agent is reached another way (the agent port) — its handshake, a fork
   * and key exchange emulated under TCG, would otherwise compete with the
   * agent's first requests for the guest's CPU. A connection that fails
   * rejects `lost` and every command; one never asked for is never lost.
   */
  static onDemand(target: SshTarget, timeoutMs = 20_000): SshSession {
    return new SshSession(() => connectClient(target, timeoutMs));
  }

  /** Runs a command in the guest and collects its output. */
  async exec(command: string, maxBytes = EXEC_OUTPUT_MAX_BYTES): Promise<ExecResult> {
    const channel = await this.channel(command);
    const stdout = new CappedBuffer(maxBytes, `stdout of \`${command.slice(0, 80)}\``);
    const stderr = new CappedBuffer(maxBytes, `stderr of \`${command.slice(0, 80)}\``);
    channel.on('data', (d: Buffer) => stdout.push(d));
    channel.stderr.on('data', (d: Buffer) => stderr.push(d));
    return new Promise((resolve) => {
      channel.on('close', (code: number | null, signal?: string) =>
        resolve({
          stdout: stdout.text(),
          stderr: stderr.text(),
          code: code ?? null,
          ...(signal ? { signal } : {}),
          ...(stdout.truncated || stderr.truncated ? { truncated: true as const } : {}),
        }),
      );
    });
  }

  /** Like exec, but a non-zero exit throws with the output. */
  async run(command: string): Promise<string> {
    const result = await this.exec(command);
    // A caller of run() parses the whole output; a cut one would be parsed as if complete.
    if (result.code !== 0 || result.truncated) {
      throw new SshCommandError(
        `guest command ${result.code === 0 ? `wrote more than ${EXEC_OUTPUT_MAX_BYTES} bytes` : `failed (exit ${result.code ?? result.signal})`}: ${command}`,
        {
          stdout: result.stdout,
          stderr: result.stderr,
        },
      );
    }
    return result.stdout;
  }

  /**
   * Writes `data` to the guest file `guestPath` (created or truncated, then
   * given `mode`): streamed to `cat` over an exec channel's stdin, so it
   * needs nothing in the guest but a shell.
   */
  async upload(guestPath: string, data: Uint8Array, mode: number): Promise<void> {
    const quoted = `'${guestPath.replaceAll("'", `'\\''`)}'`;
    const command = `cat > ${quoted} && chmod ${mode.toString(8)} ${quoted}`;
    const channel = await this.channel(command);
    const stderr: Buffer[] = [];
    channel.stderr.on('data', (d: Buffer) => stderr.push(d));
    channel.resume();
    const code = await new Promise<number | null>((resolve) => {
      channel.on('close', (c: number | null) => resolve(c ?? null));
      channel.end(data);
    });
    if (code !== 0) {
      throw new SshCommandError(`upload of ${data.length} bytes to ${guestPath} failed (exit ${code})`, {
        command,
        stderr: Buffer.concat(stderr).toString('utf8'),
      });
    }
  }

  /** A command's channel as an agent transport (stdin, stdout, stderr); `exit` says how the command ended. */
  async transport(command: string): Promise<AgentTransport & { exit: Promise<ChannelExit> }> {
    const channel = await this.channel(command);
    const closed = new Promise<void>((resolve) => channel.once('close', () => resolve()));
    // 'exit' carries exit-status or exit-signal; a channel closed without either (a dropped connection) never fires it.
    const exit = new Promise<ChannelExit>((resolve) =>
      channel.once('exit', (code: number | null, signal?: string) => resolve({ code: signal ? null : (code ?? null), ...(signal ? { signal } : {}) })),
    );
    return {
      exit,
      input: channel,
      output: channel,
      stderr: channel.stderr,
      close: async () => {
        channel.end();
        // unref: waiting for the close must not keep a finished process alive.
        await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
        channel.destroy();
      },
    };
  }

  close(): void {
    this.closing = true;
    this.clientPromise?.then(
      (c) => c.end(),
      () => {},
    );
  }

  /**
   * Destroys the socket under the session, as a dropped network link would:
   * no SSH disconnect message, every channel ends at once. For fault
   * injection (repro/fault-injection.ts); `lost` then rejects.
   */
  dropConnection(): void {
    this.dropped = true;
    this.clientPromise?.then(
      (c) => c.destroy(),
      () => {},
    );
  }

  private async channel(command: string): Promise<ClientChannel> {
    const client = await this.client;
    return new Promise((resolve, reject) => {
      client.exec(command, (error, channel) => {
        if (!error) return resolve(channel);
        // A command on a connection that is gone is infrastructure, as the loss itself.
        if (this.lostNow || this.dropped || /Not connected/.test(error.message))
          return reject(new InfraError(`SSH connection to the guest lost: ${error.message} (running \`${command.slice(0, 80)}\`)`, {}, { cause: error }));
        reject(error);
      });
    });
  }
}

/**
 * Connects and logs in. A connection the guest closes before the SSH
 * identification exchange is tried again, a few times, within timeoutMs:
 * dropbear closes new connections at once while it counts five
 * unauthenticated ones from one address (MAX_UNAUTH_PER_IP), and on a slow
 * guest the readiness probes' connections are still counted for a while
 * after the probes hung up (seen under load: "Connection lost before
 * handshake" right after the banner answered). Any other failure — a
 * refused host key, a refused login, a timeout — is final.
 */
async function connectClient(target: SshTarget, timeoutMs: number): Promise<Client> {
  const privateKey = await readFile(target.privateKeyPath);
  const deadline = Date.now() + timeoutMs;
  let closedEarly = 0;
  for (let attempt = 1; ; attempt++) {
    try {
      return await handshake(target, privateKey, Math.max(deadline - Date.now(), 1));
    } catch (e) {
      const message = (e as Error).message;
      const again = CLOSED_BEFORE_HANDSHAKE.test(message) && attempt < CONNECT_ATTEMPTS && Date.now() + attempt * 250 < deadline;
      if (!again) {
        const earlier = closedEarly > 0 ? ` (after ${closedEarly} connection(s) closed before the handshake)` : '';
        throw new InfraError(`SSH to ${target.host}:${target.port} failed: ${message}${earlier}`, { attempts: String(attempt) });
      }
      closedEarly++;
      await new Promise((resolve) => setTimeout(resolve, attempt * 250));
    }
  }
}

function handshake(target: SshTarget, privateKey: Buffer, timeoutMs: number): Promise<Client> {
  const pinned = Buffer.from(target.hostPublicKey.split(' ')[1] ?? '', 'base64');
  const client = new Client();
  return new Promise<Client>((resolve, reject) => {
    client.once('ready', () => resolve(client));
    client.once('error', (e) => {
      client.end();
      reject(e);
    });
    client.connect({
      host: target.host,
      port: target.port,
      username: 'root',
      privateKey,
      readyTimeout: timeoutMs,
      hostVerifier: (key: Buffer) => key.equals(pinned),
      keepaliveInterval: 0,
    });
  });
}
