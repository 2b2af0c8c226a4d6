// expect: an image records what the process may depend on (XCR0 and the xstate in use, CPU flags it could have seen,
// the vDSO layout and symbols, the rseq feature size and alignment) in depends.json (format 10), validated field by
// field; a version 9 image still reads (no dependencies); each dependency a target lacks is named.
import t from 'tap';
import { rejects } from './support/rejects.ts';
import { IMAGE_VERSION, imageEntries, parseImageEntries } from '../harness/restore/checkpoint-image.ts';
import {
  auxvRseq,
  dependenciesJson,
  IncompatibleTargetError,
  missingDependencies,
  parseDependencies,
  userCpuFlags,
  vdsoRedirectable,
  xstateHeader,
  type PlatformDependencies,
} from '../harness/restore/platform-dependencies.ts';
import { trampolinePage, vdsoRedirectSteps } from '../harness/restore/vdso-redirect.ts';
import { reseal, syntheticImage, syntheticXstate } from './support/synthetic-image.ts';

/** What a TCG `-cpu max` guest on Debian's 6.1 looks like (x87 SSE AVX PKRU; no rseq auxv). */
const MAX_61: PlatformDependencies = {
  xstate: { xcr0: 0x207n, inUse: 0x207n },
  cpuFlags: ['avx', 'avx2', 'fsgsbase', 'ospke', 'pku', 'sse', 'sse2', 'xsave'],
  vdso: {
    mappings: [
      { name: '[vvar]', start: 0x7ffff7fbd000n, end: 0x7ffff7fc1000n },
      { name: '[vdso]', start: 0x7ffff7fc1000n, end: 0x7ffff7fc3000n },
    ],
    symbols: { __vdso_clock_gettime: 0xb00n, __vdso_gettimeofday: 0xa90n, __vdso_getcpu: 0xd40n },
  },
  rseq: { featureSize: null, align: null },
};

t.test('the xstate header: XCR0 from sw_reserved word 0 (ptrace), XSTATE_BV from the XSAVE header', async (t) => {
  // As measured on Debian 6.1 under TCG -cpu max: XCR0 0x21f at offset 464, XSTATE_BV 0x217 with ymm0-15 loaded.
  t.same(xstateHeader(syntheticXstate(2696, 0x21fn, 0x217n)), { xcr0: 0x21fn, xstateBv: 0x217n });
  t.same(xstateHeader(syntheticXstate(832, 0n, 0x3n)).xcr0, null, 'a zero word: the kernel reported no XCR0');
  t.same(xstateHeader(Buffer.alloc(100)), { xcr0: null, xstateBv: 0n }, 'too short for a header');
});

t.test('CPU flags: only those user space can use, sorted', async (t) => {
  const cpuinfo = 'processor\t: 0\nflags\t\t: fpu vme de pse tsc msr sse2 sse avx2 avx hypervisor pku ospke lm nx\nbugs\t\t: \n';
  t.same(userCpuFlags(cpuinfo), ['avx', 'avx2', 'ospke', 'pku', 'sse', 'sse2']);
  t.same(userCpuFlags('no flags line'), []);
});

t.test('auxv: AT_RSEQ_FEATURE_SIZE (27) and AT_RSEQ_ALIGN (28), absent before 6.3', async (t) => {
  const pairs = (entries: Array<[bigint, bigint]>): Buffer => {
    const b = Buffer.alloc(16 * (entries.length + 1));
    entries.forEach(([k, v], i) => {
      b.writeBigUInt64LE(k, 16 * i);
      b.writeBigUInt64LE(v, 16 * i + 8);
    });
    return b;
  };
  t.same(
    auxvRseq(
      pairs([
        [6n, 4096n],
        [27n, 28n],
        [28n, 32n],
      ]),
    ),
    { featureSize: 28, align: 32 },
  );
  t.same(auxvRseq(pairs([[6n, 4096n]])), { featureSize: null, align: null });
  t.same(
    auxvRseq(
      pairs([
        [0n, 0n],
        [27n, 28n],
      ]),
    ),
    { featureSize: null, align: null },
    'nothing after AT_NULL',
  );
});

t.test('missing dependencies: each named, with why', async (t) => {
  t.same(missingDependencies(MAX_61, MAX_61), [], 'the same platform lacks nothing');
  const noAvx: PlatformDependencies = {
    ...MAX_61,
    xstate: { xcr0: 0x203n, inUse: 0x3n },
    cpuFlags: MAX_61.cpuFlags.filter((f) => f !== 'avx' && f !== 'avx2'),
  };
  const missing = missingDependencies(MAX_61, noAvx);
  t.same(
    missing.map((m) => m.feature),
    ['avx', 'avx2'],
    'avx in use (YMM), avx2 only seen',
  );
  t.match(missing[0]!.why, /in use: YMM state.*XCR0 0x203/);
  t.match(missing[1]!.why, /could have been seen/);
  const error = new IncompatibleTargetError(missing);
  t.match(error.message, /lacks what the process depends on: avx \(in use/);

  const unused = { ...MAX_61, xstate: { xcr0: 0x207n, inUse: 0x203n } };
  t.same(
    missingDependencies(unused, noAvx).map((m) => m.feature),
    ['avx', 'avx2'],
    'AVX never used: still refused, it could have been seen',
  );

  const noPku: PlatformDependencies = { ...MAX_61, xstate: { xcr0: 0x7n, inUse: 0x7n }, cpuFlags: MAX_61.cpuFlags.filter((f) => f !== 'pku' && f !== 'ospke') };
  t.same(
    missingDependencies(MAX_61, noPku).map((m) => m.feature),
    ['pku', 'ospke'],
  );

  const kernel612: PlatformDependencies = {
    ...MAX_61,
    vdso: {
      mappings: [
        { name: '[vvar]', start: 0x7ffff7fbb000n, end: 0x7ffff7fbf000n },
        { name: '[vdso]', start: 0x7ffff7fbf000n, end: 0x7ffff7fc1000n },
      ],
      symbols: { ...MAX_61.vdso.symbols, __vdso_clock_gettime: 0xc20n },
    },
    rseq: { featureSize: 28, align: 32 },
  };
  t.same(
    missingDependencies(MAX_61, kernel612, 0x100c0020n).map((m) => m.feature),
    ['vdso layout', 'vdso symbols'],
    '6.1 → 6.12: the vDSO moved; the rseq ABI only grew',
  );
  t.same(
    missingDependencies(kernel612, MAX_61).map((m) => m.feature),
    ['vdso layout', 'vdso symbols', 'rseq feature size'],
    '6.12 → 6.1: and mm_cid is gone',
  );
  t.same(
    missingDependencies({ ...MAX_61, vdso: { mappings: [], symbols: {} } }, kernel612).map((m) => m.feature),
    [],
    "a process that unmapped its vDSO depends on no vDSO layout (the restore unmaps the target's)",
  );
  t.same(
    missingDependencies(MAX_61, { ...MAX_61, rseq: { featureSize: 28, align: 64 } }, 0x100c0020n).map((m) => m.feature),
    ['rseq alignment'],
  );
});

t.test('depends.json (format 10 and later) round-trips; a version 9 image reads with no dependencies', async (t) => {
  t.equal(IMAGE_VERSION, 11);
  const image = syntheticImage({ dependencies: MAX_61 });
  const back = parseImageEntries(imageEntries(image));
  t.same(back.dependencies, MAX_61);
  t.equal(parseImageEntries(imageEntries(syntheticImage())).dependencies, undefined, 'null: nothing recorded');

  const v9entries = new Map(imageEntries(image));
  v9entries.delete('depends.json');
  v9entries.delete('clocks.json');
  const v9 = reseal(v9entries, {}, (m) => {
    m.version = 9;
    delete (m.entries as Record<string, unknown>)['depends.json'];
    delete (m.entries as Record<string, unknown>)['clocks.json'];
  });
  t.equal(parseImageEntries(v9).dependencies, undefined, 'version 9: read, no dependencies');
  const v10missing = reseal(v9entries, {}, (m) => {
    m.version = 10;
    delete (m.entries as Record<string, unknown>)['depends.json'];
    delete (m.entries as Record<string, unknown>)['clocks.json'];
  });
  rejects(t, () => parseImageEntries(v10missing), 'depends.json', '(entry)');
});

t.test('depends.json is untrusted: every field checked, named', async (t) => {
  const good = dependenciesJson(MAX_61) as Record<string, any>;
  const edit = (f: (d: Record<string, any>) => void): unknown => {
    const d = JSON.parse(JSON.stringify(good)) as Record<string, any>;
    f(d);
    return d;
  };
  t.same(parseDependencies(good), MAX_61);
  t.equal(parseDependencies(null), undefined);
  rejects(t, () => parseDependencies([]), 'depends.json', '(entry)');
  rejects(t, () => parseDependencies(edit((d) => (d.xstate.xcr0 = '207'))), 'depends.json', 'xstate.xcr0');
  rejects(t, () => parseDependencies(edit((d) => (d.xstate.inUse = '0x10000000000000000'))), 'depends.json', 'xstate.inUse');
  rejects(t, () => parseDependencies(edit((d) => (d.cpuFlags = ['avx', 'a b']))), 'depends.json', 'cpuFlags[1]');
  rejects(t, () => parseDependencies(edit((d) => (d.cpuFlags = 'avx'))), 'depends.json', 'cpuFlags');
  rejects(t, () => parseDependencies(edit((d) => (d.vdso.mappings[0].name = '[heap]'))), 'depends.json', 'vdso.mappings[0].name');
  rejects(t, () => parseDependencies(edit((d) => (d.vdso.mappings[1].end = '0x7ffff7fc1000'))), 'depends.json', 'vdso.mappings[1]');
  rejects(t, () => parseDependencies(edit((d) => (d.vdso.symbols['x y'] = '0x1'))), 'depends.json', 'vdso.symbols');
  rejects(t, () => parseDependencies(edit((d) => (d.rseq.featureSize = -1))), 'depends.json', 'rseq.featureSize');
  rejects(t, () => parseDependencies(edit((d) => (d.rseq.align = 1e9))), 'depends.json', 'rseq.align');
  const proto = parseDependencies(edit((d) => (d.vdso.symbols = JSON.parse('{"__proto__": "0x10"}'))))!;
  t.equal(proto.vdso.symbols.__proto__, 0x10n, 'a symbol named __proto__ is a name like any other');
});

t.test('a vDSO with other offsets in the same layout is redirected, not missing (vdso-redirect.ts)', async (t) => {
  const target: PlatformDependencies = {
    ...MAX_61,
    vdso: { ...MAX_61.vdso, symbols: { __vdso_clock_gettime: 0xbc0n, __vdso_gettimeofday: 0x8a0n, __vdso_getcpu: 0xfe0n } },
  };
  t.equal(vdsoRedirectable(MAX_61, MAX_61), undefined, 'nothing changed');
  t.equal(vdsoRedirectable(MAX_61, target), true);
  t.same(missingDependencies(MAX_61, target), [], 'redirected: nothing missing');
  t.same(
    missingDependencies(MAX_61, target, undefined, { redirectVdso: false }).map((m) => m.feature),
    ['vdso symbols'],
    'omit=vdso: missing',
  );
  const lacking = { ...target, vdso: { ...target.vdso, symbols: { __vdso_clock_gettime: 0xbc0n } } };
  t.equal(vdsoRedirectable(MAX_61, lacking), false, 'a function the new vDSO lacks cannot be redirected');
  const lackingMissing = missingDependencies(MAX_61, lacking);
  t.same(
    lackingMissing.map((m) => m.feature),
    ['vdso symbols'],
  );
  t.match(lackingMissing[0]!.why, /lacks __vdso_gettimeofday, __vdso_getcpu \(the others are redirected/, 'named: the functions it lacks');
  const partial = trampolinePage(MAX_61, lacking, 0x2000, 0x4000_0000_4000n);
  t.equal(partial.readBigUInt64LE(0xb06), 0x4000_0000_4000n + 0xbc0n, 'tried anyway: the ones it has jump');
  t.equal(partial[0xd40], 0xcc, 'the one it lacks traps');

  const page = trampolinePage(MAX_61, target, 0x2000, 0x4000_0000_4000n);
  t.equal(page.length, 0x2000);
  t.equal(page[0], 0xcc, 'int3 where no function was');
  t.same([...page.subarray(0xb00, 0xb06)], [0xff, 0x25, 0, 0, 0, 0], "jmp *0(%rip) at clock_gettime's old offset");
  t.equal(page.readBigUInt64LE(0xb06), 0x4000_0000_4000n + 0xbc0n, 'to clock_gettime in the moved vDSO');
  t.equal(page.readBigUInt64LE(0xd46), 0x4000_0000_4000n + 0xfe0n, 'getcpu likewise');

  const { steps, note } = vdsoRedirectSteps(
    77,
    MAX_61,
    target,
    [0x2c001826n],
    [{ start: 0x2c000000n, end: 0x2c100000n, perms: 'r-xp', offset: 0n, device: '00:00', inode: 0, name: '/x' }],
  );
  t.same(
    steps.map((s) => (s.op.op === 'INJECT_SYSCALL' ? s.op.nr : s.op.op)),
    [25, 25, 9, 'WRITE_MEM', 10],
    'mremap vvar and vdso together, map the old place, the jumps, read-only executable',
  );
  t.equal(steps[0]!.expect, 0x4000_0000_0000n, '[vvar] to the first free candidate');
  t.equal(steps[1]!.expect, 0x4000_0000_4000n, '[vdso] at the same distance from it');
  t.match(note, /vDSO redirected/);
  t.throws(
    () => vdsoRedirectSteps(77, MAX_61, target, [0x7ffff7fc1b05n], []),
    /stopped inside the checkpoint kernel's vDSO/,
    'a thread inside the old vDSO cannot be redirected',
  );
  const tooClose = { ...MAX_61, vdso: { ...MAX_61.vdso, symbols: { a: 0x100n, b: 0x108n } } };
  t.throws(() => trampolinePage(tooClose, { ...target, vdso: { ...target.vdso, symbols: { a: 0x200n, b: 0x300n } } }, 0x2000, 0n), /too close/);
});
