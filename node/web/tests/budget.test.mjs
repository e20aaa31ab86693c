// The budget of issue 9: a chat of 10,000 messages opens at its latest messages
// in under 300 ms, and the page keeps at most a few hundred message elements.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { expect } from './expect.mjs';
import { Natterd, launch, openPage } from './harness.mjs';

const MESSAGES = 10000;
const OPEN_BUDGET_MS = 300;
const MAX_ARTICLES = 200;

const node = new Natterd(`registration = "open"
[limits]
send_rate = 100000.0
send_burst = 100000
user_send_rate = 100000.0
user_send_burst = 100000
`);
let browser;

before(async () => {
  await node.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await node.cleanup();
});

/** Fills a chat from another device of the user, over protocol v1 in a page. */
async function fill(page, count) {
  return page.evaluate(async ({ count }) => {
    const login = await fetch('/v1/login', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'carol', password: 'carol-password', deviceName: 'filler' }),
    }).then((r) => r.json());
    const ws = new WebSocket(new URL('/v1/ws', location.href).href.replace('http', 'ws'));
    const answers = new Map();
    let ready;
    const isReady = new Promise((r) => { ready = r; });
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: login.token }));
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === 'ready') ready();
      if (f.id && answers.has(f.id)) answers.get(f.id)(f);
    };
    await isReady;
    const call = (frame) => new Promise((resolve) => {
      const id = `f${answers.size}`;
      answers.set(id, resolve);
      ws.send(JSON.stringify({ ...frame, id }));
    });
    const { chatId } = await call({ type: 'createChat', participants: ['carol'], name: 'Ten thousand' });
    const sends = [];
    for (let i = 1; i <= count; i += 1) {
      sends.push(call({ type: 'sendMessage', chatId, message: `message ${i} of the long chat`, clientMsgId: `m${i}` }));
    }
    const results = await Promise.all(sends);
    ws.close();
    return results.filter((r) => r.type === 'result').length;
  }, { count });
}

test('a chat of 10,000 messages opens at its latest in under 300 ms, with a bounded page', async (t) => {
  const page = await openPage(browser, node);
  await page.getByRole('button', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill('carol');
  await page.getByLabel('Password').fill('carol-password');
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.locator('#conn-state')).toHaveText('Connected');
  const filler = await openPage(browser, node);
  const started = Date.now();
  assert.equal(await fill(filler, MESSAGES), MESSAGES);
  t.diagnostic(`filled ${MESSAGES} messages in ${Date.now() - started} ms`);
  const chat = page.getByRole('navigation', { name: 'Chats' }).getByRole('button', { name: /Ten thousand/ });
  await expect(chat).toContainText(`message ${MESSAGES} of the long chat`, { timeout: 60000 });

  // From the click to the latest message on screen, measured in the page.
  const elapsed = await page.evaluate((last) => new Promise((resolve) => {
    const button = [...document.querySelectorAll('.chat-item')].find((b) => b.textContent.includes('Ten thousand'));
    const t0 = performance.now();
    button.click();
    const check = () => {
      const log = document.getElementById('messages');
      const shown = [...log.querySelectorAll('article .text')].some((p) => p.textContent === last);
      const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
      if (shown && atBottom) resolve(performance.now() - t0);
      else requestAnimationFrame(check);
    };
    check();
  }), `message ${MESSAGES} of the long chat`);
  t.diagnostic(`opened at the latest message in ${elapsed.toFixed(1)} ms`);
  assert.ok(elapsed < OPEN_BUDGET_MS, `opened in ${elapsed.toFixed(1)} ms (budget ${OPEN_BUDGET_MS} ms)`);

  // Scrolling back loads older pages but keeps the page small.
  const log = page.getByRole('log', { name: 'Messages' });
  const articles = () => log.getByRole('article').count();
  assert.ok((await articles()) <= MAX_ARTICLES);
  for (const older of [9850, 9700, 9500]) {
    const wanted = log.getByRole('article').filter({ hasText: `message ${older} of the long chat` });
    await expect.poll(async () => {
      await log.evaluate((el) => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); });
      return (await wanted.count()) === 1;
    }).toBe(true);
    assert.ok((await articles()) <= MAX_ARTICLES, `${await articles()} articles in the page`);
  }
});
