/**
 * A case of the mailing-list catalog (cases/reports/): one historic report,
 * its scenario run under the policy that reproduces the report's bug — which
 * must make the scenario fail — and under the fix, which must pass. The
 * report's date, source and subject go into the case's output and the
 * verdict rows.
 */
import type { Test } from 'tap';
import { recordRow } from './verdict-rows.ts';
import { describePolicy, type RestorePolicy } from '../restore/policy.ts';
import { startGuest, type Guest } from './guest-fixture.ts';
import { kernelNeeds } from './kernel-needs.ts';
import { endedAs, nativeReference } from './native-reference.ts';
import type { Scenario } from './scenarios.ts';

export interface HistoricReport {
  /** the case name, e.g. report-2009-rf-tolerate */
  id: string;
  /** as precise as the record is: "2009", "2010-03" */
  date: string;
  /** where it was reported: "containers list", "LKML", "CRIU wiki" */
  source: string;
  subject: string;
  /** what went wrong, in one sentence */
  bug: string;
  /** kernel options the scenarios need beyond what every case needs (kernel-needs.ts), e.g. ['CONFIG_RSEQ'] */
  needs?: readonly string[];
}

/** A scenario and the historic behaviours it makes visible. */
export interface Exhibit {
  /** prepared on the case's guest */
  scenario: (guest: Guest) => Promise<Scenario>;
  /** one policy per historic behaviour this scenario shows */
  historic: { policy: RestorePolicy; shows: string }[];
}

export interface ReportRun {
  /** the policy that has the fix: the restore core's default, or a stated variant */
  fixed: RestorePolicy;
  exhibits: Exhibit[];
}

export async function runHistoricReport(t: Test, report: HistoricReport, run: ReportRun): Promise<void> {
  t.comment(`${report.date}, ${report.source}: "${report.subject}" — ${report.bug}`);
  const { skip } = await kernelNeeds(t, report.id, report.needs);
  if (skip) return void t.plan(0, skip);
  const guest = await startGuest(t, report.id);
  for (const exhibit of run.exhibits) {
    const scenario = await exhibit.scenario(guest);
    const reference = scenario.reference;
    // The verdicts below rest on a traced run; it must be what the program does with no tracer at all.
    if (reference) {
      await t.test(`${scenario.name}: the traced reference is the native run`, async (t) => {
        const native = await nativeReference(guest, reference.workload);
        t.equal(`${reference.ended}\n${reference.output}`, `${endedAs(native)}\n${native.output}`, 'the traced reference is the native run (no tracer)');
      });
    }
    await t.test(`${scenario.name}: fixed under ${describePolicy(run.fixed)}`, async (t) => {
      const started = Date.now();
      const a = await scenario.attempt(run.fixed, `${slug(scenario.name)}-fixed`);
      t.ok(a.pass, `resumed as the uninterrupted run: ${a.observed} (expected ${a.expected})`);
      recordRow(t, {
        case: report.id, scenario: `${report.date} ${report.subject}: ${scenario.name}`, policy: describePolicy(run.fixed), control: false,
        expected: a.expected, observed: a.observed, pass: a.pass, conditions: a.conditions, registerDiff: a.registerDiff, durationMs: Date.now() - started,
      });
    });
    for (const [i, h] of exhibit.historic.entries()) {
      await t.test(`${scenario.name}: the bug under ${describePolicy(h.policy)} (${h.shows})`, async (t) => {
        const started = Date.now();
        const a = await scenario.attempt(h.policy, `${slug(scenario.name)}-historic-${i}`);
        t.notOk(a.pass, `the historic behaviour is reproduced: ${a.observed} (uninterrupted: ${a.expected})`);
        if (a.registerDiff) t.comment(`register diff:\n${a.registerDiff}`);
        recordRow(t, {
          case: report.id, scenario: `${report.date} ${report.subject}: ${scenario.name}`, policy: describePolicy(h.policy), control: true,
          expected: `differs from uninterrupted (${h.shows})`, observed: a.observed, pass: !a.pass, conditions: a.conditions, registerDiff: a.registerDiff,
          durationMs: Date.now() - started,
        });
      });
    }
  }
}

function slug(text: string): string {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 48);
}
