/**
 * Debian's Chromium, headless, driven by puppeteer-core over the DevTools
 * pipe (`pipe: true`: no port is opened): one page, navigated to a file://
 * URL, inspected, clicked and screenshotted. puppeteer-core downloads no
 * browser; it runs the one we name.
 *
 * The browser binary is started directly, not through the /usr/bin/chromium
 * wrapper, because the wrapper sources /etc/chromium.d (Google API keys,
 * extension and GPU flags, a /dev/shm test that breaks on some mounts): here
 * the whole command line is built by chromiumCommand() and is visible in one
 * list — puppeteer's own defaults plus ours, nothing added at launch.
 *
 * Life is time-bound: a watchdog kills the whole process group when the
 * budget given to launch() runs out, and close() ends with SIGKILL to the
 * group and waits until no process of it is left. The browser runs under
 * `setpriv --pdeathsig KILL` (setpriv execs Chromium in place, so the pipe
 * on fds 3 and 4 reaches it unchanged), so it also dies with the process that
 * started it, even by SIGKILL; on an ordinary exit puppeteer kills the group too.
 */
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import type { Browser, Page } from 'puppeteer-core';
import { InfraError, MissingDependencyError, TimeoutError } from '../errors.ts';
import { installCommand } from '../host/bootstrap.ts';
import { sleep } from '../util/deadline.ts';
import { makeTempDir, removeTempDir } from '../util/temp-dir.ts';

/** Where Debian's `chromium` package puts the browser itself. */
export const CHROMIUM_BINARY = '/usr/lib/chromium/chromium';

/** The browser to run: CRH_CHROMIUM when set (another build, or a test of the missing case), else Debian's. */
export function chromiumBinary(): string {
  return process.env.CRH_CHROMIUM ?? CHROMIUM_BINARY;
}

/**
 * Chromium's flags: puppeteer's defaults for a headless browser under
 * automation (no first run, sync, crash reporting, background networking or
 * timer throttling; sRGB; /tmp instead of /dev/shm) with ours merged in:
 * nothing that talks to the network (no DNS resolves at all), no component
 * updates, no GPU, and `--no-sandbox` only as root, where Chromium refuses to
 * start without it.
 */
export function chromiumArgs(userDataDir: string, options: { asRoot: boolean }): string[] {
  return puppeteer.defaultArgs({
    headless: true,
    userDataDir,
    args: [
      '--remote-debugging-pipe',
      ...(options.asRoot ? ['--no-sandbox'] : []),
      '--no-default-browser-check',
      '--disable-component-update',
      '--disable-domain-reliability',
      '--no-pings',
      // Merged into puppeteer's own list, which already has Translate, MediaRouter and OptimizationHints.
      '--disable-features=AutofillServerCommunication,CertificateTransparencyComponentUpdater',
      '--host-resolver-rules=MAP * ~NOTFOUND',
      // Software rendering: no GPU here, and a pixel check needs the page's exact colours.
      '--disable-gpu',
    ],
  });
}

/**
 * The process to start: setpriv, which sets the parent-death signal and
 * execs `binary` with Chromium's flags.
 */
export function chromiumCommand(setpriv: string, binary: string, userDataDir: string, options: { asRoot: boolean }): { executable: string; args: string[] } {
  return { executable: setpriv, args: ['--pdeathsig', 'KILL', '--', binary, ...chromiumArgs(userDataDir, options)] };
}

/** CSS pixels. */
export interface Viewport {
  width: number;
  height: number;
}

const STDERR_TAIL_BYTES = 8192;
const CLOSE_GRACE_MS = 2000;
const GROUP_EXIT_MS = 5000;

/** One headless browser process group; `await using` or close() ends all of it. */
export class HeadlessChromium implements AsyncDisposable {
  private stderrTail = '';
  /** Why the browser is no longer usable (budget ran out, or it died); set once. */
  private failure: Error | undefined;
  /** Rejects with `failure` the moment it is set, so a pending call ends at once. */
  private readonly failed: Promise<never>;
  private fail!: (error: Error) => void;
  private closing: Promise<void> | undefined;
  private readonly watchdog: NodeJS.Timeout;
  private readonly child: ChildProcess;

  private constructor(
    private readonly browser: Browser,
    private readonly userDataDir: string,
    readonly commandLine: string,
    timeoutMs: number,
    remainingMs: number,
  ) {
    this.child = browser.process()!;
    this.failed = new Promise<never>((_, reject) => {
      this.fail = (error) => {
        this.failure ??= error;
        reject(this.failure);
      };
    });
    this.failed.catch(() => {}); // read through guard(); not an unhandled rejection when nothing is pending
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES);
    });
    this.child.once('exit', (code, signal) => {
      if (!this.closing) this.fail(new InfraError(`chromium exited (${signal ?? `code ${code}`}) while in use`, this.context()));
    });
    this.watchdog = setTimeout(() => {
      this.fail(new TimeoutError(`chromium ran past its ${timeoutMs} ms budget; killed`, this.context()));
      // A later close() returns this same promise, and with it any failure to kill.
      this.shutdown(false).catch(() => {});
    }, remainingMs);
    this.watchdog.unref();
  }

  /** Process id of the browser, which leads its own process group. */
  get pid(): number {
    return this.child.pid!;
  }

  /**
   * Starts the browser and resolves once it answers on the DevTools pipe.
   * The launch and everything after, until close(), must fit in `timeoutMs`.
   */
  static async launch(options: { timeoutMs: number }): Promise<HeadlessChromium> {
    const binary = chromiumBinary();
    if (!isExecutable(binary)) {
      throw new MissingDependencyError(`no Chromium at ${binary}`, {
        why: 'the HTML report is checked in a real headless browser',
        'install with': `node bin/crh.js bootstrap --test (as root), or ${installCommand(['chromium'])}`,
      });
    }
    const setpriv = findOnPath('setpriv');
    if (!setpriv) {
      throw new MissingDependencyError('no setpriv on PATH', {
        why: 'setpriv ties Chromium to the life of the harness',
        'install with': `node bin/crh.js bootstrap (as root), or ${installCommand(['util-linux'])}`,
      });
    }
    const userDataDir = await makeTempDir('crh-chromium-');
    const command = chromiumCommand(setpriv, binary, userDataDir, { asRoot: process.getuid?.() === 0 });
    const commandLine = `${command.executable} ${command.args.join(' ')}`;
    const deadline = Date.now() + options.timeoutMs;
    // puppeteer kills the process group when the launch is aborted.
    const launchBudget = new AbortController();
    const launchTimer = setTimeout(() => launchBudget.abort(), options.timeoutMs);
    let browser: Browser;
    try {
      browser = await puppeteer.launch({
        executablePath: command.executable,
        args: command.args,
        // Our list is the whole command line: puppeteer's defaults are already in it.
        ignoreDefaultArgs: true,
        pipe: true,
        env: { ...process.env, XDG_CONFIG_HOME: userDataDir, XDG_CACHE_HOME: userDataDir },
        timeout: options.timeoutMs,
        protocolTimeout: options.timeoutMs,
        defaultViewport: null,
        // Node's own signal handling stays (a signal ends this process); the parent-death signal ends the browser.
        handleSIGINT: false,
        handleSIGTERM: false,
        handleSIGHUP: false,
        signal: launchBudget.signal,
      });
    } catch (error) {
      await removeTempDir(userDataDir);
      if (launchBudget.signal.aborted)
        throw new TimeoutError(`chromium did not start within its ${options.timeoutMs} ms budget; killed`, { command: commandLine }, { cause: error });
      // puppeteer kills the group of a browser that failed to start and keeps its stderr to itself.
      throw new InfraError(`cannot start chromium: ${describe(error)}`, { command: commandLine }, { cause: error });
    } finally {
      clearTimeout(launchTimer);
    }
    return new HeadlessChromium(browser, userDataDir, commandLine, options.timeoutMs, Math.max(0, deadline - Date.now()));
  }

  /** A new page with a fixed viewport at device scale factor 1. */
  async newPage(viewport: Viewport): Promise<ChromiumPage> {
    const page = await this.guard(this.browser.newPage());
    await this.guard(page.setViewport({ ...viewport, deviceScaleFactor: 1 }));
    return new ChromiumPage(page, viewport, (operation) => this.guard(operation));
  }

  /**
   * Browser.close, then SIGKILL to the process group, then waits until no
   * process of the group is left and removes the profile. Idempotent.
   */
  close(): Promise<void> {
    return this.shutdown(true);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * `operation`, unless the browser fails first: then the budget's
   * TimeoutError or the exit's InfraError, not puppeteer's "Target closed"
   * that follows from either.
   */
  private async guard<T>(operation: Promise<T>): Promise<T> {
    try {
      return await Promise.race([operation, this.failed]);
    } catch (error) {
      if (this.failure) throw this.failure;
      if (!this.browser.connected) throw new InfraError('chromium closed the DevTools pipe while in use', this.context(), { cause: error });
      throw error;
    }
  }

  /** The close ladder; without `graceful` (the watchdog) it goes straight to SIGKILL. */
  private shutdown(graceful: boolean): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.watchdog);
      const running = this.child.exitCode === null && this.child.signalCode === null;
      if (graceful && running) await Promise.race([this.browser.close().catch(() => {}), sleep(CLOSE_GRACE_MS)]);
      // puppeteer kills the group only while its leader lives; a zygote can outlive it.
      await killGroup(this.pid);
      await removeTempDir(this.userDataDir);
    })();
    return this.closing;
  }

  private context(): Record<string, string> {
    return { command: this.commandLine, stderr: this.stderrTail };
  }
}

/** An error as a line: `TypeError: …`; a page may also throw a value that is no Error. */
function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : `${typeof error} ${JSON.stringify(error)}`;
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** puppeteer checks that its executablePath exists, so a bare name is resolved here. */
function findOnPath(name: string): string | undefined {
  return (process.env.PATH ?? '')
    .split(path.delimiter)
    .filter((dir) => dir !== '')
    .map((dir) => path.join(dir, name))
    .find(isExecutable);
}

/**
 * Live (not zombie) processes of group `pgid`, read from /proc. Zombies do
 * not count: the zygotes' children are reparented to PID 1, which on some
 * machines reaps them only seconds later, and a zombie holds nothing.
 */
export function liveGroupMembers(pgid: number): number[] {
  const live: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited while we looked
    }
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) === pgid && fields[0] !== 'Z') live.push(Number(entry));
  }
  return live;
}

async function killGroup(pgid: number): Promise<void> {
  const until = Date.now() + GROUP_EXIT_MS;
  while (liveGroupMembers(pgid).length > 0) {
    if (Date.now() > until)
      throw new InfraError(`chromium process group ${pgid} survived SIGKILL for ${GROUP_EXIT_MS} ms`, { pids: liveGroupMembers(pgid).join(' ') });
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // gone between the check and the kill
    }
    await sleep(20);
  }
}

/** One page; every call is bounded by its browser's budget. */
export class ChromiumPage {
  constructor(
    private readonly page: Page,
    readonly viewport: Viewport,
    private readonly guard: <T>(operation: Promise<T>) => Promise<T>,
  ) {}

  /** Navigates and resolves once the load event fired. */
  async goto(url: string): Promise<void> {
    try {
      await this.guard(this.page.goto(url, { waitUntil: 'load' }));
    } catch (error) {
      if (error instanceof InfraError || error instanceof TimeoutError) throw error;
      throw new InfraError(`chromium could not load ${url}: ${describe(error)}`, {}, { cause: error });
    }
  }

  /** Evaluates an expression in the page (awaiting a promise); the result is returned by value (JSON). */
  async evaluate<T>(expression: string): Promise<T> {
    try {
      return (await this.guard(this.page.evaluate(expression))) as T;
    } catch (error) {
      if (error instanceof InfraError || error instanceof TimeoutError) throw error;
      throw new InfraError(`page evaluation threw: ${describe(error)}`, { expression }, { cause: error });
    }
  }

  /** A left click at viewport coordinates, as a person's mouse would send it (move, press, release). */
  async click(x: number, y: number): Promise<void> {
    await this.guard(this.page.mouse.click(x, y));
  }

  /** A PNG of the whole page, not just the viewport, at device scale factor 1. */
  async screenshotFullPage(): Promise<Buffer> {
    return Buffer.from(await this.guard(this.page.screenshot({ type: 'png', fullPage: true })));
  }
}
