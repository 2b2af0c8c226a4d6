/**
 * A case of the mailing-list catalog (cases/reports/): one historic report,
 * its scenario run under the policy that reproduces the report's bug — which
 * must make the scenario fail — and under the fix, which must pass. The
 * report's date, source and subject go into the case's output and the
 * verdict rows. With crh run --engine …criu each scenario's stop is also
 * handed to CRIU (Scenario.criu): a row of engine criu, PASS, a known engine
 * gap or a finding; the historic policies, which describe crh's restore
 * core, are SKIP rows for CRIU saying so.
 */
import type { Test } from 'tap';
import { describePolicy, type RestorePolicy } from '../restore/policy.ts';
import { startGuest, type Guest } from '../testing/guest-fixture.ts';
import { kernelNeeds } from '../testing/kernel-needs.ts';
import { endedAs, nativeReference } from '../testing/native-reference.ts';
import type { Attempt as ScenarioAttempt, Scenario } from '../testing/scenarios.ts';
import { runsEngine } from '../testing/criu-engine.ts';
import { POLICY_NOT_FOR_CRIU } from '../criu/known-gaps.ts';
import type { CriuScenarioAttempt } from '../testing/criu-engine.ts';
import { resumes, shows, type Attempt } from './attempt.ts';
import { recordCriuSkip, settle, skipNotForCriu } from './runner.ts';

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
  const crhOnly = runsEngine('crh') ? {} : { skip: 'engine crh not asked for (--engine criu)' };
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
    const key = (policy: RestorePolicy) => ({
      case: report.id,
      scenario: `${report.date} ${report.subject}: ${scenario.name}`,
      policy: describePolicy(policy),
    });
    await t.test(`${scenario.name}: fixed under ${describePolicy(run.fixed)}`, crhOnly, async (t) => {
      const a = await scenario.attempt(run.fixed, `${slug(scenario.name)}-fixed`);
      settle(t, key(run.fixed), resumes(a.expected), asAttempt(a));
    });
    for (const [i, h] of exhibit.historic.entries()) {
      await t.test(`${scenario.name}: the bug under ${describePolicy(h.policy)} (${h.shows})`, crhOnly, async (t) => {
        const a = await scenario.attempt(h.policy, `${slug(scenario.name)}-historic-${i}`);
        // Any difference from the uninterrupted run, a refusal included, is the historic behaviour the policy reproduces.
        settle(
          t,
          key(h.policy),
          shows(`differs from uninterrupted (${h.shows})`, () => true),
          asAttempt(a),
        );
      });
    }
    if (runsEngine('criu')) await criuRows(t, report, scenario, exhibit);
  }
}

/** The scenario's stop through CRIU, and a SKIP row per historic policy (they describe crh's restore core). */
async function criuRows(t: Test, report: HistoricReport, scenario: Scenario, exhibit: Exhibit): Promise<void> {
  const rowScenario = `${report.date} ${report.subject}: ${scenario.name}`;
  const criu = scenario.criu;
  await t.test(`${scenario.name}: engine criu`, async (t) => {
    if (!criu) {
      t.pass('not handed to CRIU: said as a skip');
      recordCriuSkip(t, { case: report.id, scenario: rowScenario }, 'this scenario is not handed to CRIU yet (no Scenario.criu)');
      return;
    }
    const a = await criu.call(scenario, `${slug(scenario.name)}-criu`);
    settle(t, { case: report.id, scenario: rowScenario, policy: 'criu defaults', engine: 'criu' }, resumes(a.expected), asAttempt(a));
  });
  for (const h of exhibit.historic) {
    await t.test(`${scenario.name}: engine criu, ${describePolicy(h.policy)}: ${POLICY_NOT_FOR_CRIU}`, async (t) => {
      skipNotForCriu(t, { case: report.id, scenario: rowScenario, policy: describePolicy(h.policy) });
    });
  }
}

/** A catalog scenario's attempt (testing/scenarios.ts), by either engine, as the runner's Attempt. */
function asAttempt(a: ScenarioAttempt | CriuScenarioAttempt): Attempt {
  return {
    matched: a.pass,
    observed: a.observed,
    witnesses: {},
    ...(a.registerDiff ? { registerDiff: a.registerDiff } : {}),
    ...(a.conditions ? { conditions: a.conditions } : {}),
    ...('gap' in a && a.gap ? { gap: a.gap } : {}),
  };
}

function slug(text: string): string {
  return text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '')
    .slice(0, 48);
}
