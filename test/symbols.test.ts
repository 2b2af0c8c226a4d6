// expect: symbols resolve by "module:name" from System.map and guest ELF files, and addresses symbolize back, without binutils.
import t from 'tap';
import { parseSystemMap, SymbolError, SymbolTable } from '../harness/symbols/symbols.ts';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
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

t.test('modules are parsed when first asked about: one for resolve, those that may hold the address for symbolize; a file gone by then is named', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-sym-lazy-'));
  const map = path.join(dir, 'System.map');
  await writeFile(map, 'ffffffff81000000 T _stext\nffffffff81000100 T exc_page_fault\n');
  const program = path.join(dir, 'program');
  await execa('gcc', ['-static', '-O2', '-o', program, path.join(REPO_ROOT, 'examples', 'repro', 'callee-sweep.c')]);
  const table = new SymbolTable();
  await table.addSystemMap(map);
  await table.addProgram('callee', program);
  await table.addProgram('gone', path.join(dir, 'gone'));
  t.ok(table.resolve('callee:sweep_callee') > 0n, "the program's symbols, without the missing file's");
  t.equal(table.resolve('kernel:exc_page_fault'), 0xffffffff81000100n, 'the System.map read at add, parsed now');
  t.throws(() => table.resolve('nosuch:main'), /no symbol nosuch:main \(known modules: callee, kernel, gone\)/, 'pending modules are known');
  t.throws(() => table.resolve('gone:main'), /the symbols of gone \(.*gone\) cannot be read: ENOENT/);
  t.throws(() => table.symbolize(0x401000n), /the symbols of gone/, 'a user address asks every program that cannot say where it loads');
  t.equal(table.symbolize(0xffffffff81000104n), 'kernel:exc_page_fault+0x4', "a kernel address needs the kernel's symbols alone");

  // A program whose symbols cannot be parsed (cut after its program headers) is parsed only for an address it loads at.
  const cut = path.join(dir, 'cut');
  await writeFile(cut, (await readFile(program)).subarray(0, 4096));
  const partial = new SymbolTable();
  await partial.addProgram('callee', program);
  await partial.addProgram('cut', cut);
  const callee = partial.resolve('callee:sweep_callee');
  t.equal(partial.symbolize(0x5n), '0x5', 'an address no program loads at parses none of them');
  t.throws(
    () => partial.symbolize(callee),
    /the symbols of cut \(.*cut\) cannot be read: .*section headers out of range/,
    'one that loads there is parsed, and says why it cannot be',
  );
  await rm(dir, { recursive: true });
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
