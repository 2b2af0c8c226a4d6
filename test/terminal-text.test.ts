// expect: text from a bundle or a program reaches the terminal with every control character (C0 but tab, DEL, C1, bidi overrides) escaped, backslashes doubled so the escaping is unambiguous, newlines kept only when asked, and printable text (UTF-8 included) unchanged.
import t from 'tap';
import { escapeControl } from '../harness/util/terminal-text.ts';

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
