/**
 * Symbols by name and names by address, across the guest kernel (its
 * System.map, usable directly because guests boot with nokaslr) and the
 * guest programs (their ELF symbol tables; each is linked at its own address,
 * so an address names one program). Names read "kernel:exc_page_fault" or
 * "hwbreak:target".
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { ElfFile, loadSegments, SHN_LORESERVE, STB_GLOBAL, STT_FUNC, STT_NOTYPE, STT_OBJECT, type LoadSegment } from '../elf/elf64.ts';
import { CrhError } from '../errors.ts';

export interface Symbol {
  /** "kernel" or a guest program's name */
  module: string;
  name: string;
  address: bigint;
  /** 0 when unknown (System.map has no sizes) */
  size: bigint;
}

export class SymbolError extends CrhError {
  override readonly name = 'SymbolError';
}

/** The kernel half of the x86-64 address space; below it are per-CPU offsets, not addresses. */
const KERNEL_SPACE_START = 0xffff_8000_0000_0000n;

/** Text and data symbols of a System.map ("ffffffff81000000 T _stext"); per-CPU offsets are left out. */
export function parseSystemMap(text: string): Symbol[] {
  const symbols: Symbol[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]{16}) ([TtWwDdBbRr]) (\S+)$/.exec(line);
    if (!m) continue;
    const address = BigInt(`0x${m[1]}`);
    if (address >= KERNEL_SPACE_START) symbols.push({ module: 'kernel', name: m[3]!, address, size: 0n });
  }
  return symbols;
}

export class SymbolTable {
  private readonly byName = new Map<string, Symbol>();
  /** by address, made when first needed: a table is built from ~40 programs and a System.map, and sorting after each add cost ~0.5 s per guest start */
  private sortedCache: Symbol[] | undefined;
  /**
   * Modules added but not yet parsed, parsed when first asked about: a guest
   * start adds ~40 programs and a System.map of ~100,000 lines (~0.2 s of CPU
   * with its garbage), and most cases ask about a few programs' symbols or
   * none. A program's file is read then, synchronously: a query is.
   */
  private readonly pending = new Map<string, PendingModule>();

  /** Adds the kernel's System.map (read now, parsed when first needed). */
  async addSystemMap(file: string): Promise<this> {
    const text = await readFile(file, 'utf8');
    return this.addLater(
      'kernel',
      () => parseSystemMap(text),
      (address) => address >= KERNEL_SPACE_START,
    );
  }

  /** Adds a guest program's functions, objects and global labels under `module` (read and parsed when first needed). */
  async addProgram(module: string, file: string): Promise<this> {
    return this.addLater(
      module,
      () =>
        programElf(module, file)
          .symbols()
          .filter((s) => (s.type === STT_FUNC || s.type === STT_OBJECT || (s.type === STT_NOTYPE && s.bind === STB_GLOBAL)) && s.name.length > 0)
          // Only symbols defined in a section are addresses (absolute ones are flags like _nl_current_LC_CTYPE_used).
          .filter((s) => s.section !== 0 && s.section < SHN_LORESERVE)
          .map((s) => ({ module, name: s.name, address: s.value, size: s.size })),
      programCovers(file),
    );
  }

  add(symbols: readonly Symbol[]): this {
    for (const s of symbols) {
      const key = `${s.module}:${s.name}`;
      if (!this.byName.has(key)) this.byName.set(key, s);
    }
    this.sortedCache = undefined;
    return this;
  }

  private addLater(module: string, load: () => readonly Symbol[], covers: (address: bigint) => boolean): this {
    const earlier = this.pending.get(module);
    // A module added twice keeps its first symbols first, as add() does.
    this.pending.set(
      module,
      earlier ? { load: () => [...earlier.load(), ...load()], covers: (address) => earlier.covers(address) || covers(address) } : { load, covers },
    );
    return this;
  }

  /** Parses the pending modules `wanted` picks (by name, or by the addresses they may hold). */
  private load(wanted: (name: string, module: PendingModule) => boolean): void {
    for (const [name, module] of [...this.pending]) {
      if (!wanted(name, module)) continue;
      // Still pending when it fails: asked again, it says so again.
      const symbols = module.load();
      this.pending.delete(name);
      this.add(symbols);
    }
  }

  private get sorted(): Symbol[] {
    this.sortedCache ??= [...this.byName.values()].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
    return this.sortedCache;
  }

  /** The address of "module:name"; throws naming what is missing. */
  resolve(qualified: string): bigint {
    const module = qualified.split(':')[0] ?? '';
    this.load((name) => name === module);
    const s = this.byName.get(qualified);
    if (!s) {
      const known = [...new Set([...[...this.byName.values()].map((x) => x.module), ...this.pending.keys()])];
      throw new SymbolError(`no symbol ${qualified}${known.includes(module) ? '' : ` (known modules: ${known.join(', ') || 'none'})`}`);
    }
    return s.address;
  }

  /**
   * "kernel:do_idle+0x1c" for an address, or its hex when nothing covers it.
   * Only the modules that may hold the address are parsed for it: the
   * kernel's for a kernel address, a program's when one of its PT_LOAD
   * segments holds it (the ~35 programs and the System.map together took
   * 100–320 ms of CPU, in 13 of the matrix's 30 case files, for the few
   * addresses a case names).
   */
  symbolize(address: bigint): string {
    this.load((_, module) => module.covers(address));
    let lo = 0;
    const sorted = this.sorted;
    let hi = sorted.length - 1;
    let best: Symbol | undefined;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = sorted[mid]!;
      if (s.address <= address) {
        best = s;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    const hex = `0x${address.toString(16)}`;
    if (!best) return hex;
    const offset = address - best.address;
    // Sized symbols must contain the address; unsized ones (System.map) are trusted within 1 MiB.
    if (best.size > 0n ? offset >= best.size : offset > 0x10_0000n) return hex;
    return `${best.module}:${best.name}${offset > 0n ? `+0x${offset.toString(16)}` : ''}`;
  }
}

/** A module added but not parsed yet: how to parse it, and whether an address may be in it (cheaper than parsing it). */
interface PendingModule {
  load: () => readonly Symbol[];
  covers: (address: bigint) => boolean;
}

/** Whether a program's PT_LOAD segments hold a user address, from its first 4 KiB (read once, when first asked); a file that cannot say is parsed, to say why. */
function programCovers(file: string): (address: bigint) => boolean {
  let segments: LoadSegment[] | undefined | null = null;
  return (address) => {
    if (address >= KERNEL_SPACE_START) return false;
    if (segments === null) {
      try {
        const head = Buffer.alloc(4096);
        const fd = openSync(file, 'r');
        try {
          segments = loadSegments(head.subarray(0, readSync(fd, head, 0, head.length, 0)));
        } finally {
          closeSync(fd);
        }
      } catch {
        segments = undefined;
      }
    }
    return segments === undefined || segments.some((s) => address >= s.start && address < s.end);
  };
}

/** A program's ELF, read when its symbols are first needed; a file gone or broken by then is said with the module's name. */
function programElf(module: string, file: string): ElfFile {
  try {
    return ElfFile.parse(file, readFileSync(file));
  } catch (error) {
    throw new SymbolError(`the symbols of ${module} (${file}) cannot be read: ${error instanceof Error ? error.message : String(error)}`);
  }
}
