/** A point in time that waits share, so a composite wait hands down one budget. */
export class Deadline {
  private constructor(readonly atMs: number) {}

  static in(ms: number): Deadline {
    return new Deadline(Date.now() + ms);
  }

  get remainingMs(): number {
    return Math.max(0, this.atMs - Date.now());
  }

  get expired(): boolean {
    return Date.now() >= this.atMs;
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
