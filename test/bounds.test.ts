// expect: nothing an image or a guest sends can grow the harness without bound or reach the terminal raw: frames reassemble
// in linear time, a plan larger than the agent's frame limit goes as several BATCHes (one op over it is refused naming both
// sizes), console lines and log, ssh output and READ_FILE are capped with a note, image JSON nested past the limit is refused
// by name (1e6 '['), and `crh restore --dry-run` shows an image's control characters escaped.
import t from 'tap';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { AgentClient, batchSizes } from '../harness/agent/client.ts';
import { localAgentTransport } from '../harness/agent/local-transport.ts';
import { readGuestFile, readGuestText } from '../harness/agent/read-file.ts';
import { FrameDecoder, MAX_FRAME_BYTES, encodeFrame } from '../harness/agent/wire.ts';
import { AgentError, ImageRejectedError } from '../harness/errors.ts';
import { buildGuestBinaries } from '../harness/image/guest-binaries.ts';
import { CONSOLE_LINE_MAX_CHARS, ConsoleLog, KERNEL_DEATH } from '../harness/machine/console.ts';
import { imageEntries, parseImageEntries, writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { CappedBuffer } from '../harness/util/capped-buffer.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { sha256 } from '../harness/util/hash.ts';
import { jsonNestingDepth } from '../harness/util/json-depth.ts';
import { escapeControl } from '../harness/util/terminal-text.ts';
import { reseal, syntheticImage } from './support/synthetic-image.ts';

t.test('frame reassembly is linear: a 32 MiB frame in 1 KiB reads', async (t) => {
  const payload = Buffer.alloc(32 * 1024 * 1024, 0xab);
  const stream = encodeFrame({ id: 7, op: 0x0b, word: 0, payload });
  const decoder = new FrameDecoder();
  const started = process.hrtime.bigint();
  const frames = [];
  for (let at = 0; at < stream.length; at += 1024) frames.push(...decoder.push(stream.subarray(at, at + 1024)));
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  t.equal(frames.length, 1);
  t.equal(frames[0]!.id, 7);
  t.ok(frames[0]!.payload.equals(payload), 'the payload arrives whole');
  t.equal(decoder.buffered, 0);
  // Re-concatenating the pending bytes on each of the 32,768 reads copies ~512 GiB: minutes, not this.
  t.ok(ms < 5000, `decoded in ${ms.toFixed(0)} ms`);
  t.comment(`32 MiB frame in 32,768 reads of 1 KiB: ${ms.toFixed(0)} ms`);
});

t.test("the host's frame limit is the agent's", async (t) => {
  const source = await readFile(path.join(REPO_ROOT, 'guests', 'agent', 'agent.h'), 'utf8');
  const define = /#define MAX_FRAME \((\d+)u \* (\d+)u \* (\d+)u\)/.exec(source);
  t.ok(define, 'agent.h defines MAX_FRAME');
  t.equal(Number(define![1]) * Number(define![2]) * Number(define![3]), MAX_FRAME_BYTES);
});

t.test('batchSizes: consecutive groups within the limit; one sub-request over it refused with both sizes', async (t) => {
  const subs = Array.from({ length: 10 }, () => Buffer.alloc(96));
  // frame length field: 8 (id, op, flags) + 4 (count) + n × (4 + 96)
  t.same(batchSizes(subs, 8 + 4 + 3 * 100), [3, 3, 3, 1]);
  t.same(batchSizes(subs, MAX_FRAME_BYTES), [10]);
  t.same(batchSizes([], 1000), []);
  t.throws(() => batchSizes([Buffer.alloc(10), Buffer.alloc(5000)], 4096), {
    message: /sub-request 1 is 5000 bytes, more than fits the agent's frame limit of 4096 bytes/,
  });
});

t.test('the real agent: a batch over the frame limit runs as several frames, in order, stopping at the first failure', async (t) => {
  const bins = await buildGuestBinaries();
  const { client } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => client.close());
  const hwbreak = bins.hostPath.hwbreak!;
  const { pid } = await client.call({
    op: 'SPAWN',
    path: hwbreak,
    argv: [hwbreak, '1'],
    envp: [],
    stdoutPath: `/tmp/crh-bounds-${process.pid}.out`,
    noAslr: true,
  });
  t.teardown(() => client.call({ op: 'KILL', pid }).catch(() => {}));
  const maps = (await client.call({ op: 'READ_FILE', path: `/proc/${pid}/maps`, maxSize: 65536 })).toString();
  const stack = /^([0-9a-f]+)-([0-9a-f]+) rw.p .*\[stack\]$/m.exec(maps);
  t.ok(stack, 'the target has a stack');
  const base = BigInt(`0x${stack![1]}`);
  const chunk = 4096;
  const ops = Array.from({ length: 24 }, (_, i) => ({ op: 'WRITE_MEM' as const, pid, address: base + BigInt(i * chunk), data: Buffer.alloc(chunk, i + 1) }));

  client.maxFrameBytes = 5 * (chunk + 64);
  const sentBefore = client.requestsSent;
  const steps = await client.batch(ops);
  const frames = client.requestsSent - sentBefore;
  t.equal(steps.length, 24, 'every op answered');
  t.ok(
    steps.every((s) => s.ok),
    'every write accepted',
  );
  t.ok(frames >= 5, `${frames} BATCH frames of at most ${client.maxFrameBytes} bytes`);
  const back = await client.call({ op: 'READ_MEM', pid, address: base, length: 24 * chunk });
  t.ok(
    Array.from({ length: 24 }, (_, i) => back[i * chunk] === i + 1 && back[(i + 1) * chunk - 1] === i + 1).every(Boolean),
    'the memory holds every write, in order',
  );

  const failing = [...ops.slice(0, 7), { op: 'WRITE_MEM' as const, pid, address: 0x10n, data: Buffer.alloc(chunk) }, ...ops.slice(8)];
  const before = client.requestsSent;
  const stopped = await client.batch(failing);
  t.equal(stopped.length, 8, 'stops at the failing op');
  t.notOk(stopped[7]!.ok, 'the write to 0x10 failed');
  t.equal(client.requestsSent - before, 2, 'the frames after the failure were never sent');

  await t.rejects(client.call({ op: 'WRITE_MEM', pid, address: base, data: Buffer.alloc(client.maxFrameBytes) }), {
    message: /WRITE_MEM: a request of \d+ bytes does not fit the agent's frame limit of \d+ bytes/,
  });
  t.ok(await client.call({ op: 'GETREGS', pid }), 'and the session goes on');
});

t.test('READ_FILE through readGuestFile: a file over the bound is cut and says so', async (t) => {
  const bins = await buildGuestBinaries();
  const { client } = await AgentClient.open(localAgentTransport(bins.hostPath['crh-agent']!));
  t.teardown(() => client.close());
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-bounds-'));
  const file = path.join(dir, 'out.txt');
  await writeFile(file, 'x'.repeat(1000));
  t.same(await readGuestFile(client, file, 1000), { data: Buffer.from('x'.repeat(1000)), truncated: false }, 'exactly at the bound: whole');
  const cut = await readGuestFile(client, file, 999);
  t.equal(cut.data.length, 999);
  t.ok(cut.truncated);
  t.match(await readGuestText(client, file, 10), /^x{10}\n\[crh: .*out\.txt truncated at 10 bytes\]$/);
});

t.test('CappedBuffer (ssh exec output): keeps the limit, counts the rest, notes it', async (t) => {
  const b = new CappedBuffer(10, 'stdout of `yes`');
  b.push(Buffer.from('12345678'));
  b.push(Buffer.from('abcdef'));
  b.push(Buffer.from('ghij'));
  t.ok(b.truncated);
  t.equal(b.dropped, 8);
  t.equal(b.text(), '12345678ab\n[crh: stdout of `yes` truncated at 10 bytes; 8 more bytes were not kept]');
  const whole = new CappedBuffer(10, 'x');
  whole.push(Buffer.from('0123456789'));
  t.equal(whole.text(), '0123456789', 'exactly at the limit: no note');
});

t.test('console: an endless line is cut into marked pieces (a panic after it is still seen), the log file stops with a note', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-console-'));
  const source = new PassThrough();
  const log = new ConsoleLog(path.join(dir, 'console.log'), source, 100_000);
  const seen: string[] = [];
  log.onLine((l) => seen.push(l));
  for (let i = 0; i < 100; i++) source.write('A'.repeat(1000));
  source.write('\nKernel panic - not syncing: test\n');
  await new Promise((r) => setImmediate(r));
  t.ok(
    seen.every((l) => l.length <= CONSOLE_LINE_MAX_CHARS + 60),
    `no line over ${CONSOLE_LINE_MAX_CHARS} characters and its mark`,
  );
  t.match(seen[0], /\[crh: console line cut at 4096 characters\]$/);
  t.equal(
    seen
      .filter((l) => l.startsWith('A'))
      .map((l) => l.replace(/ \[crh:.*/, ''))
      .join('').length,
    100_000,
    'nothing of the line is lost',
  );
  t.ok(
    seen.some((l) => KERNEL_DEATH.test(l)),
    'the panic after it is seen',
  );
  await log.close();
  const file = await readFile(path.join(dir, 'console.log'), 'utf8');
  t.ok(file.length < 100_200, `the log stopped at its limit (${file.length} bytes)`);
  t.match(file, /\[crh: console log truncated at 100000 bytes; \d+ more bytes were not kept\]\n$/);
});

t.test('image JSON nested 1e6 deep is refused by name, before anything recurses', async (t) => {
  t.equal(jsonNestingDepth('{"a":[1,{"b":"[[[["}]}'), 3, 'brackets inside strings do not count');
  t.equal(jsonNestingDepth('"\\"[["'), 0, 'nor after an escaped quote');
  const entries = imageEntries(syntheticImage());
  for (const deep of ['['.repeat(1e6), `${'['.repeat(1e6)}${']'.repeat(1e6)}`]) {
    for (const entry of ['threads.json', 'regs.json']) {
      t.throws(
        () => parseImageEntries(reseal(entries, { [entry]: Buffer.from(deep) })),
        new ImageRejectedError('JSON nests deeper than 64 levels', entry, '(json)'),
        `${entry}: ${deep.length} characters`,
      );
    }
    const manifest = Buffer.from(deep);
    const sealed = new Map(entries);
    sealed.set('manifest.json', manifest);
    sealed.set('manifest.sha256', Buffer.from(`${sha256(manifest)}\n`));
    t.throws(() => parseImageEntries(sealed), new ImageRejectedError('JSON nests deeper than 64 levels', 'manifest.json', '(json)'), 'manifest.json too');
  }
  t.ok(parseImageEntries(entries), 'the image itself parses');
});

t.test('terminal text: controls escaped, plain text untouched', async (t) => {
  t.equal(escapeControl('/bin/ok-ünïcode'), '/bin/ok-ünïcode');
  t.equal(escapeControl('\u001b]0;pwned\u0007\u001b[2J'), '\\x1b]0;pwned\\x07\\x1b[2J');
  t.equal(escapeControl('a\u202eb\u009bc\r\n'), 'a\\u202eb\\x9bc\\x0d\\n');
  t.equal(escapeControl('line\nnext\u0008', { keepNewlines: true }), 'line\nnext\\x08');
});

t.test('crh restore --dry-run prints an image whose binary path holds terminal escapes, escaped', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'crh-dry-run-escape-'));
  const file = path.join(dir, 'image.tar');
  const image = syntheticImage();
  await writeCheckpointImage({ ...image, process: { ...image.process, binary: '/guest/bin/\u001b]0;owned\u0007\u001b[2Jprog' } }, file);
  const r = await execa(process.execPath, [path.join(REPO_ROOT, 'bin', 'crh.js'), 'restore', '--dry-run', file], { reject: false, cwd: REPO_ROOT });
  t.equal(r.exitCode, 0, r.stderr);
  t.notMatch(r.stdout, /[\u0000-\u0008\u000b-\u001f\u007f]/, 'no control character reaches the terminal');
  t.match(r.stdout, /\/guest\/bin\/\\x1b\]0;owned\\x07\\x1b\[2Jprog/, 'the path is shown, escaped');
});

t.test('AgentError keeps its cause', async (t) => {
  const cause = new Error('x');
  t.equal(new AgentError('m', 'OP', undefined, {}, { cause }).cause, cause);
});
