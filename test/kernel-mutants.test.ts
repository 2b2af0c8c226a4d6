// expect: the kernel mutant list in images/mutants/mutants.json is valid; a malformed list is refused naming the
// mutant; a mutant replaces exactly its one line and refuses a line found zero or several times; the caught/missed
// decision reads a `crh run --json` report as the score needs (a FAIL row catches, a boot failure is a weaker catch,
// an infrastructure failure decides nothing, exit 0 with every row as expected is a miss).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import {
  MutantApplyError,
  MutantListError,
  applyMutant,
  decide,
  describeDecision,
  parseMutantSet,
  score,
  tapFailures,
  unionGrep,
  type Mutant,
  type RunReport,
} from '../scripts/mutants.ts';

const listed = JSON.parse(readFileSync(path.join(REPO_ROOT, 'images', 'mutants', 'mutants.json'), 'utf8')) as {
  areas: Record<string, string>;
  mutants: Mutant[];
};

const mutant: Mutant = {
  id: 'flag-mask-no-rf',
  area: 'ptrace-regs',
  file: 'arch/x86/kernel/ptrace.c',
  search: '\t  X86_EFLAGS_RF | X86_EFLAGS_AC))',
  replace: '\t  X86_EFLAGS_AC))',
  description: 'FLAG_MASK loses RF',
};
const valid = { source: 'linux-source-6.1', areas: { 'ptrace-regs': '^hwbreak-rf\\.test', rseq: 'rseq' }, mutants: [mutant] };

t.test('the list kept in the repository', async (t) => {
  const set = parseMutantSet(listed);
  t.ok(set.mutants.length >= 14, `at least 14 mutants (${set.mutants.length})`);
  t.ok(new Set(set.mutants.map((m) => m.area)).size >= 8, 'spread over at least 8 areas');
  for (const m of set.mutants) t.not(m.search, m.replace, `${m.id} changes its line`);
});

t.test('a malformed list is refused, naming the mutant', async (t) => {
  const bad = (patch: Partial<Mutant>): unknown => ({ ...valid, mutants: [{ ...mutant, ...patch }] });
  t.throws(() => parseMutantSet([]), MutantListError, 'not an object');
  t.throws(() => parseMutantSet({ ...valid, mutants: [] }), MutantListError, 'no mutant');
  t.throws(() => parseMutantSet({ ...valid, areas: { x: '(' } }), /area x: --grep \( is not a regular expression/, 'a --grep that does not compile');
  t.throws(() => parseMutantSet(bad({ area: 'nowhere' })), /mutant flag-mask-no-rf: area nowhere is not one of ptrace-regs, rseq/, 'an unknown area');
  t.throws(() => parseMutantSet(bad({ description: '' })), /mutant flag-mask-no-rf: "description" must be a non-empty string/, 'a missing field');
  t.throws(() => parseMutantSet(bad({ file: '../etc/passwd' })), /must be a path inside the source tree/, 'a path outside the tree');
  t.throws(() => parseMutantSet(bad({ file: '/etc/passwd' })), /must be a path inside the source tree/, 'an absolute path');
  t.throws(() => parseMutantSet(bad({ replace: 'a\nb' })), /"replace" must be one line/, 'a two-line replacement');
  t.throws(() => parseMutantSet(bad({ replace: `${mutant.search}  ` })), /does not change the line/, 'a replacement that only adds blanks');
  t.throws(() => parseMutantSet(bad({ id: 'Has Spaces' })), /lower-case words/, 'an id that is no name');
  t.throws(() => parseMutantSet({ ...valid, mutants: [mutant, mutant] }), /id used twice/, 'a duplicate id');
  t.same(parseMutantSet(valid).mutants, [mutant], 'the valid list comes back as given');
});

t.test('applying a mutant replaces exactly its line', async (t) => {
  const text = ['#define FLAG_MASK_32 (X86_EFLAGS_CF | \\', '\t  X86_EFLAGS_RF | X86_EFLAGS_AC))', 'int x;', ''].join('\n');
  const out = applyMutant(text, mutant);
  t.equal(out, ['#define FLAG_MASK_32 (X86_EFLAGS_CF | \\', '\t  X86_EFLAGS_AC))', 'int x;', ''].join('\n'), 'one line changed, the rest byte for byte');
  t.throws(() => applyMutant('int x;\n', mutant), MutantApplyError, 'a line not in the file');
  t.throws(() => applyMutant(`${mutant.search}\n${mutant.search}\n`, mutant), /found 2 times \(lines 1, 2\)/, 'a line found twice');
  t.throws(() => applyMutant(`/* ${mutant.search} */\n`, mutant), /not found/, 'a line only contained in another is not the line');
  t.throws(() => applyMutant(out, mutant), /not found/, 'a mutant does not apply twice');
});

t.test('the baseline selection covers every area asked for', async (t) => {
  const set = parseMutantSet({ ...valid, mutants: [mutant, { ...mutant, id: 'other', area: 'rseq' }, { ...mutant, id: 'third' }] });
  const grep = new RegExp(unionGrep(set, set.mutants));
  t.ok(grep.test('hwbreak-rf.test.ts'), 'ptrace-regs cases');
  t.ok(grep.test('reports/criu-rseq.test.ts'), 'rseq cases');
  t.notOk(grep.test('uffd.test.ts'), 'nothing else');
  t.equal(unionGrep(set, [mutant]), '(?:^hwbreak-rf\\.test)', 'one area once');
});

const row = (over: Partial<RunReport['verdicts'][number]> = {}): RunReport['verdicts'][number] => ({
  case: 'hwbreak-rf',
  scenario: 'hw breakpoint, checkpoint at hit 2 (RF=1)',
  policy: 'rf=keep-and-preserve restorer=ptrace',
  expected: 'hits=3',
  observed: 'hits=3',
  pass: true,
  control: false,
  ...over,
});
const report = (verdicts: RunReport['verdicts'], infrastructureFailures: RunReport['infrastructureFailures'] = []): RunReport => ({
  verdicts,
  infrastructureFailures,
});

t.test('caught or missed, from a crh run --json report', async (t) => {
  const failing = row({ pass: false, observed: 'hits=4' });
  const caught = decide({ exitCode: 1, report: report([row(), failing, row({ control: true })]), tapFailures: ['hwbreak-rf'] });
  t.same(
    caught,
    {
      outcome: 'caught',
      by: 'verdict',
      rows: [{ case: failing.case, scenario: failing.scenario, policy: failing.policy, control: false, expected: 'hits=3', observed: 'hits=4' }],
    },
    'a FAIL row catches, and names itself',
  );
  t.match(describeDecision(caught), /^CAUGHT by 1 verdict row: hwbreak-rf \/ hw breakpoint/, 'described with case, scenario, policy');

  t.same(
    decide({ exitCode: 0, report: report([row(), row({ control: true }), row({ skipped: 'lacks CONFIG_RSEQ' })]), tapFailures: [] }),
    { outcome: 'missed', rows: 2 },
    'exit 0, every row as expected: missed (skips not counted)',
  );
  t.same(
    decide({ exitCode: 1, report: report([row()]), tapFailures: ['single-step', 'single-step'] }).outcome,
    'caught',
    'exit 1 on a failed assertion with no FAIL row is a catch',
  );
  t.match(
    decide({ exitCode: 1, report: report([row()]), tapFailures: ['every stop is a single-step trap (DR6.BS)'] }),
    { by: 'assertion', failures: ['every stop is a single-step trap (DR6.BS)'] },
    '… by an assertion, named',
  );

  const boot = decide({
    exitCode: 69,
    report: report([], [{ case: '(image)', error: 'BootError: the guest kernel panicked\n--- console ---\nKernel panic' }]),
    tapFailures: [],
  });
  t.same(
    boot,
    { outcome: 'caught', by: 'boot', error: '(image): BootError: the guest kernel panicked' },
    'a kernel that does not come up: a catch, of the weaker kind',
  );
  t.match(describeDecision(boot), /boot failure only \(weaker\)/, 'and said to be weaker');
  t.match(
    decide({ exitCode: 69, report: report([], [{ case: 'uffd', error: 'LaunchError: qemu-system-x86_64 exited 1' }]), tapFailures: [] }),
    { outcome: 'inconclusive' },
    'QEMU failing says nothing about the kernel',
  );
  t.match(decide({ exitCode: 1, report: report([row()]), tapFailures: [] }), { outcome: 'inconclusive' }, 'exit 1 with nothing failed is not read as a catch');
  t.match(
    decide({ exitCode: 0, report: report([row({ skipped: 'lacks CONFIG_RSEQ' })]), tapFailures: [] }),
    { outcome: 'inconclusive', why: /tested nothing/ },
    'all skipped is no miss',
  );
  t.match(decide({ exitCode: 0, report: undefined, tapFailures: [] }), { outcome: 'inconclusive' }, 'no report, no decision');
  t.match(decide({ exitCode: 2, report: undefined, tapFailures: [] }), { outcome: 'inconclusive', why: 'crh exited 2' }, 'a usage error decides nothing');
  t.same(
    decide({ exitCode: undefined, report: undefined, tapFailures: [], timedOutAfterSeconds: 900 }),
    { outcome: 'caught', by: 'timeout', limitSeconds: 900 },
    'a run that hangs past the limit',
  );
});

t.test('TAP failures and the score', async (t) => {
  t.same(
    tapFailures('ok 1 - a\n    not ok 2 - rf preserved\nnot ok 3 - hwbreak-rf\nnot ok 4 - hwbreak-rf # time=1s\n'),
    ['rf preserved', 'hwbreak-rf'],
    'indented and top-level not-ok lines, each once, without their time',
  );
  const s = score([
    { outcome: 'caught', by: 'verdict', rows: [] },
    { outcome: 'caught', by: 'boot', error: 'x' },
    { outcome: 'missed', rows: 5 },
    { outcome: 'inconclusive', why: 'qemu' },
  ]);
  t.same(s, { caught: 2, byVerdict: 1, missed: 1, inconclusive: 1, decided: 3 }, 'inconclusive runs count neither way');
});
