// expect: symbols resolve by "module:name" from System.map and guest ELF files, and addresses symbolize back, without binutils.
import t from 'tap';
import { parseSystemMap, SymbolError, SymbolTable } from '../harness/symbols/symbols.ts';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildImage } from '../harness/image/build.ts';
import { launchMachine } from '../harness/machine/fast-start.ts';
import { kernelSymbolFile } from '../harness/symbols/kernel-symbols.ts';

t.test('System.map lines', async (t) => {
  const syms = parseSystemMap(
    'ffffffff81000000 T _stext\nffffffff81001000 t helper\n0000000000000000 A absolute\n0000000000001000 D per_cpu_offset_not_address\nffffffff82000000 D some_data\n',
  );
  t.same(
    syms.map((s) => s.name),
    ['_stext', 'helper', 'some_data'],
  );
});

t.test('the real kernel (symbols from the booted guest) and guest programs', async (t) => {
  const image = await buildImage();
  const machine = await launchMachine({ image, artifactsDir: await mkdtemp(path.join(tmpdir(), 'crh-sym-')) });
  t.teardown(() => machine.shutdown());
  const source = await kernelSymbolFile(image, machine.ssh);
  t.comment(`kernel symbols from ${source.origin}`);
  const table = new SymbolTable();
  await table.addSystemMap(source.file);
  await table.addProgram('hwbreak', image.binaries.hwbreak!);
  const pf = table.resolve('kernel:exc_page_fault');
  t.ok(pf >= 0xffffffff80000000n, `kernel:exc_page_fault = 0x${pf.toString(16)}`);
  t.equal(table.symbolize(pf), 'kernel:exc_page_fault');
  t.equal(table.symbolize(pf + 4n), 'kernel:exc_page_fault+0x4');
  const target = table.resolve('hwbreak:target');
  t.ok(target >= 0x10000000n && target < 0x11000000n, "hwbreak:target inside hwbreak's own text segment");
  t.equal(table.symbolize(target + 1n), 'hwbreak:target_body', 'global labels count as symbols');
  const impl = table.resolve('hwbreak:target_impl');
  t.equal(table.symbolize(impl + 4n), 'hwbreak:target_impl+0x4');
  t.equal(table.symbolize(0x5n), '0x5');
  t.throws(() => table.resolve('hwbreak:no_such_function'), SymbolError);
  t.throws(() => table.resolve('nosuch:main'), /known modules: kernel, hwbreak/);
});
