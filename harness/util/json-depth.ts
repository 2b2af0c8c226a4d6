/**
 * How deeply a JSON text nests, found by one pass over its characters
 * (strings skipped), before anything recursive touches it. JSON.parse in V8
 * parses a million nested arrays, but everything after it that walks the
 * value — JSON.stringify in an error message, a validator — recurses and
 * dies with RangeError: untrusted JSON is refused by depth first.
 */

/** The nesting depth of `text`, or the first depth past `limit` (the scan stops there). */
export function jsonNestingDepth(text: string, limit = Infinity): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x5b /* [ */ || c === 0x7b /* { */) {
      if (++depth > deepest) {
        deepest = depth;
        if (deepest > limit) return deepest;
      }
    } else if (c === 0x5d /* ] */ || c === 0x7d /* } */) depth--;
  }
  return deepest;
}
