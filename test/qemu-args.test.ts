// expect: QEMU command lines bind only loopback or unix sockets, isolate the guest network, and pick the CPU per accelerator; CRH_QEMU names the binary.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  AGENT_PORT_NAME,
  agentPortArgs,
  BULK_PORT_NAME,
  bulkPortArgs,
  formatCommandLine,
  GUEST_RAM_ID,
  guestRamArgs,
  machineArgs,
  networkArgs,
  qemuArgs,
  shellQuote,
} from '../harness/machine/qemu-args.ts';
import { probeArgs, probeFirmware } from '../harness/machine/accel.ts';
import { DEFAULT_QEMU_BINARY, qemuBinary } from '../harness/machine/qemu-binary.ts';
import { stateLayout } from '../harness/machine/saved-state.ts';
import { GUEST_BIN_DIR } from '../harness/image/guest-binaries.ts';
import { RECIPE_DIR } from '../images/debian-cloud/recipe.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';

const options = {
  name: 'crh-test',
  profile: { accel: 'tcg' as const, memoryMiB: 512, cpus: 1 },
  boot: { kernel: '/k/bzImage', initrd: '/k/initrd', cmdline: ['console=ttyS0', 'nokaslr'] },
  endpoints: { qmpSocket: '/tmp/x/qmp.sock', gdbSocket: '/tmp/x/gdb.sock', sshPort: 40022 },
};

t.test('TCG gets -cpu max (XSAVE/AVX in the guest), KVM gets -cpu host', async (t) => {
  const tcg = machineArgs({ accel: 'tcg', memoryMiB: 256, cpus: 2 });
  t.equal(tcg[tcg.indexOf('-cpu') + 1], 'max');
  t.equal(tcg[tcg.indexOf('-accel') + 1], 'tcg');
  t.equal(tcg[tcg.indexOf('-smp') + 1], '2');
  t.equal(tcg[tcg.indexOf('-m') + 1], '256');
  const kvm = machineArgs({ accel: 'kvm', memoryMiB: 256, cpus: 1 });
  t.equal(kvm[kvm.indexOf('-cpu') + 1], 'host');
  t.ok(tcg.includes('-no-reboot'), 'a panic ends QEMU instead of rebooting');
});

t.test('network: restricted user mode, SSH forward on 127.0.0.1 only', async (t) => {
  const args = networkArgs(40022);
  const netdev = args[args.indexOf('-netdev') + 1]!;
  t.match(netdev, /^user,/);
  t.match(netdev, /restrict=on/);
  t.match(netdev, /hostfwd=tcp:127\.0\.0\.1:40022-:22/);
  t.notMatch(netdev, /hostfwd=tcp::|0\.0\.0\.0/, 'never a wildcard bind');
  t.throws(() => networkArgs(0));
  t.throws(() => networkArgs(70000));
});

t.test('every listener is a unix socket or loopback', async (t) => {
  const args = qemuArgs(options);
  const chardevs = args.filter((_, i) => args[i - 1] === '-chardev');
  t.same(
    chardevs.filter((c) => c.startsWith('socket,')),
    ['socket,id=qmp,path=/tmp/x/qmp.sock,server=on,wait=off', 'socket,id=gdbstub,path=/tmp/x/gdb.sock,server=on,wait=off'],
  );
  t.ok(args.includes('-gdb') && args[args.indexOf('-gdb') + 1] === 'chardev:gdbstub', 'gdbstub always on');
  t.notOk(
    args.some((a) => /tcp::\d|host=0\.0\.0\.0|0\.0\.0\.0:/.test(a)),
    'no wildcard listener anywhere',
  );
  t.notOk(args.includes('-incoming'), 'cold boot has no -incoming');
  const incoming = qemuArgs({ ...options, incomingState: '/c/state file' });
  t.equal(incoming[incoming.indexOf('-incoming') + 1], "exec:cat '/c/state file'");
});

t.test('the bulk data port: a named virtserialport on a unix-socket chardev, only when asked for', async (t) => {
  t.same(bulkPortArgs('/tmp/x/bulk.sock'), [
    '-device',
    'virtio-serial-pci,id=bulkbus,romfile=',
    '-chardev',
    'socket,id=bulk,path=/tmp/x/bulk.sock,server=on,wait=off',
    '-device',
    `virtserialport,bus=bulkbus.0,chardev=bulk,name=${BULK_PORT_NAME}`,
  ]);
  t.equal(BULK_PORT_NAME, 'org.cr-harness.bulk', "the name the agent's BULK_OPEN looks for");
  t.notOk(qemuArgs(options).includes('virtio-serial-pci,id=bulkbus,romfile='), 'no bulk socket, no device');
  const withBulk = qemuArgs({ ...options, endpoints: { ...options.endpoints, bulkSocket: '/tmp/x/bulk.sock' } });
  const chardevs = withBulk.filter((_, i) => withBulk[i - 1] === '-chardev');
  t.ok(chardevs.includes('socket,id=bulk,path=/tmp/x/bulk.sock,server=on,wait=off'), 'a unix socket: no network listener');
  t.notOk(
    withBulk.some((a) => /tcp:|host=/.test(a) && a.includes('bulk')),
    'never TCP',
  );
});

t.test("guest RAM in a shared file: the machine's own RAM id, all below 4 GiB, only when asked for", async (t) => {
  t.same(guestRamArgs('/dev/shm/crh-ram-x/ram', 512), [
    '-object',
    'memory-backend-file,id=pc.ram,size=512M,mem-path=/dev/shm/crh-ram-x/ram,share=on',
    '-machine',
    'memory-backend=pc.ram',
  ]);
  t.equal(GUEST_RAM_ID, 'pc.ram', "the id QEMU gives a pc machine's RAM: the migration stream names the same RAM block");
  t.throws(() => guestRamArgs('/dev/shm/r', 4096), /below 4 GiB/, 'RAM that would reach above 4 GiB is refused (frame × 4096 would not be its offset)');
  t.throws(() => guestRamArgs('/dev/shm/a,b', 512), /comma/, 'a path that would end the option value is refused');
  t.notOk(
    qemuArgs(options).some((a) => a.startsWith('memory-backend')),
    'no RAM file, no backend',
  );
  const withRam = qemuArgs({ ...options, endpoints: { ...options.endpoints, guestRamFile: '/dev/shm/crh-ram-x/ram' } });
  t.ok(
    withRam.includes(`memory-backend-file,id=pc.ram,size=${options.profile.memoryMiB}M,mem-path=/dev/shm/crh-ram-x/ram,share=on`),
    'the backend is sized as -m',
  );
  const saved = '/cache/states/k.vmstate/ram';
  t.ok(
    qemuArgs({ ...options, endpoints: { ...options.endpoints, guestRamFile: saved, guestRamPrivate: true } }).includes(
      `memory-backend-file,id=pc.ram,size=${options.profile.memoryMiB}M,mem-path=${saved},share=off`,
    ),
    "a saved state's RAM file is mapped private (share=off): copy on write, the file never written",
  );
});

t.test('kernel, initrd and command line', async (t) => {
  const args = qemuArgs(options);
  t.equal(args[args.indexOf('-kernel') + 1], '/k/bzImage');
  t.equal(args[args.indexOf('-initrd') + 1], '/k/initrd');
  t.equal(args[args.indexOf('-append') + 1], 'console=ttyS0 nokaslr');
  t.equal(args[args.indexOf('-serial') + 1], 'chardev:console');
  t.equal(args[args.indexOf('-device', args.indexOf('virtio-net-pci,netdev=net0,romfile=')) + 1], 'pvpanic', 'pvpanic reports panics on QMP');
  t.equal(args[args.indexOf('-action') + 1], 'panic=pause');
});

t.test('command lines format copy-pasteable', async (t) => {
  t.equal(shellQuote('plain-arg_1,x=y'), 'plain-arg_1,x=y');
  t.equal(shellQuote('a b'), "'a b'");
  t.equal(shellQuote("it's"), `'it'\\''s'`);
  t.equal(formatCommandLine(['qemu', '-append', 'a b']), "qemu -append 'a b'");
});

t.test('the accelerator probe firmware halts after writing to isa-debug-exit', async (t) => {
  const rom = probeFirmware();
  t.equal(rom.length, 0x10000);
  t.same([...rom.subarray(0xfff0, 0xfff5)], [0xb0, 0x01, 0xe6, 0xf4, 0xf4], 'mov al,1; out 0xf4,al; hlt at the reset vector');
  const args = probeArgs('kvm', '/tmp/p.rom');
  t.equal(args[args.indexOf('-bios') + 1], '/tmp/p.rom');
  t.equal(args[args.indexOf('-cpu') + 1], 'host', 'probes the CPU model a KVM guest would get');
});

t.test('CRH_QEMU overrides the QEMU binary; unset or empty means qemu-system-x86_64', async (t) => {
  const saved = process.env.CRH_QEMU;
  t.teardown(() => {
    if (saved === undefined) delete process.env.CRH_QEMU;
    else process.env.CRH_QEMU = saved;
  });
  delete process.env.CRH_QEMU;
  t.equal(qemuBinary(), DEFAULT_QEMU_BINARY);
  t.equal(DEFAULT_QEMU_BINARY, 'qemu-system-x86_64');
  process.env.CRH_QEMU = '';
  t.equal(qemuBinary(), DEFAULT_QEMU_BINARY);
  process.env.CRH_QEMU = '/opt/qemu/bin/qemu-system-x86_64';
  t.equal(qemuBinary(), '/opt/qemu/bin/qemu-system-x86_64');
});

t.test("the agent port: a named, id'd virtserialport on the bulk port's bus, a unix socket, served by the guest's init", async (t) => {
  t.same(agentPortArgs('/tmp/x/agent.sock'), [
    '-chardev',
    'socket,id=agent,path=/tmp/x/agent.sock,server=on,wait=off',
    '-device',
    `virtserialport,bus=bulkbus.0,chardev=agent,name=${AGENT_PORT_NAME},id=agentport`,
  ]);
  const both = qemuArgs({ ...options, endpoints: { ...options.endpoints, bulkSocket: '/tmp/x/bulk.sock', agentSocket: '/tmp/x/agent.sock' } });
  t.ok(
    both.indexOf('virtio-serial-pci,id=bulkbus,romfile=') < both.indexOf(`virtserialport,bus=bulkbus.0,chardev=agent,name=${AGENT_PORT_NAME},id=agentport`),
    'after its bus',
  );
  t.throws(() => qemuArgs({ ...options, endpoints: { ...options.endpoints, agentSocket: '/tmp/x/agent.sock' } }), /give bulkSocket too/, 'no bus, no port');
  const inittab = readFileSync(path.join(RECIPE_DIR, 'inittab'), 'utf8');
  t.match(
    inittab,
    new RegExp(`^::respawn:${GUEST_BIN_DIR}/crh-agent --port ${AGENT_PORT_NAME.replaceAll('.', '\\.')}$`, 'm'),
    'the inittab serves that port with the agent',
  );
});

t.test('a saved state: a file is a full stream, a directory its device state and its RAM apart (loaded with -incoming defer)', async (t) => {
  const dir = await makeTempDir('crh-state-test-');
  t.teardown(() => removeTempDir(dir));
  await writeFile(path.join(dir, 'full.vmstate'), 'stream');
  t.same(stateLayout(path.join(dir, 'full.vmstate')), { stream: path.join(dir, 'full.vmstate') });
  await mkdir(path.join(dir, 'apart.vmstate'));
  t.same(stateLayout(path.join(dir, 'apart.vmstate')), { stream: path.join(dir, 'apart.vmstate', 'stream'), ram: path.join(dir, 'apart.vmstate', 'ram') });
  const deferred = qemuArgs({ ...options, incomingDeferred: true });
  t.equal(deferred[deferred.indexOf('-incoming') + 1], 'defer', 'waits for QMP migrate-incoming');
});
