/**
 * QEMU command lines, built by small pure functions so every flag is
 * unit-tested without running QEMU. Every listener binds loopback or a unix
 * socket; the guest network is user-mode with restrict=on.
 */
import { PC_LINEAR_RAM_MAX_MIB } from '../x86/pc-memory.ts';

export type Accelerator = 'kvm' | 'tcg';

export interface MachineProfile {
  accel: Accelerator;
  /** guest RAM in MiB */
  memoryMiB: number;
  cpus: number;
  /**
   * the QEMU CPU model (`-cpu`), e.g. `max,-avx` or `Skylake-Client`, for a
   * restore onto another CPU; default `host` under KVM, `max` under TCG
   */
  cpuModel?: string;
}

/** The CPU model a machine of `profile` runs: the one asked for, else host (KVM) or max (TCG, so XSAVE/AVX exist). */
export function cpuModelOf(profile: Pick<MachineProfile, 'accel' | 'cpuModel'>): string {
  return profile.cpuModel ?? (profile.accel === 'kvm' ? 'host' : 'max');
}

export interface BootFiles {
  kernel: string;
  initrd: string;
  cmdline: readonly string[];
}

export interface Endpoints {
  qmpSocket: string;
  gdbSocket: string;
  /** host port on 127.0.0.1 forwarded to the guest's port 22 */
  sshPort: number;
  /** unix socket of the bulk data port (virtio-serial); absent: no bulk port, page data goes over SSH */
  bulkSocket?: string;
  /** unix socket of the agent port (virtio-serial, on the bulk port's bus); absent: the agent is reached over SSH only */
  agentSocket?: string;
  /** the file guest RAM lives in, shared with the host (guestRamArgs); absent: QEMU's anonymous RAM */
  guestRamFile?: string;
  /** map guestRamFile private (copy on write, the file never written): a saved state's RAM (guestRamArgs) */
  guestRamPrivate?: boolean;
}

/** The name the guest sees in /sys/class/virtio-ports/<port>/name (the agent's BULK_OPEN looks for it). */
export const BULK_PORT_NAME = 'org.cr-harness.bulk';

/** The name of the agent port: the guest's init serves agent sessions on it (images/debian-cloud/inittab). */
export const AGENT_PORT_NAME = 'org.cr-harness.agent';

/** Machine type, accelerator, CPU model (cpuModelOf), memory. */
export function machineArgs(profile: MachineProfile): string[] {
  return [
    '-machine',
    'pc',
    '-accel',
    profile.accel,
    '-cpu',
    cpuModelOf(profile),
    '-m',
    String(profile.memoryMiB),
    '-smp',
    String(profile.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
  ];
}

export function bootArgs(boot: BootFiles): string[] {
  return ['-kernel', boot.kernel, '-initrd', boot.initrd, '-append', boot.cmdline.join(' ')];
}

/** The serial console on QEMU's stdout, which the host captures. */
export function consoleArgs(): string[] {
  return ['-chardev', 'stdio,id=console,signal=off', '-serial', 'chardev:console'];
}

export function qmpArgs(socket: string): string[] {
  return ['-chardev', `socket,id=qmp,path=${socket},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control'];
}

/** The gdbstub, always on, on a unix socket. */
export function gdbstubArgs(socket: string): string[] {
  // Not id=gdb: QEMU's own gdbserver monitor command creates a chardev by that name.
  return ['-chardev', `socket,id=gdbstub,path=${socket},server=on,wait=off`, '-gdb', 'chardev:gdbstub'];
}

/**
 * User-mode network: restrict=on isolates the guest (no packets routed to
 * the host or beyond); the one forward binds 127.0.0.1 only.
 */
export function networkArgs(sshPort: number): string[] {
  if (!Number.isInteger(sshPort) || sshPort < 1 || sshPort > 65535) throw new RangeError(`invalid SSH port ${sshPort}`);
  return ['-netdev', `user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:${sshPort}-:22`, '-device', 'virtio-net-pci,netdev=net0,romfile='];
}

/**
 * A pvpanic device: the guest kernel reports a panic to QEMU, which emits
 * GUEST_PANICKED on QMP and pauses the VM (state kept for diagnosis) instead
 * of letting it reboot.
 */
export function panicArgs(): string[] {
  return ['-device', 'pvpanic', '-action', 'panic=pause'];
}

/**
 * The bulk data path: a virtio-serial port whose host end is a unix socket
 * (QEMU listens; the host connects once the guest is up). Page data of
 * checkpoints and restores crosses it unencrypted, in the guest's kernel at
 * memory-copy cost, instead of the SSH channel whose cipher runs emulated.
 */
export function bulkPortArgs(socket: string): string[] {
  return [
    '-device',
    'virtio-serial-pci,id=bulkbus,romfile=',
    '-chardev',
    `socket,id=bulk,path=${socket},server=on,wait=off`,
    '-device',
    `virtserialport,bus=bulkbus.0,chardev=bulk,name=${BULK_PORT_NAME}`,
  ];
}

/**
 * The agent port: a second virtio-serial port on the bulk port's bus whose
 * host end is a unix socket QEMU listens on. The guest's init serves the
 * agent's framed protocol on it (docs/agent-protocol.md, "Transports"), so
 * the host reaches the agent with a socket connect instead of an SSH
 * handshake. It has a device id so QMP names it in VSERPORT_CHANGE.
 */
export function agentPortArgs(socket: string): string[] {
  return [
    '-chardev',
    `socket,id=agent,path=${socket},server=on,wait=off`,
    '-device',
    `virtserialport,bus=bulkbus.0,chardev=agent,name=${AGENT_PORT_NAME},id=agentport`,
  ];
}

/**
 * The RAM id QEMU's pc machine gives its own RAM: the file-backed RAM takes
 * the same name, so its migration stream is the one an anonymous-RAM machine
 * writes and reads.
 */
export const GUEST_RAM_ID = 'pc.ram';
/** Guest RAM in a file is kept all below 4 GiB, where guest-physical address = file offset. */
export const GUEST_RAM_LINEAR_MAX_MIB = PC_LINEAR_RAM_MAX_MIB;

/**
 * Guest RAM as a file the host shares (MAP_SHARED, share=on): the host reads
 * and writes a page of the guest at offset frame × 4096 (agent/guest-ram.ts)
 * instead of moving it through the guest. The file belongs in memory (a
 * tmpfs such as /dev/shm): on a disk it would be written back.
 *
 * `shared: false` maps the file private (share=off): copy on write, the
 * file is never written — a saved state's RAM, which any number of machines
 * start from at once without a copy (QEMU's VM templating: with
 * x-ignore-shared the stream carries no page of a block the source shared,
 * and the destination's private block keeps what its file holds). The host
 * then reaches the RAM through QEMU's mapping, not the file.
 */
export function guestRamArgs(file: string, memoryMiB: number, shared = true): string[] {
  if (!Number.isInteger(memoryMiB) || memoryMiB < 1 || memoryMiB > GUEST_RAM_LINEAR_MAX_MIB) {
    throw new RangeError(
      `guest RAM of ${memoryMiB} MiB in a file: must be 1..${GUEST_RAM_LINEAR_MAX_MIB} MiB, all below 4 GiB where frame × 4096 is its file offset`,
    );
  }
  if (file.includes(',')) throw new RangeError(`guest RAM file ${file}: a comma would end QEMU's option value`);
  return [
    '-object',
    `memory-backend-file,id=${GUEST_RAM_ID},size=${memoryMiB}M,mem-path=${file},share=${shared ? 'on' : 'off'}`,
    '-machine',
    `memory-backend=${GUEST_RAM_ID}`,
  ];
}

/** Start paused, loading saved VM state from a file (resumed with QMP cont). */
export function incomingArgs(stateFile: string): string[] {
  return ['-incoming', `exec:cat ${shellQuote(stateFile)}`];
}

/**
 * Start paused, waiting for QMP migrate-incoming: a state saved with
 * x-ignore-shared is loaded with the capability set first, which only QMP
 * can do before the load (saved-state.ts).
 */
export function deferredIncomingArgs(): string[] {
  return ['-incoming', 'defer'];
}

export interface QemuCommandOptions {
  name: string;
  profile: MachineProfile;
  boot: BootFiles;
  endpoints: Endpoints;
  incomingState?: string;
  /** wait for QMP migrate-incoming instead (incomingState is then not given) */
  incomingDeferred?: boolean;
}

export function qemuArgs(o: QemuCommandOptions): string[] {
  if (o.endpoints.agentSocket && !o.endpoints.bulkSocket)
    throw new RangeError("the agent port lives on the bulk port's virtio-serial bus: give bulkSocket too");
  return [
    '-name',
    o.name,
    ...machineArgs(o.profile),
    ...(o.endpoints.guestRamFile ? guestRamArgs(o.endpoints.guestRamFile, o.profile.memoryMiB, !o.endpoints.guestRamPrivate) : []),
    ...bootArgs(o.boot),
    ...consoleArgs(),
    ...qmpArgs(o.endpoints.qmpSocket),
    ...gdbstubArgs(o.endpoints.gdbSocket),
    ...networkArgs(o.endpoints.sshPort),
    ...panicArgs(),
    ...(o.endpoints.bulkSocket ? bulkPortArgs(o.endpoints.bulkSocket) : []),
    ...(o.endpoints.agentSocket ? agentPortArgs(o.endpoints.agentSocket) : []),
    ...(o.incomingState ? incomingArgs(o.incomingState) : []),
    ...(o.incomingDeferred ? deferredIncomingArgs() : []),
  ];
}

/** The command line as one copy-pasteable string, for errors and logs. */
export function formatCommandLine(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ');
}

export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}
