/** Small statistics for the benchmark scripts. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export function summarize(xs: readonly number[], unit = 'ms'): string {
  const s = [...xs].sort((a, b) => a - b);
  return `median ${median(xs)} ${unit}, min ${s[0]} ${unit}, max ${s.at(-1)} ${unit}`;
}
