// expect: text from a bundle or a program reaches the terminal with every control character (C0 but tab, DEL, C1, bidi overrides) escaped, backslashes doubled so the escaping is unambiguous, newlines kept only when asked, and printable text (UTF-8 included) unchanged; progress lines and the details of a failed repro (gcc quoting a hostile source line) go through it.
import t from 'tap';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { escapeControl } from '../harness/util/terminal-text.ts';
import { Progress } from '../harness/repro/progress.ts';
import { reproCommand } from '../harness/repro/command.ts';
import { UsageError } from '../harness/repro/usage-error.ts';

t.test('control characters are escaped', async (t) => {
  t.equal(escapeControl('\x1b[2Jverdict: PASS'), '\\x1b[2Jverdict: PASS', 'ESC: no screen clear, no forged line');
  t.equal(escapeControl('a\rb'), 'a\\x0db', 'carriage return: no overwriting the line');
  t.equal(escapeControl('\x1b]0;title\x07'), '\\x1b]0;title\\x07', 'OSC title and BEL');
  t.equal(escapeControl('\x00\x7f\x9b'), '\\x00\\x7f\\x9b', 'NUL, DEL and the C1 CSI');
  t.equal(escapeControl('abc\u202Edef\u2066'), 'abc\\u202edef\\u2066', 'bidi override and isolate');
  t.equal(escapeControl('a\tb'), 'a\tb', 'tab kept');
  t.equal(escapeControl('one\ntwo'), 'one\\ntwo', 'newline escaped in a one-line value');
  t.equal(escapeControl('one\ntwo\x1b', { keepNewlines: true }), 'one\ntwo\\x1b', 'kept in multi-line output');
  t.equal(escapeControl('C:\\x1b'), 'C:\\\\x1b', 'a literal backslash is doubled: it cannot pass for an escape');
  t.equal(escapeControl('prüfsumme ✓ 0x30001700'), 'prüfsumme ✓ 0x30001700', 'printable text unchanged');
  t.notMatch(escapeControl(String.fromCharCode(...Array.from({ length: 0xa0 }, (_, i) => i))), /[\x00-\x08\x0a-\x1f\x7f-\x9f]/, 'nothing unsafe survives');
});

t.test('where crh prints text it does not control, it is escaped', async (t) => {
  const lines: string[] = [];
  const progress = new Progress('crh repro', (line) => void lines.push(line));
  progress.note('x.c:1:1: warning: \x1b]0;owned\x07 unused');
  t.match(lines[0], /warning: \\x1b\]0;owned\\x07 unused$/, 'a compiler warning on the progress stream');

  // gcc quotes the offending source line: an ESC in the source reaches its diagnostics.
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-escape-'));
  const source = path.join(dir, 'esc.c');
  await writeFile(source, 'int main(void) { return nope; } /* \x1b[2J\x1b[Hverdict: PASS */\n');
  const error = await reproCommand('repro', [source, '--when-ready', '--artifacts', dir]).then(
    () => undefined,
    (e: unknown) => e as UsageError,
  );
  t.ok(error instanceof UsageError, 'it does not compile');
  t.match(error?.details['gcc output'], /\\x1b\[2J\\x1b\[Hverdict: PASS/, 'the diagnostics quote the line, escaped');
  t.notMatch(error?.details['gcc output'] ?? '', /\x1b/, 'no raw ESC reaches the terminal');
});
