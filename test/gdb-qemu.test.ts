// expect: the GDB client drives QEMU 7.2's gdbstub for real — handshake, registers, memory across chunk
// limits, Z0/Z1 stops at a guest program's user address (one per call), a Z2 write watchpoint, interrupt,
// step, both vCPUs as threads, a stop QEMU sends unasked, and detach leaving the guest running.
// CRH_GDB_RECORD=1 also rewrites test/fixtures/gdb/session.txt, the transcript test/gdb-packets.test.ts replays.
import t from 'tap';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { appendFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { ElfFile } from '../harness/elf/elf64.ts';
import { GdbClient, GdbError, type StopReply } from '../harness/gdb/client.ts';
import { buildImage, type GuestImage } from '../harness/image/build.ts';
import { QemuMachine } from '../harness/machine/machine.ts';
import { qemuVersion } from '../harness/machine/qemu-version.ts';

/** Kernel text under nokaslr (_text of x86-64 Linux). */
const KERNEL_TEXT = 0xffffffff81000000n;
const USER_CS = 0x33n;
const STOP_TIMEOUT_MS = 30_000;

let image: GuestImage;
let machine: QemuMachine;
let gdb: GdbClient;
let artifactsDir: string;
let target: bigint;
let hwbreak: string;

t.before(async () => {
  image = await buildImage();
  artifactsDir = await mkdtemp(path.join(tmpdir(), 'crh-gdb-'));
  machine = new QemuMachine({ image, artifactsDir, cpus: 2 });
  await machine.launch();
  target = (await ElfFile.open(image.binaries.hwbreak!)).symbolAddress('target');
  hwbreak = image.guestPaths.hwbreak!;
});
t.teardown(() => machine.shutdown());

const logged: string[] = [];
const gdbLog = (line: string): void => {
  logged.push(line);
  appendFileSync(path.join(artifactsDir, 'gdb.log'), `${line}\n`);
};
const stopped = (stop: StopReply): Extract<StopReply, { kind: 'signal' }> => {
  if (stop.kind !== 'signal') throw new Error(`expected a signal stop, got ${stop.raw}`);
  return stop;
};

/** A guest command or a stop that does not come in time fails the test instead of hanging it. */
function within<T>(promise: Promise<T>, what: string, ms = STOP_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Lets the VM run for the length of `fn` (a guest command needs it), then stops it again. */
async function whileRunning<T>(fn: () => Promise<T>): Promise<T> {
  const run = gdb.cont();
  try {
    return await within(fn(), 'guest command');
  } finally {
    await gdb.interrupt();
    await run;
  }
}

t.test('handshake: PacketSize, features, ack mode, target description', async (t) => {
  t.ok(image.cmdline.includes('nokaslr'), 'nokaslr: kernel text is at 0xffffffff81000000');
  const started = Date.now();
  gdb = await GdbClient.connect({ path: machine.gdbSocket }, { log: gdbLog });
  t.comment(`handshake: ${Date.now() - started} ms`);
  t.equal(gdb.packetSize, 0x1000, 'PacketSize=1000 (hex)');
  t.equal(gdb.features.get('qXfer:features:read'), true);
  t.equal(gdb.features.get('multiprocess'), true);
  t.same([...gdb.vContActions].sort(), ['C', 'S', 'c', 's']);
  // QEMU 7.2 does not offer no-ack mode, and answers the request as unknown.
  t.notOk(gdb.features.has('QStartNoAckMode'), 'QStartNoAckMode not offered');
  t.ok(gdb.acknowledging, 'so the client stays in ack mode');
  t.equal((await gdb.request('QStartNoAckMode')).toString('latin1'), '', 'QStartNoAckMode is unsupported');
  t.equal(stopped(gdb.initialStop!).signal, 5, "'?' reports the attach stop");

  const d = gdb.targetDescription;
  t.equal(d.architecture, 'i386:x86-64');
  t.same(d.features, ['org.gnu.gdb.i386.core']);
  const want = { rip: [64, 16], eflags: [32, 17], cs: [32, 18], ss: [32, 19], fs_base: [64, 24], gs_base: [64, 25], xmm0: [128, 49], mxcsr: [32, 65] };
  for (const [name, [bitsize, regnum]] of Object.entries(want)) {
    t.match(gdb.registers.get(name), { bitsize, regnum }, `${name}: ${bitsize} bits, regnum ${regnum}`);
  }
  t.notOk(gdb.registers.find('cs_base'), 'registers inside XML comments are not registers');
  t.equal(gdb.registers.gBytes, 608, "the table's g layout is 608 bytes");
});

t.test('registers: g agrees with p for every register; P on a stopped vCPU reads back and is restored', async (t) => {
  const all = await gdb.readRegisters();
  t.equal(all.size, gdb.registers.registers.length, "the 'g' reply carries every described register");
  const differing: string[] = [];
  for (const [name, value] of all) if ((await gdb.readRegister(name)) !== value) differing.push(name);
  t.same(differing, [], "'p' of each register equals its slot in 'g': the offsets are right");
  t.ok((all.get('eflags')! & 0x2n) !== 0n, 'eflags bit 1 is set, as always');
  t.ok(all.get('xmm0')! < 1n << 128n);

  const original = all.get('r15')!;
  const probe = original ^ 0x5a5a_a5a5_0123_4567n;
  await gdb.writeRegister('r15', probe);
  t.equal(await gdb.readRegister('r15'), probe, 'P then p reads the new value');
  t.equal((await gdb.readRegisters()).get('r15'), probe, "and 'g' agrees");
  await gdb.writeRegister('r15', original);
  t.equal(await gdb.readRegister('r15'), original, 'restored');
  await t.rejects(gdb.writeRegister('eflags', 1n << 32n), { name: 'GdbError', message: /does not fit eflags \(32 bits/ });
  await t.rejects(gdb.readRegister('nope'), { name: 'GdbError', message: /no register "nope"/ });
});

t.test('memory: chunk limit, 64 KiB twice, 1 MiB, writes across chunks restored, faults', async (t) => {
  t.equal((await gdb.request(`m${KERNEL_TEXT.toString(16)},800`)).length, 0x1000, 'QEMU answers m of 2048 bytes');
  t.equal((await gdb.request(`m${KERNEL_TEXT.toString(16)},801`)).toString('latin1'), 'E22', '2049 bytes: E22');
  t.equal(gdb.memoryReadChunk, 2048, 'the client asks for exactly what QEMU accepts');

  const first = await gdb.readMemory(KERNEL_TEXT, 64 * 1024);
  const second = await gdb.readMemory(KERNEL_TEXT, 64 * 1024);
  t.ok(first.equals(second), '64 KiB of kernel text reads the same twice');
  t.same(first.subarray(0, 3), Buffer.from([0x48, 0x8d, 0x25]), 'startup_64 begins lea ...(%rip),%rsp');
  const odd = await gdb.readMemory(KERNEL_TEXT + 2045n, 4100);
  t.ok(odd.equals(first.subarray(2045, 2045 + 4100)), 'an unaligned read across three chunks matches');

  const rounds = 200;
  let started = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) await gdb.readMemory(KERNEL_TEXT, 8);
  const roundTripUs = Number(process.hrtime.bigint() - started) / rounds / 1000;
  started = process.hrtime.bigint();
  const mib = await gdb.readMemory(KERNEL_TEXT, 1 << 20);
  const mibMs = Number(process.hrtime.bigint() - started) / 1e6;
  t.equal(mib.length, 1 << 20);
  t.comment(`m round trip ${roundTripUs.toFixed(0)} µs; 1 MiB in ${mibMs.toFixed(0)} ms (${(1 / (mibMs / 1000)).toFixed(1)} MiB/s)`);

  // Scratch: kernel text while every vCPU is stopped, restored before any runs again.
  const scratch = KERNEL_TEXT + 0x10000n + 3n;
  const saved = await gdb.readMemory(scratch, 10_000);
  const pattern = Buffer.from(Array.from({ length: 10_000 }, (_, i) => (i * 7 + 1) & 0xff));
  const before = logged.length;
  await gdb.writeMemory(scratch, pattern);
  const writes = logged.slice(before).filter((l) => /^> [XM]/.test(l));
  t.ok(logged.includes('X unsupported: writing memory with M'), 'QEMU 7.2 has no X: the client falls back to M');
  t.same(
    writes.map((l) => l.slice(2, 3)),
    ['X', 'M', 'M', 'M', 'M', 'M'],
    `one X probe, then five M packets of at most ${gdb.packetSize} bytes`,
  );
  t.ok((await gdb.readMemory(scratch, 10_000)).equals(pattern), '10000 bytes written across write chunks read back');
  await gdb.writeMemory(scratch, saved);
  t.ok((await gdb.readMemory(scratch, 10_000)).equals(saved), 'and the original bytes are back');

  const fault = await gdb.readMemory(0n, 16).then(
    () => undefined,
    (e: unknown) => e as GdbError,
  );
  t.ok(fault instanceof GdbError, 'reading unmapped address 0 fails');
  t.equal(fault?.errno, 14);
  t.match(fault?.message, /m0,10: the stub replied E14 \(EFAULT\)/);
});

t.test('Z1 at hwbreak:target (a user address): exactly one stop per call; Z0 and step', async (t) => {
  const reference = await whileRunning(() => machine.ssh.run(`${hwbreak} 3`));
  t.match(reference, /checksum=[0-9a-f]{16} calls=3/);

  await gdb.insertBreakpoint('hardware', target, 1);
  const run = machine.ssh.exec(`${hwbreak} 3`); // starts once the VM runs
  for (let call = 1; call <= 3; call++) {
    const stop = stopped(await gdb.cont({ timeoutMs: STOP_TIMEOUT_MS }));
    const regs = await gdb.readRegisters();
    t.equal(stop.signal, 5, `stop ${call}: SIGTRAP`);
    t.equal(regs.get('rip'), target, `stop ${call}: RIP = target`);
    t.equal(regs.get('cs'), USER_CS, `stop ${call}: CS = 0x33, the user context is loaded`);
    if (call === 1) {
      // Negative control for the client's step-over: QEMU alone stops again without executing anything.
      stopped(await gdb.cont({ stepOver: false, timeoutMs: STOP_TIMEOUT_MS }));
      // The user context only: the guest kernel may take an interrupt at that boundary
      // in between (cr2, k_gs_base and the like then differ), but the instruction never ran.
      const user = (r: Map<string, bigint>): Array<[string, bigint | undefined]> =>
        ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'cs', 'ss', 'fs_base'].map(
          (n) => [n, r.get(n)],
        );
      t.same(user(await gdb.readRegisters()), user(regs), 'without the step-over, QEMU reports the same execution again (user registers equal)');
    }
  }
  // With the breakpoint still in, the program must now run to its end.
  const rest = gdb.cont();
  const first = await within(Promise.race([run.then(() => 'exited'), rest.then(() => 'stopped again')]), 'hwbreak 3');
  t.equal(first, 'exited', 'no fourth stop');
  t.equal(stopped(await gdb.interrupt()).signal, 2, 'interrupt after the run: SIGINT');
  await rest;
  await gdb.removeBreakpoint('hardware', target, 1);
  t.equal((await within(run, 'hwbreak 3')).stdout, reference, 'the debugged run printed the reference checksum');

  await gdb.insertBreakpoint('software', target, 1);
  const once = machine.ssh.exec(`${hwbreak} 1`);
  const hit = stopped(await gdb.cont({ timeoutMs: STOP_TIMEOUT_MS }));
  t.equal(await gdb.readRegister('rip'), target, `Z0 stops at target too (${hit.raw})`);
  const step = stopped(await gdb.step());
  const rip = await gdb.readRegister('rip');
  t.equal(step.signal, 5, 'step: SIGTRAP');
  t.ok(rip > target && rip < target + 16n, `step executed target's first instruction (RIP = target + ${rip - target})`);
  t.equal(await gdb.readRegister('cs'), USER_CS, 'still in the user program');
  await gdb.removeBreakpoint('software', target, 1);
  t.match((await whileRunning(() => once)).stdout, /calls=1/);
  await t.rejects(gdb.removeBreakpoint('software', target, 1), { name: 'GdbError', errno: 22 }, 'removing it twice: E22');
});

t.test('Z2 write watchpoint on the stack slot of the return address', async (t) => {
  const reference = await whileRunning(() => machine.ssh.run(`${hwbreak} 2`));
  await gdb.insertBreakpoint('hardware', target, 1);
  const run = machine.ssh.exec(`${hwbreak} 2`);
  stopped(await gdb.cont({ timeoutMs: STOP_TIMEOUT_MS }));
  const rsp = await gdb.readRegister('rsp');
  const returnAddress = (await gdb.readMemory(rsp, 8)).readBigUInt64LE();
  await gdb.insertBreakpoint('write', rsp, 8);
  await gdb.removeBreakpoint('hardware', target, 1);
  // The second call pushes its return address into the same slot.
  const watch = stopped(await gdb.cont({ timeoutMs: STOP_TIMEOUT_MS }));
  t.same(watch.reason, { kind: 'watch', address: rsp }, `stop reply names the watched address (${watch.raw})`);
  t.equal(await gdb.readRegister('rip'), target, 'QEMU stops after the writing instruction: the call, so RIP = target');
  t.equal((await gdb.readMemory(rsp, 8)).readBigUInt64LE(), returnAddress, 'the slot holds the same return address');
  await gdb.removeBreakpoint('write', rsp, 8);
  t.equal((await whileRunning(() => run)).stdout, reference, 'the watched run printed the reference checksum');
});

t.test('Z3 read and Z4 access watchpoints on the stack slot of the return address', async (t) => {
  const reference = await whileRunning(() => machine.ssh.run(`${hwbreak} 2`));
  await gdb.insertBreakpoint('hardware', target, 1);
  const run = machine.ssh.exec(`${hwbreak} 2`);
  stopped(await gdb.cont({ timeoutMs: STOP_TIMEOUT_MS }));
  const rsp = await gdb.readRegister('rsp');
  await gdb.insertBreakpoint('read', rsp, 8);
  await gdb.removeBreakpoint('hardware', target, 1);
  // target's own ret reads the slot.
  const read = stopped(await gdb.cont({ timeoutMs: STOP_TIMEOUT_MS }));
  t.same(read.reason, { kind: 'rwatch', address: rsp }, `read watchpoint: ${read.raw}`);
  t.equal(await gdb.readRegister('cs'), USER_CS, 'stopped in the user program');
  await gdb.removeBreakpoint('read', rsp, 8);
  // The second call pushes its return address into the same slot: an access.
  await gdb.insertBreakpoint('access', rsp, 8);
  const access = stopped(await gdb.cont({ timeoutMs: STOP_TIMEOUT_MS }));
  t.same(access.reason, { kind: 'awatch', address: rsp }, `access watchpoint: ${access.raw}`);
  await gdb.removeBreakpoint('access', rsp, 8);
  t.equal((await whileRunning(() => run)).stdout, reference, 'the watched run printed the reference checksum');
});

t.test('interrupt stops a running VM; commands while it runs are refused', async (t) => {
  const run = gdb.cont();
  // Requests queue behind the resume, so this one meets a running target.
  await t.rejects(gdb.readRegisters(), { name: 'GdbError', message: /the target is running \(vCont;c\)/ });
  t.ok(gdb.isRunning);
  t.equal((await machine.ssh.run('echo up')).trim(), 'up', 'the guest answers while continued');
  const stop = stopped(await gdb.interrupt());
  t.equal(stop.signal, 2);
  t.equal(await run, stop, 'cont resolves with the same stop');
  t.equal((await machine.qmp.execute<{ status: string }>('query-status')).status, 'paused');
});

t.test('threads: one per vCPU, Hg selects whose registers are read', async (t) => {
  const threads = await gdb.threads();
  t.equal(threads.length, 2, `two vCPUs: ${threads.join(' ')}`);
  const seen: { rip: bigint; rsp: bigint }[] = [];
  for (const id of threads) {
    await gdb.selectThread('g', id);
    seen.push({ rip: await gdb.readRegister('rip'), rsp: await gdb.readRegister('rsp') });
    await gdb.selectThread('c', id);
    // QEMU's qC always names the first vCPU of the process, whatever Hg and Hc say.
    t.equal(await gdb.currentThread(), threads[0], `after Hg/Hc ${id}, qC still names ${threads[0]}`);
  }
  t.comment(`RIPs: ${seen.map((s) => `0x${s.rip.toString(16)}`).join(' ')}`);
  t.ok(
    seen.every((s) => s.rip >= 0xffff_8000_0000_0000n || s.rip < 0x8000_0000_0000n),
    'canonical RIPs',
  );
  t.not(seen[0]!.rsp, seen[1]!.rsp, 'each vCPU has its own stack');
  await gdb.selectThread('g', threads[0]!);
  await gdb.selectThread('c', threads[0]!);
});

t.test('a stop QEMU sends unasked (QMP stop) is queued, not taken for a reply', async (t) => {
  await machine.qmp.execute('cont'); // behind the debugger's back
  await machine.qmp.execute('stop');
  const rip = await gdb.readRegister('rip');
  t.ok(rip > 0n, 'the command got its own reply');
  const stop = stopped(await gdb.waitForStop(5000));
  t.equal(stop.signal, 2, `the unasked stop was kept: ${stop.raw}`);
  t.equal(gdb.pendingStops().length, 0);
});

t.test('close detaches: the guest runs on, and the client refuses further requests', async (t) => {
  await gdb.close();
  await gdb.close();
  t.equal((await machine.ssh.run('echo alive')).trim(), 'alive');
  await t.rejects(gdb.readRegisters(), { name: 'GdbError' });
});

t.test('a new connection: a recorded session (the transcript the offline tests replay)', async (t) => {
  const lines: string[] = [];
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.createConnection(machine.gdbSocket);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
  const session = await GdbClient.over(recording(socket, lines), { log: gdbLog });
  // Keep these calls in step with 'transcript: a recorded session' in test/gdb-packets.test.ts.
  const regs = await session.readRegisters();
  t.equal(await session.readRegister('rip'), regs.get('rip'));
  await session.writeRegister('r15', 0x1122334455667788n);
  t.equal(await session.readRegister('r15'), 0x1122334455667788n);
  await session.writeRegister('r15', regs.get('r15')!);
  const text = await session.readMemory(KERNEL_TEXT, 4100);
  await session.writeMemory(KERNEL_TEXT + 0x1000n, text.subarray(0x1000, 0x1010)); // the same bytes: no change
  await t.rejects(session.readMemory(0n, 16), { name: 'GdbError', errno: 14 });
  t.equal((await session.request(`m${KERNEL_TEXT.toString(16)},801`)).toString('latin1'), 'E22');
  await session.insertBreakpoint('hardware', KERNEL_TEXT, 1);
  await session.removeBreakpoint('hardware', KERNEL_TEXT, 1);
  await t.rejects(session.removeBreakpoint('hardware', KERNEL_TEXT, 1), { name: 'GdbError', errno: 22 });
  const threads = await session.threads();
  await session.selectThread('g', threads[1]!);
  await session.readRegister('rip');
  await session.selectThread('g', threads[0]!);
  t.equal(await session.currentThread(), threads[0]);
  const run = session.cont();
  await new Promise((resolve) => setTimeout(resolve, 50)); // let the VM run a little
  t.equal(stopped(await session.interrupt()).signal, 2);
  await run;
  t.equal(stopped(await session.step()).signal, 5);
  await session.close();
  t.equal((await machine.ssh.run('echo alive')).trim(), 'alive', 'the guest runs after the second detach');

  if (process.env.CRH_GDB_RECORD) {
    const header = [
      `# Recorded from ${await qemuVersion()} (-smp 2, ${machine.accel?.accel}) by test/gdb-qemu.test.ts`,
      '# with CRH_GDB_RECORD=1. "> " lines are bytes the client wrote, "< " lines chunks QEMU sent,',
      '# each a JSON string of latin1 bytes.',
    ];
    await writeFile(path.join(import.meta.dirname, 'fixtures', 'gdb', 'session.txt'), `${[...header, ...lines].join('\n')}\n`);
    t.comment(`recorded ${lines.length} lines`);
  }
});

/** The socket as a duplex that notes every write and every chunk read. */
function recording(socket: net.Socket, lines: string[]): Duplex {
  const tee = new Duplex({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(`> ${JSON.stringify(chunk.toString('latin1'))}`);
      socket.write(chunk, callback);
    },
    read() {},
    destroy(error, callback) {
      socket.destroy();
      callback(error);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    lines.push(`< ${JSON.stringify(chunk.toString('latin1'))}`);
    tee.push(chunk);
  });
  socket.on('close', () => tee.destroy());
  return tee;
}
