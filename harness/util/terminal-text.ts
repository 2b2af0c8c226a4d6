/**
 * Text from elsewhere (a bundle someone sent, a program's output, a
 * compiler's diagnostics about a hostile source) made safe to print on a
 * terminal: control characters would otherwise move the cursor, rewrite
 * earlier lines (a forged "verdict: PASS"), set the window title or, on some
 * terminals, answer back into the input.
 */

/**
 * C0 controls (tab and, when allowed, newline excepted), DEL, C1 controls,
 * and the Unicode bidirectional overrides and isolates that reorder what a
 * line shows (the "Trojan Source" characters).
 */
const UNSAFE = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]|\\/g;

/**
 * `text` with every unsafe character written as an escape (`\x1b`, `\u202e`)
 * and every backslash doubled, so the escaped text is unambiguous: what is
 * printed as `\x1b` was an ESC, and a `\\x1b` was the four characters.
 * Newlines are kept when `keepNewlines` is set (multi-line output shown as
 * such), else escaped as `\n` (a name, a one-line summary).
 */
export function escapeControl(text: string, options: { keepNewlines?: boolean } = {}): string {
  return text.replace(UNSAFE, (c) => {
    if (c === '\\') return '\\\\';
    if (c === '\n') return options.keepNewlines ? '\n' : '\\n';
    const code = c.codePointAt(0)!;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}
