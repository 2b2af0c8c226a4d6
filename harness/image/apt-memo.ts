/**
 * apt-cache answers remembered per state of apt's view. Each apt-cache call
 * parses the whole package list (0.3-0.8 s on these machines), and every
 * case file asked which kernel linux-image-cloud-amd64 is twice. An answer
 * can change only when the package lists, the sources or the preferences
 * do, so it is kept under a key of the question, the options it was asked
 * under, and the names, sizes and modification times of those files (an
 * apt-get update rewrites the lists). A failed question is not kept.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic-write.ts';
import { ensureCacheDir } from '../util/cache-dir.ts';
import { sha256 } from '../util/hash.ts';

/** The answer to `question` under apt options `apt`: remembered, else `ask()`ed and remembered when `valid`. */
export async function rememberedAptAnswer<T>(question: string, apt: readonly string[], valid: (v: unknown) => v is T, ask: () => Promise<T>): Promise<T> {
  const key = sha256(JSON.stringify([question, apt, await aptStateStamp(apt)])).slice(0, 16);
  const memo = path.join(await ensureCacheDir('apt'), `answer-${key}.json`);
  if (existsSync(memo)) {
    try {
      const saved = JSON.parse(await readFile(memo, 'utf8')) as unknown;
      if (valid(saved)) return saved;
    } catch {
      // A torn or foreign file: asked again and written over.
    }
  }
  const answer = await ask();
  if (valid(answer)) await writeFileAtomic(memo, JSON.stringify(answer));
  return answer;
}

/** The value of `-o NAME=VALUE` in `apt`, if given. */
function optionValue(apt: readonly string[], name: string): string | undefined {
  for (let i = 0; i + 1 < apt.length; i++) if (apt[i] === '-o' && apt[i + 1]!.startsWith(`${name}=`)) return apt[i + 1]!.slice(name.length + 1);
  return undefined;
}

/** What apt-cache's answers depend on, as file names, sizes and times: lists, sources, preferences. */
export async function aptStateStamp(apt: readonly string[]): Promise<string> {
  const lines: string[] = [];
  const file = async (name: string): Promise<void> => {
    const s = await stat(name).catch(() => undefined);
    if (s?.isFile()) lines.push(`${name} ${s.size} ${s.mtimeMs}`);
  };
  const directory = async (dir: string): Promise<void> => {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names.sort()) await file(path.join(dir, name));
  };
  await directory(optionValue(apt, 'Dir::State::Lists') ?? '/var/lib/apt/lists');
  await file(optionValue(apt, 'Dir::Etc::sourcelist') ?? '/etc/apt/sources.list');
  await directory(optionValue(apt, 'Dir::Etc::sourceparts') ?? '/etc/apt/sources.list.d');
  await file('/etc/apt/preferences');
  await directory('/etc/apt/preferences.d');
  return lines.join('\n');
}
