/**
 * JUnit XML, the format CI systems render: one testsuite per case, one
 * testcase per verdict (scenario × policy), a <failure> where the observed
 * result was not the expected one, <skipped> for a case the kernel cannot
 * run (the reason names the missing option), an <error> per infrastructure
 * failure. Rows of the criu engine say so in their name and carry an engine
 * property; a known engine gap is <skipped type="known-engine-gap"> with its
 * reference (what pytest does with an expected failure), not a failure.
 */
import type { InfraFailure } from './infra-failures.ts';
import { describeGap, engineOf, outcome, witnessLines, type Verdict } from './verdicts.ts';

/** The one line a CI page shows for a failure: the comparison, and first what failed in the row's own scope. */
function failureMessage(v: Verdict): string {
  const failed = v.failedAssertions?.length ? `failed: ${v.failedAssertions.join('; ')} — ` : '';
  const refused = (v.restores ?? []).flatMap((r) => r.differences.map((d) => `${d.what} asked ${d.requested}, kernel has ${d.accepted}`));
  return `${failed}expected ${v.expected}, observed ${v.observed}${refused.length > 0 ? ` (kernel read-back: ${refused.join(', ')})` : ''}`;
}

function escapeXml(text: string): string {
  return (
    text
      .replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!)
      // XML 1.0 cannot carry most control characters at all.
      .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
  );
}

export function junitXml(verdicts: readonly Verdict[], infra: readonly InfraFailure[] = []): string {
  const cases = [...new Set([...verdicts.map((v) => v.case), ...infra.map((f) => f.case)])];
  const suites = cases.map((name) => {
    const rows = verdicts.filter((v) => v.case === name);
    const errors = infra.filter((f) => f.case === name);
    const testcases = rows.map((v) => {
      const engine = engineOf(v);
      const title = `${v.scenario} [${engine === 'crh' ? '' : `engine=${engine} `}${v.policy}${v.control ? ', negative control' : ''}]`;
      const conditions = v.conditions
        ? Object.entries(v.conditions)
            .map(([k, c]) => `${k}=${c}`)
            .join(' ')
        : '';
      const properties = `<properties><property name="engine" value="${engine}"/></properties>`;
      const body =
        outcome(v) === 'SKIP'
          ? `<skipped message="${escapeXml(v.skipped ?? '')}"/>`
          : outcome(v) === 'GAP'
            ? `<skipped type="known-engine-gap" message="${escapeXml(describeGap(v.engineGap!))}">${escapeXml([`expected: ${v.expected}`, `observed: ${v.observed}`, ...witnessLines(v)].join('\n'))}</skipped>`
            : v.pass
              ? ''
              : `<failure message="${escapeXml(failureMessage(v))}">${escapeXml([`expected: ${v.expected}`, `observed: ${v.observed}`, ...(conditions ? [`platform: ${conditions}`] : []), ...witnessLines(v)].join('\n'))}</failure>`;
      return `    <testcase classname="${escapeXml(name)}" name="${escapeXml(title)}">${properties}${body}</testcase>`;
    });
    const errorCases = errors.map(
      (f, i) =>
        `    <testcase classname="${escapeXml(name)}" name="infrastructure ${i + 1}"><error message="${escapeXml(f.error.split('\n')[0] ?? '')}">${escapeXml(f.error)}</error></testcase>`,
    );
    const failures = rows.filter((v) => outcome(v) === 'FAIL').length;
    const skipped = rows.filter((v) => outcome(v) === 'SKIP' || outcome(v) === 'GAP').length;
    return [
      `  <testsuite name="${escapeXml(name)}" tests="${rows.length + errors.length}" failures="${failures}" errors="${errors.length}" skipped="${skipped}">`,
      ...testcases,
      ...errorCases,
      '  </testsuite>',
    ].join('\n');
  });
  const total = verdicts.length + infra.length;
  const failures = verdicts.filter((v) => outcome(v) === 'FAIL').length;
  const skipped = verdicts.filter((v) => outcome(v) === 'SKIP' || outcome(v) === 'GAP').length;
  return `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="cr-harness" tests="${total}" failures="${failures}" errors="${infra.length}" skipped="${skipped}">\n${suites.join('\n')}\n</testsuites>\n`;
}
