// expect: the HTML report shows each case's scenario × policy matrix (PASS/FAIL cells, negative controls
// marked, platform conditions), escapes untrusted text, and renders so in a real headless Chromium: the
// matrix cells are laid out, a click opens a cell to expected vs observed, and the full-page screenshot
// (artifacts/html-report/report.png) has the page's size, is not blank and shows both verdict colours.
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { chromiumCommand, HeadlessChromium, liveGroupMembers } from '../harness/browser/chromium.ts';
import { InfraError, MissingDependencyError, TimeoutError } from '../harness/errors.ts';
import { escapeHtml, htmlReport, REPORT_COLORS, type HtmlReportInput } from '../harness/report/html.ts';
import { consoleExcerpt, writeHtmlReport } from '../harness/report/html-inputs.ts';
import type { InfraFailure } from '../harness/report/infra-failures.ts';
import { artifactsRoot, type Verdict } from '../harness/report/verdicts.ts';
import { writeCheckpointImage } from '../harness/restore/checkpoint-image.ts';
import { REPO_ROOT } from '../harness/util/cache-dir.ts';
import { decodePng, pixelStats } from './support/png.ts';
import { syntheticImage } from './support/synthetic-image.ts';

const HW = 'hw breakpoint, checkpoint at hit 2 (RF=1)';
const REGS = 'patterns in every register';
const PROBE = 'untrusted text <probe>';
const SCRIPT = '<script>window.__crhInjected = 1</script><img src=x onerror="window.__crhInjected = 2">';
const RF_CONDITION = { 'probes.rfAtHwBreakpointStop': 'true' };

async function tempDir(t: Test, prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Two cases: 3 + 4 matrix cells, 5 PASS (one a control), 1 FAIL (a control), 1 not run; an infrastructure failure. */
const VERDICTS: Verdict[] = [
  {
    case: 'hwbreak-rf',
    scenario: HW,
    policy: 'rf=keep-and-preserve restorer=ptrace',
    control: false,
    expected: '5 hits, 3 #DB after restore',
    observed: '5 hits, 3 #DB after restore',
    pass: true,
    conditions: RF_CONDITION,
    durationMs: 2300,
  },
  {
    case: 'hwbreak-rf',
    scenario: HW,
    policy: 'rf=clear',
    control: true,
    expected: '6 hits, 4 #DB after restore (spurious re-trigger)',
    observed: '5 hits, 3 #DB after restore',
    pass: false,
    conditions: RF_CONDITION,
    registerDiff: 'eflags: image 0x10246, cpu 0x246',
  },
  {
    case: 'hwbreak-rf',
    scenario: HW,
    policy: 'restorer=popf',
    control: true,
    expected: '6 hits (RF lost by POPF)',
    observed: '6 hits',
    pass: true,
    conditions: RF_CONDITION,
  },
  {
    case: 'register-integrity',
    scenario: REGS,
    policy: 'restorer=ptrace regs=full',
    control: false,
    expected: 'regcheck ok',
    observed: 'regcheck ok',
    pass: true,
  },
  {
    case: 'register-integrity',
    scenario: REGS,
    policy: 'restorer=ptrace regs=partial',
    control: true,
    expected: 'mismatch: rbx rbp r12 r13 r14 r15',
    observed: 'regcheck mismatch: rbx rbp r12 r13 r14 r15',
    pass: true,
    registerDiff: 'rbx: image 0x1111, cpu 0x0\nrbp: image 0x2222, cpu 0x0',
  },
  {
    case: 'register-integrity',
    scenario: PROBE,
    policy: 'restorer=ptrace regs=full',
    control: false,
    expected: 'escaped',
    observed: `${SCRIPT} \u001b[31mred\u001b[0m`,
    pass: true,
  },
];
const INFRA: InfraFailure[] = [{ case: 'rseq-cs', error: 'BootError: the kernel panicked <b>bold?</b>\n--- console tail ---\nKernel panic - not syncing' }];
const INPUT: HtmlReportInput = {
  verdicts: VERDICTS,
  infra: INFRA,
  profile: [
    ['accel', 'tcg'],
    ['probes.rfOnUserPageFault', 'false'],
  ],
  consoleExcerpts: { 'hwbreak-rf': '[    1.9] crh: ready, uptime 1.90', 'rseq-cs': 'Kernel panic - not syncing' },
  artifactLinks: { 'hwbreak-rf': '../hwbreak-rf' },
  generatedAt: '2026-11-23T12:00:00Z',
};

t.test('escapes untrusted text: markup, quotes, control characters, link schemes', async (t) => {
  const html = htmlReport(INPUT);
  t.notMatch(html, /<script/i, 'no <script> element anywhere in the page');
  t.notMatch(html, /<img/i, 'no element from verdict text');
  t.ok(html.includes('&lt;script&gt;window.__crhInjected = 1&lt;/script&gt;'), 'the script arrives as text');
  t.ok(html.includes('\\x1b[31mred'), 'an escape character is shown, not sent to the page');
  t.ok(html.includes('&lt;b&gt;bold?&lt;/b&gt;'), 'infrastructure error text is escaped too');
  t.equal(escapeHtml(`a"b'c&<>`), 'a&quot;b&#39;c&amp;&lt;&gt;');
  const hostile = htmlReport({ verdicts: [{ ...VERDICTS[0]!, case: 'x"><i>' }], artifactLinks: { 'x"><i>': 'javascript:alert(1)/..' } });
  t.ok(hostile.includes('data-case="x&quot;&gt;&lt;i&gt;"'), 'a case name cannot leave its attribute');
  t.ok(hostile.includes('href="javascript%3Aalert(1)/.."'), 'an artifacts link stays a relative URL');
  t.match(html, /Content-Security-Policy" content="default-src 'none'/, 'and the page forbids scripts regardless');
});

t.test('the outcome line follows the exit-code rules', async (t) => {
  t.match(htmlReport({ verdicts: VERDICTS.filter((v) => v.pass) }), /class="outcome pass">ALL AS EXPECTED/);
  t.match(htmlReport({ verdicts: VERDICTS }), /class="outcome fail">FAILED/);
  t.match(htmlReport({ verdicts: VERDICTS, infra: INFRA }), /class="outcome fail">INFRASTRUCTURE FAILURE/);
  t.match(htmlReport({ verdicts: [] }), /NO VERDICTS/);
});

t.test("writeHtmlReport reads console tails, links case folders and takes the profile from this run's newest checkpoint image", async (t) => {
  const root = await tempDir(t, 'crh-html-');
  const caseDir = path.join(root, 'hwbreak-rf');
  await mkdir(caseDir, { recursive: true });
  const lines = Array.from({ length: 100 }, (_, i) => `\u001b[1mline ${i + 1}\u001b[0m\r`);
  await writeFile(path.join(caseDir, 'console.log'), `${lines.join('\n')}\n`);
  const sinceMs = Date.now() - 1000;
  const stale = path.join(caseDir, 'checkpoint-old.tar');
  await writeCheckpointImage(syntheticImage({ platform: { accel: 'stale-run' } }), stale);
  await utimes(stale, new Date(sinceMs - 60_000), new Date(sinceMs - 60_000));
  await writeCheckpointImage(
    syntheticImage({ platform: { accel: 'tcg', 'probes.rfOnUserPageFault': false, 'probes.rseqDeprecatedFlagsRejected': null } }),
    path.join(caseDir, 'checkpoint-new.tar'),
  );

  const excerpt = await consoleExcerpt(path.join(caseDir, 'console.log'));
  t.equal(excerpt?.split('\n').length, 40, 'forty lines');
  t.equal(excerpt?.split('\n')[0], 'line 61', 'the tail, escape sequences and carriage returns removed');

  const file = path.join(root, 'out', 'report.html');
  await writeHtmlReport(file, { verdicts: VERDICTS.slice(0, 3), infra: [], artifactsRoot: root, sinceMs });
  const html = await readFile(file, 'utf8');
  t.ok(html.includes('line 100') && !html.includes('line 60<'), 'the console excerpt is in every hwbreak-rf cell');
  t.ok(html.includes('href="../hwbreak-rf"'), 'the case folder, relative to the report');
  t.match(html, /<th scope="row">accel<\/th><td>tcg<\/td>/, 'the profile facts of this run');
  t.match(html, /probes\.rseqDeprecatedFlagsRejected<\/th><td>not measured/);
  t.notMatch(html, /stale-run/, 'an image older than the run is not used');
  t.match(html, /hwbreak-rf\/checkpoint-new\.tar, the newest checkpoint image of this run/);
});

t.test('crh run writes the report: to --html FILE, else to artifacts/report.html, also when the infrastructure failed', async (t) => {
  const crh = path.join(REPO_ROOT, 'bin', 'crh.js');
  const failed = await tempDir(t, 'crh-html-run-');
  const htmlFile = path.join(failed, 'elsewhere', 'run.html');
  const r = await execa(process.execPath, [crh, 'run', '--cases', 'test/fixtures/cases', '--artifacts', failed, '--html', htmlFile], {
    reject: false,
    cwd: REPO_ROOT,
  });
  t.equal(r.exitCode, 1, 'the fixture case fails');
  t.match(r.stdout, new RegExp(`HTML report: ${htmlFile}`));
  const html = await readFile(htmlFile, 'utf8');
  t.match(html, /class="outcome fail">FAILED/);
  t.match(html, /<table class="matrix" data-case="always-fails">/);
  t.match(html, /<td class="cell fail" data-status="fail">/, 'the failed verdict is a FAIL cell');
  t.notOk(existsSync(path.join(failed, 'report.html')), '--html replaces the default');

  const infra = await tempDir(t, 'crh-html-run-');
  const r69 = await execa(process.execPath, [crh, 'run', '--kernel', '/nonexistent/bzImage', '--artifacts', infra], { reject: false, cwd: REPO_ROOT });
  t.equal(r69.exitCode, 69);
  const infraHtml = await readFile(path.join(infra, 'report.html'), 'utf8');
  t.match(infraHtml, /INFRASTRUCTURE FAILURE/);
  t.match(infraHtml, /kernel bzImage not found: \/nonexistent\/bzImage/, 'with the error that stopped the run');
});

t.test('the Chromium command line: the binary itself under setpriv, the DevTools pipe, nothing that reaches the network', async (t) => {
  const asUser = chromiumCommand('/usr/bin/setpriv', '/usr/lib/chromium/chromium', '/tmp/profile', { asRoot: false });
  t.equal(asUser.executable, '/usr/bin/setpriv');
  t.same(asUser.args.slice(0, 4), ['--pdeathsig', 'KILL', '--', '/usr/lib/chromium/chromium'], 'setpriv execs the browser, not the /usr/bin/chromium wrapper');
  const args = asUser.args.slice(4);
  for (const flag of [
    '--headless=new',
    '--remote-debugging-pipe',
    '--user-data-dir=/tmp/profile',
    '--host-resolver-rules=MAP * ~NOTFOUND',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-breakpad',
    '--disable-crash-reporter',
    '--disable-extensions',
    '--disable-gpu',
    '--force-color-profile=srgb',
  ]) {
    t.ok(args.includes(flag), flag);
  }
  t.notOk(
    args.some((a) => a.startsWith('--remote-debugging-port')),
    'no DevTools port',
  );
  t.notOk(args.includes('--no-sandbox'), 'sandboxed when not root');
  const disabled = args.filter((a) => a.startsWith('--disable-features=')).flatMap((a) => a.slice('--disable-features='.length).split(','));
  t.equal(args.filter((a) => a.startsWith('--disable-features=')).length, 1, 'one --disable-features list: puppeteer merges ours into its own');
  for (const feature of ['Translate', 'MediaRouter', 'OptimizationHints', 'AutofillServerCommunication', 'CertificateTransparencyComponentUpdater']) {
    t.ok(disabled.includes(feature), `feature ${feature} disabled`);
  }
  t.ok(
    chromiumCommand('/usr/bin/setpriv', '/usr/lib/chromium/chromium', '/tmp/profile', { asRoot: true }).args.includes('--no-sandbox'),
    '--no-sandbox as root',
  );
});

t.test('Chromium is required, and its absence is named with the install command', async (t) => {
  const saved = process.env.CRH_CHROMIUM;
  process.env.CRH_CHROMIUM = '/nonexistent/chromium';
  t.teardown(() => {
    if (saved === undefined) delete process.env.CRH_CHROMIUM;
    else process.env.CRH_CHROMIUM = saved;
  });
  const error = await HeadlessChromium.launch({ timeoutMs: 5000 }).catch((e: unknown) => e);
  t.ok(error instanceof MissingDependencyError, 'MissingDependencyError');
  t.match((error as MissingDependencyError).describe(), /bootstrap --test/);
});

t.test('in a real headless Chromium: the matrix renders, a cell opens, the screenshot shows it', async (t) => {
  const started = Date.now();
  const outDir = path.join(artifactsRoot(), 'html-report');
  await mkdir(outDir, { recursive: true });
  const htmlFile = path.join(outDir, 'report.html');
  await writeFile(htmlFile, htmlReport(INPUT));

  const browser = await HeadlessChromium.launch({ timeoutMs: 25_000 });
  t.teardown(() => browser.close());
  const launchedMs = Date.now() - started;
  const page = await browser.newPage({ width: 1280, height: 800 });
  await page.goto(pathToFileURL(htmlFile).href);

  interface Rendered {
    title: string;
    matrices: Array<{ case: string; rows: number; columns: number }>;
    status: Record<string, number>;
    controls: number;
    laidOut: number;
    cellLabels: string[];
    flatRows: number;
    infra: string[];
    scripts: number;
    injected: string;
    scriptShownAsText: boolean;
    failBadgeColour: string;
  }
  const rendered = await page.evaluate<Rendered>(`(() => {
    const cells = [...document.querySelectorAll('table.matrix td.cell')];
    const status = {};
    for (const c of cells) status[c.dataset.status] = (status[c.dataset.status] ?? 0) + 1;
    return {
      title: document.title,
      matrices: [...document.querySelectorAll('table.matrix')].map((m) => ({ case: m.dataset.case, rows: m.tBodies[0].rows.length, columns: m.tHead.rows[0].cells.length - 1 })),
      status,
      controls: cells.filter((c) => c.hasAttribute('data-control')).length,
      laidOut: cells.filter((c) => { const r = c.getBoundingClientRect(); return r.width > 40 && r.height > 10; }).length,
      cellLabels: cells.map((c) => c.querySelector('summary')?.innerText.split('\\n')[0] ?? c.innerText),
      flatRows: document.querySelectorAll('table.flat tbody tr').length,
      infra: [...document.querySelectorAll('article.infra h3')].map((h) => h.textContent),
      scripts: document.scripts.length,
      injected: typeof window.__crhInjected,
      scriptShownAsText: [...document.querySelectorAll('pre')].some((p) => p.textContent.includes('<script>window.__crhInjected = 1</script>')),
      failBadgeColour: getComputedStyle(document.querySelector('td.cell.fail .badge')).backgroundColor,
    };
  })()`);
  t.equal(rendered.title, 'cr-harness report');
  t.same(
    rendered.matrices,
    [
      { case: 'hwbreak-rf', rows: 1, columns: 3 },
      { case: 'register-integrity', rows: 2, columns: 2 },
    ],
    'one matrix per case: scenarios × policies',
  );
  t.same(rendered.status, { pass: 5, fail: 1, none: 1 }, 'cell verdicts');
  t.equal(rendered.controls, 3, 'negative controls marked');
  t.equal(rendered.laidOut, 7, 'every matrix cell has a rendered box');
  t.same(rendered.cellLabels, ['PASS', 'FAIL control', 'PASS control', 'PASS', 'PASS control', 'PASS', 'not run'], 'the words a reader sees, in order');
  t.equal(rendered.flatRows, VERDICTS.length, 'the flat table has every verdict');
  t.same(rendered.infra, ['rseq-cs'], 'the infrastructure failure is listed');
  t.equal(rendered.scripts, 0, 'no script element in the rendered DOM');
  t.equal(rendered.injected, 'undefined', 'nothing from verdict text ran');
  t.ok(rendered.scriptShownAsText, 'the script is shown as text');
  t.equal(rendered.failBadgeColour, 'rgb(179, 38, 30)', `FAIL badge computed colour is ${REPORT_COLORS.fail}`);

  // Open the failing control the way a reader does: a mouse click on its summary.
  const closedText = await page.evaluate<string>(`document.querySelector('td.cell.fail details').innerText`);
  t.notMatch(closedText, /spurious re-trigger/, 'closed: expected vs observed not rendered');
  const at = await page.evaluate<{ x: number; y: number }>(`(() => {
    const s = document.querySelector('td.cell.fail summary');
    s.scrollIntoView({ block: 'center' });
    const r = s.getBoundingClientRect();
    return { x: r.x + 8, y: r.y + r.height / 2 };
  })()`);
  await page.click(at.x, at.y);
  const opened = await page.evaluate<{ open: boolean; text: string; height: number }>(`(() => {
    const d = document.querySelector('td.cell.fail details');
    return { open: d.open, text: d.innerText, height: d.querySelector('dl').getBoundingClientRect().height };
  })()`);
  t.ok(opened.open, 'the click opened the cell');
  t.ok(opened.height > 100, `the opened cell takes room (${opened.height} px)`);
  for (const shown of [
    'expected',
    '6 hits, 4 #DB after restore (spurious re-trigger)',
    'observed',
    'register diff',
    'eflags: image 0x10246, cpu 0x246',
    'console excerpt',
    'crh: ready, uptime 1.90',
    'probes.rfAtHwBreakpointStop=true',
  ]) {
    t.ok(opened.text.includes(shown), `the opened cell shows ${JSON.stringify(shown)}`);
  }

  const shot = await page.screenshotFullPage();
  const pngFile = path.join(outDir, 'report.png');
  await writeFile(pngFile, shot);
  const pageHeight = await page.evaluate<number>('document.documentElement.scrollHeight');
  const png = decodePng(shot);
  t.equal(png.width, 1280, 'PNG width = viewport width');
  t.equal(png.height, pageHeight, `PNG height = the page's height (${pageHeight} px): the whole page`);
  const stats = pixelStats(png, [REPORT_COLORS.pass, REPORT_COLORS.fail, REPORT_COLORS.failCell]);
  t.ok(stats.lumaStdDev > 20, `not blank: luma standard deviation ${stats.lumaStdDev.toFixed(1)}`);
  t.ok(stats.distinctColors > 50, `${stats.distinctColors} distinct colours (text is anti-aliased)`);
  t.ok(stats.counts[REPORT_COLORS.pass]! > 500, `PASS badges painted: ${stats.counts[REPORT_COLORS.pass]} px of ${REPORT_COLORS.pass}`);
  t.ok(stats.counts[REPORT_COLORS.fail]! > 200, `FAIL badges painted: ${stats.counts[REPORT_COLORS.fail]} px of ${REPORT_COLORS.fail}`);
  t.ok(stats.counts[REPORT_COLORS.failCell]! > 2000, `the failing cell's background painted: ${stats.counts[REPORT_COLORS.failCell]} px`);

  const pid = browser.pid;
  await browser.close();
  t.same(liveGroupMembers(pid), [], 'no Chromium process left');
  const totalMs = Date.now() - started;
  t.comment(`chromium: launch ${launchedMs} ms, whole check ${totalMs} ms; screenshot ${pngFile} (${png.width}×${png.height}, ${shot.length} bytes)`);
  t.ok(totalMs < 30_000, `the browser check took ${totalMs} ms`);
});

t.test('a browser that runs past its budget is killed, with every process of its group', async (t) => {
  const browser = await HeadlessChromium.launch({ timeoutMs: 4000 });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ width: 320, height: 200 });
  const thrown = await page.evaluate('null.boom').catch((e: unknown) => e);
  t.ok(thrown instanceof InfraError && !(thrown instanceof TimeoutError), 'an exception in the page is an InfraError');
  t.match(
    (thrown as InfraError).describe(),
    /page evaluation threw: TypeError: Cannot read properties of null[^]*--- expression ---\nnull\.boom/,
    'naming the exception and the expression',
  );
  const hung = await page.evaluate('new Promise(() => {})').catch((e: unknown) => e);
  t.ok(hung instanceof TimeoutError, `a page that never answers ends in TimeoutError: ${(hung as Error).message}`);
  await browser.close();
  t.same(liveGroupMembers(browser.pid), [], 'no Chromium process left');
});

t.test('a skipped case is shown as SKIP, counted neither as a pass nor as a failure', async (t) => {
  const skipped = {
    case: 'rseq',
    scenario: '(every scenario of the case)',
    policy: '-',
    expected: 'run',
    observed: 'skipped',
    pass: false,
    control: false,
    skipped: 'the guest kernel lacks CONFIG_RSEQ (not set)',
  };
  const html = htmlReport({ verdicts: [skipped], infra: [] });
  t.match(html, /<td class="cell skip" data-status="skip">/, 'the matrix cell is a skip');
  t.match(html, /<span class="badge skip">SKIP<\/span> the guest kernel lacks CONFIG_RSEQ/, 'the flat table names the missing option');
  t.match(html, /ALL AS EXPECTED<\/span> — 1 of 1 verdicts as expected or skipped, 0 not/);
});
