/**
 * Infrastructure failures (QEMU, image build, a kernel that cannot boot) are
 * recorded beside the verdicts so `crh run` can exit 69 for them instead of
 * reporting a test failure.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { BootError, CrhError, isInfraError } from '../errors.ts';
import { caseFile, verdictsFile } from './verdicts.ts';

export interface InfraFailure {
  case: string;
  error: string;
  /** the case file that recorded it (see caseFile) */
  file?: string;
}

function infraFile(): string {
  return path.join(path.dirname(verdictsFile()), 'infra-failures.jsonl');
}

/**
 * True for errors that say nothing about the code under test — the one place
 * that decides (crh's exit code 69, a case's infra-failures.jsonl row, a
 * repro that gives no verdict). Infrastructure anywhere in the cause chain
 * counts: a restore step that failed because the agent's request failed
 * because the guest was lost (QEMU died, the guest kernel panicked: the
 * machine's BootError "guest lost") is infrastructure, not a FAIL of the
 * restore core. The guest kernel dying mid-run is counted here too: a
 * restore-core verdict cannot be had from a guest that is gone, whatever
 * killed it; the console tail in the error says what did.
 */
export function isInfraFailure(error: unknown): boolean {
  const seen = new Set<unknown>();
  for (let e = error; e !== undefined && e !== null && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    if (isInfraError(e) || e instanceof BootError) return true;
  }
  return false;
}

export function recordInfraFailure(caseName: string, error: unknown): void {
  const file = infraFile();
  mkdirSync(path.dirname(file), { recursive: true });
  const text = error instanceof CrhError ? error.describe() : String(error);
  const source = caseFile();
  appendFileSync(file, `${JSON.stringify({ case: caseName, error: text, ...(source ? { file: source } : {}) })}\n`);
}

export function readInfraFailures(): InfraFailure[] {
  const file = infraFile();
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as InfraFailure);
}
