import { execa } from 'execa';
import { QEMU_BINARY } from './accel.ts';

let cached: Promise<string> | undefined;

/** "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", read once per process. */
export function qemuVersion(): Promise<string> {
  cached ??= execa(QEMU_BINARY, ['--version']).then((r) => r.stdout.split('\n')[0]!.replace(/^QEMU emulator version\s*/, '').trim());
  return cached;
}
