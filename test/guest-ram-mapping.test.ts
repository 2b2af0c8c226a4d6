// expect: QEMU's private mapping of a saved RAM file is found in /proc/PID/maps by the file's device and inode — its address of file offset 0 when its pieces cover the RAM from offset 0 at one base, nothing when a piece is missing, shorter, of another file or at another base; dev_t splits as glibc's major()/minor().
import t from 'tap';
import { deviceMajor, deviceMinor, mappingBase } from '../harness/agent/guest-ram.ts';

const MiB = 1024 * 1024;
const id = { major: 0xfd, minor: 1, inode: 4242 };
const line = (start: number, end: number, offset: number, dev = 'fd:01', inode = 4242, name = '/cache/states/x.vmstate/ram'): string =>
  `${start.toString(16)}-${end.toString(16)} rw-p ${offset.toString(16).padStart(8, '0')} ${dev} ${inode}                      ${name}`;
const base = 0x7f12_3456_0000;

t.test('one mapping of the whole file', async (t) => {
  const maps = [
    line(0x5555_0000_0000, 0x5555_0001_0000, 0, 'fd:01', 99, '/usr/bin/qemu'),
    line(base, base + 512 * MiB, 0),
    '7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]',
  ].join('\n');
  t.equal(mappingBase(maps, id, 512 * MiB), base, 'offset 0 of the file is at the mapping start');
  t.equal(mappingBase(`${maps}\n`, { ...id, inode: 4243 }, 512 * MiB), undefined, 'another inode is another file');
  t.equal(mappingBase(maps, { ...id, minor: 2 }, 512 * MiB), undefined, 'the same inode on another device is another file');
  t.equal(mappingBase(maps, id, 1024 * MiB), undefined, 'a mapping shorter than the RAM is refused');
});

t.test('a mapping split in pieces (e.g. by madvise)', async (t) => {
  const pieces = [line(base + 64 * MiB, base + 512 * MiB, 64 * MiB), line(base, base + 64 * MiB, 0)].join('\n');
  t.equal(mappingBase(pieces, id, 512 * MiB), base, 'pieces at one base covering the file, in any order');
  const gap = [line(base, base + 64 * MiB, 0), line(base + 128 * MiB, base + 512 * MiB, 128 * MiB)].join('\n');
  t.equal(mappingBase(gap, id, 512 * MiB), undefined, 'a gap between pieces is refused');
  const twice = [line(base, base + 512 * MiB, 0), line(base + 1024 * MiB, base + 1536 * MiB, 0)].join('\n');
  t.equal(mappingBase(twice, id, 512 * MiB), undefined, 'the file mapped at two places is ambiguous: refused');
  t.equal(mappingBase(line(base, base + 512 * MiB, 4096), id, 512 * MiB), undefined, 'a mapping not from offset 0 does not cover frame 0');
});

t.test('dev_t as major:minor', async (t) => {
  t.same([deviceMajor(0xfd01), deviceMinor(0xfd01)], [0xfd, 1], 'a small dev_t (8:8 bits)');
  // major 0x123, minor 0x45678: minor's low 8 bits at 0-7, major at 8-19, minor's high bits at 20-31.
  const dev = 0x45600000 + (0x123 << 8) + 0x78;
  t.same([deviceMajor(dev), deviceMinor(dev)], [0x123, 0x45678], 'a large one, split as the kernel encodes it');
});
