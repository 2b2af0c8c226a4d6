// A QEMU under -accel kvm on a host where KVM cannot run this kernel, as seen
// on a paravirtualized nested KVM (QEMU 7.2): the real-mode firmware probe
// (-bios) runs to its isa-debug-exit; a kernel boot dies at once — QEMU prints
// "KVM internal error. Suberror: 1" with the emulation-failure dump on stderr,
// stops the VM (QMP STOP, query-status "internal-error"), prints nothing on
// the console and stays alive, answering QMP, until it is told to quit or killed.
import net from 'node:net';
import { existsSync, unlinkSync } from 'node:fs';

const argv = process.argv.slice(2);
const arg = (flag) => argv[argv.indexOf(flag) + 1];

if (argv.includes('-bios') && argv.some((a) => a.startsWith('isa-debug-exit'))) {
  // The probe firmware writes 1 to port 0xf4: isa-debug-exit exits (1 << 1) | 1.
  process.exit(3);
}

const qmpChardev = argv.find((a) => a.startsWith('socket,id=qmp,'));
const qmpPath = qmpChardev ? /path=([^,]+)/.exec(qmpChardev)[1] : undefined;
let status = 'running';
const clients = new Set();
const now = () => {
  const ms = Date.now();
  return { seconds: Math.floor(ms / 1000), microseconds: (ms % 1000) * 1000 };
};
const send = (socket, message) => socket.write(`${JSON.stringify(message)}\r\n`);

if (qmpPath) {
  if (existsSync(qmpPath)) unlinkSync(qmpPath);
  const server = net.createServer((socket) => {
    clients.add(socket);
    socket.on('close', () => clients.delete(socket));
    socket.on('error', () => {});
    send(socket, { QMP: { version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'fake: KVM internal error' }, capabilities: ['oob'] } });
    let buffer = '';
    socket.on('data', (chunk) => {
      buffer += chunk.toString();
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (!line) continue;
        const { execute, id } = JSON.parse(line);
        if (execute === 'qmp_capabilities') send(socket, { return: {}, id });
        else if (execute === 'query-status') send(socket, { return: { status, singlestep: false, running: status === 'running' }, id });
        else if (execute === 'quit') {
          send(socket, { return: {}, id });
          for (const c of clients) send(c, { timestamp: now(), event: 'SHUTDOWN', data: { guest: false, reason: 'host-qmp-quit' } });
          setTimeout(() => process.exit(0), 20);
        } else send(socket, { error: { class: 'CommandNotFound', desc: `The command ${execute} has not been found` }, id });
      }
    });
  });
  server.listen(qmpPath);
}

// The kernel's early boot reaches its first cmpxchg16b a few hundred ms in.
setTimeout(() => {
  process.stderr.write(
    [
      'KVM internal error. Suberror: 1',
      'extra data[0]: 0x0000000000000000',
      'extra data[1]: 0x0000000000000030',
      'emulation failure',
      'RAX=0000000000000000 RBX=ffffffff82a03f00 RCX=0000000000000000 RDX=0000000000000000',
      'RIP=ffffffff81f4d2a5 RFL=00010046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0',
      'Code=48 8b 44 24 08 48 8b 54 24 10 <f0> 48 0f c7 0e 0f 94 c0 c3',
      '',
    ].join('\n'),
  );
  status = 'internal-error';
  for (const c of clients) send(c, { timestamp: now(), event: 'STOP' });
}, 300);

// QEMU stays up with the VM stopped: nothing ends this process but quit or a signal.
setInterval(() => {}, 1 << 30);
