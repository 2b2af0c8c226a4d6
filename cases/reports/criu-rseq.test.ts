// expect: CRIU's rseq support (CRIU wiki; "cr-dump: fixup thread IP when inside rseq cs"): a task checkpointed inside
// an rseq critical section resumes at the abort handler exactly once; a restorer that does not apply the fixup lets the
// section commit as if never interrupted, and one that does not re-register rseq leaves the task unregistered.
import t from 'tap';
import { DEFAULT_POLICY } from '../../harness/restore/policy.ts';
import { runHistoricReport } from '../../harness/scenarios/historic-report.ts';
import { rseqInsideScenario } from '../../harness/testing/scenarios.ts';

t.test('report-criu-rseq', (t) =>
  runHistoricReport(
    t,
    {
      id: 'report-criu-rseq',
      date: '2021-2022',
      source: 'CRIU wiki; CRIU commits (A. Mikhalitsyn)',
      subject: 'rseq: re-register, and fix up the IP of a task inside a critical section',
      bug: 'restored tasks lost their rseq registration, or resumed inside a critical section without the abort',
      needs: ['CONFIG_RSEQ'],
    },
    {
      fixed: DEFAULT_POLICY,
      exhibits: [
        {
          scenario: rseqInsideScenario,
          historic: [
            { policy: { ...DEFAULT_POLICY, rseqFixup: 'off' }, shows: 'no abort: the section commits' },
            { policy: { ...DEFAULT_POLICY, omit: ['rseq'] }, shows: 'no registration after restore' },
          ],
        },
      ],
    },
  ),
);
