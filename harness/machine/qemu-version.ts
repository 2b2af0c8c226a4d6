import { execa } from 'execa';
import { qemuBinary } from './qemu-binary.ts';

const cached = new Map<string, Promise<string>>();

/** "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", read once per process and binary. */
export function qemuVersion(): Promise<string> {
  const binary = qemuBinary();
  let version = cached.get(binary);
  if (!version) {
    version = execa(binary, ['--version']).then((r) =>
      r.stdout
        .split('\n')[0]!
        .replace(/^QEMU emulator version\s*/, '')
        .trim(),
    );
    cached.set(binary, version);
  }
  return version;
}
