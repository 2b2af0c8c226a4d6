/**
 * Kernel module closure: Debian's package ships the .ko files but no
 * modules.dep (depmod runs at install time), so dependencies are read from
 * each module's own .modinfo "depends=" entry.
 */
import { readdir } from 'node:fs/promises';
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

/** The modules `wanted` needs, in an order in which each loads after its dependencies. */
export async function moduleLoadOrder(modulesDir: string, wanted: readonly string[]): Promise<ModuleFile[]> {
  const index = await indexModules(modulesDir);
  const order: ModuleFile[] = [];
  const visiting = new Set<string>();
  const done = new Set<string>();
  const visit = async (name: string, chain: string[]): Promise<void> => {
    if (done.has(name)) return;
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
