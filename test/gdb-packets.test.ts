// expect: RSP framing, stop replies and the target description parse exactly, and GdbClient survives what a
// link and QEMU 7.2 do — replies split at any byte, several packets in one chunk, bad checksums and
// retransmission, stops that arrive unasked, console output, E replies, timeouts — replayed from
// test/fixtures/gdb/session.txt (recorded from QEMU by test/gdb-qemu.test.ts) and edits of it.
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { GdbClient, GdbError, GdbTimeoutError, type GdbClientOptions } from '../harness/gdb/client.ts';
import { PacketParser, checksum, decodePayload, encodePacket, type PacketEvent } from '../harness/gdb/packets.ts';
import { isStopReply, parseStopReply } from '../harness/gdb/stop-reply.ts';
import { readTargetDescription, scanXml } from '../harness/gdb/target-description.ts';

const KERNEL_TEXT = 0xffffffff81000000n;

/** One request the client sends (a packet, `-`, or the 0x03 interrupt) and the chunks the stub sent after it. */
interface Exchange {
  request: string;
  replies: string[];
}
interface Transcript {
  /** chunks the stub sent before the first request */
  greeting: string[];
  exchanges: Exchange[];
}

/** Splits what the client wrote into acks, nacks, interrupts and whole packets. */
function clientTokens(text: string): { tokens: string[]; rest: string } {
  const tokens: string[] = [];
  let rest = text;
  for (;;) {
    const match = /^(?:[+\-\x03]|\$[^#]*#[0-9a-f]{2})/.exec(rest);
    if (!match) return { tokens, rest };
    tokens.push(match[0]);
    rest = rest.slice(match[0].length);
  }
}

function parseTranscript(text: string): Transcript {
  const transcript: Transcript = { greeting: [], exchanges: [] };
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const bytes = JSON.parse(line.slice(2)) as string;
    if (line.startsWith('> ')) {
      const { tokens, rest } = clientTokens(bytes);
      if (rest !== '') throw new Error(`unparseable client bytes in transcript: ${line}`);
      for (const token of tokens) if (token !== '+') transcript.exchanges.push({ request: token, replies: [] });
    } else {
      (transcript.exchanges.at(-1)?.replies ?? transcript.greeting).push(bytes);
    }
  }
  return transcript;
}

const session = parseTranscript(readFileSync(path.join(import.meta.dirname, 'fixtures', 'gdb', 'session.txt'), 'latin1'));
const frame = (payload: string | Buffer): string => encodePacket(payload).toString('latin1');
/** The recorded exchange for a request (the first one, or the nth). */
const recorded = (request: string, nth = 0): Exchange => {
  const found = session.exchanges.filter((e) => e.request === frame(request))[nth];
  if (!found) throw new Error(`the recorded session has no ${request}`);
  return found;
};
/** The recorded session up to and including the handshake's '?'. */
const handshake = (): Exchange[] =>
  session.exchanges.slice(0, session.exchanges.findIndex((e) => e.request === frame('?')) + 1).map((e) => ({ ...e, replies: [...e.replies] }));
/** A packet's payload from a recorded reply chunk like "+$...#xx". */
const payloadOf = (chunk: string): string => /\$([^#]*)#/.exec(chunk)![1]!;

/**
 * A gdbstub that replays a transcript: each request the client sends must be
 * the next one recorded, byte for byte, and is answered with the recorded
 * chunks (cut up by `chop`). Acks from the client are noted, not matched.
 * Past the transcript's end, `respond` answers.
 */
class FakeStub {
  readonly stream: Duplex;
  readonly fromClient: string[] = [];
  mismatch: string | undefined;
  private readonly toClient = new PassThrough();
  private buffer = '';
  private next = 0;

  constructor(
    private readonly transcript: Transcript,
    private readonly options: { chop?: (chunk: string) => string[]; respond?: (request: string) => string[] } = {},
  ) {
    const input = new PassThrough();
    input.on('data', (chunk: Buffer) => this.onClient(chunk.toString('latin1')));
    this.stream = Duplex.from({ readable: this.toClient, writable: input });
    setImmediate(() => this.send(transcript.greeting));
  }

  get finished(): boolean {
    return this.next === this.transcript.exchanges.length;
  }

  send(chunks: string[]): void {
    for (const chunk of chunks) for (const piece of this.options.chop?.(chunk) ?? [chunk]) this.toClient.write(Buffer.from(piece, 'latin1'));
  }

  private onClient(text: string): void {
    const { tokens, rest } = clientTokens(this.buffer + text);
    this.buffer = rest;
    for (const token of tokens) {
      this.fromClient.push(token);
      if (token === '+') continue;
      const exchange = this.transcript.exchanges[this.next];
      if (exchange) {
        this.next++;
        if (exchange.request !== token) {
          this.mismatch = `request ${this.next}: the client sent ${JSON.stringify(token)}, the transcript has ${JSON.stringify(exchange.request)}`;
          this.stream.destroy();
          return;
        }
        this.send(exchange.replies);
      } else if (this.options.respond) {
        this.send(this.options.respond(token));
      } else {
        this.mismatch = `the client sent ${JSON.stringify(token)} past the end of the transcript`;
        this.stream.destroy();
        return;
      }
    }
  }
}

const bytewise = (chunk: string): string[] => [...chunk];

t.test('encode: checksum over the escaped bytes; # $ } * escaped; every recorded request re-encodes exactly', async (t) => {
  t.equal(frame('qC'), '$qC#b4');
  t.equal(frame(Buffer.from('#$}*A', 'latin1')), `$}\x03}\x04}]}\x0aA#${checksum(Buffer.from('}\x03}\x04}]}\x0aA', 'latin1')).toString(16)}`);
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const encoded = encodePacket(all);
  t.ok(decodePayload(encoded.subarray(1, -3)).equals(all), 'all 256 byte values survive escaping');
  t.equal(
    encoded
      .subarray(1, -3)
      .toString('latin1')
      .replace(/}./gs, '')
      .search(/[#$}*]/),
    -1,
    'none of # $ } * is left bare',
  );
  for (const { request } of session.exchanges.filter((e) => e.request.startsWith('$'))) {
    t.equal(frame(decodePayload(Buffer.from(request.slice(1, -3), 'latin1'))), request, `re-encodes ${request.slice(0, 40)}`);
  }
});

t.test('decode: run-length encoding and escapes, malformed input refused', async (t) => {
  t.equal(decodePayload(Buffer.from('0* ')).toString(), '0000', "'*' + ' ' (32) repeats 32-29 = 3 more");
  t.equal(decodePayload(Buffer.from('a*"b')).toString(), 'aaaaaab');
  t.equal(decodePayload(Buffer.from('}]*!')).toString(), '}}}}}', 'an escaped byte can be repeated');
  t.equal(decodePayload(Buffer.from('x*}')).length, 1 + 96, "'}' as a count is 125-29 = 96, never an escape");
  t.throws(() => decodePayload(Buffer.from('*!')), GdbError, 'nothing to repeat');
  t.throws(() => decodePayload(Buffer.from('ab}')), /ends inside an escape/);
  t.throws(() => decodePayload(Buffer.from('a*\x10')), /malformed run-length/);
});

/** `$body#cc` (or `%body#cc`) with the body taken as is: already escaped or run-length encoded. */
const raw = (body: string, start = '$'): string => `${start}${body}#${checksum(Buffer.from(body, 'latin1')).toString(16).padStart(2, '0')}`;

/** Recorded stub bytes plus what QEMU never sends on its own: a notification, RLE, escapes, junk, a bad checksum. */
const composite = [
  '+',
  '$T02thread:p01.01;#03',
  '+$PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+#92',
  '-',
  raw('Stop:T05thread:p01.02;', '%'),
  raw('0* 1*!'),
  raw('}]}\x03}\x04}\x0a'),
  'noise',
  '$QCp01.01#00',
  '$OK#9a',
].join('');

function parseAll(chunks: string[]): PacketEvent[] {
  const parser = new PacketParser();
  return chunks.flatMap((c) => parser.push(Buffer.from(c, 'latin1')));
}

/** Events with adjacent junk joined: where a chunk ends inside junk is not the parser's business. */
function normalized(events: PacketEvent[]): unknown[] {
  const out: unknown[] = [];
  for (const e of events) {
    const last = out.at(-1) as { type: string; bytes: string } | undefined;
    if (e.type === 'junk' && last?.type === 'junk') last.bytes += e.bytes.toString('latin1');
    else if (e.type === 'junk') out.push({ type: 'junk', bytes: e.bytes.toString('latin1') });
    else if (e.type === 'packet' || e.type === 'notification') out.push({ type: e.type, payload: e.payload.toString('latin1') });
    else if (e.type === 'bad-checksum') out.push({ type: e.type, raw: e.raw.toString('latin1'), expected: e.expected, actual: e.actual });
    else out.push({ type: e.type });
  }
  return out;
}

t.test('parser: acks, packets, a notification, RLE, escapes, junk, a bad checksum — at every split point', async (t) => {
  const whole = normalized(parseAll([composite]));
  t.same(
    whole,
    [
      { type: 'ack' },
      { type: 'packet', payload: 'T02thread:p01.01;' },
      { type: 'ack' },
      { type: 'packet', payload: 'PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+' },
      { type: 'nack' },
      { type: 'notification', payload: 'Stop:T05thread:p01.02;' },
      { type: 'packet', payload: '000011111' },
      { type: 'packet', payload: '}#$*' },
      { type: 'junk', bytes: 'noise' },
      { type: 'bad-checksum', raw: '$QCp01.01#00', expected: 0, actual: 0xf4 },
      { type: 'packet', payload: 'OK' },
    ],
    'several packets in one chunk',
  );
  let mismatches = 0;
  for (let i = 0; i <= composite.length; i++) {
    for (let j = i; j <= composite.length; j++) {
      const got = normalized(parseAll([composite.slice(0, i), composite.slice(i, j), composite.slice(j)]));
      if (JSON.stringify(got) !== JSON.stringify(whole)) mismatches++;
    }
  }
  t.equal(mismatches, 0, `every way of cutting ${composite.length} bytes into three reads parses the same`);
  t.same(normalized(parseAll([...composite])), whole, 'one byte at a time');

  const stubBytes = [...session.greeting, ...session.exchanges.flatMap((e) => e.replies)].join('');
  const events = parseAll([stubBytes]);
  t.same(normalized(parseAll([...stubBytes])), normalized(events), `the whole recorded session (${stubBytes.length} bytes) byte by byte`);
  t.notOk(
    events.some((e) => e.type === 'bad-checksum' || e.type === 'junk'),
    'QEMU sent nothing but acks and well-formed packets',
  );
  t.throws(() => new PacketParser(100).push(Buffer.from(`$${'0'.repeat(200)}`)), /longer than 100 bytes/);
});

t.test('stop replies: S, T with its pairs, W, X, O; command replies never look like stops', async (t) => {
  t.same(parseStopReply('S05'), { kind: 'signal', signal: 5, registers: new Map(), extra: new Map(), raw: 'S05' });
  const watch = parseStopReply('T05thread:p01.01;watch:00007ffd04c1c508;');
  t.match(watch, { kind: 'signal', signal: 5, thread: 'p01.01', reason: { kind: 'watch', address: 0x7ffd04c1c508n } });
  t.match(parseStopReply('T05rwatch:10;'), { reason: { kind: 'rwatch', address: 0x10n } });
  t.match(parseStopReply('T05awatch:ffffffff81000000;'), { reason: { kind: 'awatch', address: KERNEL_TEXT } });
  t.match(parseStopReply('T05swbreak:;thread:02;core:1;'), { thread: '02', core: 1, reason: { kind: 'swbreak' } });
  t.match(parseStopReply('T05hwbreak:;'), { reason: { kind: 'hwbreak' } });
  const regs = parseStopReply('T0506:1122334455667788;07:xxxxxxxxxxxxxxxx;10:2017001000000000;exec:2f62696e;');
  t.equal(regs.kind === 'signal' && regs.registers.get(6), 0x8877665544332211n, 'register values are little-endian');
  t.equal(regs.kind === 'signal' && regs.registers.has(7), false, 'unavailable registers are left out');
  t.equal(regs.kind === 'signal' && regs.registers.get(0x10), 0x10001720n);
  t.equal(regs.kind === 'signal' && regs.extra.get('exec'), '2f62696e');
  t.same(parseStopReply('W00'), { kind: 'exited', status: 0, raw: 'W00' });
  t.same(parseStopReply('X09;process:1a'), { kind: 'terminated', signal: 9, process: 26, raw: 'X09;process:1a' });
  t.match(parseStopReply('O48656c6c6f0a'), { kind: 'output', output: Buffer.from('Hello\n') });
  for (const bad of ['S5', 'T', 'Tzz', 'T05thread', 'T05thread:p0.;', 'W', 'Xzz', 'O', 'O4', 'Q05', 'T05watch:xyz;']) {
    t.throws(() => parseStopReply(bad), GdbError, `"${bad}" is refused`);
  }
  t.ok(isStopReply('T02thread:01;') && isStopReply('S05') && isStopReply('W00;process:1') && isStopReply('O4142'));

  // Every reply QEMU sent to a command other than '?', resume or interrupt, in the recording:
  let commandReplies = 0;
  for (const exchange of session.exchanges) {
    if (/^\$(\?|vCont;|c#|s#)|^\x03$/.test(exchange.request)) continue;
    for (const chunk of exchange.replies) {
      for (const match of chunk.matchAll(/\$([^#]*)#/g)) {
        if (match[1]!.startsWith('T02thread:')) continue; // the attach stop, which arrives during qSupported
        commandReplies++;
        if (isStopReply(match[1]!)) t.fail(`command reply ${match[1]!.slice(0, 40)} looks like a stop`);
      }
    }
  }
  t.ok(commandReplies > 20, `none of ${commandReplies} recorded command replies has stop-reply grammar`);
  t.notOk(isStopReply('OK') || isStopReply('E22') || isStopReply('QCp01.01') || isStopReply('l') || isStopReply(''), 'OK, E22, QC, l, empty');
});

/** The XML QEMU served during the recorded handshake, by annex. */
function recordedXml(): Map<string, string> {
  const files = new Map<string, string>();
  for (const exchange of session.exchanges) {
    const request = /^\$qXfer:features:read:([^:]+):/.exec(exchange.request);
    if (!request) continue;
    const payload = decodePayload(Buffer.from(payloadOf(exchange.replies.join('')), 'latin1')).toString('latin1');
    files.set(request[1]!, (files.get(request[1]!) ?? '') + payload.slice(1));
  }
  return files;
}

t.test("target description: QEMU's recorded XML gives the 'g' layout", async (t) => {
  const files = recordedXml();
  t.same([...files.keys()], ['target.xml', 'i386-64bit.xml']);
  const fetched: string[] = [];
  const d = await readTargetDescription(async (annex) => {
    fetched.push(annex);
    return files.get(annex)!;
  });
  t.same(fetched, ['target.xml', 'i386-64bit.xml'], 'the include is followed');
  t.equal(d.architecture, 'i386:x86-64');
  const table = d.registers;
  t.equal(table.registers.length, 66);
  t.equal(table.gBytes, 608, "608 bytes: the length of QEMU's recorded 'g' reply / 2");
  t.equal(payloadOf(recorded('g').replies.join('')).length, 1216);
  const at = (name: string): unknown => {
    const r = table.get(name);
    return [r.regnum, r.offset, r.bitsize];
  };
  t.same(at('rax'), [0, 0, 64]);
  t.same(at('rip'), [16, 128, 64]);
  t.same(at('eflags'), [17, 136, 32]);
  t.same(at('cs'), [18, 140, 32]);
  t.same(at('fs_base'), [24, 164, 64]);
  t.same(at('st0'), [33, 236, 80], 'x87 registers are 10 bytes');
  t.same(at('xmm0'), [49, 348, 128]);
  t.same(at('mxcsr'), [65, 604, 32]);
  t.equal(table.get('fctrl').group, 'float');
  t.equal(table.find('cs_base'), undefined, 'the <reg>s QEMU comments out are not registers');
  t.throws(() => table.get('nope'), /no register "nope"/);
  const gReply = payloadOf(recorded('g').replies.join(''));
  const values = table.decodeG(gReply);
  t.equal(values.get('rip'), BigInt(`0x${Buffer.from(gReply.slice(256, 272), 'hex').reverse().toString('hex')}`));
  t.equal(table.decodeG(gReply.slice(0, 272)).size, 17, 'a short g reply: only the registers it covers');
  t.equal(table.decodeG(`xxxxxxxxxxxxxxxx${gReply.slice(16)}`).has('rax'), false, 'unavailable bytes: left out');
});

t.test('target description: regnum defaults, gaps, nested includes, and what is refused', async (t) => {
  const from = (files: Record<string, string>) => (annex: string) =>
    annex in files ? Promise.resolve(files[annex]!) : Promise.reject(new GdbError(`no ${annex}`));
  const d = await readTargetDescription(
    from({
      'target.xml': `<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd" [ <!ENTITY x "y"> ]>
        <target version="1.0"><architecture>i386:x86-64</architecture><xi:include href="a.xml"/><!-- <reg name="fake" bitsize="8"/> -->
        <feature name='org.example.b'><reg name="b0" bitsize="16" regnum="10" type='int' group="g&amp;h"/><reg name="b1" bitsize="8"/></feature></target>`,
      'a.xml': `<feature name="org.example.a"><reg name="a0" bitsize="32"/><xi:include href="c.xml"/><reg name="a1" bitsize="64"/></feature>`,
      'c.xml': `<feature name="org.example.c"><![CDATA[ <reg name="no"/> ]]><reg name="c0" bitsize="8"/></feature>`,
    }),
  );
  t.same(d.features, ['org.example.a', 'org.example.c', 'org.example.b']);
  t.same(
    d.registers.registers.map((r) => [r.name, r.regnum, r.offset]),
    [
      ['a0', 0, 0],
      ['c0', 1, 4],
      ['a1', 2, 5],
      ['b0', 10, 13],
      ['b1', 11, 15],
    ],
    'regnum counts on from the previous register across includes; offsets pack in regnum order, skipping gaps',
  );
  t.equal(d.registers.get('b0').group, 'g&h', 'entities in attributes are decoded');
  t.equal(d.registers.get('b0').feature, 'org.example.b');

  const refused = async (files: Record<string, string>, message: RegExp): Promise<void> => {
    await t.rejects(readTargetDescription(from(files)), { name: 'GdbError', message }, message.source);
  };
  await refused({ 'target.xml': '<target><xi:include href="target.xml"/></target>' }, /includes itself/);
  await refused({ 'target.xml': '<target><xi:include href="x:y"/></target>' }, /not a plain annex name/);
  await refused({ 'target.xml': '<target><reg name="r" bitsize="12"/></target>' }, /not a whole number of bytes/);
  await refused({ 'target.xml': '<target><reg name="r"/></target>' }, /without bitsize/);
  await refused({ 'target.xml': '<target><reg name="r" bitsize="8"/><reg name="r" bitsize="8"/></target>' }, /declares r/);
  await refused({ 'target.xml': '<target><reg name="r" bitsize="8" regnum="0"/><reg name="s" bitsize="8" regnum="0"/></target>' }, /over r \(regnum 0\)/);
  await refused({ 'target.xml': '<target><feature></target>' }, /closes <feature>/);
  await refused({ 'target.xml': '<target><!-- never closed' }, /unterminated comment/);
  await refused({ 'target.xml': '<target><reg name="r" bitsize=8/></target>' }, /malformed attribute/);
  await refused({ 'target.xml': '<target>&bogus;</target>' }, /unknown entity/);
  t.same(
    [...scanXml('<a x="1"/>t&lt;<b>')].map((x) => x.kind),
    ['start', 'text', 'start'],
  );
});

/** The calls test/gdb-qemu.test.ts made while recording session.txt, with what the replay must show. */
async function replaySession(t: Test, chop?: (chunk: string) => string[]): Promise<void> {
  const stub = new FakeStub(session, chop ? { chop } : {});
  const log: string[] = [];
  const gdb = await GdbClient.over(stub.stream, { log: (line) => log.push(line) });
  t.equal(gdb.packetSize, 4096);
  t.ok(gdb.acknowledging);
  t.equal(gdb.initialStop?.raw, 'T05thread:p01.01;');
  t.same(gdb.pendingStops(), [], 'the attach-time T02 is not left for waitForStop');
  const regs = await gdb.readRegisters();
  t.equal(regs.size, 66);
  t.equal(await gdb.readRegister('rip'), regs.get('rip'), "'p' and 'g' agree in the recording");
  await gdb.writeRegister('r15', 0x1122334455667788n);
  t.equal(await gdb.readRegister('r15'), 0x1122334455667788n);
  await gdb.writeRegister('r15', regs.get('r15')!);
  const text = await gdb.readMemory(KERNEL_TEXT, 4100);
  t.equal(text.length, 4100);
  t.same(text.subarray(0, 3), Buffer.from([0x48, 0x8d, 0x25]));
  await gdb.writeMemory(KERNEL_TEXT + 0x1000n, text.subarray(0x1000, 0x1010));
  const fault = (await gdb.readMemory(0n, 16).catch((e: unknown) => e)) as GdbError;
  t.ok(fault instanceof GdbError);
  t.equal(fault.errno, 14);
  t.match(fault.message, /m0,10: the stub replied E14 \(EFAULT\)/);
  t.equal(fault.packet, 'm0,10');
  t.equal(fault.reply, 'E14');
  t.equal((await gdb.request(`m${KERNEL_TEXT.toString(16)},801`)).toString(), 'E22');
  await gdb.insertBreakpoint('hardware', KERNEL_TEXT, 1);
  await gdb.removeBreakpoint('hardware', KERNEL_TEXT, 1);
  await t.rejects(gdb.removeBreakpoint('hardware', KERNEL_TEXT, 1), {
    name: 'GdbError',
    errno: 22,
    message: /z1,ffffffff81000000,1: the stub replied E22 \(EINVAL\)/,
  });
  const threads = await gdb.threads();
  t.same(threads, ['p01.01', 'p01.02']);
  await gdb.selectThread('g', threads[1]!);
  await gdb.readRegister('rip');
  await gdb.selectThread('g', threads[0]!);
  t.equal(await gdb.currentThread(), 'p01.01');
  const run = gdb.cont();
  const interrupted = await gdb.interrupt();
  t.match(interrupted, { kind: 'signal', signal: 2, thread: 'p01.01' });
  t.equal(await run, interrupted);
  t.match(await gdb.step(), { kind: 'signal', signal: 5 });
  await gdb.close();
  t.notOk(stub.mismatch, stub.mismatch ?? 'every request matched the recording');
  t.ok(stub.finished, 'and the whole recording was used (detach included)');
  const stubPackets = (session.greeting.join('') + session.exchanges.flatMap((e) => e.replies).join('')).match(/\$[^#]*#../g)!.length;
  t.equal(stub.fromClient.filter((x) => x === '+').length, stubPackets, 'one + for every packet QEMU sent');
  t.ok(log.includes('X unsupported: writing memory with M'));
}

t.test('transcript: a recorded session, as recorded', (t) => replaySession(t));
t.test('transcript: a recorded session, one byte per read', (t) => replaySession(t, bytewise));
t.test('transcript: a recorded session, reads of 7 bytes', (t) => replaySession(t, (c) => c.match(/[^]{1,7}/g)!));

/** The recorded handshake followed by `tail`, served by a fake stub; a connected client. */
async function afterHandshake(
  tail: Exchange[],
  options: GdbClientOptions & { chop?: (c: string) => string[]; respond?: (r: string) => string[]; edit?: (h: Exchange[]) => void } = {},
) {
  const exchanges = handshake();
  options.edit?.(exchanges);
  const stub = new FakeStub({ greeting: session.greeting, exchanges: [...exchanges, ...tail] }, options);
  const gdb = await GdbClient.over(stub.stream, options);
  return { stub, gdb };
}

const gChunk = (): string => recorded('g').replies.join('');
const gPayload = (): string => payloadOf(gChunk());

t.test('bad checksum from the stub: the client answers - and takes the retransmission', async (t) => {
  const corrupt = `+$${gPayload()}#00`;
  const { stub, gdb } = await afterHandshake([
    { request: frame('g'), replies: [corrupt] },
    // QEMU 7.2 answers '-' by sending its last packet again (seen on a raw socket).
    { request: '-', replies: [frame(gPayload())] },
  ]);
  const regs = await gdb.readRegisters();
  t.equal(regs.size, 66);
  t.equal(gdb.stats.nacked, 1);
  t.same(stub.fromClient.slice(-3), ['$g#67', '-', '+'], 'the client sent -, then + for the good copy');
  t.notOk(stub.mismatch);
  await gdb.close();
});

t.test('the stub refuses our packet with -: the client resends it, and gives up after 5', async (t) => {
  // QEMU 7.2 answers a packet with a bad checksum with a bare '-' (seen on a raw socket).
  const { stub, gdb } = await afterHandshake([
    { request: frame('g'), replies: ['-'] },
    { request: frame('g'), replies: [gChunk()] },
    ...Array.from({ length: 6 }, () => ({ request: frame('qC'), replies: ['-'] })),
  ]);
  t.equal((await gdb.readRegisters()).size, 66);
  t.equal(gdb.stats.retransmitted, 1);
  const error = (await gdb.currentThread().catch((e: unknown) => e)) as GdbError;
  t.match(error, { name: 'GdbError', message: /refused our packet 5 times/, packet: 'qC' });
  t.equal(stub.fromClient.filter((x) => x === '$qC#b4').length, 6);
  await t.rejects(gdb.readRegisters(), /refused our packet/, 'the connection is given up');
});

t.test('a stop reply arriving unasked between command replies is queued, not taken for the reply', async (t) => {
  // The stop QEMU sent after a QMP stop (recorded), in the same read as the 'g' reply.
  const asyncStop = '$T02thread:p01.01;#03';
  for (const [label, replies] of [
    ['in one read with the reply', [`+${asyncStop}${frame(gPayload())}`]],
    ['before the ack', [asyncStop, gChunk()]],
    ['byte by byte', [...`+${asyncStop}${frame(gPayload())}`]],
    ['as a %Stop notification (non-stop mode), after line noise', ['+\r\n', raw('Stop:T02thread:p01.01;', '%'), frame(gPayload())]],
  ] as const) {
    const { stub, gdb } = await afterHandshake([
      { request: frame('g'), replies: [...replies] },
      { request: frame('qC'), replies: ['+$QCp01.01#f4'] },
    ]);
    const regs = await gdb.readRegisters();
    t.equal(regs.size, 66, `${label}: readRegisters got the g reply`);
    t.equal(await gdb.currentThread(), 'p01.01', `${label}: and the next command its own reply`);
    t.equal(gdb.pendingStops().length, 1);
    t.match(await gdb.waitForStop(0), { kind: 'signal', signal: 2, raw: 'T02thread:p01.01;' }, `${label}: waitForStop returns the queued stop`);
    t.notOk(stub.mismatch);
    await t.rejects(gdb.waitForStop(20), GdbTimeoutError, 'and nothing else is queued');
    stub.stream.destroy();
  }
});

t.test('O packets while running go to onOutput; cont resolves with the stop after them', async (t) => {
  const output: string[] = [];
  const { stub, gdb } = await afterHandshake(
    [
      { request: frame('vCont;c'), replies: ['+', frame('O48656c6c6f2c20'), frame('O776f726c640a')] },
      { request: '\x03', replies: [`${frame('O2e')}${frame('T02thread:p01.01;')}`] },
    ],
    { onOutput: (text) => output.push(text.toString()) },
  );
  const run = gdb.cont();
  await new Promise((resolve) => setTimeout(resolve, 20));
  const stop = await gdb.interrupt();
  t.equal(await run, stop);
  t.equal(output.join(''), 'Hello, world\n.');
  t.match(stop, { kind: 'signal', signal: 2 });
  stub.stream.destroy();
});

/** RIP at the breakpoint (0x10001720) and one instruction further, little-endian hex as 'p' answers. */
const pc = '2017001000000000';
const moved = '2a17001000000000';

t.test('resuming from an execution breakpoint steps over it first; stepOver: false does not', async (t) => {
  // Formats as QEMU 7.2 sent them in test/gdb-qemu.test.ts (Z1 at a user address, then cont).
  const target = 0x10001720n;
  const { stub, gdb } = await afterHandshake([
    { request: frame('Z1,10001720,1'), replies: ['+$OK#9a'] },
    { request: frame('vCont;c'), replies: ['+', frame('T05thread:p01.02;')] },
    { request: frame('vCont;c'), replies: ['+', frame('T05thread:p01.02;')] },
    { request: frame('Hgp01.02'), replies: ['+$OK#9a'] },
    { request: frame('p10'), replies: [`+${frame(pc)}`] },
    { request: frame('z1,10001720,1'), replies: ['+$OK#9a'] },
    { request: frame('vCont;s:p01.02'), replies: ['+', frame('T05thread:p01.02;')] },
    { request: frame('p10'), replies: [`+${frame(moved)}`] },
    { request: frame('Z1,10001720,1'), replies: ['+$OK#9a'] },
    { request: frame('vCont;c'), replies: ['+', frame('T05thread:p01.02;')] },
  ]);
  await gdb.insertBreakpoint('hardware', target, 1);
  t.match(await gdb.cont(), { signal: 5, thread: 'p01.02' }, 'first stop');
  t.match(await gdb.cont({ stepOver: false }), { signal: 5 }, 'stepOver: false sends vCont;c at once');
  t.match(await gdb.cont(), { signal: 5 }, 'then: Hg, p, z1, step that vCPU, check it moved, Z1, vCont;c');
  t.notOk(stub.mismatch, stub.mismatch ?? 'every request as scripted');
  t.ok(stub.finished);
  stub.stream.destroy();
});

t.test('a step that leaves the vCPU on the breakpoint is repeated before the breakpoint goes back', async (t) => {
  const target = 0x10001720n;
  const { stub, gdb } = await afterHandshake([
    { request: frame('Z1,10001720,1'), replies: ['+$OK#9a'] },
    { request: frame('vCont;c'), replies: ['+', frame('T05thread:p01.02;')] },
    { request: frame('Hgp01.02'), replies: ['+$OK#9a'] },
    { request: frame('p10'), replies: [`+${frame(pc)}`] },
    { request: frame('z1,10001720,1'), replies: ['+$OK#9a'] },
    { request: frame('vCont;s:p01.02'), replies: ['+', frame('T05thread:p01.02;')] },
    { request: frame('p10'), replies: [`+${frame(pc)}`] },
    { request: frame('vCont;s:p01.02'), replies: ['+', frame('T05thread:p01.02;')] },
    { request: frame('p10'), replies: [`+${frame(moved)}`] },
    { request: frame('Z1,10001720,1'), replies: ['+$OK#9a'] },
    { request: frame('vCont;c'), replies: ['+', frame('T05thread:p01.02;')] },
  ]);
  await gdb.insertBreakpoint('hardware', target, 1);
  await gdb.cont();
  t.match(await gdb.cont(), { signal: 5 }, 'the second step moved the vCPU; only then Z1 and vCont;c');
  t.notOk(stub.mismatch, stub.mismatch ?? 'every request as scripted');
  t.ok(stub.finished);
  stub.stream.destroy();
});

t.test('the resume itself refused; commands while running refused', async (t) => {
  const { stub, gdb } = await afterHandshake([
    { request: frame('vCont;c'), replies: [`+${frame('E22')}`] },
    { request: frame('vCont;c'), replies: ['+'] },
    { request: '\x03', replies: [] },
  ]);
  await t.rejects(gdb.cont(), { name: 'GdbError', errno: 22, message: /vCont;c: the stub replied E22/ });
  t.notOk(gdb.isRunning);
  const run = gdb.cont();
  await t.rejects(gdb.readMemory(KERNEL_TEXT, 4), /the target is running \(vCont;c\); interrupt\(\) or wait/);
  await t.rejects(gdb.interrupt(30), GdbTimeoutError, 'a stub that never stops: the interrupt times out');
  stub.stream.destroy();
  await t.rejects(run, { name: 'GdbError', message: /gdbstub connection (closed|failed)/ }, 'the dropped connection ends the pending cont');
});

t.test('no-ack mode when offered: no + either way after the OK; a bad checksum then breaks the link', async (t) => {
  const offered = 'PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+;QStartNoAckMode+';
  const { stub, gdb } = await afterHandshake([], {
    edit: (h) => {
      h[0]!.replies = h[0]!.replies.map((c) => c.replace(/\$PacketSize=[^#]*#../, frame(offered)));
      h.splice(1, 0, { request: frame('QStartNoAckMode'), replies: ['+$OK#9a'] });
      // After the switch the stub sends no acks.
      for (const e of h.slice(2)) e.replies = e.replies.map((c) => c.replace(/^\+/, '')).filter((c) => c !== '+');
    },
    respond: (request) => (request === frame('qC') ? ['$QCp01.01#00'] : []),
  });
  t.notOk(gdb.acknowledging);
  t.equal(gdb.registers.gBytes, 608, 'the handshake went on without acks');
  const okAt = stub.fromClient.indexOf(frame('QStartNoAckMode'));
  t.equal(stub.fromClient[okAt + 1], '+', 'the OK itself is acked');
  t.notOk(stub.fromClient.slice(okAt + 2).includes('+'), 'nothing after it');
  t.notOk(stub.mismatch);
  await t.rejects(gdb.currentThread(), { name: 'GdbError', message: /bad checksum in no-ack mode/ });
});

t.test('X writes when the stub takes them: binary escaped, chunked to PacketSize; M otherwise', async (t) => {
  const writes = new Map<bigint, Buffer>();
  const frames: string[] = [];
  const respond = (request: string): string[] => {
    frames.push(request);
    const body = decodePayload(Buffer.from(request.slice(1, -3), 'latin1'));
    const colon = body.indexOf(0x3a);
    const [addr, len] = body
      .toString('latin1', 1, colon)
      .split(',')
      .map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
    const data = body[0] === 0x58 ? body.subarray(colon + 1) : Buffer.from(body.toString('latin1', colon + 1), 'hex');
    if (BigInt(data.length) !== len) return [`+${frame('E22')}`];
    writes.set(addr, data);
    return [`+${frame('OK')}`];
  };
  const small = 'PacketSize=100;qXfer:features:read+;vContSupported+;multiprocess+';
  const { stub, gdb } = await afterHandshake([], {
    respond,
    edit: (h) => {
      h[0]!.replies = h[0]!.replies.map((c) => c.replace(/\$PacketSize=[^#]*#../, frame(small)));
      // With a 256-byte PacketSize the qXfer requests ask for less each time.
      const xfer = h.filter((e) => e.request.startsWith('$qXfer'));
      const xml = recordedXml();
      h.splice(
        h.indexOf(xfer[0]!),
        xfer.length,
        ...xferExchanges('target.xml', xml.get('target.xml')!, 0x7d),
        ...xferExchanges('i386-64bit.xml', xml.get('i386-64bit.xml')!, 0x7d),
      );
    },
  });
  t.equal(gdb.packetSize, 0x100);
  const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 13) & 0xff));
  await gdb.writeMemory(0x1000n, data);
  t.equal(frames[0], frame('X1000,0:'), 'a zero-length X probes for binary writes');
  t.ok(
    frames.every((f) => f.length <= 0x100),
    `no packet exceeds PacketSize (longest ${Math.max(...frames.map((f) => f.length))})`,
  );
  t.ok(
    frames.slice(1).every((f) => f.startsWith('$X')),
    'X accepted: every chunk is binary',
  );
  const joined = Buffer.concat([...writes.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, d]) => d));
  t.ok(joined.equals(data), `${frames.length - 1} X packets reassemble the data, # $ } * included`);
  t.equal(writes.size, frames.length - 1);
  stub.stream.destroy();
});

/** qXfer exchanges serving `text` in pieces of `length`, as QEMU would. */
function xferExchanges(annex: string, text: string, length: number): Exchange[] {
  const out: Exchange[] = [];
  for (let offset = 0; ; offset += length) {
    const piece = text.slice(offset, offset + length);
    const last = offset + length >= text.length;
    out.push({
      request: frame(`qXfer:features:read:${annex}:${offset.toString(16)},${length.toString(16)}`),
      replies: [`+${frame(`${last ? 'l' : 'm'}${piece}`)}`],
    });
    if (last) return out;
  }
}

t.test('run-length encoded replies (as gdbserver sends them) decode like plain ones', async (t) => {
  const plain = gPayload();
  const rle = plain.replace(/(.)\1{3,96}/g, (run, ch: string) => {
    const count = run.length - 1;
    // Counts that would encode as '#' or '$' (6, 7 repeats) are split, as the protocol requires.
    return count === 6 || count === 7 ? `${ch}*${String.fromCharCode(29 + 5)}${ch.repeat(count - 5)}` : `${ch}*${String.fromCharCode(29 + count)}`;
  });
  t.ok(rle.length < plain.length / 2, `the g reply shrinks from ${plain.length} to ${rle.length} bytes`);
  const { stub, gdb } = await afterHandshake([
    { request: frame('g'), replies: [`+${raw(rle)}`] },
    { request: frame('g'), replies: [gChunk()] },
  ]);
  t.same(await gdb.readRegisters(), await gdb.readRegisters());
  stub.stream.destroy();
});

t.test('a reply that never comes: GdbTimeoutError naming the packet, and the link is given up', async (t) => {
  const { gdb } = await afterHandshake([{ request: frame('g'), replies: ['+'] }], { timeoutMs: 50 });
  const error = (await gdb.readRegisters().catch((e: unknown) => e)) as GdbTimeoutError;
  t.ok(error instanceof GdbTimeoutError && error instanceof GdbError);
  t.match(error.message, /^g: no reply within 50 ms/);
  t.match(error.details['recent packets'], /> g/);
  await t.rejects(gdb.readRegisters(), GdbTimeoutError, 'later requests fail with the same error');
  await gdb.close();
});

t.test('unsupported requests and endpoints', async (t) => {
  const { stub, gdb } = await afterHandshake([{ request: frame('Z4,1000,8'), replies: ['+$#00'] }]);
  await t.rejects(gdb.insertBreakpoint('access', 0x1000n, 8), { name: 'GdbError', message: /does not support access breakpoints \(empty reply\)/ });
  await t.rejects(gdb.writeRegister('eflags', -1n), /does not fit eflags/);
  await t.rejects(gdb.selectThread('g', '1;c'), /invalid thread id/);
  await t.rejects(gdb.readMemory(0xffff_ffff_ffff_fff0n, 32), /leaves the 64-bit address space/);
  stub.stream.destroy();
  await t.rejects(GdbClient.connect({ host: '10.0.2.15' as '127.0.0.1', port: 1234 }), { name: 'GdbError', message: /refusing gdbstub at 10.0.2.15/ });
  const tiny = new FakeStub({ greeting: [], exchanges: [{ request: session.exchanges[0]!.request, replies: [`+${frame('PacketSize=10')}`] }] });
  await t.rejects(GdbClient.over(tiny.stream), { name: 'GdbError', message: /unusable PacketSize=10/, reply: 'PacketSize=10' }, 'a failed handshake rejects');
  t.ok(tiny.stream.destroyed, 'and drops the connection');
});

t.test('malformed replies: named, and a broken frame or stop reply gives up the link', async (t) => {
  const { stub, gdb } = await afterHandshake([
    { request: frame('p10'), replies: [`+${frame('1234')}`] },
    { request: frame('m1000,4'), replies: [`+${frame('zz')}`] },
    { request: frame('qC'), replies: [`+${frame('T05thread:zz;')}`] },
  ]);
  await t.rejects(gdb.readRegister('rip'), { name: 'GdbError', message: /p10: expected 8 bytes of rip, got "1234"/ });
  await t.rejects(gdb.readMemory(0x1000n, 4), { name: 'GdbError', message: /m1000,4: expected up to 4 bytes of memory, got "zz"/ });
  await t.rejects(gdb.currentThread(), { name: 'GdbError', message: /malformed stop reply: bad thread id "zz"/ });
  t.ok(stub.stream.destroyed, 'an unparseable stop reply leaves the protocol out of step: disconnected');
  const rle = await afterHandshake([{ request: frame('g'), replies: [`+${raw('*!')}`] }]);
  await t.rejects(rle.gdb.readRegisters(), { name: 'GdbError', message: /malformed run-length encoding/ });
  await t.rejects(GdbClient.connect({ path: '/nonexistent/gdb.sock' }), {
    name: 'GdbError',
    message: /cannot connect to the gdbstub at \/nonexistent\/gdb.sock/,
  });
});
