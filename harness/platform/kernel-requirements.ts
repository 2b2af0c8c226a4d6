/**
 * Whether a case can run on a kernel: the kernel options it needs against
 * the kernel's config. A missing option is a skip that names it — the
 * kernel cannot do what the case exercises, which says nothing about the
 * restore core. An unknown config is no reason to skip: the case runs, and
 * the reason says the options went unchecked.
 */
import type { KnownKernelConfig } from './guest-kernel-config.ts';
import { optionState } from './kernel-config.ts';

export interface RequirementDecision {
  run: boolean;
  /** the needed options the kernel lacks; empty when the case runs */
  missing: string[];
  /** one line for the case's output and its verdict row */
  reason: string;
}

const OPTION_NAME = /^CONFIG_[A-Z0-9_]+$/;

/** Decides from `known` whether a case needing `options` runs; "y", "m" or any value counts as present. */
export function decideRequirements(known: KnownKernelConfig, options: readonly string[]): RequirementDecision {
  // A misspelt name would be "not set" in every config and skip the case forever, silently.
  const invalid = options.filter((o) => !OPTION_NAME.test(o));
  if (invalid.length > 0) throw new TypeError(`not kernel option names: ${invalid.join(', ')} (expected CONFIG_…)`);
  const wanted = [...new Set(options)];
  if (!known.config) return { run: true, missing: [], reason: `kernel config unknown, ${wanted.join(', ')} not checked (${known.source})` };
  const missing = wanted.filter((o) => optionState(known.config, o) === 'n');
  if (missing.length > 0) {
    return { run: false, missing, reason: `the guest kernel lacks ${missing.map((o) => `${o} (not set)`).join(', ')}; config: ${known.source}` };
  }
  return { run: true, missing: [], reason: `${wanted.map((o) => `${o}=${optionState(known.config, o)}`).join(' ')}; config: ${known.source}` };
}
