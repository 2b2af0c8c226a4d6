/**
 * The sweep table as one self-contained HTML page, beside sweep.txt and
 * sweep.json in the bundle: the headline, then one row per checkpointed
 * boundary — address, symbol+offset, instruction, how it was reached, the
 * verdict badge, and for a failure the first difference and the registers
 * the restore got wrong. The conventions of the run report (report/html.ts):
 * inline CSS, no script, a Content-Security-Policy that forbids scripts,
 * every text from the program or the guest escaped on the way in.
 */
import { escapeHtml, REPORT_COLORS } from '../report/html.ts';
import type { SweepReport, SweepRow } from './sweep-report.ts';

const STYLE = `
body { font-family: "DejaVu Sans", sans-serif; margin: 1.5rem; color: #111; }
h1 { font-size: 1.3rem; margin: 0 0 .4rem; }
p { margin: .3rem 0; }
.muted { color: #555; }
.outcome { font-weight: bold; padding: .1rem .4rem; color: #fff; }
.outcome.pass, .badge.pass { background: ${REPORT_COLORS.pass}; }
.outcome.fail, .badge.fail { background: ${REPORT_COLORS.fail}; }
.badge { color: #fff; font-weight: bold; padding: 0 .35rem; font-size: .85em; }
table { border-collapse: collapse; margin-top: .8rem; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .2rem .45rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr.pass td.verdict { background: ${REPORT_COLORS.passCell}; }
tr.fail td { background: ${REPORT_COLORS.failCell}; }
code { font-family: "DejaVu Sans Mono", monospace; }
td.detail { max-width: 40rem; overflow-wrap: anywhere; }
ul.notes { font-size: .9em; }
`;

/** The page for one sweep. Pure: everything it shows is in `report`. */
export function sweepHtml(report: SweepReport): string {
  const e = escapeHtml;
  const verdict = report.pass ? ['pass', 'PASS'] : ['fail', 'FAIL'];
  const timing = report.timing;
  const fresh = timing.freshRuns > 0 ? `; ${timing.freshRuns} fresh runs to a breakpoint ${timing.freshRunsMs} ms` : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>sweep of ${e(report.symbol)}</title>
<style>${STYLE}</style>
</head>
<body>
<h1>Sweep of <code>${e(report.symbol)}</code> (execution ${report.hit})</h1>
<p><span class="outcome ${verdict[0]}">${verdict[1]}</span> ${e(report.headline)}</p>
<p class="muted">${report.walked} boundaries walked, a checkpoint every ${report.every}; policy <code>${e(report.policy)}</code>. The walked process run to its end: ${e(report.stepped.status)}${report.stepped.matchesReference ? ', as the uninterrupted run' : `, differs: ${e(report.stepped.difference ?? '')}`}.</p>
<p class="muted">Per boundary: checkpoint ${timing.checkpointMsPerBoundary} ms, restore and run to the end ${timing.restoreRunMsPerBoundary} ms (means); the walk ${timing.walkMs} ms${fresh}.</p>
<table>
<thead><tr><th scope="col">#</th><th scope="col">address</th><th scope="col">location</th><th scope="col">instruction</th><th scope="col">reached</th><th scope="col">verdict</th><th scope="col">detail</th></tr></thead>
<tbody>
${report.rows.map(row).join('\n')}
</tbody>
</table>
${report.notes.length > 0 ? `<ul class="notes">${report.notes.map((n) => `<li>${e(n)}</li>`).join('')}</ul>` : ''}
</body>
</html>
`;
}

function row(r: SweepRow): string {
  const e = escapeHtml;
  const kind = r.pass ? 'pass' : 'fail';
  const reached = `${r.reached === 'step' ? 'step' : 'breakpoint (fresh run)'}${r.rseqArmed ? ', rseq_cs set' : ''}`;
  const failure = r.pass
    ? ''
    : `${e(r.firstDifference ?? '')}${r.registersDiffering.length ? `<br>registers differing: <code>${e(r.registersDiffering.join(' '))}</code>` : ''}`;
  const felt = r.stopFelt ? `<br><span class="muted">the stop alone: ${e(r.stopFelt)}</span>` : '';
  return `<tr class="${kind}"><td>${r.boundary}</td><td><code>${e(r.address)}</code></td><td><code>${e(r.location)}</code></td><td><code>${e(r.instruction)}</code></td><td>${e(reached)}</td><td class="verdict"><span class="badge ${kind}">${r.pass ? 'match' : 'DIFFERS'}</span></td><td class="detail">${failure}${felt}</td></tr>`;
}
