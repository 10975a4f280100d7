// The dashboard in a real browser: Debian's chromium, driven by
// playwright-core (which never downloads a browser), against a real meshd
// that tests/e2e/dashboard.rs started. Exits 0 when every step passed;
// otherwise prints the step that failed and exits 1.
//
// Environment (set by tests/e2e/dashboard.rs):
//   MESHD_ADMIN_URL   the admin listener, e.g. http://127.0.0.1:9090
//   MESHD_ADMIN_TOKEN the admin token
//   MESHD_URL         the public listener, for traffic
//   HELLO_WASM, ECHO_WASM  two guests to deploy as versions of a new app
//   APP_COUNT         how many apps meshd serves (about 1,000)
//   SCREENSHOT_DIR    where screenshots go (under target/, not the repo)
//   CHROMIUM          the browser (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import { createHash } from 'node:crypto';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/e2e/dashboard.rs sets it)`);
  return value;
};
const ADMIN = env('MESHD_ADMIN_URL');
const TOKEN = env('MESHD_ADMIN_TOKEN');
const PUBLIC = env('MESHD_URL');
const HELLO = env('HELLO_WASM');
const ECHO = env('ECHO_WASM');
const APP_COUNT = Number(env('APP_COUNT'));
const SHOTS = env('SCREENSHOT_DIR');
mkdirSync(SHOTS, { recursive: true });

const digest = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');
const HELLO_ID = digest(HELLO).slice(0, 12);
const ECHO_DIGEST = digest(ECHO);
const ECHO_ID = ECHO_DIGEST.slice(0, 12);
const HELLO_TEXT = 'Hello from Steelmesh!';

let step = 'starting';
const log = (...args) => console.log(`[${step}]`, ...args);
function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function get(path) {
  const response = await fetch(PUBLIC + path);
  return { status: response.status, text: await response.text() };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
  headless: true,
});
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 4\d\d/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  page.on('request', (r) => {
    if (r.url().includes(TOKEN)) problems.push(`the token is in a URL: ${r.url()}`);
    if (!r.url().startsWith(ADMIN)) problems.push(`a request leaves meshd: ${r.url()}`);
  });

  step = 'sign in';
  await page.goto(ADMIN + '/');
  await page.getByLabel(/Admin token/).fill('not-the-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('That is not the admin token.').waitFor();
  await page.getByLabel(/Admin token/).fill(TOKEN);
  const before = Date.now();
  await page.getByLabel(/Admin token/).press('Enter');
  await page.waitForFunction((n) => document.querySelectorAll('#apps-body tr').length === n, APP_COUNT);
  const firstPaint = Date.now() - before;
  const renderMs = await page.evaluate(() => document.body.dataset.renderMs);
  log(`${APP_COUNT} apps: signed in and listed in ${firstPaint} ms; table render ${renderMs} ms`);
  check(await page.evaluate(() => sessionStorage.getItem('meshd-admin-token')) === TOKEN, 'the token is not in sessionStorage');

  step = 'the example apps';
  for (const name of ['hello', 'echo', 'counter', 'hostile']) {
    const row = page.locator(`#apps-body tr[data-app="${name}"]`);
    await row.waitFor();
    const text = await row.innerText();
    check(text.includes(`/${name}`) && text.includes('dir') && text.includes('live'), `row of ${name}: ${text}`);
  }

  step = 'a refresh keeps the keyboard focus';
  await page.getByRole('button', { name: 'Show app hello' }).focus();
  const updated = await page.locator('#status').innerText();
  await page.waitForFunction((u) => document.getElementById('status').textContent !== u, updated, { timeout: 15_000 });
  check(await page.evaluate(() => document.activeElement?.getAttribute('aria-label')) === 'Show app hello',
    'the refresh took the focus away');

  step = 'filter 1,000 apps';
  let started = Date.now();
  await page.getByLabel('Filter').fill('bulk-09');
  await page.waitForFunction(() => document.querySelectorAll('#apps-body tr').length < 200);
  const rows = await page.locator('#apps-body tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.app));
  check(rows.length > 0 && rows.every((name) => name.includes('bulk-09')), `filtered rows: ${rows.slice(0, 5)}`);
  log(`filter to ${rows.length} rows in ${Date.now() - started} ms (render ${await page.evaluate(() => document.body.dataset.renderMs)} ms)`);
  check((await page.locator('#count').innerText()).includes(`of ${APP_COUNT} apps`), 'the count');
  started = Date.now();
  await page.getByLabel('Filter').fill('');
  await page.waitForFunction((n) => document.querySelectorAll('#apps-body tr').length === n, APP_COUNT);
  log(`clear the filter: ${APP_COUNT} rows in ${Date.now() - started} ms`);
  await page.getByLabel('Filter').fill('shop');

  step = 'deploy by upload';
  await page.getByLabel('App name').fill('shop');
  await page.getByLabel('Component (.wasm)').setInputFiles(HELLO);
  await page.getByRole('button', { name: 'Deploy' }).click();
  await page.locator('#deploy-result .ok').filter({ hasText: `shop is live, live version ${HELLO_ID}` }).waitFor();
  check(await page.locator('#deploy-progress').evaluate((p) => p.value) === 100, 'the progress bar did not reach 100');
  check((await get('/shop')).text.includes(HELLO_TEXT), 'shop does not serve hello');
  await page.locator('#apps-body tr[data-app="shop"]').filter({ hasText: HELLO_ID }).waitFor();

  step = 'deploy a new version by dropping it';
  const dropped = await page.evaluateHandle(({ name, base64 }) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type: 'application/wasm' }));
    return transfer;
  }, { name: 'echo.wasm', base64: readFileSync(ECHO).toString('base64') });
  await page.locator('#drop').dispatchEvent('dragover', { dataTransfer: dropped });
  await page.locator('#drop').dispatchEvent('drop', { dataTransfer: dropped });
  check(await page.locator('#deploy-wasm').evaluate((input) => input.files[0]?.name) === 'echo.wasm', 'the drop did not choose the file');
  await page.getByRole('button', { name: 'Deploy' }).click();
  await page.locator('#deploy-result .ok').filter({ hasText: `live version ${ECHO_ID}` }).waitFor();
  await page.locator('#apps-body tr[data-app="shop"]').filter({ hasText: ECHO_ID }).waitFor();
  check(!(await get('/shop')).text.includes(HELLO_TEXT), 'shop still serves hello');

  step = 'a refused upload';
  await page.getByLabel('Component (.wasm)').setInputFiles({
    name: 'broken.wasm', mimeType: 'application/wasm', buffer: Buffer.from('this is not WebAssembly'),
  });
  await page.getByRole('button', { name: 'Deploy' }).click();
  const refusal = page.locator('#deploy-result .refused');
  await refusal.waitFor();
  const refusalText = await refusal.innerText();
  check(refusalText.includes('422 invalid_component') && refusalText.includes('does not start with the \\0asm magic bytes'),
    `the refusal: ${refusalText}`);
  log(`shown: ${refusalText.replace(/\n/g, ' | ')}`);
  check(!(await get('/shop')).text.includes(HELLO_TEXT), 'the refused upload changed shop');

  step = 'roll back';
  await page.getByRole('button', { name: 'Show app shop' }).click();
  await page.locator('#details-title').filter({ hasText: 'App shop' }).waitFor();
  await page.locator('#details-error pre').filter({ hasText: 'invalid_component' }).waitFor();
  await page.getByRole('button', { name: `Roll back to ${HELLO_ID}` }).click();
  await page.locator('#action-result .ok').filter({ hasText: `live version ${HELLO_ID}` }).waitFor();
  check((await get('/shop')).text.includes(HELLO_TEXT), 'the rollback did not bring hello back');

  step = 'canary';
  await page.getByLabel('Version', { exact: true }).selectOption(ECHO_DIGEST);
  await page.locator('#canary-percent').fill('50');
  check(await page.locator('#canary-percent-out').innerText() === '50', 'the slider output');
  await page.getByRole('button', { name: 'Start canary' }).click();
  await page.locator('#action-result .ok').filter({ hasText: `canary ${ECHO_ID} at 50%` }).waitFor();
  const answers = await Promise.all(Array.from({ length: 60 }, () => get('/shop')));
  const fromHello = answers.filter((a) => a.text.includes(HELLO_TEXT)).length;
  log(`60 requests during the canary: ${fromHello} from the live version, ${60 - fromHello} from the canary`);
  check(fromHello > 0 && fromHello < 60, 'the canary does not split the requests');
  await page.getByRole('button', { name: 'Abort' }).click();
  await page.locator('#action-result .ok').filter({ hasText: /Abort canary: done/ }).waitFor();
  check(!(await page.locator('#action-result').innerText()).includes(', canary '), 'the canary is still running');
  await page.locator('#canary-percent').focus();
  await page.keyboard.press('End'); // keyboard: 99%
  await page.keyboard.press('ArrowLeft'); // 98%
  check(await page.locator('#canary-percent-out').innerText() === '98', 'the slider by keyboard');
  await page.getByRole('button', { name: 'Start canary' }).click();
  await page.locator('#action-result .ok').filter({ hasText: `canary ${ECHO_ID} at 98%` }).waitFor();
  await page.getByRole('button', { name: 'Promote' }).click();
  await page.locator('#action-result .ok').filter({ hasText: `Promote: done (200). shop is live, live version ${ECHO_ID}` }).waitFor();
  check(!(await get('/shop')).text.includes(HELLO_TEXT), 'the promoted canary does not serve');

  step = 'a canary by upload';
  await page.getByLabel('Component (.wasm)').setInputFiles(HELLO);
  await page.getByLabel(/As a canary of the live version/).check();
  await page.getByLabel('Canary share of requests, percent').fill('20');
  await page.getByRole('button', { name: 'Deploy' }).click();
  await page.locator('#deploy-result .ok').filter({ hasText: `live version ${ECHO_ID}, canary ${HELLO_ID} at 20%` }).waitFor();
  await page.getByLabel(/As a canary of the live version/).uncheck();
  await page.getByRole('button', { name: 'Abort' }).click();
  await page.locator('#action-result .ok').filter({ hasText: /Abort canary: done/ }).waitFor();

  step = 'remove';
  await page.getByRole('button', { name: 'Remove this app…' }).click();
  await page.getByRole('button', { name: 'Cancel' }).click();
  check((await get('/shop')).status === 200, 'cancel removed the app');
  await page.getByRole('button', { name: 'Remove this app…' }).click();
  await page.getByRole('button', { name: 'Yes, remove it' }).click();
  await page.locator('#action-result .ok').filter({ hasText: 'removed shop' }).waitFor();
  check((await get('/shop')).status === 404, 'shop still serves after removal');

  step = 'the request-rate chart moves after traffic';
  await page.getByLabel('Filter').fill('hello');
  // By keyboard: the app's name is a button.
  await page.getByRole('button', { name: 'Show app hello' }).focus();
  await page.keyboard.press('Enter');
  await page.locator('#details-title').filter({ hasText: 'App hello' }).waitFor();
  await page.locator('#chart-rate svg').waitFor();
  const total = () => page.locator('#chart-rate').evaluate((c) => Number(c.dataset.total));
  const quiet = await total();
  for (let i = 0; i < 10; i++) await Promise.all(Array.from({ length: 10 }, () => get('/hello')));
  started = Date.now();
  await page.waitForFunction((q) => Number(document.getElementById('chart-rate').dataset.total) > q, quiet, { timeout: 30_000 });
  log(`requests in the chart: ${quiet} before, ${await total()} ${Date.now() - started} ms after 100 requests`);
  log(`chart: ${await page.locator('#chart-rate svg').getAttribute('aria-label')}`);
  // The picture for docs/dashboard.png: one app, its charts and its log.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(SHOTS, 'dashboard.png'), fullPage: true });
  await page.getByLabel('Filter').fill('');
  await page.getByLabel('Sort by').selectOption('rate');
  await page.waitForFunction(() => document.querySelector('#apps-body tr')?.dataset.app === 'hello', null, { timeout: 30_000 });
  await page.screenshot({ path: join(SHOTS, 'dashboard-1000-apps.png') });

  step = 'a narrow screen';
  await page.setViewportSize({ width: 400, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: join(SHOTS, 'dashboard-narrow.png') });
  check(overflow <= 1, `the page scrolls sideways by ${overflow} px at 400 px wide`);
  await page.setViewportSize({ width: 1280, height: 900 });

  step = 'the log follows live';
  await page.getByLabel('Filter').fill('hostile');
  await page.getByRole('button', { name: 'Show app hostile' }).click();
  await page.locator('#details-title').filter({ hasText: 'App hostile' }).waitFor();
  await page.locator('#log-state').filter({ hasText: '(following)' }).waitFor();
  check((await get('/hostile/shout?lines=3')).text === 'shouted 3', 'the shout');
  await page.locator('#log li').filter({ hasText: '[stdout] shout 2' }).waitFor();
  await page.keyboard.press('Escape');
  check(await page.locator('#details').isHidden(), 'Escape does not close the app');

  step = 'sign out';
  await page.getByRole('button', { name: 'Sign out' }).click();
  check(await page.evaluate(() => sessionStorage.getItem('meshd-admin-token')) === null, 'the token stays after sign-out');
  await page.getByLabel(/Admin token/).waitFor();

  step = 'done';
  check(problems.length === 0, problems.join('\n'));
  log('every step passed');
} catch (e) {
  console.log(`FAILED at step "${step}": ${e.message}`);
  if (problems.length) console.log(problems.join('\n'));
  await browser.close();
  process.exit(1);
}
await browser.close();
