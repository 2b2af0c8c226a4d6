// expect: --engine takes crh, criu or both (any order, each once) and nothing else; case processes read
// the engines from the run configuration crh run hands them, else CRH_ENGINES, crh alone when neither says.
import t from 'tap';
import { parseEngines } from '../harness/flags/engine-flags.ts';
import { configurationFromUserEnvironment, parseRunConfiguration, serializeRunConfiguration } from '../harness/flags/run-configuration.ts';

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

t.test('the engines a case process runs', async (t) => {
  const engines = (env: NodeJS.ProcessEnv): string[] => configurationFromUserEnvironment(env).engines;
  t.same(engines({}), ['crh'], 'nothing said: crh alone, as before engines existed');
  t.same(engines({ CRH_ENGINES: '' }), ['crh']);
  t.same(engines({ CRH_ENGINES: 'crh,criu' }), ['crh', 'criu']);
  t.same(engines({ CRH_ENGINES: 'criu,crh' }), ['crh', 'criu'], 'crh first');
  t.same(engines({ CRH_ENGINES: 'criu' }), ['criu']);
  t.throws(() => engines({ CRH_ENGINES: 'bogus' }), /CRH_ENGINES: "bogus" is not an engine/, 'a bad value is refused, naming the variable, not read as crh');
  const handed = (list: unknown): unknown =>
    parseRunConfiguration(JSON.stringify({ version: 1, engines: list, artifactsDir: '/a', verdictsFile: '/a/v.jsonl' }), 'run.json').engines;
  t.same(handed(['criu', 'crh']), ['crh', 'criu'], 'handed down by crh run: crh first');
  t.throws(() => handed(['bogus']), /run\.json: engines: "bogus" is not an engine/, 'a bad value handed over is refused, not read as crh');
  t.throws(() => handed([]), /engines: \[\]/, 'an empty list is refused: a run runs at least one engine');
  t.equal(serializeRunConfiguration({ engines: ['crh', 'criu'], artifactsDir: '/a', verdictsFile: '/a/v.jsonl' }).includes('"engines"'), true);
});
