/**
 * Kernel module closure: Debian's package ships the .ko files but no
 * modules.dep (depmod runs at install time), so dependencies are read from
 * each module's own .modinfo "depends=" entry.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { ElfFile, parseModinfo } from '../elf/elf64.ts';
import { InfraError } from '../errors.ts';

export interface ModuleFile {
  name: string;
  file: string;
}

async function indexModules(modulesDir: string): Promise<Map<string, string>> {
  const index = new Map<string, string>();
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.name.endsWith('.ko')) index.set(entry.name.slice(0, -3).replaceAll('-', '_'), full);
    }
  };
  await walk(modulesDir);
  return index;
}

/**
 * Modules built into the kernel (modules.builtin, one path a line): a
 * kernel of another configuration (6.12's cloud flavour has virtio_pci
 * built in, 6.1's as a module) needs no file for them.
 */
async function builtinModules(modulesDir: string): Promise<Set<string>> {
  const file = path.join(modulesDir, 'modules.builtin');
  if (!existsSync(file)) return new Set();
  const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean);
  return new Set(lines.map((l) => path.basename(l).replace(/\.ko$/, '').replaceAll('-', '_')));
}

/** The modules `wanted` needs, in an order in which each loads after its dependencies; built-in ones are left out. */
export async function moduleLoadOrder(modulesDir: string, wanted: readonly string[]): Promise<ModuleFile[]> {
  const index = await indexModules(modulesDir);
  const builtin = await builtinModules(modulesDir);
  const order: ModuleFile[] = [];
  const visiting = new Set<string>();
  const done = new Set<string>();
  const visit = async (name: string, chain: string[]): Promise<void> => {
    if (done.has(name) || (builtin.has(name) && !index.has(name))) return;
    if (visiting.has(name)) throw new InfraError(`module dependency cycle: ${[...chain, name].join(' -> ')}`);
    const file = index.get(name);
    if (!file) throw new InfraError(`kernel module ${name} not found under ${modulesDir}`, { 'needed by': chain.join(' -> ') || '(recipe)' });
    visiting.add(name);
    const modinfo = (await ElfFile.open(file)).section('.modinfo');
    const depends = modinfo ? (parseModinfo(modinfo).get('depends')?.[0] ?? '') : '';
    for (const dep of depends.split(',').filter(Boolean)) await visit(dep.replaceAll('-', '_'), [...chain, name]);
    visiting.delete(name);
    done.add(name);
    order.push({ name, file });
  };
  for (const name of wanted) await visit(name, []);
  return order;
}
