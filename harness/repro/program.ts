/**
 * What the harness needs to know about the program before it reaches the
 * guest: that it can run there (static), and the address a
 * `--checkpoint-at SYMBOL` names.
 */
import { readFile } from 'node:fs/promises';
import { ElfFile, SHN_LORESERVE, STT_FUNC, STT_NOTYPE, STT_OBJECT } from '../elf/elf64.ts';
import { hex } from '../x86/registers.ts';
import { UsageError } from './usage-error.ts';

export interface Program {
  /** host path */
  file: string;
  elf: ElfFile;
  data: Buffer;
}

export async function loadProgram(file: string): Promise<Program> {
  let data: Buffer;
  try {
    data = await readFile(file);
  } catch (error) {
    throw new UsageError(`${file}: ${(error as Error).message}`);
  }
  let elf: ElfFile;
  try {
    elf = ElfFile.parse(file, data);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (data.readUInt16LE(0x12) !== 0x3e) throw new UsageError(`${file} is not an x86-64 program`);
  // The guest image carries no shared libraries for user programs.
  if (elf.sections.some((s) => s.name === '.interp'))
    throw new UsageError(`${file} is dynamically linked (it has a .interp section); the guest runs static programs only — link with -static`);
  return { file, elf, data };
}

/** The address `symbol` names in the program: a 0x address as is, else a defined function or label. */
export function resolveCheckpointAddress(program: Program, symbol: string): bigint {
  if (/^0x[0-9a-f]+$/i.test(symbol)) return BigInt(symbol);
  const defined = program.elf
    .symbols()
    .filter((s) => s.name === symbol && s.section !== 0 && s.section < SHN_LORESERVE && [STT_FUNC, STT_NOTYPE, STT_OBJECT].includes(s.type));
  if (defined.length === 0) {
    const hint =
      program.elf.symbols().length === 0
        ? ' (the program has no symbol table: was it stripped?)'
        : ' (a label in inline asm needs .globl, or use a function name)';
    throw new UsageError(`${program.file}: no symbol ${symbol}${hint}`);
  }
  const addresses = [...new Set(defined.map((s) => s.value))];
  if (addresses.length > 1)
    throw new UsageError(`${program.file}: ${symbol} names ${addresses.length} addresses (${addresses.map(hex).join(', ')}); give one as 0x...`);
  return addresses[0]!;
}
