// expect: the 2009 containers-list report "c/r: tolerate X86_EFLAGS_RF on restart": a process checkpointed at a
// hardware-breakpoint stop (RF=1) resumes with exactly one hit per call under the final policy (keep-and-preserve);
// the original check (rf=reject) refuses the image and the first patch (rf=clear) re-triggers the breakpoint.
import t from 'tap';
import { DEFAULT_POLICY } from '../../harness/restore/policy.ts';
import { runHistoricReport } from '../../harness/scenarios/historic-report.ts';
import { hwbreakScenario } from '../../harness/testing/scenarios.ts';

t.test('report-2009-rf-tolerate', (t) =>
  runHistoricReport(
    t,
    {
      id: 'report-2009-rf-tolerate',
      date: '2009',
      source: 'containers list',
      subject: 'c/r: tolerate X86_EFLAGS_RF on restart',
      bug: 'restart refused an image with EFLAGS.RF set; the first fix dropped RF, and a breakpoint or fault fired again',
    },
    {
      fixed: DEFAULT_POLICY,
      exhibits: [
        {
          scenario: hwbreakScenario,
          historic: [
            { policy: { ...DEFAULT_POLICY, rf: 'reject' }, shows: 'the image is refused' },
            { policy: { ...DEFAULT_POLICY, rf: 'clear' }, shows: 'one spurious re-trigger' },
          ],
        },
      ],
    },
  ),
);
