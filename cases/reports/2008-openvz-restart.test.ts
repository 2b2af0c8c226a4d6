// expect: the 2008 OpenVZ restart reports: a restart must bring back the FPU/SSE/AVX state, the TLS (fs_base) and the
// debug registers. With all of them restored, the register-pattern workload and an armed watchpoint resume exactly;
// omitting each piece (the restarts that forgot it) is caught — by the workload's own check, the CPU oracle, or the
// lost watchpoint traps.
import t from 'tap';
import { DEFAULT_POLICY } from '../../harness/restore/policy.ts';
import { runHistoricReport } from '../../harness/scenarios/historic-report.ts';
import { regcheckScenario, watchScenario } from '../../harness/testing/scenarios.ts';

t.test('report-2008-openvz-restart', (t) =>
  runHistoricReport(
    t,
    {
      id: 'report-2008-openvz-restart',
      date: '2008',
      source: 'OpenVZ',
      subject: 'restart: complete register state — debug registers, FPU, TLS',
      bug: 'restart paths that did not restore the debug registers, the FPU state or the TLS',
    },
    {
      fixed: DEFAULT_POLICY,
      exhibits: [
        {
          scenario: regcheckScenario,
          historic: [
            { policy: { ...DEFAULT_POLICY, omit: ['xstate'] }, shows: 'FPU/SSE/AVX state lost' },
            { policy: { ...DEFAULT_POLICY, omit: ['tls'] }, shows: 'fs_base lost' },
          ],
        },
        { scenario: watchScenario, historic: [{ policy: { ...DEFAULT_POLICY, omit: ['debugregs'] }, shows: 'debug registers lost: the watchpoint is gone' }] },
      ],
    },
  ),
);
