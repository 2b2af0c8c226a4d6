/**
 * Collects a byte stream from a source we do not control (a guest command's
 * output) up to a limit, counting what it drops, so a runaway program cannot
 * grow the harness's memory without bound — and a reader of the text is told
 * that it was cut, never handed a silently shortened one.
 */
export class CappedBuffer {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  /** bytes received beyond the limit and not kept */
  dropped = 0;

  constructor(
    readonly limitBytes: number,
    /** what the text is, for the note: "stdout of `cat /proc/kallsyms`" */
    readonly what: string,
  ) {}

  push(chunk: Buffer): void {
    const room = this.limitBytes - this.kept;
    if (room >= chunk.length) {
      this.chunks.push(chunk);
      this.kept += chunk.length;
      return;
    }
    if (room > 0) {
      this.chunks.push(chunk.subarray(0, room));
      this.kept += room;
    }
    this.dropped += chunk.length - Math.max(room, 0);
  }

  get truncated(): boolean {
    return this.dropped > 0;
  }

  /** The bytes kept, as text, with a last line saying what was dropped when anything was. */
  text(): string {
    const text = Buffer.concat(this.chunks).toString('utf8');
    return this.truncated ? `${text}\n${truncationNote(this.what, this.limitBytes, this.dropped)}` : text;
  }
}

/** The note put where text was cut; one wording everywhere, so a reader (or a grep) knows it. */
export function truncationNote(what: string, limitBytes: number, droppedBytes?: number): string {
  return `[crh: ${what} truncated at ${limitBytes} bytes${droppedBytes === undefined ? '' : `; ${droppedBytes} more bytes were not kept`}]`;
}
