/**
 * One QEMU guest, in the lifecycle style of QEMU's python QEMUMachine and
 * testcontainers: the constructor only records configuration; launch()
 * starts QEMU, waits until SSH answers, and undoes a partial start on any
 * failure, throwing one typed error with the command line and console tail;
 * shutdown() is a ladder (QMP quit, wait, SIGKILL) and idempotent.
 *
 * Every launch is watched for a VM that stopped running guest code (QMP
 * status internal-error, "KVM internal error" on stderr, a console silent
 * past a bound): that fails in seconds, as infrastructure, with the evidence.
 * Under a KVM the harness chose itself, such a launch is retried once under
 * TCG and the accelerator decision is re-made as "kvm failed: <evidence>".
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, open, rename, rm, appendFile, statfs, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import path from 'node:path';
import { BootError, CrhError, InfraError, LaunchError, TimeoutError } from '../errors.ts';
import { QmpClient } from '../qmp/client.ts';
import { SshSession } from '../ssh/session.ts';
import type { GuestImage } from '../image/build.ts';
import { Deadline, sleep } from '../util/deadline.ts';
import { uniqueSibling } from '../util/atomic-write.ts';
import { onCleanup } from '../util/cleanup.ts';
import { makeTempDir, removeTempDir } from '../util/temp-dir.ts';
import { chooseAccelerator, recordKvmFailure, type AccelChoice } from './accel.ts';
import { ConsoleLog, KERNEL_DEATH } from './console.ts';
import { freeLoopbackPort } from './free-port.ts';
import { cpuModelOf, formatCommandLine, GUEST_RAM_LINEAR_MAX_MIB, qemuArgs, shellQuote, type BootFiles } from './qemu-args.ts';
import { qemuBinary } from './qemu-binary.ts';
import { evidenceDetails, instructionPointers, SILENT_CONSOLE_MS, StalledLaunchError, watchForStall, type StallWatch } from './stall-watch.ts';
import { Ready } from './readiness.ts';
import { copySparse, formatAgentSession, IGNORE_SHARED, STATE_AGENT_SESSION, STATE_RAM, STATE_STREAM, stateLayout } from './saved-state.ts';
import { connectBeforeLoad } from './agent-session.ts';
import { resumeAgentPort, type PortTransport } from '../agent/port-transport.ts';
import { diagnoseVcpus } from '../oracle/diagnose.ts';
import type { GuestRamSource } from '../agent/guest-ram.ts';
import type { SymbolTable } from '../symbols/symbols.ts';
import { forgetMachine, MACHINE_NAME_PREFIX, reapOrphans, recordMachine } from './reaper.ts';

export type MachineEvent =
  | { type: 'launch'; name: string; commandLine: string; accel: AccelChoice }
  /** a launch under KVM stalled; the machine is launched again under `accel` (TCG) */
  | { type: 'accel-fallback'; name: string; failure: string; accel: AccelChoice }
  | { type: 'reaped'; message: string }
  | { type: 'ready'; name: string; elapsedMs: number }
  | { type: 'console'; name: string; line: string }
  | { type: 'shutdown'; name: string; how: 'quit' | 'kill' | 'already-exited' };

export interface MachineConfig {
  image: GuestImage;
  /** where console.log and qmp.log go (kept with the case's artifacts) */
  artifactsDir: string;
  name?: string;
  memoryMiB?: number;
  cpus?: number;
  /** the QEMU CPU model (`-cpu`); default host under KVM, max under TCG (qemu-args.ts cpuModelOf) */
  cpuModel?: string;
  /** the accelerator to use as given (no decision, no fallback); default: chooseAccelerator() */
  accel?: AccelChoice;
  /** launch → SSH answers; TCG boots take seconds, a stuck one is cut off here */
  bootTimeoutMs?: number;
  /**
   * Start from saved VM state (written by saveState() on a machine of the
   * same image and profile) instead of booting: QEMU comes up paused with
   * -incoming and is resumed with QMP cont.
   */
  incomingState?: string;
  /**
   * With incomingState: launch returns once the loaded guest runs, without
   * waiting for SSH, which connects when first used (ssh.onDemand: its
   * handshake would compete with the agent for the guest). For a caller that reaches the agent over the agent port.
   */
  sshInBackground?: boolean;
  /** a cold boot with no console byte this long after launch is a stalled VM (default SILENT_CONSOLE_MS) */
  silentConsoleMs?: number;
  onEvent?: (event: MachineEvent) => void;
  /** names addresses in hang diagnoses (kernel symbols, when already known) */
  diagnosisSymbols?: SymbolTable;
  /**
   * Guest RAM in a file the host shares (qemu-args.ts guestRamArgs), in a
   * directory of ours on /dev/shm, so page data moves without crossing the
   * guest (default true; without a tmpfs /dev/shm, or with more RAM than lies
   * below 4 GiB, the machine runs with QEMU's own RAM and says why in
   * guestRamUnavailable).
   */
  guestRamInFile?: boolean;
  /**
   * With an incomingState that holds its RAM apart: copy that RAM into a
   * shared file of the machine's own before QEMU starts, as starts did before
   * the private mapping (saved-state.ts) — kept to measure the two against
   * each other (scripts/bench-start.ts --copy-ram).
   */
  copySavedRam?: boolean;
}

/** Where guest RAM files go: memory, never a disk that would write them back. */
const GUEST_RAM_BASE = '/dev/shm';
const TMPFS_MAGIC = 0x01021994;

let machineCounter = 0;
const PORT_ATTEMPTS = 3;
/** QEMU accepts on its QMP socket within milliseconds of starting; this long without it is a broken QEMU. */
const QMP_ACCEPT_MS = 15_000;

/** The kernel, initramfs and command line a machine of `image` boots. */
export function bootFilesOf(image: GuestImage): BootFiles {
  return { kernel: image.kernel.bzImage, initrd: image.initramfs, cmdline: image.cmdline };
}

export class QemuMachine implements AsyncDisposable {
  private child: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  private exitDescription: string | undefined;
  private quitIssued = false;
  /** QEMU exited without our quit or kill: the guest shut down, or QEMU died. */
  private exitedUnasked = false;
  private shutdownPromise: Promise<void> | undefined;
  private runDir: string | undefined;
  /** the directory on /dev/shm holding the guest RAM file, when RAM is in a file */
  private ramDir: string | undefined;
  /** the saved RAM file QEMU maps private (copy on write), when started from a state that holds its RAM apart */
  private privateRamFile: string | undefined;
  /** why guest RAM is not in a file the host can read (undefined when it is) */
  guestRamUnavailable: string | undefined;
  /** When each step of the last start finished, in ms after QEMU was spawned (scripts/bench-start.ts prints them). */
  readonly launchPhases: Array<{ phase: string; ms: number }> = [];
  private unregisterCleanup: (() => void) | undefined;
  private stderrTail = '';
  private qmpClient: QmpClient | undefined;
  private sshSession: SshSession | undefined;
  private consoleLog: ConsoleLog | undefined;
  private argv: string[] = [];
  private failureReject: ((error: Error) => void) | undefined;
  private failurePromise: Promise<never> | undefined;
  private accelChoice: AccelChoice | undefined;
  private port = 0;
  private diagnosis: string | undefined;
  private stallWatch: StallWatch | undefined;
  private launchedAt = 0;
  private ready = false;
  /** aborts the readiness waits of the launch in progress */
  private launchAbort: AbortController | undefined;
  private agentPortClaimed = false;
  /** the agent port's session the machine opened (agent-session.ts), until its first claimer takes it */
  private heldAgentSession: PortTransport | undefined;
  /** a connection to the agent port made before the load, for the session waiting in the saved guest */
  private preloadAgentSocket: { socket: Socket; pid: number } | undefined;
  readonly name: string;

  constructor(private readonly config: MachineConfig) {
    this.name = config.name ?? `${MACHINE_NAME_PREFIX}${process.pid}-${++machineCounter}`;
  }

  /** Starts the guest and returns once SSH answers. On failure nothing is left running. */
  async launch(): Promise<this> {
    if (this.child) throw new CrhError(`machine ${this.name} was already launched`);
    // The reaper kills a leftover QEMU only under a crh- name.
    if (!this.name.startsWith(MACHINE_NAME_PREFIX)) throw new CrhError(`machine name ${this.name} must start with ${MACHINE_NAME_PREFIX}`);
    const started = Date.now();
    for (const message of await reapOrphans()) this.emit({ type: 'reaped', message });
    await mkdir(this.config.artifactsDir, { recursive: true });
    this.accelChoice = this.config.accel ?? (await chooseAccelerator(bootFilesOf(this.config.image)));
    // Unix socket paths are limited to 108 bytes: keep them under a short tmp dir.
    // A signal to crh shuts this machine down (QEMU, its record, its run directory) before crh dies of it.
    this.unregisterCleanup = onCleanup(`machine ${this.name}`, () => this.shutdown());
    this.runDir = await makeTempDir('crh-');
    this.ramDir = await this.makeRamDir();
    let deadline = Deadline.in(this.config.bootTimeoutMs ?? 180_000);
    let fellBack = false;

    for (let attempt = 1; ; attempt++) {
      this.port = await freeLoopbackPort();
      try {
        await this.start();
        await this.waitReady(deadline);
        this.watchForFailure();
        this.emit({ type: 'ready', name: this.name, elapsedMs: Date.now() - started });
        return this;
      } catch (error) {
        const lostPortRace = /Could not set up host forwarding rule/.test(this.stderrTail);
        // Where the vCPU is says what stalled it (a RIP in early boot, a halt loop): read it before the kill.
        if ((error instanceof TimeoutError || error instanceof StalledLaunchError) && this.exitDescription === undefined)
          this.diagnosis = await this.diagnose();
        await this.shutdown();
        const failure = this.launchFailure(error);
        const fallBack = failure instanceof StalledLaunchError && !fellBack && this.mayFallBack();
        if ((lostPortRace && attempt < PORT_ATTEMPTS) || fallBack) {
          if (fallBack) {
            fellBack = true;
            this.accelChoice = await recordKvmFailure(bootFilesOf(this.config.image), failure.evidence);
            this.emit({ type: 'accel-fallback', name: this.name, failure: failure.message, accel: this.accelChoice });
            deadline = Deadline.in(this.config.bootTimeoutMs ?? 180_000);
          }
          this.shutdownPromise = undefined;
          this.child = undefined;
          this.diagnosis = undefined;
          this.runDir = await makeTempDir('crh-');
          this.ramDir = await this.makeRamDir();
          this.unregisterCleanup = onCleanup(`machine ${this.name}`, () => this.shutdown());
          continue;
        }
        throw failure;
      }
    }
  }

  /** A directory of ours on /dev/shm for the guest RAM file, or undefined (guestRamUnavailable says why). */
  private async makeRamDir(): Promise<string | undefined> {
    const memoryMiB = this.config.memoryMiB ?? 512;
    if (this.config.guestRamInFile === false) this.guestRamUnavailable = 'not asked for (guestRamInFile: false)';
    else if (memoryMiB > GUEST_RAM_LINEAR_MAX_MIB)
      this.guestRamUnavailable = `${memoryMiB} MiB of guest RAM is not all below 4 GiB (at most ${GUEST_RAM_LINEAR_MAX_MIB} MiB)`;
    else {
      const fs = await statfs(GUEST_RAM_BASE).catch((error: Error) => error);
      if (fs instanceof Error) this.guestRamUnavailable = `${GUEST_RAM_BASE}: ${fs.message}`;
      else if (fs.type !== TMPFS_MAGIC) this.guestRamUnavailable = `${GUEST_RAM_BASE} is not a tmpfs (type 0x${fs.type.toString(16)})`;
      else {
        this.guestRamUnavailable = undefined;
        return makeTempDir('crh-ram-', GUEST_RAM_BASE);
      }
    }
    return undefined;
  }

  /**
   * Where guest RAM is for the host, when it is in a file: the shared file
   * itself, or QEMU's private mapping of a saved RAM file (agent/guest-ram.ts
   * reads and writes a guest page at frame × 4096 in either).
   */
  get guestRam(): GuestRamSource | undefined {
    const bytes = (this.config.memoryMiB ?? 512) * 1024 * 1024;
    if (!this.child) return undefined;
    if (this.privateRamFile) return this.child.pid ? { kind: 'private-mapping', pid: this.child.pid, file: this.privateRamFile, bytes } : undefined;
    return this.ramDir ? { kind: 'shared-file', file: path.join(this.ramDir, 'ram'), bytes } : undefined;
  }

  /** A KVM the harness chose itself (not the user, not the caller) may be replaced by TCG once. */
  private mayFallBack(): boolean {
    return this.accelChoice?.accel === 'kvm' && !this.accelChoice.forced && this.config.accel === undefined && this.config.incomingState === undefined;
  }

  get ssh(): SshSession {
    if (!this.sshSession) throw new CrhError(`machine ${this.name} is not running`);
    return this.sshSession;
  }

  get qmp(): QmpClient {
    if (!this.qmpClient) throw new CrhError(`machine ${this.name} is not running`);
    return this.qmpClient;
  }

  get console(): ConsoleLog {
    if (!this.consoleLog) throw new CrhError(`machine ${this.name} was never launched`);
    return this.consoleLog;
  }

  get sshPort(): number {
    return this.port;
  }

  /** The host end of the bulk data port (a unix socket QEMU listens on). */
  get bulkSocket(): string {
    return path.join(this.runDir ?? '', 'bulk.sock');
  }

  /** The host end of the agent port (a unix socket QEMU listens on; agent/port-transport.ts connects). */
  get agentSocket(): string {
    return path.join(this.runDir ?? '', 'agent.sock');
  }

  /**
   * The one agent session the agent port carries in this machine's life:
   * already open when the machine opened it (a session saved waiting, or
   * the saver's own), else the socket to connect to; undefined once taken:
   * the guest tells a new connection from an old one only by the old
   * session's end, so a second session goes over SSH (open-guest.ts says so
   * in its log).
   */
  claimAgentPort(): { session: PortTransport } | { socket: string } | undefined {
    if (this.agentPortClaimed) return undefined;
    this.agentPortClaimed = true;
    const session = this.heldAgentSession;
    this.heldAgentSession = undefined;
    return session ? { session } : { socket: this.agentSocket };
  }

  /**
   * Holds `session`, open on this machine's agent port, for the first
   * claimAgentPort (fast-start.ts opens it before saving state).
   */
  holdAgentSession(session: PortTransport): void {
    if (this.agentPortClaimed || this.heldAgentSession) throw new CrhError(`machine ${this.name}: its agent port session is already taken`);
    this.heldAgentSession = session;
  }

  get gdbSocket(): string {
    return path.join(this.runDir ?? '', 'gdb.sock');
  }

  get accel(): AccelChoice | undefined {
    return this.accelChoice;
  }

  /** The `-cpu` model this machine runs (known once the accelerator is chosen). */
  get cpuModel(): string | undefined {
    return this.accelChoice ? cpuModelOf({ accel: this.accelChoice.accel, ...(this.config.cpuModel ? { cpuModel: this.config.cpuModel } : {}) }) : undefined;
  }

  get commandLine(): string {
    return formatCommandLine(this.argv);
  }

  /**
   * Rejects (never resolves) the moment the guest is lost after launch: QEMU
   * exits unasked, the kernel panics (GUEST_PANICKED or a panic line on the
   * console). Long operations race against it so a dead guest fails a case
   * at once, with the console tail, instead of at a timeout.
   */
  get failure(): Promise<never> {
    if (!this.failurePromise) {
      this.failurePromise = new Promise<never>((_, reject) => {
        this.failureReject = reject;
      });
      this.failurePromise.catch(() => {}); // observed by whoever races against it
    }
    return this.failurePromise;
  }

  private watchForFailure(): void {
    this.ready = true;
    const lost = (why: string): void => {
      if (this.quitIssued) return;
      void this.failure;
      this.failureReject?.(new BootError(`guest lost: ${why}`, { 'console tail': this.consoleLog?.tail() ?? '', 'QEMU stderr': this.stderrTail }));
    };
    void this.exited?.then(() => lost(`QEMU ${this.exitDescription}`));
    this.consoleLog?.onLine((line) => {
      if (KERNEL_DEATH.test(line)) lost(`kernel died: ${line.trim()}`);
    });
    void this.qmpClient?.waitForEvent('GUEST_PANICKED', Infinity).then(
      () => lost('GUEST_PANICKED'),
      () => {},
    );
  }

  /**
   * Where each vCPU is right now (RIP, CS, symbolized), read through the
   * gdbstub; never throws — a diagnosis that fails says why instead.
   */
  async diagnose(): Promise<string> {
    try {
      return await diagnoseVcpus(this.gdbSocket, this.config.diagnosisSymbols);
    } catch (error) {
      return `could not read the vCPUs through the gdbstub: ${(error as Error).message}`;
    }
  }

  /** Whether this machine was started from saved VM state rather than booted. */
  get fromSavedState(): boolean {
    return this.config.incomingState !== undefined;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Soft QMP quit, then SIGKILL. Safe to call any number of times, launched or not. */
  shutdown(): Promise<void> {
    if (!this.child) return Promise.resolve();
    this.shutdownPromise ??= this.doShutdown();
    return this.shutdownPromise;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }

  private async start(): Promise<void> {
    const runDir = this.runDir!;
    const { image } = this.config;
    const incoming = this.config.incomingState ? stateLayout(this.config.incomingState) : undefined;
    // A state that holds its RAM apart is started from that file mapped copy-on-write: nothing copied, the file never written.
    this.privateRamFile = incoming?.ram && !this.config.copySavedRam ? incoming.ram : undefined;
    if (incoming?.ram && !this.privateRamFile && !this.ramDir)
      throw new LaunchError(
        `copying saved RAM needs guest RAM in a file (${this.guestRamUnavailable}): the state ${this.config.incomingState} holds its RAM apart`,
      );
    this.argv = [
      qemuBinary(),
      ...qemuArgs({
        name: this.name,
        profile: {
          accel: this.accelChoice!.accel,
          memoryMiB: this.config.memoryMiB ?? 512,
          cpus: this.config.cpus ?? 1,
          ...(this.config.cpuModel ? { cpuModel: this.config.cpuModel } : {}),
        },
        boot: { kernel: image.kernel.bzImage, initrd: image.initramfs, cmdline: image.cmdline },
        endpoints: {
          qmpSocket: path.join(runDir, 'qmp.sock'),
          gdbSocket: path.join(runDir, 'gdb.sock'),
          sshPort: this.port,
          bulkSocket: this.bulkSocket,
          agentSocket: this.agentSocket,
          ...(this.privateRamFile
            ? { guestRamFile: this.privateRamFile, guestRamPrivate: true }
            : this.ramDir
              ? { guestRamFile: path.join(this.ramDir, 'ram') }
              : {}),
        },
        ...(incoming?.ram ? { incomingDeferred: true } : incoming ? { incomingState: incoming.stream } : {}),
      }),
    ];
    this.emit({ type: 'launch', name: this.name, commandLine: this.commandLine, accel: this.accelChoice! });
    this.stderrTail = '';
    this.exitDescription = undefined;
    this.quitIssued = false;
    this.ready = false;
    this.launchedAt = Date.now();
    this.launchPhases.length = 0;
    // A retried start begins with fresh RAM, as a machine with QEMU's own RAM does.
    if (this.ramDir) await rm(path.join(this.ramDir, 'ram'), { force: true });
    // Asked to (copySavedRam): a copy of the saved RAM as this machine's shared RAM file.
    if (incoming?.ram && !this.privateRamFile) {
      await copySparse(incoming.ram, path.join(this.ramDir!, 'ram'));
      this.markPhase('guest RAM copied');
    }
    // setpriv --pdeathsig: the kernel kills QEMU if this process dies, even by SIGKILL.
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', ...this.argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitedUnasked = !this.quitIssued;
        this.exitDescription = signal ? `killed by ${signal}` : `exited with status ${code}`;
        resolve();
      });
      child.once('error', (error) => {
        this.exitDescription = `could not be started: ${error.message}`;
        resolve();
      });
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-8192);
    });
    this.consoleLog = new ConsoleLog(path.join(this.config.artifactsDir, 'console.log'), child.stdout!);
    this.consoleLog.onLine((line) => this.emit({ type: 'console', name: this.name, line }));
    if (child.pid) await recordMachine(child.pid, this.name, this.ramDir);
    this.markPhase('spawned');
  }

  private async waitReady(deadline: Deadline): Promise<void> {
    const abort = new AbortController();
    this.launchAbort = abort;
    void this.exited!.then(() => {
      if (!this.quitIssued) abort.abort(new LaunchError(`QEMU ${this.exitDescription} during launch`));
    });
    const ctx = { deadline, signal: abort.signal, console: this.consoleLog! };
    this.qmpClient = await this.connectQmp(ctx.deadline, abort.signal);
    this.markPhase('QMP connected');
    this.stallWatch = watchForStall({
      qmp: this.qmpClient,
      stderr: () => this.stderrTail,
      console: this.consoleLog!,
      launchedAt: this.launchedAt,
      // A VM loading saved state prints nothing until something happens in the guest.
      silentConsoleMs: this.config.incomingState ? undefined : (this.config.silentConsoleMs ?? SILENT_CONSOLE_MS),
      vcpuPosition: async () => {
        const answer = await this.qmpClient!.execute<string>('human-monitor-command', { 'command-line': 'info registers -a' });
        const rips = instructionPointers(answer);
        if (rips === '') throw new LaunchError('HMP info registers named no RIP', { answer: answer.slice(0, 500) });
        return rips;
      },
      onStall: (error) => this.onStall(error),
    });
    if (this.config.incomingState) await this.resumeIncoming(ctx.deadline, abort.signal);
    const sshTarget = {
      host: '127.0.0.1',
      port: this.port,
      privateKeyPath: this.config.image.clientKey,
      hostPublicKey: this.config.image.hostPublicKey,
    } as const;
    if (this.config.incomingState && this.config.sshInBackground) {
      // The state was saved with sshd listening: the connection is made when something first uses it.
      this.sshSession = SshSession.onDemand(sshTarget);
      return;
    }
    await Ready.forSshBanner(this.port).waitUntilReady(ctx);
    this.markPhase('SSH banner');
    this.sshSession = await SshSession.connect(sshTarget);
    this.markPhase('SSH session');
  }

  /** Notes that `phase` of the start just finished (launchPhases). */
  markPhase(phase: string): void {
    this.launchPhases.push({ phase, ms: Date.now() - this.launchedAt });
  }

  /** During launch a stall ends the readiness wait; after it, whatever races against `failure`. */
  private onStall(error: Error): void {
    if (this.quitIssued) return;
    if (!this.ready) {
      this.launchAbort?.abort(error);
      return;
    }
    void this.failure;
    this.failureReject?.(error);
  }

  /**
   * Saves the running guest's state to `file` (stop, migrate, resume): a
   * full stream, or with RAM in a shared file a directory of the device
   * state and a copy of the RAM (saved-state.ts). It starts later machines
   * of the same image and profile. `agentSessionPid`: the agent port's
   * session waiting for its first request (agent-session.ts), noted in a
   * directory state.
   */
  async saveState(file: string, timeoutMs = 60_000, agentSessionPid?: number): Promise<void> {
    const qmp = this.qmp;
    // Only a shared RAM file is the RAM: a private mapping's RAM goes into the stream, which is then a full one.
    const shared = this.guestRam;
    const ram = shared?.kind === 'shared-file' ? shared : undefined;
    // Machines of one image booted together all save the same state: each writes its own, the first to finish stays.
    const tmp = uniqueSibling(file, 'partial');
    // With RAM in a shared file, the stream leaves it out and the file is copied beside it (saved-state.ts).
    if (ram) await mkdir(tmp, { mode: 0o700 });
    const stream = ram ? path.join(tmp, STATE_STREAM) : tmp;
    // QEMU's `cat >` would follow a symlink planted at the name: create the file exclusively first.
    await (await open(stream, 'wx', 0o600)).close();
    await qmp.execute('stop');
    try {
      if (ram) await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: IGNORE_SHARED, state: true }] });
      await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(stream)}` });
      const deadline = Deadline.in(timeoutMs);
      for (;;) {
        const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
        if (info.status === 'completed') break;
        if (info.status === 'failed' || info.status === 'cancelled') {
          throw new InfraError(`saving VM state failed: ${info['error-desc'] ?? info.status}`, { file: tmp });
        }
        if (deadline.expired) throw new TimeoutError(`saving VM state did not finish within ${timeoutMs} ms`);
        await sleep(50);
      }
      // Still stopped: the RAM is the one the device state was saved with.
      if (ram) {
        await copySparse(ram.file, path.join(tmp, STATE_RAM));
        await chmod(path.join(tmp, STATE_RAM), 0o600);
        if (agentSessionPid !== undefined) await writeFile(path.join(tmp, STATE_AGENT_SESSION), formatAgentSession(agentSessionPid), { mode: 0o600 });
      }
      await rename(tmp, file).catch(async (error: NodeJS.ErrnoException) => {
        // A directory replaces nothing, and nothing replaces one: a state of the same key is there already.
        if (!['ENOTEMPTY', 'EEXIST', 'EISDIR', 'ENOTDIR'].includes(error.code ?? '') || !existsSync(file)) throw error;
        await rm(tmp, { recursive: true, force: true });
      });
    } catch (error) {
      await rm(tmp, { recursive: true, force: true });
      throw error;
    } finally {
      await qmp.execute('cont');
    }
  }

  /** Waits for the incoming state to load (QEMU then sits paused, as the source was) and resumes. */
  private async resumeIncoming(deadline: Deadline, signal: AbortSignal): Promise<void> {
    const incoming = stateLayout(this.config.incomingState!);
    if (incoming.ram) {
      // The RAM is already in its file: the stream holds the device state alone.
      await this.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: IGNORE_SHARED, state: true }] });
      // The port's host end connected at the load as at the save: the waiting session is left waiting.
      if (incoming.agentSession) {
        this.preloadAgentSocket = { socket: await connectBeforeLoad(this.qmp, this.agentSocket), pid: incoming.agentSession.pid };
        this.markPhase('agent port connected');
      }
      await this.qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(incoming.stream)}` });
    }
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const { status } = await this.qmp.execute<{ status: string }>('query-status');
      if (status === 'paused' || status === 'postmigrate' || status === 'prelaunch') break;
      if (status === 'running') return;
      if (deadline.expired) throw new TimeoutError(`saved state never finished loading (status ${status})`);
      await sleep(20);
    }
    this.markPhase('state loaded');
    await this.qmp.execute('cont');
    if (this.preloadAgentSocket) {
      const { socket, pid } = this.preloadAgentSocket;
      this.preloadAgentSocket = undefined;
      this.heldAgentSession = resumeAgentPort(socket, this.agentSocket, pid);
    }
  }

  private async connectQmp(deadline: Deadline, signal: AbortSignal): Promise<QmpClient> {
    const socket = path.join(this.runDir!, 'qmp.sock');
    const logFile = path.join(this.config.artifactsDir, 'qmp.log');
    const log = (line: string): void => void appendFile(logFile, `${new Date().toISOString()} ${line}\n`).catch(() => {});
    const started = Date.now();
    for (;;) {
      if (signal.aborted) throw signal.reason;
      if (existsSync(socket)) {
        try {
          return await QmpClient.connect(socket, log);
        } catch {
          // QEMU creates the socket before it accepts: retry
        }
      }
      if (Date.now() - started > QMP_ACCEPT_MS) throw new LaunchError(`QMP socket never accepted a connection within ${QMP_ACCEPT_MS} ms`);
      if (deadline.expired) throw new TimeoutError('QMP socket never accepted a connection');
      await sleep(20);
    }
  }

  private launchFailure(error: unknown): Error {
    const details = {
      'command line': this.commandLine,
      'QEMU stderr': this.stderrTail,
      'console tail': this.consoleLog?.tail() ?? '',
      'vCPUs at the timeout': this.diagnosis ?? '',
    };
    const cause = error instanceof Error ? error.message : String(error);
    const death = this.consoleLog?.lines.find((line) => KERNEL_DEATH.test(line));
    if (death) return new BootError(`guest kernel died: ${death.trim()}`, details, { cause: error });
    // With -no-reboot, a guest that panics or reboots makes QEMU exit 0: the guest's doing, not QEMU's.
    if (this.exitedUnasked && this.exitDescription === 'exited with status 0')
      return new BootError(`guest shut down during boot (QEMU ${this.exitDescription})`, details, { cause: error });
    if (error instanceof StalledLaunchError) {
      const { 'QEMU stderr': _stderr, 'console tail': _console, ...judged } = evidenceDetails(error.evidence);
      return new StalledLaunchError(`${cause} (accel ${this.accelChoice?.accel})`, error.evidence, { ...judged, ...details }, { cause: error });
    }
    if (error instanceof LaunchError || error instanceof InfraError) return new LaunchError(cause, details, { cause: error });
    if (error instanceof BootError) return new BootError(cause, details, { cause: error });
    if (error instanceof TimeoutError) return new BootError(`guest did not become ready: ${cause}`, details, { cause: error });
    return new LaunchError(`launch failed: ${cause}`, details, { cause: error });
  }

  private async doShutdown(): Promise<void> {
    const child = this.child;
    this.stallWatch?.stop();
    this.stallWatch = undefined;
    try {
      this.sshSession?.close();
      this.sshSession = undefined;
      // A session nobody claimed ends with the machine.
      this.preloadAgentSocket?.socket.destroy();
      this.preloadAgentSocket = undefined;
      this.heldAgentSession?.drop();
      this.heldAgentSession = undefined;
      if (!child || !this.exited) return;
      let how: 'quit' | 'kill' | 'already-exited' = 'already-exited';
      if (this.exitDescription === undefined) {
        how = 'quit';
        this.quitIssued = true;
        // The bounds are cancelled once met: a pending sleep would keep a finished CLI alive for seconds.
        const bounds = new AbortController();
        const bound = (ms: number): Promise<void> => sleep(ms, bounds.signal).catch(() => {});
        await Promise.race([this.qmpClient?.execute('quit').catch(() => {}), bound(2000)]);
        const gone = await Promise.race([this.exited.then(() => true), bound(3000).then(() => false)]);
        bounds.abort();
        if (!gone) {
          how = 'kill';
          child.kill('SIGKILL');
          await this.exited;
        }
      }
      this.emit({ type: 'shutdown', name: this.name, how });
    } finally {
      this.qmpClient?.close();
      this.qmpClient = undefined;
      if (child?.pid) await forgetMachine(child.pid);
      await this.consoleLog?.close();
      if (this.runDir) await removeTempDir(this.runDir);
      if (this.ramDir) await removeTempDir(this.ramDir);
      this.ramDir = undefined;
      this.unregisterCleanup?.();
      this.unregisterCleanup = undefined;
    }
  }

  private emit(event: MachineEvent): void {
    this.config.onEvent?.(event);
  }
}
