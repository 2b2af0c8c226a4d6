import t from 'tap';
import { differs, resumes, shows, verdictOf, type Attempt } from '../harness/scenarios/attempt.ts';
import { outcome } from '../harness/report/verdicts.ts';

const key = { case: 'c', scenario: 's', policy: 'p' };
const gap = { what: 'debug registers', reference: 'CRIU' };
const matched: Attempt = { matched: true, observed: '5 hits', witnesses: { hits: 5 } };
const differed: Attempt = { matched: false, observed: '6 hits', witnesses: { hits: 6 } };
const refused: Attempt = { matched: false, observed: 'restore refused: RF', witnesses: { notRestored: 'restore refused: RF' } };

t.test('resumes: PASS only when matched; a gap alone is GAP; anything else FAIL', async (t) => {
  t.equal(outcome(verdictOf(key, resumes('5 hits'), matched).verdict), 'PASS');
  t.equal(outcome(verdictOf(key, resumes('5 hits'), differed).verdict), 'FAIL');
  t.equal(outcome(verdictOf(key, resumes('5 hits'), { ...differed, gap }).verdict), 'GAP');
  t.equal(outcome(verdictOf(key, resumes('5 hits'), { ...matched, gap }).verdict), 'PASS', 'a gap does not turn a match into GAP');
  t.equal(verdictOf(key, resumes('5 hits'), matched).verdict.control, false);
  t.match(verdictOf(key, resumes('5 hits'), differed).message, /resumed as the uninterrupted run: 6 hits \(expected 5 hits\)/);
});

t.test('differs: a control passes on a restored run that differs, never on a match or a restore that did not run', async (t) => {
  const v = verdictOf(key, differs('5 hits'), differed).verdict;
  t.same([outcome(v), v.control, v.expected], ['PASS', true, 'differs from: 5 hits']);
  t.equal(outcome(verdictOf(key, differs('5 hits'), matched).verdict), 'FAIL', 'the control that resumed exactly failed to show its bug');
  t.equal(outcome(verdictOf(key, differs('5 hits'), refused).verdict), 'FAIL', 'a refusal is not the bug the control shows');
  t.equal(outcome(verdictOf(key, differs('5 hits'), { ...differed, gap }).verdict), 'PASS', 'a control is never GAP');
});

t.test('shows: the named bug, and not the uninterrupted run', async (t) => {
  const sixHits = shows('6 hits (spurious re-trigger)', (a) => a.witnesses.hits === 6);
  t.equal(outcome(verdictOf(key, sixHits, differed).verdict), 'PASS');
  t.equal(outcome(verdictOf(key, sixHits, { ...differed, witnesses: { hits: 7 } }).verdict), 'FAIL', 'another difference is not the bug');
  t.equal(outcome(verdictOf(key, sixHits, { ...matched, witnesses: { hits: 6 } }).verdict), 'FAIL', 'never PASS on a matched run');
  const refusal = shows('refused, naming RF', (a) => /RF/.test(a.witnesses.notRestored ?? ''));
  t.equal(outcome(verdictOf(key, refusal, refused).verdict), 'PASS', 'a row whose bug is the refusal');
  t.equal(verdictOf(key, sixHits, differed).verdict.expected, '6 hits (spurious re-trigger)');
});
