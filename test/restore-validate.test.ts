// expect: a checkpoint image is refused, naming entry and field, for every structural or range violation — and a valid one round-trips.
import t, { type Test } from 'tap';
import { rejects } from './support/rejects.ts';
import { memoryEntryName } from '../harness/restore/checkpoint-image.ts';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tar from 'tar-stream';
import { ImageRejectedError } from '../harness/errors.ts';
import { IMAGE_VERSION, imageEntries, parseImageEntries, readCheckpointImage, writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { eflagsViolations, validateDebugRegs, validateRegs, validateXstate } from '../harness/restore/validate.ts';
import { USER_REGS_FIELDS } from '../harness/x86/registers.ts';
import { reseal, syntheticImage, syntheticRegs, syntheticXstate } from './support/synthetic-image.ts';

const hexRegs = (overrides: Record<string, string> = {}): Record<string, unknown> => ({
  ...Object.fromEntries(USER_REGS_FIELDS.map((n) => [n, `0x${syntheticRegs()[n].toString(16)}`])),
  ...overrides,
});

t.test('EFLAGS: fixed bits must be exactly IF|0x2, offending bits named', async (t) => {
  t.same(eflagsViolations(0x246n), []);
  t.same(eflagsViolations(0x10246n), [], 'RF is user-changeable');
  t.same(eflagsViolations(0x200246n | 0x40000n | 0x4000n | 0x100n), [], 'ID AC NT TF are user-changeable');
  t.same(eflagsViolations(0x46n), ['IF clear']);
  t.same(eflagsViolations(0x244n), ['FIXED1 clear']);
  t.same(eflagsViolations(0x3246n), ['IOPL0 set', 'IOPL1 set']);
  t.same(eflagsViolations(0x20246n), ['VM set']);
  t.same(eflagsViolations(0x246n | (1n << 40n)), ['bit40 set']);
  rejects(t, () => validateRegs(hexRegs({ eflags: '0x20246' })), 'regs.json', 'eflags');
  try {
    validateRegs(hexRegs({ eflags: '0x3246' }));
  } catch (error) {
    t.match((error as Error).message, /IOPL0 set, IOPL1 set/, 'the message names the bits');
  }
});

t.test('registers: selectors, user-space addresses, hex format, unknown names', async (t) => {
  t.ok(validateRegs(hexRegs()));
  rejects(t, () => validateRegs(hexRegs({ cs: '0x10' })), 'regs.json', 'cs');
  rejects(t, () => validateRegs(hexRegs({ ss: '0x18' })), 'regs.json', 'ss');
  rejects(t, () => validateRegs(hexRegs({ fs: '0x10' })), 'regs.json', 'fs');
  t.ok(validateRegs(hexRegs({ fs: '0x63' })), 'a TLS selector with RPL 3 is fine');
  rejects(t, () => validateRegs(hexRegs({ rip: '0xffffffff81000000' })), 'regs.json', 'rip');
  rejects(t, () => validateRegs(hexRegs({ fs_base: '0x800000000000' })), 'regs.json', 'fs_base');
  rejects(t, () => validateRegs(hexRegs({ rax: '42' })), 'regs.json', 'rax');
  rejects(t, () => validateRegs(hexRegs({ rax: '0x10000000000000000' })), 'regs.json', 'rax');
  const missing = hexRegs();
  delete missing.r12;
  rejects(t, () => validateRegs(missing), 'regs.json', 'r12');
  rejects(t, () => validateRegs(hexRegs({ cr3: '0x0' })), 'regs.json', 'cr3');
});

t.test('debug registers: user addresses, DR7 reserved bits, lengths, alignment', async (t) => {
  const ok = { dr0: '0x10001234', dr1: '0x0', dr2: '0x0', dr3: '0x0', dr6: '0xffff0ff0', dr7: '0x1' };
  t.ok(validateDebugRegs(ok));
  rejects(t, () => validateDebugRegs({ ...ok, dr0: '0xffffffff81000000' }), 'debugregs.json', 'dr0');
  rejects(t, () => validateDebugRegs({ ...ok, dr7: '0x2001' }), 'debugregs.json', 'dr7');
  rejects(t, () => validateDebugRegs({ ...ok, dr7: '0x100000001' }), 'debugregs.json', 'dr7');
  rejects(t, () => validateDebugRegs({ ...ok, dr7: '0x20001' }), 'debugregs.json', 'dr7'); // I/O breakpoint
  rejects(t, () => validateDebugRegs({ ...ok, dr7: '0xc0001' }), 'debugregs.json', 'dr7'); // execute, length 4
  rejects(t, () => validateDebugRegs({ ...ok, dr1: '0x10001001', dr7: '0xd00004' }), 'debugregs.json', 'dr1'); // 4-byte write watch, misaligned
  t.ok(validateDebugRegs({ ...ok, dr1: '0x10001000', dr7: '0xd00004' }), 'aligned 4-byte write watch');
  rejects(t, () => validateDebugRegs({ ...ok, dr6: '0x100000000' }), 'debugregs.json', 'dr6');
});

t.test('xstate: size, mxcsr, header, features beyond XCR0', async (t) => {
  t.doesNotThrow(() => validateXstate(syntheticXstate()));
  rejects(t, () => validateXstate(Buffer.alloc(100)), 'xstate.bin', '(size)');
  const mx = syntheticXstate();
  mx.writeUInt32LE(0x10000, 24);
  rejects(t, () => validateXstate(mx), 'xstate.bin', 'mxcsr');
  const compacted = syntheticXstate();
  compacted.writeBigUInt64LE(1n << 63n, 520);
  rejects(t, () => validateXstate(compacted), 'xstate.bin', 'xcomp_bv');
  rejects(t, () => validateXstate(syntheticXstate(832, 0x7n, 0xe7n)), 'xstate.bin', 'xstate_bv');
  rejects(t, () => validateXstate(syntheticXstate(832, 0x4n, 0x4n)), 'xstate.bin', 'xcr0');
  const reserved = syntheticXstate();
  reserved.writeBigUInt64LE(1n, 540);
  rejects(t, () => validateXstate(reserved), 'xstate.bin', 'header.reserved');
});

t.test('a valid image round-trips through the tar unchanged', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-img-'));
  const file = path.join(dir, 'image.tar');
  const image = syntheticImage();
  await writeCheckpointImage(image, file);
  const back = await readCheckpointImage(file);
  t.same(back.regs, image.regs);
  t.same(back.debugRegs, image.debugRegs);
  t.ok(back.xstate.equals(image.xstate));
  t.same(back.regions, image.regions);
  for (const [name, data] of image.memory) t.ok(back.memory.get(name)?.equals(data), `${name} intact`);
  t.same(back.process, image.process);
});

async function tarOf(entries: Array<{ name: string; data?: Buffer; type?: 'file' | 'symlink' | 'directory'; linkname?: string }>): Promise<string> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => void chunks.push(c as Buffer));
  const ended = new Promise<void>((r) => pack.on('end', () => r()));
  for (const e of entries) {
    const isFile = (e.type ?? 'file') === 'file';
    const data = e.data ?? Buffer.alloc(0);
    const header = { name: e.name, type: e.type ?? 'file', size: isFile ? data.length : 0, ...(e.linkname ? { linkname: e.linkname } : {}) };
    if (isFile) pack.entry(header, data);
    else pack.entry(header);
  }
  pack.finalize();
  await ended;
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-hostile-'));
  const file = path.join(dir, 'image.tar');
  await writeFile(file, Buffer.concat(chunks));
  return file;
}

const validEntries = (): Array<{ name: string; data: Buffer }> => [...imageEntries(syntheticImage())].map(([name, data]) => ({ name, data }));

async function rejectsFile(t: Test, file: string, entry: RegExp | string, field: RegExp | string): Promise<void> {
  const before = await readFile(file);
  const error = await readCheckpointImage(file).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(error instanceof ImageRejectedError, `rejected: ${(error as Error | undefined)?.message}`);
  t.match((error as ImageRejectedError).entry, entry);
  t.match((error as ImageRejectedError).field, field);
  t.ok((await readFile(file)).equals(before), 'the image file is not modified');
}

t.test('hostile tars: traversal, links, duplicates, unlisted and tampered entries', async (t) => {
  await rejectsFile(t, await tarOf([{ name: '../etc/passwd', data: Buffer.from('x') }, ...validEntries()]), '../etc/passwd', 'name');
  await rejectsFile(t, await tarOf([{ name: '/abs.json', data: Buffer.from('x') }]), '/abs.json', 'name');
  await rejectsFile(t, await tarOf([{ name: 'regs.json', type: 'symlink', linkname: '/etc/shadow' }]), 'regs.json', 'type');
  await rejectsFile(t, await tarOf([{ name: 'memory', type: 'directory' }]), 'memory', 'type');
  const entries = validEntries();
  await rejectsFile(t, await tarOf([...entries, entries[0]!]), entries[0]!.name, 'name');
  await rejectsFile(t, await tarOf([...entries, { name: 'extra.json', data: Buffer.from('{}') }]), 'extra.json', '(entry)');
  const tampered = entries.map((e) => (e.name === 'regs.json' ? { ...e, data: Buffer.from(e.data.toString().replace('0x10246', '0x10247')) } : e));
  await rejectsFile(t, await tarOf(tampered), 'regs.json', 'sha256');
  await rejectsFile(t, await tarOf(entries.filter((e) => e.name !== 'xstate.bin')), 'xstate.bin', '(entry)');
  const notTar = path.join(await mkdtemp(path.join(tmpdir(), 'crh-hostile-')), 'x.tar');
  await writeFile(notTar, 'this is not a tar archive at all, just some text that goes on '.repeat(20));
  await rejectsFile(t, notTar, /./, /./);
});

t.test('manifest fields: format, version, process', async (t) => {
  const resealed = (mutate: (m: Record<string, unknown>) => void): Map<string, Buffer> => reseal(imageEntries(syntheticImage()), {}, mutate);
  const tampered = imageEntries(syntheticImage());
  tampered.set('manifest.json', Buffer.from(tampered.get('manifest.json')!.toString().replace('"tcg"', '"kvm"')));
  rejects(t, () => parseImageEntries(tampered), 'manifest.sha256', 'sha256');
  rejects(t, () => parseImageEntries(resealed((m) => (m.version = IMAGE_VERSION + 1))), 'manifest.json', 'version');
  rejects(t, () => parseImageEntries(resealed((m) => (m.version = 1))), 'manifest.json', 'version');
  rejects(t, () => parseImageEntries(resealed((m) => (m.format = 'criu'))), 'manifest.json', 'format');
  rejects(t, () => parseImageEntries(resealed((m) => ((m.process as Record<string, unknown>).binary = '/bin/../etc/x'))), 'manifest.json', 'process.binary');
  rejects(t, () => parseImageEntries(resealed((m) => ((m.process as Record<string, unknown>).argv = ['a\0b']))), 'manifest.json', 'process.argv');
  rejects(t, () => parseImageEntries(resealed((m) => ((m.platform as Record<string, unknown>).nested = { a: 1 }))), 'manifest.json', 'platform.nested');
});

t.test('memory regions: alignment, order, sizes, user space', async (t) => {
  const withRegions = (mutate: (r: Array<Record<string, unknown>>) => void): Map<string, Buffer> => {
    const entries = imageEntries(syntheticImage());
    const regions = JSON.parse(entries.get('memory.json')!.toString()) as Array<Record<string, unknown>>;
    mutate(regions);
    return reseal(entries, { 'memory.json': Buffer.from(JSON.stringify(regions)) });
  };
  rejects(t, () => parseImageEntries(withRegions((r) => (r[0]!.start = '0x10000010'))), 'memory.json', '[0].start');
  rejects(t, () => parseImageEntries(withRegions((r) => r.reverse())), 'memory.json', /\.start$/);
  rejects(t, () => parseImageEntries(withRegions((r) => (r[1]!.end = '0x100a3000'))), 'memory.json', '[2].start');
  rejects(t, () => parseImageEntries(withRegions((r) => (r[1]!.stored = [['0x100a0000', '0x100a1000']]))), 'memory/0001.bin', 'size');
  rejects(t, () => parseImageEntries(withRegions((r) => (r[3]!.end = '0x800000001000'))), 'memory.json', '[3].end');
  rejects(t, () => parseImageEntries(withRegions((r) => (r[0]!.perms = 'rw-q'))), 'memory.json', '[0].perms');
  rejects(t, () => parseImageEntries(withRegions((r) => (r[1]!.entry = r[0]!.entry))), 'memory.json', '[1].entry');
});

t.test('stored pages (format 9): every range checked, holes read as zeros', async (t) => {
  const image = syntheticImage();
  const heap = image.regions[2]!;
  // Only the heap's first and last pages are stored: the entry holds two pages, the rest reads as zeros.
  heap.stored = [
    [heap.start, heap.start + 0x1000n],
    [heap.end - 0x1000n, heap.end],
  ];
  const entries = imageEntries(image);
  t.equal(entries.get(heap.entry!)!.length, 0x2000, 'the entry holds the stored pages only');
  const back = parseImageEntries(entries);
  t.same(back.regions[2]!.stored, heap.stored, 'stored ranges round-trip');
  const full = back.memory.get(heap.entry!)!;
  t.equal(full.length, Number(heap.end - heap.start), 'the region is whole again in memory');
  t.equal(full[0], 3, 'a stored page keeps its bytes');
  t.equal(full[0x1000], 0, 'a page not stored reads as zeros');
  t.equal(full[full.length - 1], 3, 'the last stored page keeps its bytes');

  const withStored = (stored: unknown): Map<string, Buffer> => {
    const e = imageEntries(syntheticImage());
    const regions = JSON.parse(e.get('memory.json')!.toString()) as Array<Record<string, unknown>>;
    regions[2]!.stored = stored;
    return reseal(e, { 'memory.json': Buffer.from(JSON.stringify(regions)) });
  };
  rejects(t, () => parseImageEntries(withStored('all')), 'memory.json', '[2].stored');
  rejects(t, () => parseImageEntries(withStored([['0x100a2000']])), 'memory.json', '[2].stored[0]');
  rejects(t, () => parseImageEntries(withStored([['0x100a2000', 12]])), 'memory.json', '[2].stored[0][1]');
  rejects(t, () => parseImageEntries(withStored([['0x100a2010', '0x100c5000']])), 'memory.json', '[2].stored[0]');
  rejects(t, () => parseImageEntries(withStored([['0x100a3000', '0x100a3000']])), 'memory.json', '[2].stored[0]');
  rejects(t, () => parseImageEntries(withStored([['0x100a1000', '0x100c5000']])), 'memory.json', '[2].stored[0]');
  rejects(t, () => parseImageEntries(withStored([['0x100a2000', '0x100c6000']])), 'memory.json', '[2].stored[0]');
  rejects(
    t,
    () =>
      parseImageEntries(
        withStored([
          ['0x100a3000', '0x100c5000'],
          ['0x100a2000', '0x100a3000'],
        ]),
      ),
    'memory.json',
    '[2].stored[1]',
  );
  rejects(
    t,
    () =>
      parseImageEntries(
        withStored([
          ['0x100a2000', '0x100b0000'],
          ['0x100af000', '0x100c5000'],
        ]),
      ),
    'memory.json',
    '[2].stored[1]',
  );
  // Well-formed but naming fewer bytes than the entry holds: the size check catches it.
  rejects(t, () => parseImageEntries(withStored([['0x100a2000', '0x100a3000']])), 'memory/0002.bin', 'size');
  // A huge region stored as nothing would be allocated whole on restore: bounded.
  const huge = (() => {
    const e = imageEntries(syntheticImage());
    const regions = JSON.parse(e.get('memory.json')!.toString()) as Array<Record<string, unknown>>;
    regions[3]!.start = '0x7f0000000000';
    regions[3]!.stored = [];
    return reseal(e, { 'memory.json': Buffer.from(JSON.stringify(regions)), [String(regions[3]!.entry)]: Buffer.alloc(0) });
  })();
  rejects(t, () => parseImageEntries(huge), 'memory.json', '[3].end');
  // A shared file mapping stores nothing.
  const shared = syntheticImage();
  shared.regions[1] = { ...shared.regions[1]!, perms: 'rw-s', entry: null, stored: [[shared.regions[1]!.start, shared.regions[1]!.end]] };
  shared.memory.delete(memoryEntryName(1));
  const sharedEntries = imageEntries(shared);
  const sharedRegions = JSON.parse(sharedEntries.get('memory.json')!.toString()) as Array<Record<string, unknown>>;
  t.same(sharedRegions[1]!.stored, [], 'the writer stores nothing of a shared file mapping');
  sharedRegions[1]!.stored = [['0x100a0000', '0x100a1000']];
  rejects(t, () => parseImageEntries(reseal(sharedEntries, { 'memory.json': Buffer.from(JSON.stringify(sharedRegions)) })), 'memory.json', '[1].stored');
});
