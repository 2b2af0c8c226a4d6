import { execa } from 'execa';
import { InfraError } from '../errors.ts';

/**
 * The shared libraries a dynamically linked host program loads, as absolute
 * paths (the dynamic loader included), read from ldd. Empty for static
 * programs.
 */
export async function sharedLibraryClosure(program: string): Promise<string[]> {
  const result = await execa('ldd', [program], { reject: false });
  if (/not a dynamic executable|statically linked/.test(`${result.stdout}${result.stderr}`)) return [];
  if (result.exitCode !== 0) throw new InfraError(`ldd ${program} failed`, { output: result.stderr });
  const libs: string[] = [];
  for (const line of result.stdout.split('\n')) {
    if (/=>\s+not found/.test(line)) throw new InfraError(`${program} needs a library that is not installed`, { ldd: result.stdout });
    const m = line.match(/(?:=>\s+)?(\/\S+)\s+\(0x/);
    if (m?.[1]) libs.push(m[1]);
  }
  return libs;
}
