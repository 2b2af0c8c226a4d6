/**
 * Infrastructure failures (QEMU, image build, a kernel that cannot boot) are
 * recorded beside the verdicts so `crh run` can exit 69 for them instead of
 * reporting a test failure.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { BootError, CrhError, isInfraError } from '../errors.ts';
import { verdictsFile } from './verdicts.ts';

export interface InfraFailure {
  case: string;
  error: string;
}

function infraFile(): string {
  return path.join(path.dirname(verdictsFile()), 'infra-failures.jsonl');
}

/** True for errors that say nothing about the code under test. */
export function isInfraFailure(error: unknown): boolean {
  return isInfraError(error) || error instanceof BootError;
}

export function recordInfraFailure(caseName: string, error: unknown): void {
  const file = infraFile();
  mkdirSync(path.dirname(file), { recursive: true });
  const text = error instanceof CrhError ? error.describe() : String(error);
  appendFileSync(file, `${JSON.stringify({ case: caseName, error: text })}\n`);
}

export function readInfraFailures(): InfraFailure[] {
  const file = infraFile();
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as InfraFailure);
}
