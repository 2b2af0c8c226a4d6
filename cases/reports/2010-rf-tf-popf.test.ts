// expect: the 2010 LKML report on RF and TF vs the return path (Rozycki/Desnoyers): registers returned through IRET
// (ptrace SETREGS, rt_sigreturn) keep RF, so a process checkpointed at a breakpoint stop hits it once per call; a
// restorer that returns through popf/ret cannot set RF and the breakpoint fires again.
import t from 'tap';
import { DEFAULT_POLICY } from '../../harness/restore/policy.ts';
import { runHistoricReport } from '../../harness/scenarios/historic-report.ts';
import { hwbreakScenario } from '../../harness/testing/scenarios.ts';

t.test('report-2010-rf-tf-popf', (t) =>
  runHistoricReport(
    t,
    {
      id: 'report-2010-rf-tf-popf',
      date: '2010',
      source: 'LKML (Rozycki, Desnoyers)',
      subject: 'RF and TF vs the return path: POPF cannot set RF, IRET can',
      bug: 'a user-space restorer ending in popf; ret loses RF (and steps TF one instruction late)',
    },
    {
      fixed: { ...DEFAULT_POLICY, restorer: 'sigreturn' },
      exhibits: [
        { scenario: hwbreakScenario, historic: [{ policy: { ...DEFAULT_POLICY, restorer: 'popf' }, shows: 'RF lost by POPF: the breakpoint fires again' }] },
      ],
    },
  ),
);
