// The dashboard in a real browser: Debian's chromium, driven by puppeteer-core (npm,
// pinned), against a larderd serving synthetic stand-ins of the example models.
//
//   node dashboard.mjs LARDERD NPM_DIR SHOT_DIR
//
// Exit 0 when every check holds, 1 when one fails, 77 (skip) without chromium.
// Every wait polls for a condition with a generous bound; nothing asserts on durations.
import {spawn} from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {createRequire} from 'node:module';

const [larderd, npmDir, shotDir] = process.argv.slice(2);
const CHROMIUM = '/usr/bin/chromium';
const TOKEN = 'dashboard-test-admin-token-0123456789';
const BOUND_MS = 60000;
// Markup a hostile backend puts in its error text: it must show as text, never run.
const IMG = '<img src=x onerror="window.__pwned=1">';
const SCRIPT = '<script>window.__pwned=2</script>';
const NAME = '<img src=x onerror="window.__pwned=3">';

if (!fs.existsSync(CHROMIUM)) {
  console.log(`skip: ${CHROMIUM} not found (install Debian's chromium, scripts/packages.txt)`);
  process.exit(77);
}
const puppeteer = createRequire(path.join(npmDir, 'node_modules') + '/')('puppeteer-core');

function fail(msg) { throw new Error(msg); }

async function until(what, cond) {
  const end = Date.now() + BOUND_MS;
  for (;;) {
    const v = await cond().catch(() => false);
    if (v) return v;
    if (Date.now() > end) fail(`gave up waiting for ${what}`);
    await new Promise(r => setTimeout(r, 100));
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on('error', reject);
  });
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'larder-ui-'));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
fs.writeFileSync(path.join(dir, 'admin.tokens'), TOKEN + '\n', {mode: 0o600});
fs.writeFileSync(path.join(dir, 'larder.ini'), `
[server]
listen = 127.0.0.1:${port}
admin_tokens = admin.tokens

[memory]
budget = 256MiB
ttl = 5m

[model.ocr-eng]
backend = synthetic-pooled
size = 24MiB
load_ms = 150
instances = 2

[model.asr-en]
backend = synthetic
size = 32MiB
load_ms = 300

[model.tabular]
backend = synthetic
size = 8MiB
load_ms = 50

[model.ocr-hq]
backend = synthetic-pooled
memory = 4GiB
fallback = ocr-eng

[model.hostile-img]
backend = synthetic
fail = always
label = ${IMG}

[model.hostile-script]
backend = synthetic
fail = always
label = ${SCRIPT}
`);
const log = fs.openSync(path.join(dir, 'larderd.log'), 'w');
const daemon = spawn(larderd, ['--config', path.join(dir, 'larder.ini')],
                     {stdio: ['ignore', log, log]});
let browser = null;

async function api(method, p) {
  const r = await fetch(base + p, {method, headers: {Authorization: 'Bearer ' + TOKEN}});
  return {status: r.status, body: await r.json().catch(() => null)};
}

async function main() {
  await until('larderd /health', async () => (await fetch(base + '/health')).ok);
  fs.mkdirSync(shotDir, {recursive: true});
  browser = await puppeteer.launch({executablePath: CHROMIUM, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage']});
  const page = await browser.newPage();
  await page.setViewport({width: 1600, height: 1300});
  const problems = [];
  page.on('console', m => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
  page.on('pageerror', e => problems.push('page error: ' + e.message));
  page.on('dialog', async d => { problems.push('dialog: ' + d.message()); await d.dismiss(); });

  // / redirects to the dashboard, which lists every model
  const resp = await page.goto(base + '/', {waitUntil: 'load'});
  if (!resp.url().endsWith('/ui')) fail(`/ did not lead to /ui but to ${resp.url()}`);
  const csp = resp.headers()['content-security-policy'] || '';
  if (!csp.includes("script-src 'self'")) fail(`no strict CSP on /ui: '${csp}'`);
  const names = ['asr-en', 'hostile-img', 'hostile-script', 'ocr-eng', 'ocr-hq', 'tabular'];
  await until('every model in the table', () => page.evaluate(n =>
    n.every(x => document.querySelector(`#models tr[data-name="${x}"]`)), names));
  await until('the event stream', () => page.$eval('#conn', e => e.textContent === 'live'));

  const state = name => page.$eval(`#models tr[data-name="${name}"] td[data-col="state"] .state`,
                                   e => e.textContent);
  const marker = (kind, name) => page.$(`#timeline circle.marker[data-kind="${kind}"][data-name="${name}"]`);

  // a load over HTTP: the row turns ready, a load marker appears
  let r = await api('POST', '/v1/models/tabular/load');
  if (r.status !== 200) fail(`load tabular: ${r.status} ${JSON.stringify(r.body)}`);
  await until('tabular ready in the table', async () => (await state('tabular')) === 'ready');
  await until('a load marker for tabular', () => marker('load', 'tabular'));
  r = await api('POST', '/v1/models/ocr-eng/load');
  if (r.status !== 200) fail(`load ocr-eng: ${r.status}`);
  await until('ocr-eng ready in the table', async () => (await state('ocr-eng')) === 'ready');
  // an unload over HTTP: the row turns unloaded, an unload marker appears
  r = await api('POST', '/v1/models/tabular/unload');
  if (r.status !== 200) fail(`unload tabular: ${r.status}`);
  await until('tabular unloaded in the table', async () => (await state('tabular')) === 'unloaded');
  await until('an unload marker for tabular', () => marker('unload', 'tabular'));
  // hovering a marker names the model and its figures
  const m = await marker('load', 'tabular');
  await m.hover();
  await until('the marker tip', () => page.$eval('#tip', e => !e.hidden && e.textContent.includes('tabular')));

  // the load times per model, from the metrics histograms
  await until('load times of tabular', () => page.$('#loadtimes figure[data-name="tabular"]'));
  // advice: ocr-hq never fits the budget
  await until('advice for ocr-hq', () =>
    page.$eval('#advice', e => e.textContent.includes('never_fits') && e.textContent.includes('ocr-hq')));

  // the hostile models fail with markup in their error: it shows as text
  for (const [name, text] of [['hostile-img', IMG], ['hostile-script', SCRIPT]]) {
    r = await api('POST', `/v1/models/${name}/load`);
    if (r.status !== 500) fail(`load ${name}: ${r.status}, expected 500`);
    await until(`${name}'s error as text`, () => page.$eval(
      `#models tr[data-name="${name}"] td[data-col="error"]`, (e, t) => e.textContent.includes(t), text));
  }
  await until('the failures in the event log', () => page.$$eval('#events li[data-type="load_fail"]',
    l => l.length >= 2 && l.some(e => e.textContent.includes('<script>'))));

  // an admin unload from the page, the token asked for once
  r = await api('POST', '/v1/models/asr-en/load');
  if (r.status !== 200) fail(`load asr-en: ${r.status}`);
  await until('asr-en ready', async () => (await state('asr-en')) === 'ready');
  await page.click('#models tr[data-name="asr-en"] button.unload');
  await until('the token form', () => page.$eval('#token-form', e => !e.hidden));
  await page.type('#token-input', TOKEN);
  await page.click('#token-form button[type="submit"]');
  await until('asr-en unloaded from the page', async () => (await state('asr-en')) === 'unloaded');
  // a second action reuses the token: no form this time
  await page.click('#models tr[data-name="ocr-eng"] button.unload');
  await until('ocr-eng unloaded from the page', async () => (await state('ocr-eng')) === 'unloaded');
  if (!await page.$eval('#token-form', e => e.hidden)) fail('the token was asked for twice');
  const kept = await page.evaluate(() => ({s: sessionStorage.getItem('larder.adminToken'),
    l: localStorage.length, url: location.href}));
  if (kept.s !== TOKEN) fail('the token is not in sessionStorage');
  if (kept.l !== 0 || kept.url.includes(TOKEN)) fail('the token leaked to localStorage or the URL');
  if (fs.readFileSync(path.join(dir, 'larderd.log'), 'utf8').includes(TOKEN)) fail('the token is in the log');
  // the screenshot for docs/dashboard.md: the timeline with some minutes of lines
  await until('the timeline lines', () => page.$$eval('#timeline polyline', l => l.length >= 2));
  await page.evaluate(() => { for (const s of document.querySelectorAll('section')) s.scrollLeft = 0; });
  await page.screenshot({path: path.join(shotDir, 'dashboard.png'), fullPage: true});

  // a model whose very name is markup (names in larder's config cannot be, so the test
  // hands the page one): it shows as text too
  const page2 = await browser.newPage();
  await page2.setViewport({width: 1500, height: 700});
  page2.on('console', m => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
  page2.on('pageerror', e => problems.push('page error: ' + e.message));
  page2.on('dialog', async d => { problems.push('dialog: ' + d.message()); await d.dismiss(); });
  await page2.setRequestInterception(true);
  page2.on('request', async req => {
    if (!req.url().endsWith('/v1/models')) return req.continue();
    const real = await (await fetch(base + '/v1/models')).json();
    const fake = {...real.models.find(x => x.name === 'hostile-img'), name: NAME, backend: SCRIPT,
                  fallback: IMG, isolation: SCRIPT};
    real.models.push(fake);
    req.respond({status: 200, contentType: 'application/json', body: JSON.stringify(real)});
  });
  await page2.goto(base + '/ui', {waitUntil: 'load'});
  await until('the markup-named row', () => page2.evaluate(n =>
    [...document.querySelectorAll('#models td[data-col="name"]')].some(td => td.textContent === n), NAME));
  await page2.screenshot({path: path.join(shotDir, 'hostile.png')});

  for (const p of [page, page2]) {
    const seen = await p.evaluate(() => ({pwned: window.__pwned, imgs: document.querySelectorAll('img').length,
      scripts: [...document.scripts].filter(s => !s.src.endsWith('/ui/app.js')).length}));
    if (seen.pwned !== undefined) fail(`markup ran: window.__pwned = ${seen.pwned}`);
    if (seen.imgs || seen.scripts) fail(`markup became elements: ${JSON.stringify(seen)}`);
  }
  if (problems.length) fail('the page reported problems:\n  ' + problems.join('\n  '));
  console.log(`ok: dashboard checks passed; screenshots in ${shotDir}`);
}

let status = 0;
try {
  await main();
} catch (e) {
  status = 1;
  console.error('FAIL: ' + e.message);
  console.error('--- larderd log ---\n' + fs.readFileSync(path.join(dir, 'larderd.log'), 'utf8'));
} finally {
  if (browser) await browser.close().catch(() => {});
  daemon.kill('SIGTERM');
  await new Promise(r => daemon.exitCode !== null ? r() : daemon.on('exit', r));
  fs.rmSync(dir, {recursive: true, force: true});
}
process.exit(status);
