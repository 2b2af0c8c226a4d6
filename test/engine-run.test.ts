// expect: `crh run --grep hwbreak-rf --engine crh,criu` runs the case under both engines (one guest, the image
// variant with CRIU) and prints them side by side — crh's rows PASS, crh's controls SKIP for CRIU saying the policy
// does not apply, CRIU's own restore a known engine gap (the breakpoint it does not restore) with its reference, the
// breakpoint re-armed after CRIU's restore PASS (RF survived) and its RF-cleared control PASS — exits 0 (a gap fails
// nothing), and the JSON and JUnit reports carry the engine of every row. Cost: ~50 s with the CRIU image cached
// (test/repro-criu.test.ts builds the same variant).
import t from 'tap';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { makeTempDir, removeTempDir } from '../harness/util/temp-dir.ts';
import type { Verdict } from '../harness/report/verdicts.ts';

t.test('crh run --engine crh,criu, end to end', async (t) => {
  const dir = await makeTempDir('crh-engine-run-');
  t.teardown(() => removeTempDir(dir));
  const json = path.join(dir, 'run.json');
  const junit = path.join(dir, 'run.xml');
  const r = await execa(
    process.execPath,
    [
      path.join(REPO_ROOT, 'bin', 'crh.js'),
      'run',
      '--grep',
      '^hwbreak-rf',
      '--engine',
      'crh,criu',
      '--jobs',
      '1',
      '--artifacts',
      path.join(dir, 'artifacts'),
      '--json',
      json,
      '--junit',
      junit,
    ],
    { reject: false, cwd: REPO_ROOT },
  );
  if (!t.equal(r.exitCode, 0, 'exit 0: every row as expected, the gap included')) t.comment(`${r.stdout}\n${r.stderr.slice(-3000)}`);
  t.match(r.stdout, /^case\s+scenario\s+policy\s+crh\s+criu$/m, 'the side-by-side table: one column per engine');
  t.match(r.stdout, /^hwbreak-rf\s+.*\s+rf=clear \(control\)\s+PASS\s+SKIP$/m, 'a crh control: PASS under crh, SKIP under CRIU');
  t.match(r.stdout, /^hwbreak-rf\s+.*\s+criu defaults\s+-\s+GAP$/m, "CRIU's own restore: the known gap");
  t.match(r.stdout, /^hwbreak-rf\s+.*\s+criu, breakpoint re-armed\s+-\s+PASS$/m, 'the breakpoint re-armed after CRIU: exact');
  t.match(r.stdout, /^hwbreak-rf\s+.*\s+criu, breakpoint re-armed, RF cleared \(control\)\s+-\s+PASS$/m, 'its control shows the re-trigger');
  t.match(r.stdout, /policy switches that describe the TS core do not apply to CRIU/);
  t.match(r.stdout, /known engine gap: the task's own debug registers .* — observed 2 hits, 0 #DB after restore/, 'the gap with what was observed');
  t.match(r.stdout, /^\[1\] CRIU's x86 core image/m, 'and its reference');
  t.match(r.stdout, /^\d+ passed, 0 failed, 1 known engine gaps, 3 skipped \(engines: crh, criu\)$/m, 'the gap counted apart');

  const report = JSON.parse(await readFile(json, 'utf8')) as { verdicts: Verdict[] };
  const engines = (e: string): Verdict[] => report.verdicts.filter((v) => v.engine === e);
  t.equal(engines('crh').length, 5, 'five crh rows, each naming its engine');
  t.equal(engines('criu').length, 6, 'six criu rows');
  t.match(report.verdicts.find((v) => v.engine === 'criu' && v.policy === 'criu defaults')?.engineGap?.reference, /compel's ptrace_set_breakpoint/);
  t.match(
    report.verdicts.find((v) => v.policy === 'criu defaults')?.observed,
    /restored DR0 0x[0-9a-f]+ → 0x[0-9a-f]+, DR7 0x1 → 0x0/,
    'the debug registers as CRIU left them',
  );
  const xml = await readFile(junit, 'utf8');
  t.match(xml, /\[engine=criu criu defaults\]"><properties><property name="engine" value="criu"\/><\/properties><skipped type="known-engine-gap"/);
});
