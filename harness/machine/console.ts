/**
 * The guest's serial console: every byte goes to a log file (kept with the
 * case's artifacts), the recent tail stays in memory for error messages, and
 * waits can watch for a pattern line by line.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { truncationNote } from '../util/capped-buffer.ts';

const TAIL_BYTES = 16 * 1024;
/** A console line longer than this is cut into pieces of this size, each marked: a guest printing without newlines cannot grow memory, and a panic after the junk is still seen. */
export const CONSOLE_LINE_MAX_CHARS = 4096;
/** The console log file stops here with a note: a guest that floods its console cannot fill the disk. */
export const CONSOLE_FILE_MAX_BYTES = 64 * 1024 * 1024;
/** The first CONSOLE_LINE_MAX_CHARS of an overlong line, marked as cut. */
function cutLine(line: string): string {
  return `${line.slice(0, CONSOLE_LINE_MAX_CHARS)} [crh: console line cut at ${CONSOLE_LINE_MAX_CHARS} characters]`;
}

/** Lines kept in memory for waits that look back. */
const KEPT_LINES = 5000;

/** Console lines that mean the kernel died: a wait fails on them at once. */
export const KERNEL_DEATH = /Kernel panic - not syncing|end Kernel panic|BUG: unable to handle|general protection fault:.*\[#/;

export class ConsoleLog {
  private tailText = '';
  private partial = '';
  private readonly lineListeners = new Set<(line: string) => void>();
  private readonly file: WriteStream;
  private fileBytes = 0;
  /** bytes the console wrote after the log file reached its limit */
  droppedFromFile = 0;
  readonly lines: string[] = [];
  /** Date.now() when the first console byte arrived; a silent console is how a dead vCPU shows */
  firstByteAt: number | undefined;

  constructor(
    readonly path: string,
    source: Readable,
    private readonly fileMaxBytes = CONSOLE_FILE_MAX_BYTES,
  ) {
    this.file = createWriteStream(path, { flags: 'a' });
    source.on('data', (chunk: Buffer) => this.onData(chunk.toString('utf8')));
  }

  /** The last few KiB of console output. */
  tail(maxLines = 60): string {
    return this.tailText.split('\n').slice(-maxLines).join('\n');
  }

  onLine(listener: (line: string) => void): () => void {
    this.lineListeners.add(listener);
    return () => this.lineListeners.delete(listener);
  }

  /** Flushes and closes the log file. */
  close(): Promise<void> {
    if (this.partial.length > 0) this.emit(this.partial);
    this.partial = '';
    if (this.droppedFromFile > 0) this.file.write(`\n${truncationNote('console log', this.fileMaxBytes, this.droppedFromFile)}\n`);
    return new Promise((resolve) => this.file.end(resolve));
  }

  private onData(text: string): void {
    this.firstByteAt ??= Date.now();
    this.writeFile(text);
    this.tailText = (this.tailText + text).slice(-TAIL_BYTES);
    const parts = (this.partial + text).split(/\r?\n/);
    this.partial = parts.pop() ?? '';
    for (const line of parts) this.emitLong(line);
    for (; this.partial.length > CONSOLE_LINE_MAX_CHARS; this.partial = this.partial.slice(CONSOLE_LINE_MAX_CHARS)) this.emit(cutLine(this.partial));
  }

  private writeFile(text: string): void {
    const bytes = Buffer.byteLength(text);
    const room = this.fileMaxBytes - this.fileBytes;
    if (bytes <= room) {
      this.file.write(text);
      this.fileBytes += bytes;
      return;
    }
    if (room > 0) {
      const kept = Buffer.from(text).subarray(0, room);
      this.file.write(kept);
      this.fileBytes += room;
    }
    this.droppedFromFile += bytes - Math.max(room, 0);
  }

  /** A whole line, in pieces when it is longer than a line may be. */
  private emitLong(line: string): void {
    let rest = line;
    for (; rest.length > CONSOLE_LINE_MAX_CHARS; rest = rest.slice(CONSOLE_LINE_MAX_CHARS)) this.emit(cutLine(rest));
    this.emit(rest);
  }

  private emit(line: string): void {
    this.lines.push(line);
    if (this.lines.length > 2 * KEPT_LINES) this.lines.splice(0, this.lines.length - KEPT_LINES);
    for (const listener of [...this.lineListeners]) listener(line);
  }
}
