/**
 * KTAP (the kernel's test output format, Documentation/dev-tools/ktap.rst)
 * from the verdict rows: one top-level test per case file, one subtest per
 * scenario × policy row, SKIP as the KTAP directive, the kernel's identity
 * and a failing row's cause as diagnostic lines, so a kernel CI system that
 * reads KUnit/kselftest output reads ours.
 */
import { describeGap, engineOf, formatConditions, outcome, witnessLines, type Verdict } from './verdicts.ts';

/** A KTAP description may not hold '#' (it starts a directive) nor a line break. */
function description(text: string): string {
  return text
    .replace(/[\r\n]+/g, ' ')
    .replaceAll('#', 'no.')
    .trim();
}

function diagnostics(text: string, indent: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.trim().length > 0)
    .map((l) => `${indent}# ${l}`);
}

/**
 * The whole run as KTAP version 1. `identity` (the kernel's release, image
 * hash, config hash, origin…) is printed first as diagnostic lines.
 */
export function ktap(verdicts: readonly Verdict[], identity: Readonly<Record<string, string>> = {}): string {
  const cases = [...new Set(verdicts.map((v) => v.case))];
  const out = ['KTAP version 1', ...Object.entries(identity).map(([k, v]) => `# ${k}: ${v}`), `1..${cases.length}`];
  cases.forEach((name, i) => {
    const rows = verdicts.filter((v) => v.case === name);
    out.push('    KTAP version 1', `    # Subtest: ${description(name)}`, `    1..${rows.length}`);
    rows.forEach((v, j) => {
      const o = outcome(v);
      const engine = engineOf(v);
      const what = description(`${v.scenario} under ${engine === 'crh' ? '' : `engine=${engine} `}${v.policy}${v.control ? ' (negative control)' : ''}`);
      if (o === 'FAIL') {
        out.push(...diagnostics(`expected: ${v.expected}\nobserved: ${v.observed}`, '    '));
        if (v.conditions) out.push(...diagnostics(`depends on: ${formatConditions(v.conditions)}`, '    '));
        const witnesses = witnessLines({ ...v, engineGap: undefined });
        if (witnesses.length > 0) out.push(...diagnostics(witnesses.join('\n'), '    '));
      }
      // A known engine gap is kselftest's expected failure: "ok N desc # XFAIL" (ktap_test_xfail in tools/testing/selftests/kselftest/ktap_helpers.sh).
      if (o === 'GAP') out.push(`    ok ${j + 1} ${what} # XFAIL ${description(describeGap(v.engineGap!))}`);
      else out.push(o === 'SKIP' ? `    ok ${j + 1} ${what} # SKIP ${description(v.skipped ?? '')}` : `    ${o === 'PASS' ? 'ok' : 'not ok'} ${j + 1} ${what}`);
    });
    const outcomes = rows.map(outcome);
    const caseLine = outcomes.includes('FAIL') ? 'not ok' : 'ok';
    const allSkipped = outcomes.every((o) => o === 'SKIP');
    out.push(`${caseLine} ${i + 1} ${description(name)}${allSkipped ? ' # SKIP every row skipped' : ''}`);
  });
  return `${out.join('\n')}\n`;
}
