/**
 * Which of CRIU's ZDTM tests scripts/zdtm-suite.ts runs, and with which
 * arguments — decided from the source tree the user fetched, never from a
 * copy here. Pure: the callers read the files.
 *
 * Facts read from CRIU's tree (test/zdtm/static):
 * - The Makefile sorts the tests into kinds (TST_NOFILE, TST_FILE,
 *   TST_DIR, TST_DIR_FILE, TST_STATE) and starts each through a `T.pid`
 *   rule — zdtm.py runs `make T.pid` — whose recipe gives the arguments:
 *   `--filename=$<.test` for a file test, `--dirname=$<.test` for a
 *   directory test, and rules of their own for a few (env00's
 *   `--envname=ENV_00_TEST`). zdtmArgs reads them from there.
 *   TST_STATE tests follow another protocol (--statefile, start/stop).
 * - A test's `.desc` is a Python dict literal (zdtm.py evals it):
 *   `flags` (suid, noauto, crfail, excl, ...), `flavor` (h, ns, uns;
 *   default all three), `arch`, `feature` (CRIU's kernel-feature checks),
 *   `opts`/`dopts`/`ropts` (CRIU command-line options).
 */
import { InfraError } from '../errors.ts';

/**
 * The kinds of the static Makefile, in its own names; `TST` is a test the
 * Makefile adds to the list of all tests by name, started by a T.pid rule
 * of its own (env00, umask00, ...).
 */
export const ZDTM_KINDS = ['TST_NOFILE', 'TST_FILE', 'TST_DIR', 'TST_DIR_FILE', 'TST_STATE', 'TST'] as const;
export type ZdtmKind = (typeof ZDTM_KINDS)[number];

/** A `.desc` value: zdtm.py's descs hold strings, lists of strings and numbers. */
export type DescValue = string | number | boolean | DescValue[];
export type ZdtmDesc = Record<string, DescValue>;

/**
 * A `.desc` file's Python dict literal, parsed without evaluating anything:
 * strings ('...' or "..."), numbers, True/False, lists and tuples of those;
 * anything else is an InfraError naming the file.
 */
export function parseDesc(text: string, file = '.desc'): ZdtmDesc {
  if (text.trim() === '') return {};
  let i = 0;
  const fail = (what: string): never => {
    throw new InfraError(`${file}: ${what} at offset ${i} (${JSON.stringify(text.slice(i, i + 20))}); not a Python literal this reader knows`);
  };
  const skip = (): void => {
    for (;;) {
      while (i < text.length && /\s/.test(text[i]!)) i++;
      if (text[i] !== '#') return;
      while (i < text.length && text[i] !== '\n') i++;
    }
  };
  const value = (): DescValue => {
    skip();
    const c = text[i];
    if (c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1);
      if (end < 0) fail('unterminated string');
      const s = text.slice(i + 1, end);
      if (s.includes('\\')) fail('escape in a string');
      i = end + 1;
      return s;
    }
    if (c === '[' || c === '(') {
      const close = c === '[' ? ']' : ')';
      i++;
      const items: DescValue[] = [];
      for (;;) {
        skip();
        if (text[i] === close) {
          i++;
          return items;
        }
        items.push(value());
        skip();
        if (text[i] === ',') i++;
        else if (text[i] !== close) fail(`expected , or ${close}`);
      }
    }
    const word = /^(-?\d+|True|False)/.exec(text.slice(i))?.[1];
    if (word === undefined) return fail('unexpected text');
    i += word.length;
    return word === 'True' ? true : word === 'False' ? false : Number(word);
  };
  skip();
  if (text[i] !== '{') fail('expected {');
  i++;
  const desc: ZdtmDesc = {};
  for (;;) {
    skip();
    if (text[i] === '}') {
      i++;
      break;
    }
    const key = value();
    if (typeof key !== 'string') fail('a key that is not a string');
    skip();
    if (text[i] !== ':') fail('expected :');
    i++;
    desc[key as string] = value();
    skip();
    if (text[i] === ',') i++;
    else if (text[i] !== '}') fail('expected , or }');
  }
  skip();
  if (i !== text.length) fail('text after the dict');
  return desc;
}

/** A `.desc` field as its words (zdtm.py splits `flags`, `flavor`, `feature`, `opts` on whitespace). */
export function descWords(desc: ZdtmDesc, key: string): string[] {
  const v = desc[key];
  if (v === undefined) return [];
  if (Array.isArray(v)) return v.map(String);
  return String(v).split(/\s+/).filter(Boolean);
}

/** What the static Makefile says about starting tests. */
export interface ZdtmMakefile {
  /** test -> its kind */
  kinds: Map<string, ZdtmKind>;
  /** kind -> the arguments its T.pid recipe passes after --outfile, `$<` standing for the test's name */
  kindArgs: Map<ZdtmKind, string[]>;
  /** test -> the arguments of a T.pid rule of its own */
  ownArgs: Map<string, string[]>;
}

/**
 * The Makefile's kinds and T.pid recipes. Logical lines (backslash
 * continuations joined, `#` comments cut as make cuts them); a kind's
 * assignments (`:=`, `=`, `+=`, in or out of conditionals) all count —
 * which conditional holds is make's business, and x86-64 is what the
 * suite builds for.
 */
export function parseStaticMakefile(text: string): ZdtmMakefile {
  const logical: string[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    if (raw.endsWith('\\')) {
      pending += `${raw.slice(0, -1)} `;
      continue;
    }
    logical.push(pending + raw);
    pending = '';
  }
  if (pending) logical.push(pending);
  const uncomment = (l: string): string => l.replace(/#.*$/, '');

  const kinds = new Map<string, ZdtmKind>();
  const kindArgs = new Map<ZdtmKind, string[]>();
  const ownArgs = new Map<string, string[]>();
  for (let n = 0; n < logical.length; n++) {
    const line = uncomment(logical[n]!);
    const assign = /^\s*(TST(?:_[A-Z_]+)?)\s*(?::=|\+=|=)\s*(.*)$/.exec(line);
    if (assign && (ZDTM_KINDS as readonly string[]).includes(assign[1]!)) {
      // TST lists the kinds by reference ($(TST_NOFILE) ...) and a few tests by name: a kind already known wins.
      for (const word of assign[2]!.split(/\s+/).filter(Boolean))
        if (!word.startsWith('$') && !(assign[1] === 'TST' && kinds.has(word))) kinds.set(word, assign[1] as ZdtmKind);
      continue;
    }
    // A T.pid rule: its recipe is the next line that starts with a tab.
    const kindRule = /^\$\((TST_[A-Z_]+):%=%\.pid\)\s*:/.exec(line);
    const ownRule = /^([A-Za-z0-9_+.-]+)\.pid\s*:/.exec(line);
    if (!kindRule && !ownRule) continue;
    const recipe = logical[n + 1];
    if (!recipe?.startsWith('\t')) continue;
    const after = /--outfile=\S+\s*(.*)$/.exec(recipe)?.[1];
    if (after === undefined) continue;
    const args = after.split(/\s+/).filter(Boolean);
    if (kindRule && (ZDTM_KINDS as readonly string[]).includes(kindRule[1]!)) kindArgs.set(kindRule[1] as ZdtmKind, args);
    else if (ownRule) ownArgs.set(ownRule[1]!, args);
  }
  return { kinds, kindArgs, ownArgs };
}

/** The arguments zdtm.py's `make T.pid` passes after --pidfile and --outfile (`$<` is the test's name). */
export function zdtmArgs(makefile: ZdtmMakefile, test: string): string[] {
  const template = makefile.ownArgs.get(test) ?? makefile.kindArgs.get(makefile.kinds.get(test) ?? 'TST_NOFILE') ?? [];
  return template.map((a) => a.replaceAll('$<', test));
}

/** What scripts/zdtm-suite.ts looks for, by what it exercises; each name is checked against the tree it fetched. */
export const ZDTM_CANDIDATES: ReadonlyArray<{ category: string; tests: readonly string[] }> = [
  { category: 'waiting', tests: ['env00', 'sleeping00', 'wait00', 'futex', 'futex-rl', 'pid00', 'umask00', 'write_read00', 'file_append'] },
  { category: 'spinning', tests: ['busyloop00'] },
  { category: 'timers', tests: ['posix_timers', 'timers', 'timers01', 'timerfd', 'pthread_timers', 'pthread_timers_h'] },
  { category: 'FPU/SSE/MMX', tests: ['fpu00', 'fpu01', 'fpu02', 'fpu03', 'sse00', 'sse20', 'mmx00'] },
  { category: 'signals', tests: ['sigpending', 'sigaltstack', 'sigtrap', 'sigtrap01', 'signalfd00'] },
  { category: 'rseq', tests: ['rseq00', 'membarrier'] },
  {
    category: 'mappings',
    tests: [
      'maps00',
      'maps01',
      'maps02',
      'maps03',
      'maps04',
      'maps05',
      'maps06',
      'maps09',
      'maps10',
      'maps_file_prot',
      'mprotect00',
      'grow_map',
      'grow_map02',
      'grow_map03',
      'mtime_mmap',
    ],
  },
  { category: 'vDSO', tests: ['vdso00', 'vdso01', 'vdso02', 'vdso-proxy'] },
  { category: 'pthreads', tests: ['pthread00', 'pthread01', 'pthread02'] },
];

/** `.desc` flags that keep a test out, and why (crh zdtm runs every test as root on the host flavor, one at a time). */
export const SKIP_FLAGS: ReadonlyMap<string, string> = new Map([
  ['noauto', 'noauto: CRIU does not run it in its own automatic runs'],
  ['crfail', 'crfail: its checkpoint or restore is meant to fail'],
  ['suid', "suid: it uses root's privileges (credentials, capabilities, ids), which zdtm.py keeps for suid tests and crh zdtm does not set apart"],
]);

/** The host architecture the suite is built for, as `.desc` files spell it. */
export const ZDTM_ARCH = 'x86_64';

export interface SelectedTest {
  name: string;
  category: string;
  kind: ZdtmKind;
  args: string[];
  /** CRIU kernel features the .desc names (informational: crh checks its own needs at checkpoint) */
  features: string[];
}

export interface SkippedTest {
  name: string;
  category: string;
  reason: string;
}

/**
 * The candidates sorted into run and skipped, in candidate order: a test
 * the tree lacks, of the state protocol, a `.desc` that asks for a flag in
 * SKIP_FLAGS, no host flavor (`h`), another architecture, or CRIU
 * options (which crh zdtm does not pass to CRIU) is skipped with its
 * reason. `descs` maps a test to its parsed .desc (absent: none, the
 * default of zdtm.py; an Error: one parseDesc refused, which skips it).
 */
export function selectZdtmTests(
  candidates: typeof ZDTM_CANDIDATES,
  makefile: ZdtmMakefile,
  sources: ReadonlySet<string>,
  descs: ReadonlyMap<string, ZdtmDesc | Error>,
): { selected: SelectedTest[]; skipped: SkippedTest[] } {
  const selected: SelectedTest[] = [];
  const skipped: SkippedTest[] = [];
  for (const { category, tests } of candidates)
    for (const name of tests) {
      const skip = (reason: string): void => void skipped.push({ name, category, reason });
      const kind = makefile.kinds.get(name);
      if (!sources.has(name) || !kind) {
        skip('not in this tree (no source, or no kind in the static Makefile)');
        continue;
      }
      if (kind === 'TST_STATE') {
        skip('TST_STATE: started with --statefile and start/stop, not the pid-file protocol');
        continue;
      }
      if (kind === 'TST' && !makefile.ownArgs.has(name)) {
        skip('listed by name in TST with no T.pid rule of its own: how zdtm.py starts it is not in the Makefile');
        continue;
      }
      const desc = descs.get(name) ?? {};
      if (desc instanceof Error) {
        skip(`its .desc is not a plain literal: ${desc.message}`);
        continue;
      }
      const flags = descWords(desc, 'flags');
      const flag = [...SKIP_FLAGS.keys()].find((f) => flags.includes(f));
      if (flag) {
        skip(SKIP_FLAGS.get(flag)!);
        continue;
      }
      const flavors = desc.flavor === undefined ? ['h', 'ns', 'uns'] : descWords(desc, 'flavor');
      if (!flavors.includes('h')) {
        skip(`flavor ${flavors.join(' ')}: runs only inside namespaces zdtm.py creates (no host flavor)`);
        continue;
      }
      const arch = desc.arch === undefined ? undefined : String(desc.arch);
      if (arch !== undefined && arch !== ZDTM_ARCH) {
        skip(`arch ${arch}`);
        continue;
      }
      const criuOptions = ['opts', 'dopts', 'ropts'].flatMap((k) => descWords(desc, k));
      if (criuOptions.length > 0) {
        skip(`needs CRIU options ${criuOptions.join(' ')}, which crh zdtm does not pass`);
        continue;
      }
      selected.push({ name, category, kind, args: zdtmArgs(makefile, name), features: descWords(desc, 'feature') });
    }
  return { selected, skipped };
}

/**
 * The tests in groups that share one argument list, in first-seen order:
 * one `crh zdtm` invocation (one guest) per group, since `-- ARGS` applies
 * to every binary of an invocation.
 */
export function groupByArgs(tests: readonly SelectedTest[]): SelectedTest[][] {
  const groups = new Map<string, SelectedTest[]>();
  for (const t of tests) {
    const key = JSON.stringify(t.args);
    groups.set(key, [...(groups.get(key) ?? []), t]);
  }
  return [...groups.values()];
}
