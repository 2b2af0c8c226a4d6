/**
 * The verdict row of a scenario whose expectation rests on a platform probe
 * the kernel under test left unmeasured (probe-runner.ts): FAIL, with what
 * the probe saw as the observation — the kernel broke what the scenario
 * needs, which is a finding about that kernel, not a skip.
 */
import type { Measured } from '../platform/probe-runner.ts';
import type { Verdict } from '../report/verdicts.ts';

export function probeUnmeasuredVerdict(row: Omit<Verdict, 'pass' | 'observed'>, probe: string, measured: Measured<unknown>): Verdict {
  return {
    ...row,
    pass: false,
    observed: `not run: its expectation rests on ${probe}, which this kernel left unmeasured — ${measured.how}`,
    conditions: { ...row.conditions, [probe]: String(measured.value) },
  };
}
