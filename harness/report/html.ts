/**
 * The HTML report: one self-contained page (inline CSS, no script, no
 * external resource) with, per case, the scenario × policy matrix — each
 * cell PASS or FAIL, marked when it is a negative control, with the platform
 * conditions, and opening (<details>) to expected vs observed, the register
 * diff and an excerpt of the guest console — then every verdict in one flat
 * table, the infrastructure failures and the platform profile. With more
 * than one engine (crh, criu) the matrix is scenario × engine · policy; a
 * known engine gap is its own outcome (GAP), with its reference.
 *
 * Everything shown comes from verdict rows, error texts and console logs:
 * untrusted text, escaped on the way in, and a Content-Security-Policy that
 * forbids scripts besides, so a slip in escaping still runs nothing.
 */
import type { InfraFailure } from './infra-failures.ts';
import { describeGap, engineOf, outcome, witnessLines, type Outcome, type Verdict } from './verdicts.ts';

export interface HtmlReportInput {
  verdicts: readonly Verdict[];
  infra?: readonly InfraFailure[];
  /** platform profile as name/value rows (profileRows, or the facts of a checkpoint image) */
  profile?: ReadonlyArray<readonly [string, string]>;
  /** where the profile rows came from, shown under its heading */
  profileSource?: string;
  /** the tail of each case's guest console, by case name */
  consoleExcerpts?: Readonly<Record<string, string>>;
  /** each case's artifacts folder as a path relative to the report, by case name */
  artifactLinks?: Readonly<Record<string, string>>;
  title?: string;
  /** shown as is; passed in so that rendering stays a pure function */
  generatedAt?: string;
}

/** Solid fills the page uses for the verdict badges; a screenshot check looks for exactly these. */
export const REPORT_COLORS = {
  pass: '#1e7a34',
  fail: '#b3261e',
  passCell: '#e3f4e7',
  failCell: '#fbe3e1',
  gap: '#8a5a00',
  gapCell: '#fdf1d8',
} as const;

const CONTROL_CHARS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g;

/** Text → HTML text or attribute value; control characters become visible \xNN. */
export function escapeHtml(text: string): string {
  return text
    .replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!)
    .replace(CONTROL_CHARS, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** A relative path → an href that can only be a relative URL (each segment percent-encoded, so no scheme survives). */
function relativeHref(relativePath: string): string {
  return relativePath
    .split(/[\\/]/)
    .map((s) => encodeURIComponent(s))
    .join('/');
}

const unique = <T>(items: readonly T[]): T[] => [...new Set(items)];

function formatDuration(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function conditionsText(v: Verdict): string {
  return v.conditions
    ? Object.entries(v.conditions)
        .map(([k, c]) => `${k}=${c}`)
        .join(', ')
    : '';
}

function badge(o: Outcome): string {
  return `<span class="badge ${o.toLowerCase()}">${o}</span>`;
}

/** A cell's outcome: FAIL if any verdict failed, SKIP if all were skipped, GAP if any is a known engine gap, else PASS. */
function cellOutcome(verdicts: readonly Verdict[]): Outcome {
  const outcomes = verdicts.map(outcome);
  return outcomes.includes('FAIL') ? 'FAIL' : outcomes.every((o) => o === 'SKIP') ? 'SKIP' : outcomes.includes('GAP') ? 'GAP' : 'PASS';
}

const isFailure = (v: Verdict): boolean => outcome(v) === 'FAIL';

function pre(text: string): string {
  return `<pre>${escapeHtml(text)}</pre>`;
}

/** What each restore of the row asked that the kernel holds differently, or that it accepted all, or refused. */
function restoresText(v: Verdict): string {
  const restores = v.restores ?? [];
  if (restores.length === 0) return '<span class="muted">no restore recorded</span>';
  return pre(witnessLines({ ...v, failedAssertions: undefined, registerDiff: undefined }).join('\n'));
}

/** The body a cell opens to: one definition list per verdict in that cell. */
function verdictDetail(v: Verdict, input: HtmlReportInput): string {
  const excerpt = input.consoleExcerpts?.[v.case];
  const link = input.artifactLinks?.[v.case];
  const rows: Array<[string, string]> = [
    ['expected', pre(v.expected)],
    ['observed', pre(v.observed)],
    ['engine', escapeHtml(engineOf(v))],
    ['kind', v.control ? 'negative control: expected to show the historic bug' : 'the fix: expected to resume exactly'],
    ...(v.engineGap ? [['known engine gap', escapeHtml(describeGap(v.engineGap))] as [string, string]] : []),
    ['platform conditions', v.conditions ? escapeHtml(conditionsText(v)) : '<span class="muted">none</span>'],
    ...(v.failedAssertions?.length ? [['failed assertions', pre(v.failedAssertions.join('\n'))] as [string, string]] : []),
    ['kernel read-back', restoresText(v)],
    ['register diff', v.registerDiff ? pre(v.registerDiff) : '<span class="muted">none recorded</span>'],
    ...(v.durationMs !== undefined ? [['duration', escapeHtml(formatDuration(v.durationMs))] as [string, string]] : []),
    ['console excerpt', excerpt ? pre(excerpt) : '<span class="muted">no console log</span>'],
    ...(link ? [['artifacts', `<a href="${escapeHtml(relativeHref(link))}">${escapeHtml(link)}</a>`] as [string, string]] : []),
  ];
  return `<dl>${rows.map(([k, d]) => `<dt>${k}</dt><dd>${d}</dd>`).join('')}</dl>`;
}

function matrixCell(cellVerdicts: readonly Verdict[], input: HtmlReportInput): string {
  if (cellVerdicts.length === 0) return '<td class="cell none" data-status="none"><span class="muted">not run</span></td>';
  const cell = cellOutcome(cellVerdicts);
  const status = cell.toLowerCase();
  const control = cellVerdicts.some((v) => v.control);
  const conditions = unique(cellVerdicts.map(conditionsText).filter(Boolean));
  // A failing cell says why without being opened: the failed checks and what the kernel did not accept.
  const causes = unique(
    cellVerdicts
      .filter((v) => outcome(v) === 'FAIL' || outcome(v) === 'GAP')
      .flatMap((v) =>
        witnessLines(v)
          .filter((l) => !l.endsWith('accepted everything as requested'))
          .slice(0, 3),
      ),
  );
  const summary = [
    badge(cell),
    control ? '<span class="tag">control</span>' : '',
    cellVerdicts.length > 1 ? `<span class="muted">×${cellVerdicts.length}</span>` : '',
    conditions.length > 0 ? `<span class="conditions">${escapeHtml(conditions.join('; '))}</span>` : '',
    causes.length > 0 ? `<span class="cause">${escapeHtml(causes.join('; '))}</span>` : '',
  ]
    .filter(Boolean)
    .join(' ');
  return (
    `<td class="cell ${status}" data-status="${status}"${control ? ' data-control=""' : ''}>` +
    `<details><summary>${summary}</summary>${cellVerdicts.map((v) => verdictDetail(v, input)).join('<hr>')}</details></td>`
  );
}

function caseMatrix(caseName: string, verdicts: readonly Verdict[], input: HtmlReportInput, index: number): string {
  const scenarios = unique(verdicts.map((v) => v.scenario));
  // Columns are engine × policy; a case run by crh alone keeps its policy headers as they were.
  const engines = unique(verdicts.map(engineOf));
  const columns = unique(verdicts.map((v) => JSON.stringify([engineOf(v), v.policy]))).map((c) => JSON.parse(c) as [string, string]);
  const headOf = ([engine, policy]: [string, string]): string => (engines.length > 1 || engine !== 'crh' ? `${engine} · ${policy}` : policy);
  const failed = verdicts.filter(isFailure).length;
  const id = `case-${index}`;
  const head = `<tr><th scope="col">scenario</th>${columns.map((c) => `<th scope="col">${escapeHtml(headOf(c))}</th>`).join('')}</tr>`;
  const body = scenarios
    .map(
      (s) =>
        `<tr><th scope="row">${escapeHtml(s)}</th>${columns
          .map(([e, p]) =>
            matrixCell(
              verdicts.filter((v) => v.scenario === s && engineOf(v) === e && v.policy === p),
              input,
            ),
          )
          .join('')}</tr>`,
    )
    .join('\n');
  return (
    `<section class="case" aria-labelledby="${id}"><h3 id="${id}">${escapeHtml(caseName)}</h3>\n` +
    `<table class="matrix" data-case="${escapeHtml(caseName)}"><caption>scenario × ${engines.length > 1 ? 'engine · ' : ''}policy: ${verdicts.length} verdicts, ${failed} not as expected${gapCount(verdicts)}</caption>\n` +
    `<thead>${head}</thead>\n<tbody>${body}</tbody></table></section>`
  );
}

/** ", N known engine gaps" when there are any (they are among the rows as expected: no failure of the harness). */
function gapCount(verdicts: readonly Verdict[]): string {
  const gaps = verdicts.filter((v) => outcome(v) === 'GAP').length;
  return gaps > 0 ? `, ${gaps} known engine gap${gaps === 1 ? '' : 's'}` : '';
}

function flatTable(verdicts: readonly Verdict[]): string {
  const rows = verdicts.map(
    (v) =>
      `<tr data-status="${outcome(v).toLowerCase()}"><td>${escapeHtml(v.case)}</td><td>${escapeHtml(v.scenario)}</td><td>${escapeHtml(engineOf(v))}</td><td>${escapeHtml(v.policy)}</td>` +
      `<td>${v.control ? 'negative control' : 'fix'}</td><td>${escapeHtml(v.expected)}</td><td>${escapeHtml(v.observed)}</td>` +
      `<td>${escapeHtml(conditionsText(v))}</td><td>${v.durationMs !== undefined ? escapeHtml(formatDuration(v.durationMs)) : ''}</td><td>${badge(outcome(v))}${v.skipped !== undefined ? ` ${escapeHtml(v.skipped)}` : ''}${v.engineGap ? ` ${escapeHtml(describeGap(v.engineGap))}` : ''}</td></tr>`,
  );
  return (
    '<table class="flat"><caption>every verdict, in the order recorded</caption>\n' +
    '<thead><tr><th scope="col">case</th><th scope="col">scenario</th><th scope="col">engine</th><th scope="col">policy</th><th scope="col">kind</th>' +
    '<th scope="col">expected</th><th scope="col">observed</th><th scope="col">platform</th><th scope="col">time</th><th scope="col">verdict</th></tr></thead>\n' +
    `<tbody>${rows.join('\n')}</tbody></table>`
  );
}

function infraSection(infra: readonly InfraFailure[], input: HtmlReportInput): string {
  if (infra.length === 0) return '<p>None.</p>';
  return infra
    .map((f) => {
      const excerpt = input.consoleExcerpts?.[f.case];
      return (
        `<article class="infra"><h3>${escapeHtml(f.case)}</h3>${pre(f.error)}` +
        (excerpt ? `<details><summary>console excerpt</summary>${pre(excerpt)}</details>` : '') +
        '</article>'
      );
    })
    .join('\n');
}

const STYLE = `
:root { color-scheme: light; font-family: system-ui, "DejaVu Sans", sans-serif; font-size: 15px; line-height: 1.4; color: #1a1a1a; background: #fff; }
body { margin: 1.5rem; max-width: 110rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05rem; margin: 1.25rem 0 .4rem; }
.outcome { font-weight: bold; }
.outcome.pass { color: ${REPORT_COLORS.pass}; } .outcome.fail { color: ${REPORT_COLORS.fail}; }
table { border-collapse: collapse; margin: .25rem 0 1rem; }
caption { text-align: left; color: #444; padding-bottom: .25rem; }
th, td { border: 1px solid #999; padding: .35rem .5rem; text-align: left; vertical-align: top; }
thead th { background: #eee; }
.matrix th[scope=row] { max-width: 22rem; font-weight: normal; }
.cell { min-width: 9rem; }
.cell.pass { background: ${REPORT_COLORS.passCell}; }
.cell.fail { background: ${REPORT_COLORS.failCell}; }
.cell.none { background: #f4f4f4; }
.cell.gap { background: ${REPORT_COLORS.gapCell}; }
.badge.gap { background: ${REPORT_COLORS.gap}; }
.badge { display: inline-block; padding: .1rem .45rem; border-radius: 3px; color: #fff; font-weight: bold; letter-spacing: .03em; }
.badge.pass { background: ${REPORT_COLORS.pass}; }
.badge.fail { background: ${REPORT_COLORS.fail}; }
.badge.skip { background: #5e5c64; }
.cell.skip { background: #f0f0f0; }
.tag { border: 1px solid #555; border-radius: 3px; padding: 0 .3rem; font-size: .85em; }
.conditions { display: block; font-size: .8em; color: #333; margin-top: .2rem; }
.cause { display: block; font-size: .8em; color: #7a1a14; margin-top: .2rem; }
.muted { color: #555; }
summary { cursor: pointer; }
summary:focus-visible { outline: 3px solid #1a5fb4; outline-offset: 2px; }
details[open] > summary { margin-bottom: .4rem; }
dl { margin: 0; display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .2rem .6rem; }
dt { font-weight: bold; } dd { margin: 0; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font-family: "DejaVu Sans Mono", monospace; font-size: .85em; background: #fafafa; border: 1px solid #ddd; padding: .25rem .4rem; max-height: 24rem; overflow: auto; }
.flat td { max-width: 28rem; overflow-wrap: anywhere; }
.infra pre { border-color: ${REPORT_COLORS.fail}; }
@media print {
  body { margin: 0; font-size: 10pt; }
  pre { max-height: none; overflow: visible; }
  tr, article { break-inside: avoid; }
  thead { display: table-header-group; }
  .badge { border: 1px solid #000; print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
`;

/** The report as one HTML document. Pure: everything it shows is in `input`. */
export function htmlReport(input: HtmlReportInput): string {
  const { verdicts } = input;
  const infra = input.infra ?? [];
  const title = input.title ?? 'cr-harness report';
  const failed = verdicts.filter(isFailure).length;
  const overall =
    infra.length > 0
      ? ['fail', 'INFRASTRUCTURE FAILURE: the run says nothing about the code under test']
      : failed > 0 || verdicts.length === 0
        ? ['fail', verdicts.length === 0 ? 'NO VERDICTS' : 'FAILED']
        : ['pass', 'ALL AS EXPECTED'];
  const cases = unique(verdicts.map((v) => v.case));
  const matrices = cases
    .map((c, i) =>
      caseMatrix(
        c,
        verdicts.filter((v) => v.case === c),
        input,
        i,
      ),
    )
    .join('\n');
  const profile =
    input.profile && input.profile.length > 0
      ? `${input.profileSource ? `<p class="muted">${escapeHtml(input.profileSource)}</p>` : ''}` +
        `<table class="profile"><tbody>${input.profile.map(([k, v]) => `<tr><th scope="row">${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join('')}</tbody></table>`
      : '<p class="muted">No profile recorded in this run.</p>';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<header>
<h1>${escapeHtml(title)}</h1>
<p><span class="outcome ${overall[0]}">${overall[1]}</span> — ${verdicts.length - failed} of ${verdicts.length} verdicts as expected or skipped, ${failed} not${gapCount(verdicts)}; ${infra.length} infrastructure failure${infra.length === 1 ? '' : 's'}.${input.generatedAt ? ` Generated ${escapeHtml(input.generatedAt)}.` : ''}</p>
<p class="muted">A negative control passes when it shows the historic bug it reproduces. Open a cell for expected vs observed, the register diff and the guest console.</p>
</header>
<main>
<section aria-labelledby="matrix-heading"><h2 id="matrix-heading">Scenario × policy</h2>
${matrices || '<p>No verdicts were recorded.</p>'}
</section>
<section aria-labelledby="infra-heading"><h2 id="infra-heading">Infrastructure failures</h2>
${infraSection(infra, input)}
</section>
<section aria-labelledby="flat-heading"><h2 id="flat-heading">Every verdict</h2>
${verdicts.length > 0 ? flatTable(verdicts) : '<p>None.</p>'}
</section>
<section aria-labelledby="profile-heading"><h2 id="profile-heading">Platform profile</h2>
${profile}
</section>
</main>
</body>
</html>
`;
}
