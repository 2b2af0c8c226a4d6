// expect: the 2015 LKML report: an entry-code change built pt_regs without the callee-saved registers and a C/R
// developer's test VM stopped booting. A restore that writes every GPR passes the register-pattern workload; one that
// leaves rbp, rbx, r12-r15 to the restarting task (regs=partial) is caught by the workload and by the CPU oracle.
import t from 'tap';
import { DEFAULT_POLICY } from '../../harness/restore/policy.ts';
import { runHistoricReport } from '../../harness/scenarios/historic-report.ts';
import { regcheckScenario } from '../../harness/testing/scenarios.ts';

t.test('report-2015-entry-pt-regs', (t) =>
  runHistoricReport(
    t,
    {
      id: 'report-2015-entry-pt-regs',
      date: '2015',
      source: 'LKML',
      subject: 'entry code: pt_regs without the callee-saved registers (rbp, rbx, r12-r15)',
      bug: 'callee-saved registers not saved on entry, so a restart restored garbage into them',
    },
    {
      fixed: DEFAULT_POLICY,
      exhibits: [{ scenario: regcheckScenario, historic: [{ policy: { ...DEFAULT_POLICY, regs: 'partial' }, shows: 'rbp rbx r12-r15 corrupted' }] }],
    },
  ),
);
