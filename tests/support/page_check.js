// Opens a page in headless Chromium (Debian's, driven by the npm package `playwright-core`),
// takes a screenshot and prints what the tests check, as JSON on stdout.
//
//   node page_check.js <chromium> <url> <screenshot.png> [viewport]
//
// The screenshot is of the whole page, or of the first screen with `viewport`.
'use strict';
const { chromium } = require('playwright-core');

(async () => {
  const [executablePath, url, screenshot, only] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 860 } });
    const requests = [];
    page.on('request', (request) => requests.push(request.url()));
    const dialogs = [];
    page.on('dialog', async (dialog) => {
      dialogs.push(dialog.message());
      await dialog.dismiss();
    });
    const response = await page.goto(url, { waitUntil: 'load' });
    const out = await page.evaluate(() => ({
      title: document.title,
      contentType: document.contentType,
      routes: [...document.querySelectorAll('#routes tbody tr')].map((row) =>
        [...row.cells].map((cell) => cell.textContent)),
      scripts: document.querySelectorAll('script').length,
      images: document.querySelectorAll('img').length,
      trend: !!document.querySelector('svg#trend polyline'),
      links: [...document.querySelectorAll('nav a')].map((a) => a.href),
      reports: [...document.querySelectorAll('.report')].map((r) => r.textContent),
      text: document.body.innerText,
    }));
    out.status = response.status();
    out.requests = requests;
    out.dialogs = dialogs;
    await page.screenshot({ path: screenshot, fullPage: only !== 'viewport' });
    process.stdout.write(JSON.stringify(out));
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
