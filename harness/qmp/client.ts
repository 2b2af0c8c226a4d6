/**
 * QEMU Machine Protocol client: greeting and capability negotiation,
 * id-correlated commands, and an event queue. Works over a unix socket (how
 * the harness runs QEMU) or any duplex stream. Every message in both
 * directions can be appended to a log for the case's artifacts.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { CrhError, TimeoutError } from '../errors.ts';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends CrhError {
  override readonly name = 'QmpError';
  constructor(
    message: string,
    readonly command: string,
    readonly errorClass?: string,
  ) {
    super(message);
  }
}

interface Waiter {
  resolve(value: unknown): void;
  reject(error: Error): void;
  command: string;
}

export class QmpClient {
  private buffer = '';
  private nextId = 1;
  private readonly waiters = new Map<string, Waiter>();
  private readonly events: QmpEvent[] = [];
  private readonly eventListeners = new Set<() => void>();
  private readonly eventObservers = new Set<(event: QmpEvent) => void>();
  private greeting: ((value: unknown) => void) | undefined;
  private closed: Error | undefined;

  private constructor(
    private readonly stream: Duplex,
    private readonly log: (line: string) => void,
  ) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => this.onData(chunk));
    stream.on('close', () => this.fail(new QmpError('QMP connection closed', '(connection)')));
    stream.on('error', (error: Error) => this.fail(new QmpError(`QMP connection failed: ${error.message}`, '(connection)')));
  }

  /** Connects to a QMP unix socket, reads the greeting and enters command mode. */
  static async connect(socketPath: string, log: (line: string) => void = () => {}): Promise<QmpClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    return QmpClient.over(socket, log);
  }

  static async over(stream: Duplex, log: (line: string) => void = () => {}): Promise<QmpClient> {
    const client = new QmpClient(stream, log);
    try {
      await new Promise<unknown>((resolve, reject) => {
        client.greeting = resolve;
        client.waiters.set('(greeting)', { resolve, reject, command: '(greeting)' });
      });
      client.waiters.delete('(greeting)');
      await client.execute('qmp_capabilities');
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  /** Executes a command and resolves to its `return` value; a QMP error rejects with its class. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(this.closed);
    const id = `crh-${this.nextId++}`;
    const message = JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id });
    this.log(`> ${message}`);
    return new Promise<T>((resolve, reject) => {
      this.waiters.set(id, { resolve: resolve as (v: unknown) => void, reject, command });
      this.stream.write(`${message}\n`);
    });
  }

  /**
   * Resolves with the first event named `name` (and matching `match`), queued
   * or future; events before it stay queued for other waiters. With an
   * infinite timeout it waits until the connection closes.
   */
  waitForEvent(name: string, timeoutMs: number, match: (e: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      const check = (): boolean => {
        const index = this.events.findIndex((e) => e.event === name && match(e));
        if (index < 0) return false;
        const [event] = this.events.splice(index, 1);
        cleanup();
        resolve(event!);
        return true;
      };
      const timer = Number.isFinite(timeoutMs)
        ? setTimeout(() => {
            cleanup();
            reject(new TimeoutError(`no QMP event ${name} within ${timeoutMs} ms`));
          }, timeoutMs)
        : undefined;
      const listener = (): void => {
        if (check()) return;
        if (this.closed) {
          cleanup();
          reject(this.closed);
        }
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        this.eventListeners.delete(listener);
      };
      this.eventListeners.add(listener);
      listener();
    });
  }

  /**
   * Calls `observer` with every event that arrives from now on, without
   * consuming it (waiters still get it). Returns the unsubscribe function.
   */
  onEvent(observer: (event: QmpEvent) => void): () => void {
    this.eventObservers.add(observer);
    return () => this.eventObservers.delete(observer);
  }

  /** Events received and not yet consumed by a waiter. */
  pendingEvents(): readonly QmpEvent[] {
    return this.events;
  }

  close(): void {
    this.fail(new QmpError('QMP client closed', '(connection)'));
    this.stream.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line.length > 0) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    this.log(`< ${line}`);
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.fail(new QmpError(`unparseable QMP message: ${line.slice(0, 200)}`, '(protocol)'));
      return;
    }
    if ('QMP' in message) {
      this.greeting?.(message.QMP);
      this.greeting = undefined;
    } else if ('event' in message) {
      this.events.push(message as unknown as QmpEvent);
      for (const observer of [...this.eventObservers]) observer(message as unknown as QmpEvent);
      for (const listener of [...this.eventListeners]) listener();
    } else if (typeof message.id === 'string' && this.waiters.has(message.id)) {
      const waiter = this.waiters.get(message.id)!;
      this.waiters.delete(message.id);
      if ('error' in message) {
        const err = message.error as { class?: string; desc?: string };
        waiter.reject(new QmpError(`${waiter.command}: ${err.desc ?? 'error'}`, waiter.command, err.class));
      } else {
        waiter.resolve(message.return);
      }
    }
  }

  private fail(error: Error): void {
    this.closed ??= error;
    for (const [id, waiter] of this.waiters) {
      this.waiters.delete(id);
      waiter.reject(error);
    }
    for (const listener of [...this.eventListeners]) listener();
  }
}
