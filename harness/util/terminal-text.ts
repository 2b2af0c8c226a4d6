/**
 * Text from an untrusted source (a checkpoint image's binary path, argv,
 * environment) made safe to print on a terminal: C0 and C1 control
 * characters, DEL and the Unicode bidirectional overrides are shown as
 * escapes, so an image cannot move the cursor, retitle the window, clear
 * the screen or reorder what the reader sees.
 */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/gu;

function escape(ch: string): string {
  const code = ch.codePointAt(0)!;
  if (ch === '\n') return '\\n';
  if (ch === '\r') return '\\r';
  if (ch === '\t') return '\\t';
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
}

/** `text` with every unsafe character escaped; `keepNewlines` leaves line breaks (of text we laid out) alone. */
export function escapeForTerminal(text: string, options: { keepNewlines?: boolean } = {}): string {
  return text.replace(UNSAFE, (ch) => (options.keepNewlines && ch === '\n' ? ch : escape(ch)));
}
