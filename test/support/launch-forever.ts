// Launches a guest and reports QEMU's pid, then waits: the test kills this
// process with SIGKILL mid-boot and checks that QEMU does not outlive it.
import { buildImage } from '../../harness/image/build.ts';
import { QemuMachine } from '../../harness/machine/machine.ts';

const image = await buildImage();
const machine = new QemuMachine({
  image,
  artifactsDir: process.argv[2]!,
  onEvent: (e) => {
    if (e.type === 'console' && machine.pid) process.stdout.write(`qemu-pid ${machine.pid}\n`);
  },
});
await machine.launch();
await new Promise(() => {});
