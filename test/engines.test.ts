// expect: --engine takes crh, criu or both (any order, each once) and nothing else; case processes read
// the engines crh run hands them (CRH_ENGINES), crh alone when none was handed.
import t from 'tap';
import { ENGINES_ENV, parseEngines, runEngines } from '../harness/flags/engine-flags.ts';

t.test('parseEngines', async (t) => {
  t.same(parseEngines('crh'), ['crh']);
  t.same(parseEngines('criu'), ['criu']);
  t.same(parseEngines('crh,criu'), ['crh', 'criu']);
  t.same(parseEngines('criu,crh'), ['crh', 'criu'], 'crh first whatever the order given: the side-by-side columns are stable');
  t.same(parseEngines(' crh , criu '), ['crh', 'criu'], 'spaces around a name are not part of it');
  t.throws(() => parseEngines('gdb'), /"gdb" is not an engine \(crh or criu, or both: crh,criu\)/);
  t.throws(() => parseEngines('crh,gdb'), /"gdb" is not an engine/);
  t.throws(() => parseEngines('criu,criu'), /criu is named twice/);
  t.throws(() => parseEngines(''), /an empty engine name/);
  t.throws(() => parseEngines('crh,,criu'), /an empty engine name/);
});

t.test('runEngines: what a case process runs', async (t) => {
  t.same(runEngines({}), ['crh'], 'no CRH_ENGINES: crh alone, as before engines existed');
  t.same(runEngines({ [ENGINES_ENV]: '' }), ['crh']);
  t.same(runEngines({ [ENGINES_ENV]: 'crh,criu' }), ['crh', 'criu']);
  t.same(runEngines({ [ENGINES_ENV]: 'criu' }), ['criu']);
  t.throws(() => runEngines({ [ENGINES_ENV]: 'bogus' }), /not an engine/, 'a bad value handed over is refused, not read as crh');
});
