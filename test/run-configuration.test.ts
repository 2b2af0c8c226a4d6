// expect: a run configuration survives the trip through its file unchanged; a malformed or hostile file is refused
// naming the field (a missing one naming its path); without one, the user's variables make the same value.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import t from 'tap';
import {
  configurationFromUserEnvironment,
  configureRun,
  DEFAULT_ARTIFACTS_DIR,
  loadRunConfiguration,
  parseRunConfiguration,
  readRunConfiguration,
  RUN_CONFIGURATION_ENV,
  RunConfigurationError,
  serializeRunConfiguration,
  writeRunConfiguration,
  type RunConfiguration,
} from '../harness/flags/run-configuration.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';

const FULL: RunConfiguration = {
  kernel: {
    spec: '/src/linux/arch/x86/boot/bzImage',
    label: 'patched',
    systemMap: '/src/linux/System.map',
    config: '/src/linux/.config',
    modulesDir: '/src/mods/lib/modules/6.1.0',
  },
  engines: ['crh', 'criu'],
  accel: 'tcg',
  artifactsDir: '/var/tmp/run/artifacts',
  verdictsFile: '/var/tmp/run/artifacts/verdicts.jsonl',
};
const MINIMAL: RunConfiguration = { engines: ['crh'], artifactsDir: '/a', verdictsFile: '/a/verdicts.jsonl' };

/** The configuration FULL with `change` applied to its JSON object, as text. */
function edited(change: (o: Record<string, unknown>) => void): string {
  const o = JSON.parse(serializeRunConfiguration(FULL)) as Record<string, unknown>;
  change(o);
  return JSON.stringify(o);
}

t.test('round trip: what crh run writes is what a case process reads, field for field', async (t) => {
  t.same(parseRunConfiguration(serializeRunConfiguration(FULL), 'x'), FULL);
  t.same(parseRunConfiguration(serializeRunConfiguration(MINIMAL), 'x'), MINIMAL, 'no kernel (the default), no accelerator override');
  t.same(parseRunConfiguration(serializeRunConfiguration({ ...MINIMAL, kernel: { spec: 'debian:linux-image-cloud-amd64@trixie' } }), 'x').kernel, {
    spec: 'debian:linux-image-cloud-amd64@trixie',
  });
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-run-config-'));
  const file = await writeRunConfiguration(FULL, path.join(dir, 'nested', 'run-configuration.json'));
  t.same(readRunConfiguration(file), FULL, 'through the file');
  t.same(
    loadRunConfiguration({ [RUN_CONFIGURATION_ENV]: file, CRH_KERNEL: 'debian:linux-image-amd64', CRH_ACCEL: 'kvm', CRH_ARTIFACTS_DIR: '/elsewhere' }),
    FULL,
    'handed down, it is the whole truth: the user variables are not read beside it',
  );
});

t.test('a malformed or hostile file is refused, naming the field', async (t) => {
  const refused = (text: string, field: RegExp | string, message?: RegExp): void => {
    let caught: unknown;
    try {
      parseRunConfiguration(text, '/run/cfg.json');
    } catch (error) {
      caught = error;
    }
    t.type(caught, RunConfigurationError, `${text.slice(0, 60)}: refused`);
    const error = caught as RunConfigurationError;
    t.equal(error.name, 'RunConfigurationError');
    t.equal(error.source, '/run/cfg.json');
    if (typeof field === 'string') t.equal(error.field, field, `field ${field}`);
    else t.match(error.field, field);
    t.match(error.message, new RegExp(`^run configuration /run/cfg\\.json: ${typeof field === 'string' ? field.replace(/[.()]/g, '\\$&') : ''}`));
    if (message) t.match(error.message, message);
  };
  refused('{"version": 1, "engines": ["crh"]', '(the file)', /not JSON/);
  refused('[1, 2]', '(the file)', /not a JSON object/);
  refused('null', '(the file)', /not a JSON object/);
  refused(
    edited((o) => delete o.version),
    'version',
    /undefined: this crh reads version 1/,
  );
  refused(
    edited((o) => (o.version = 2)),
    'version',
    /2: this crh reads version 1/,
  );
  refused(
    edited((o) => (o.shell = 'rm -rf /')),
    'shell',
    /not a field of a run configuration/,
  );
  refused('{"version": 1, "__proto__": {"polluted": true}, "engines": ["crh"], "artifactsDir": "/a", "verdictsFile": "/a/v"}', '__proto__', /not a field/);
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'and nothing was polluted');
  refused(
    edited((o) => (o.engines = 'crh')),
    'engines',
  );
  refused(
    edited((o) => (o.engines = [])),
    'engines',
  );
  refused(
    edited((o) => (o.engines = ['crh', 'gdb'])),
    'engines',
    /"gdb" is not an engine/,
  );
  refused(
    edited((o) => (o.engines = ['crh', 'crh'])),
    'engines',
    /crh is named twice/,
  );
  refused(
    edited((o) => (o.accel = 'hvf')),
    'accel',
    /"hvf": must be tcg or kvm/,
  );
  refused(
    edited((o) => (o.artifactsDir = 'artifacts')),
    'artifactsDir',
    /not an absolute path/,
  );
  refused(
    edited((o) => (o.artifactsDir = 42)),
    'artifactsDir',
    /42 is not a path/,
  );
  refused(
    edited((o) => (o.verdictsFile = '/a/\u0000/v')),
    'verdictsFile',
    /NUL/,
  );
  refused(
    edited((o) => delete o.verdictsFile),
    'verdictsFile',
  );
  refused(
    edited((o) => (o.kernel = 'bzImage')),
    'kernel',
    /not an object/,
  );
  refused(
    edited((o) => ((o.kernel as Record<string, unknown>).spec = 'debian:--help')),
    'kernel.spec',
    /not a Debian package name/,
  );
  refused(
    edited((o) => ((o.kernel as Record<string, unknown>).spec = 'bzImage')),
    'kernel.spec',
    /not an absolute path/,
  );
  refused(
    edited((o) => ((o.kernel as Record<string, unknown>).label = '../up')),
    'kernel.label',
    /not a kernel name/,
  );
  refused(
    edited((o) => ((o.kernel as Record<string, unknown>).systemMap = 'System.map')),
    'kernel.systemMap',
    /not an absolute path/,
  );
  refused(
    edited((o) => ((o.kernel as Record<string, unknown>).cmdline = 'init=/bin/sh')),
    'kernel.cmdline',
    /not a field of a kernel choice/,
  );
  // A field name from the file reaches a terminal only escaped.
  refused(
    edited((o) => (o['\u001b[2Jx'] = 1)),
    /x$/,
    /\\x1b\[2Jx/,
  );
});

t.test('a missing file is refused by its path', async (t) => {
  const missing = path.join(await mkdtemp(path.join(tmpdir(), 'crh-run-config-')), 'gone.json');
  t.throws(() => readRunConfiguration(missing), {
    name: 'RunConfigurationError',
    source: missing,
    message: new RegExp(`${missing.replace(/[.]/g, '\\.')}: \\(the file\\): no such file \\(named by CRH_RUN\\)`),
  });
  t.throws(
    () => loadRunConfiguration({ [RUN_CONFIGURATION_ENV]: missing }),
    { name: 'RunConfigurationError', source: missing },
    'named by CRH_RUN: refused, never replaced by the defaults',
  );
});

t.test('without a configuration handed down: the user variables, the defaults for the rest', async (t) => {
  const defaults = { engines: ['crh'], artifactsDir: DEFAULT_ARTIFACTS_DIR, verdictsFile: path.join(DEFAULT_ARTIFACTS_DIR, 'verdicts.jsonl') };
  t.same(configurationFromUserEnvironment({}), defaults, 'nothing set: the default kernel, crh, accelerator by evidence, artifacts/ in the repository');
  t.same(loadRunConfiguration({ [RUN_CONFIGURATION_ENV]: '' }), defaults, 'an empty CRH_RUN hands nothing down');
  t.same(
    configurationFromUserEnvironment({ CRH_KERNEL: '', CRH_ACCEL: '', CRH_ENGINES: '', CRH_ARTIFACTS_DIR: '' }),
    defaults,
    'an empty variable is an unset one',
  );
  const cwd = process.cwd();
  t.same(
    configurationFromUserEnvironment({
      CRH_KERNEL: 'mine=build/bzImage',
      CRH_SYSTEM_MAP: 'build/System.map',
      CRH_KERNEL_CONFIG: 'build/.config',
      CRH_MODULES_DIR: 'mods',
      CRH_ENGINES: 'criu',
      CRH_ACCEL: 'kvm',
      CRH_ARTIFACTS_DIR: 'out',
    }),
    {
      kernel: {
        spec: path.join(cwd, 'build/bzImage'),
        label: 'mine',
        systemMap: path.join(cwd, 'build/System.map'),
        config: path.join(cwd, 'build/.config'),
        modulesDir: path.join(cwd, 'mods'),
      },
      engines: ['criu'],
      accel: 'kvm',
      artifactsDir: path.join(cwd, 'out'),
      verdictsFile: path.join(cwd, 'out', 'verdicts.jsonl'),
    },
    'every variable, paths made absolute as the flags make them',
  );
  t.same(configurationFromUserEnvironment({ CRH_KERNEL: 'debian:linux-image-cloud-amd64@trixie' }).kernel, { spec: 'debian:linux-image-cloud-amd64@trixie' });
  t.same(configurationFromUserEnvironment({ CRH_SYSTEM_MAP: '/x/System.map' }).kernel, undefined, 'a companion file alone chooses no kernel');
  t.throws(() => configurationFromUserEnvironment({ CRH_ACCEL: 'hvf' }), {
    name: 'RunConfigurationError',
    field: 'CRH_ACCEL',
    message: /the environment: CRH_ACCEL: "hvf": must be tcg or kvm/,
  });
  t.throws(() => configurationFromUserEnvironment({ CRH_KERNEL: 'debian:--help' }), { field: 'CRH_KERNEL', message: /not a Debian package name/ });
  t.throws(() => configurationFromUserEnvironment({ CRH_ENGINES: 'crh,gdb' }), { field: 'CRH_ENGINES', message: /CRH_ENGINES: "gdb" is not an engine/ });
});

t.test('crh run: its flags over the user variables', async (t) => {
  const env = { CRH_KERNEL: 'debian:linux-image-amd64', CRH_ACCEL: 'tcg', CRH_ENGINES: 'criu', CRH_ARTIFACTS_DIR: '/from-env' };
  t.same(
    configureRun({}, env),
    { kernel: { spec: 'debian:linux-image-amd64' }, engines: ['criu'], accel: 'tcg', artifactsDir: '/from-env', verdictsFile: '/from-env/verdicts.jsonl' },
    'no flags: the variables',
  );
  t.same(
    configureRun({ kernel: { spec: '/k/bzImage', label: 'k' }, engines: ['crh'], artifactsDir: '/from-flag' }, env),
    { kernel: { spec: '/k/bzImage', label: 'k' }, engines: ['crh'], accel: 'tcg', artifactsDir: '/from-flag', verdictsFile: '/from-flag/verdicts.jsonl' },
    'each flag given wins over its variable',
  );
});

t.test('a case process reads the file CRH_RUN names, once, and the fixtures ask it', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-run-config-'));
  const file = await writeRunConfiguration(
    { ...MINIMAL, artifactsDir: path.join(dir, 'art'), verdictsFile: path.join(dir, 'rows.jsonl'), engines: ['crh', 'criu'] },
    path.join(dir, 'run.json'),
  );
  const run = await execa(process.execPath, ['--import=tsx', path.join(import.meta.dirname, 'fixtures', 'run-configuration', 'probe.ts')], {
    cwd: REPO_ROOT,
    env: { [RUN_CONFIGURATION_ENV]: file, CRH_ARTIFACTS_DIR: '/ignored', CRH_ENGINES: 'crh' },
  });
  t.same(
    JSON.parse(run.stdout),
    { first: path.join(dir, 'art'), again: path.join(dir, 'art'), verdicts: path.join(dir, 'rows.jsonl'), engines: ['crh', 'criu'] },
    'read once (the file removed after the first use changes nothing), and it wins over the variables',
  );
});
