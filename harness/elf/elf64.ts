/**
 * A minimal ELF64 little-endian reader: section headers and the symbol
 * table. Enough to read a kernel module's .modinfo and a guest binary's
 * symbols without depending on binutils being installed.
 */
import { readFile } from 'node:fs/promises';

export interface ElfSection {
  name: string;
  type: number;
  offset: number;
  size: number;
  link: number;
  entsize: number;
}

export interface ElfSymbol {
  name: string;
  value: bigint;
  size: bigint;
  /** STT_* from st_info */
  type: number;
  /** STB_* from st_info */
  bind: number;
  /** st_shndx: 0 undefined, 0xfff1 absolute, else the defining section */
  section: number;
}

const SHT_SYMTAB = 2;
export const STT_NOTYPE = 0;
export const STT_OBJECT = 1;
export const STT_FUNC = 2;
export const STB_GLOBAL = 1;
/** Section indices from SHN_LORESERVE up (absolute, common, ...) name no section. */
export const SHN_LORESERVE = 0xff00;

/** Why `data` does not start with the ELF header this reader takes (64-bit, little-endian), or undefined when it does. */
function headerProblem(data: Buffer): string | undefined {
  if (data.length < 64 || data.readUInt32BE(0) !== 0x7f454c46) return 'bad magic';
  if (data[4] !== 2) return 'not ELFCLASS64';
  if (data[5] !== 1) return 'not little-endian';
  return undefined;
}

/** An address range a PT_LOAD segment occupies in memory. */
export interface LoadSegment {
  start: bigint;
  end: bigint;
}

/**
 * The PT_LOAD ranges of an ELF64 file from its first bytes (the ELF header
 * and program headers; `head` is the file's start, 4 KiB covers ordinary
 * programs), or undefined when `head` does not hold them all.
 */
export function loadSegments(head: Buffer): LoadSegment[] | undefined {
  if (headerProblem(head)) return undefined;
  const phoff = Number(head.readBigUInt64LE(0x20));
  const phentsize = head.readUInt16LE(0x36);
  const phnum = head.readUInt16LE(0x38);
  if (phentsize < 56 || phoff + phnum * phentsize > head.length) return undefined;
  const segments: LoadSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (head.readUInt32LE(at) !== 1 /* PT_LOAD */) continue;
    const start = head.readBigUInt64LE(at + 0x10);
    segments.push({ start, end: start + head.readBigUInt64LE(at + 0x28) });
  }
  return segments;
}

export class ElfFile {
  private constructor(
    readonly path: string,
    private readonly data: Buffer,
    readonly sections: ElfSection[],
  ) {}

  static async open(file: string): Promise<ElfFile> {
    return ElfFile.parse(file, await readFile(file));
  }

  static parse(name: string, data: Buffer): ElfFile {
    const fail = (why: string): never => {
      throw new Error(`${name}: not a usable ELF64 file: ${why}`);
    };
    const problem = headerProblem(data);
    if (problem) fail(problem);
    const shoff = Number(data.readBigUInt64LE(0x28));
    const shentsize = data.readUInt16LE(0x3a);
    const shnum = data.readUInt16LE(0x3c);
    const shstrndx = data.readUInt16LE(0x3e);
    if (shentsize < 64 || shoff + shnum * shentsize > data.length) fail('section headers out of range');
    const raw = Array.from({ length: shnum }, (_, i) => {
      const at = shoff + i * shentsize;
      return {
        nameOffset: data.readUInt32LE(at),
        type: data.readUInt32LE(at + 4),
        offset: Number(data.readBigUInt64LE(at + 0x18)),
        size: Number(data.readBigUInt64LE(at + 0x20)),
        link: data.readUInt32LE(at + 0x28),
        entsize: Number(data.readBigUInt64LE(at + 0x38)),
      };
    });
    const strtab = raw[shstrndx] ?? fail('no section name table');
    const sections = raw.map((s) => ({
      name: cString(data, strtab.offset + s.nameOffset),
      type: s.type,
      offset: s.offset,
      size: s.size,
      link: s.link,
      entsize: s.entsize,
    }));
    for (const s of sections) {
      if (s.type !== 8 /* SHT_NOBITS */ && s.offset + s.size > data.length) fail(`section ${s.name} out of range`);
    }
    return new ElfFile(name, data, sections);
  }

  section(name: string): Buffer | undefined {
    const s = this.sections.find((x) => x.name === name);
    return s ? this.data.subarray(s.offset, s.offset + s.size) : undefined;
  }

  symbols(): ElfSymbol[] {
    const symtab = this.sections.find((s) => s.type === SHT_SYMTAB);
    if (!symtab) return [];
    const strtab = this.sections[symtab.link];
    if (!strtab) return [];
    const out: ElfSymbol[] = [];
    const entsize = symtab.entsize || 24;
    for (let at = symtab.offset; at + entsize <= symtab.offset + symtab.size; at += entsize) {
      const info = this.data[at + 4]!;
      out.push({
        name: cString(this.data, strtab.offset + this.data.readUInt32LE(at)),
        type: info & 0xf,
        bind: info >> 4,
        section: this.data.readUInt16LE(at + 6),
        value: this.data.readBigUInt64LE(at + 8),
        size: this.data.readBigUInt64LE(at + 16),
      });
    }
    return out;
  }

  /** The address of a named function or object; throws naming the file when absent. */
  symbolAddress(name: string): bigint {
    const sym = this.symbols().find((s) => s.name === name && (s.type === STT_FUNC || s.type === STT_OBJECT));
    if (!sym) throw new Error(`${this.path}: no symbol ${name}`);
    return sym.value;
  }
}

function cString(data: Buffer, at: number): string {
  const end = data.indexOf(0, at);
  return data.toString('utf8', at, end < 0 ? data.length : end);
}

/** Parses a kernel module's .modinfo (NUL-separated key=value) into a map of lists. */
export function parseModinfo(section: Buffer): Map<string, string[]> {
  const info = new Map<string, string[]>();
  for (const entry of section.toString('utf8').split('\0')) {
    const eq = entry.indexOf('=');
    if (eq <= 0) continue;
    const key = entry.slice(0, eq);
    info.set(key, [...(info.get(key) ?? []), entry.slice(eq + 1)]);
  }
  return info;
}
