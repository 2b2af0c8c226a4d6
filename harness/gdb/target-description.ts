/**
 * The target description (GDB's target.xml, read with qXfer:features:read):
 * its <reg> elements, across <xi:include>d files, become a register table
 * that says where each register sits in a 'g' reply and what number 'p' and
 * 'P' take. The XML stubs send is small and regular, so a careful scanner
 * (comments, processing instructions, DOCTYPE, CDATA, quoted attributes,
 * entities) stands in for an XML library.
 */
import { GdbError, littleEndian } from './packets.ts';

export interface RegisterInfo {
  name: string;
  bitsize: number;
  /** the number 'p', 'P' and stop replies use */
  regnum: number;
  /** byte offset in a 'g' reply: registers sit there in regnum order, packed */
  offset: number;
  type: string | undefined;
  group: string | undefined;
  /** the <feature name> it was declared in */
  feature: string | undefined;
}

/** Registers by name and number, in regnum order. */
export class RegisterTable {
  private readonly byName = new Map<string, RegisterInfo>();
  private readonly byNumber = new Map<number, RegisterInfo>();
  /** the size of a complete 'g' reply in bytes */
  readonly gBytes: number;

  constructor(readonly registers: readonly RegisterInfo[]) {
    for (const r of registers) {
      this.byName.set(r.name, r);
      this.byNumber.set(r.regnum, r);
    }
    const last = registers.at(-1);
    this.gBytes = last ? last.offset + last.bitsize / 8 : 0;
  }

  /** The register named `name`; GdbError naming the known registers when there is none. */
  get(name: string): RegisterInfo {
    const r = this.byName.get(name);
    if (!r) throw new GdbError(`the target has no register "${name}"`, {}, { registers: [...this.byName.keys()].join(' ') });
    return r;
  }

  find(name: string): RegisterInfo | undefined {
    return this.byName.get(name);
  }

  byRegnum(regnum: number): RegisterInfo | undefined {
    return this.byNumber.get(regnum);
  }

  /**
   * Decodes a 'g' reply. A stub may send fewer registers than it describes
   * (the rest are read with 'p'), and marks unavailable bytes "xx": both
   * kinds are left out of the map.
   */
  decodeG(hex: string): Map<string, bigint> {
    const values = new Map<string, bigint>();
    for (const r of this.registers) {
      const text = hex.slice(r.offset * 2, (r.offset + r.bitsize / 8) * 2);
      if (text.length < r.bitsize / 4 || /x/i.test(text)) continue;
      values.set(r.name, littleEndian(Buffer.from(text, 'hex')));
    }
    return values;
  }
}

export interface TargetDescription {
  /** e.g. "i386:x86-64" */
  architecture: string | undefined;
  /** names of the <feature>s, in order */
  features: string[];
  registers: RegisterTable;
}

/** Most includes a description may nest: QEMU uses one level; a loop is a broken stub. */
const MAX_INCLUDE_DEPTH = 8;

/**
 * Reads the description rooted at `annex`, following <xi:include href>:
 * `fetch` returns the text of one annex (the client reads it with qXfer).
 */
export async function readTargetDescription(fetch: (annex: string) => Promise<string>, annex = 'target.xml'): Promise<TargetDescription> {
  const result = { architecture: undefined as string | undefined, features: [] as string[] };
  const declared: Omit<RegisterInfo, 'offset'>[] = [];
  let nextRegnum = 0;

  const visit = async (file: string, stack: string[]): Promise<void> => {
    if (stack.includes(file)) throw new GdbError(`target description includes itself: ${[...stack, file].join(' → ')}`);
    if (stack.length >= MAX_INCLUDE_DEPTH) throw new GdbError(`target description nests includes deeper than ${MAX_INCLUDE_DEPTH}: ${stack.join(' → ')}`);
    const text = await fetch(file);
    const open: string[] = [];
    let feature: string | undefined;
    let architectureText: string | undefined;
    for (const token of scanXml(text, file)) {
      if (token.kind === 'text') {
        if (architectureText !== undefined) architectureText += token.text;
        continue;
      }
      if (token.kind === 'end') {
        if (open.at(-1) !== token.name) throw new GdbError(`${file}: </${token.name}> closes <${open.at(-1) ?? 'nothing'}>`);
        open.pop();
        if (token.name === 'architecture') {
          result.architecture = architectureText?.trim();
          architectureText = undefined;
        }
        if (token.name === 'feature') feature = undefined;
        continue;
      }
      const { name, attributes } = token;
      if (name === 'xi:include' || name === 'include') {
        const href = attributes.get('href') ?? fail(file, '<xi:include> without href');
        // The annex goes into a qXfer packet, where ':' separates fields.
        if (!/^[A-Za-z0-9_.-]+$/.test(href)) fail(file, `include href "${href}" is not a plain annex name`);
        await visit(href, [...stack, file]);
      } else if (name === 'feature') {
        feature = attributes.get('name');
        if (feature !== undefined) result.features.push(feature);
      } else if (name === 'architecture') {
        architectureText = '';
      } else if (name === 'reg') {
        const regName = attributes.get('name') ?? fail(file, '<reg> without name');
        const bitsize = integer(attributes.get('bitsize') ?? fail(file, `<reg name="${regName}"> without bitsize`), file, `bitsize of ${regName}`);
        if (bitsize <= 0 || bitsize % 8 !== 0) fail(file, `register ${regName} has bitsize ${bitsize}, not a whole number of bytes`);
        const given = attributes.get('regnum');
        const regnum = given === undefined ? nextRegnum : integer(given, file, `regnum of ${regName}`);
        nextRegnum = regnum + 1;
        declared.push({ name: regName, bitsize, regnum, type: attributes.get('type'), group: attributes.get('group'), feature });
      }
      if (!token.selfClosing) open.push(name);
    }
    if (open.length > 0) fail(file, `<${open.at(-1)}> is never closed`);
  };
  await visit(annex, []);

  const sorted = [...declared].sort((a, b) => a.regnum - b.regnum);
  const registers: RegisterInfo[] = [];
  let offset = 0;
  for (const r of sorted) {
    const clash = registers.find((x) => x.regnum === r.regnum || x.name === r.name);
    if (clash) throw new GdbError(`target description declares ${r.name} (regnum ${r.regnum}) over ${clash.name} (regnum ${clash.regnum})`);
    registers.push({ ...r, offset });
    offset += r.bitsize / 8;
  }
  return { ...result, registers: new RegisterTable(registers) };
}

function fail(file: string, why: string): never {
  throw new GdbError(`target description ${file}: ${why}`);
}

function integer(text: string, file: string, what: string): number {
  // XML attributes here are decimal; GDB also accepts 0x-prefixed values.
  const value = /^0x[0-9a-fA-F]+$/.test(text) ? parseInt(text, 16) : /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value)) fail(file, `${what} is "${text}", not an integer`);
  return value;
}

export type XmlToken =
  { kind: 'start'; name: string; attributes: Map<string, string>; selfClosing: boolean } | { kind: 'end'; name: string } | { kind: 'text'; text: string };

/**
 * Tokens of an XML document: start and end tags with decoded attributes, and
 * text with entities decoded. Comments, processing instructions, DOCTYPE and
 * CDATA sections are skipped (CDATA's text is not needed here).
 */
export function* scanXml(text: string, file = '(xml)'): Generator<XmlToken> {
  let at = 0;
  const skipTo = (end: string, what: string): void => {
    const found = text.indexOf(end, at);
    if (found < 0) fail(file, `unterminated ${what}`);
    at = found + end.length;
  };
  while (at < text.length) {
    const lt = text.indexOf('<', at);
    if (lt < 0) {
      yield { kind: 'text', text: decodeEntities(text.slice(at), file) };
      return;
    }
    if (lt > at) yield { kind: 'text', text: decodeEntities(text.slice(at, lt), file) };
    at = lt;
    if (text.startsWith('<!--', at)) skipTo('-->', 'comment');
    else if (text.startsWith('<?', at)) skipTo('?>', 'processing instruction');
    else if (text.startsWith('<![CDATA[', at)) skipTo(']]>', 'CDATA section');
    else if (text.startsWith('<!', at)) {
      // DOCTYPE, possibly with an internal subset in brackets.
      let depth = 0;
      for (at += 2; at < text.length; at++) {
        const c = text[at];
        if (c === '[') depth++;
        else if (c === ']') depth--;
        else if (c === '>' && depth === 0) break;
      }
      if (at >= text.length) fail(file, 'unterminated declaration');
      at++;
    } else if (text.startsWith('</', at)) {
      const match = /^<\/([A-Za-z_][\w:.-]*)\s*>/.exec(text.slice(at, at + 256)) ?? fail(file, `malformed end tag at offset ${at}`);
      yield { kind: 'end', name: match[1]! };
      at += match[0].length;
    } else {
      yield scanStartTag();
    }
  }

  function scanStartTag(): XmlToken {
    const name = /^<([A-Za-z_][\w:.-]*)/.exec(text.slice(at, at + 256))?.[1] ?? fail(file, `malformed tag at offset ${at}`);
    at += 1 + name.length;
    const attributes = new Map<string, string>();
    for (;;) {
      const ws = /^\s*/.exec(text.slice(at, at + 256))![0].length;
      at += ws;
      if (text.startsWith('/>', at)) {
        at += 2;
        return { kind: 'start', name, attributes, selfClosing: true };
      }
      if (text[at] === '>') {
        at += 1;
        return { kind: 'start', name, attributes, selfClosing: false };
      }
      if (ws === 0 && attributes.size > 0) fail(file, `attributes of <${name}> run together at offset ${at}`);
      const attr =
        /^([A-Za-z_][\w:.-]*)\s*=\s*(?:"([^"<]*)"|'([^'<]*)')/.exec(text.slice(at, at + 4096)) ??
        fail(file, `malformed attribute in <${name}> at offset ${at}`);
      if (attributes.has(attr[1]!)) fail(file, `<${name}> repeats attribute ${attr[1]}`);
      attributes.set(attr[1]!, decodeEntities(attr[2] ?? attr[3] ?? '', file));
      at += attr[0].length;
    }
  }
}

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decodeEntities(text: string, file: string): string {
  return text.replace(/&([^;\s]{1,10});/g, (_, entity: string) => {
    const code = /^#x[0-9a-fA-F]{1,6}$/.test(entity) ? parseInt(entity.slice(2), 16) : /^#\d{1,7}$/.test(entity) ? Number(entity.slice(1)) : undefined;
    if (code !== undefined && code <= 0x10ffff) return String.fromCodePoint(code);
    return ENTITIES[entity] ?? fail(file, `unknown entity &${entity};`);
  });
}
