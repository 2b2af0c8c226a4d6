// expect: the opcodes are defined once, in guests/agent/opcodes.h; harness/agent/ops.ts and the table of docs/agent-protocol.md say the same codes and names.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { OPCODES } from '../harness/agent/ops.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

type Opcodes = ReadonlyMap<string, number>;

/** The X(code, NAME, name) rows of AGENT_OPCODES; NAME and name must agree, since the C function is op_<name>. */
function parseOpcodesHeader(text: string): { opcodes: Opcodes; problems: string[] } {
  const body = /#define AGENT_OPCODES\(X\)((?:.*\\\n)*.*)/.exec(text)?.[1] ?? '';
  const opcodes = new Map<string, number>();
  const problems: string[] = [];
  for (const m of body.matchAll(/X\((0x[0-9a-f]+),\s*([A-Z0-9_]+),\s*([a-z0-9_]+)\)/g)) {
    const [, code, name, fn] = m as unknown as [string, string, string, string];
    if (fn !== name.toLowerCase()) problems.push(`${name}: its function is op_${fn}, expected op_${name.toLowerCase()}`);
    if (opcodes.has(name)) problems.push(`${name} is listed twice`);
    opcodes.set(name, Number(code));
  }
  return { opcodes, problems };
}

/** The `| 0xNN | NAME | ...` rows of the "## Operations" table. */
function parseDocsTable(text: string): Opcodes {
  const section = text.split(/^## /m).find((s) => s.startsWith('Operations\n')) ?? '';
  return new Map([...section.matchAll(/^\| (0x[0-9a-f]{2}) \| ([A-Z0-9_]+) \|/gm)].map((m) => [m[2]!, Number(m[1])]));
}

/** Every way `other` differs from the source list: a name missing, extra, or with another code. */
function disagreements(source: Opcodes, other: Opcodes, where: string): string[] {
  const hex = (code: number | undefined): string => (code === undefined ? 'absent' : `0x${code.toString(16).padStart(2, '0')}`);
  const names = new Set([...source.keys(), ...other.keys()]);
  return [...names].filter((n) => source.get(n) !== other.get(n)).map((n) => `${n}: opcodes.h says ${hex(source.get(n))}, ${where} says ${hex(other.get(n))}`);
}

const header = await readFile(path.join(REPO_ROOT, 'guests/agent/opcodes.h'), 'utf8');
const { opcodes, problems } = parseOpcodesHeader(header);

t.test('opcodes.h is a well-formed list', async (t) => {
  t.ok(opcodes.size >= 30, `${opcodes.size} opcodes read (HELLO 0x01 through PAGEMAP 0x24 at least)`);
  t.same(problems, [], 'every name has its op_ function and appears once');
  const codes = [...opcodes.values()];
  t.equal(new Set(codes).size, codes.length, 'no code is used twice');
  t.ok(
    codes.every((c) => c > 0 && c <= 0xffff),
    'every code fits the u16 op field and is not 0',
  );
});

t.test('harness/agent/ops.ts OPCODES agrees with opcodes.h', async (t) => {
  t.same(disagreements(opcodes, new Map(Object.entries(OPCODES)), 'ops.ts'), []);
});

t.test('the docs/agent-protocol.md table agrees with opcodes.h', async (t) => {
  const docs = parseDocsTable(await readFile(path.join(REPO_ROOT, 'docs/agent-protocol.md'), 'utf8'));
  t.same(disagreements(opcodes, docs, 'docs/agent-protocol.md'), []);
});

t.test('negative control: the comparison sees a changed code, a missing op and an extra one', async (t) => {
  const changed = new Map(opcodes);
  changed.set('PAGEMAP', 0x7f);
  changed.delete('HELLO');
  changed.set('NOT_AN_OP', 0x7e);
  const found = disagreements(opcodes, changed, 'a mutated copy');
  t.equal(found.length, 3, found.join('; '));
  t.match(found.join('\n'), /PAGEMAP: opcodes.h says 0x24, a mutated copy says 0x7f/);
  const table = parseDocsTable('## Operations\n\n| op | name |\n|---|---|\n| 0x01 | HELLO | – |\n\n## Later\n\n| 0x02 | SPAWN | – |\n');
  t.same([...table], [['HELLO', 1]], 'only the Operations table counts');
  t.same(parseOpcodesHeader('#define AGENT_OPCODES(X) \\\n\tX(0x01, HELLO, helo)\n').problems, ['HELLO: its function is op_helo, expected op_hello']);
});
