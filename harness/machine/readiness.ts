/**
 * Readiness checks in the testcontainers style: small objects with one
 * method that waits until ready, by a shared deadline, and gives up at once
 * when the machine is gone (the abort signal fires when QEMU exits) or the
 * console shows the kernel died.
 */
import net from 'node:net';
import { BootError, TimeoutError } from '../errors.ts';
import { sleep, type Deadline } from '../util/deadline.ts';
import { KERNEL_DEATH, type ConsoleLog } from './console.ts';

export interface WaitContext {
  deadline: Deadline;
  /** aborted when QEMU exits; the reason says how */
  signal: AbortSignal;
  console: ConsoleLog;
}

export interface ReadinessCheck {
  readonly description: string;
  waitUntilReady(ctx: WaitContext): Promise<void>;
}

export const Ready = {
  /**
   * An SSH server banner ("SSH-") on 127.0.0.1:port. QEMU's forward accepts
   * TCP before the guest listens, so a bare connect proves nothing; a failed
   * ssh attempt costs seconds, so poll the banner every ~50 ms instead.
   */
  forSshBanner(port: number): ReadinessCheck {
    return {
      description: `SSH banner on 127.0.0.1:${port}`,
      async waitUntilReady(ctx) {
        for (;;) {
          if (ctx.signal.aborted) throw ctx.signal.reason;
          const dead = ctx.console.lines.find((l) => KERNEL_DEATH.test(l));
          if (dead) throw new BootError(`guest kernel died: ${dead.trim()}`);
          if (await bannerAnswers(port, Math.min(1000, ctx.deadline.remainingMs))) return;
          if (ctx.deadline.expired) throw new TimeoutError(`no SSH banner on 127.0.0.1:${port} within the deadline`);
          await sleep(50, ctx.signal).catch(() => {});
        }
      },
    };
  },
};

function bannerAnswers(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.createConnection({ host: '127.0.0.1', port });
    let seen = '';
    const finish = (ok: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), Math.max(timeoutMs, 1));
    socket.on('data', (chunk: Buffer) => {
      seen += chunk.toString('latin1');
      if (seen.startsWith('SSH-')) finish(true);
      else if (seen.length >= 4) finish(false);
    });
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(false));
  });
}
