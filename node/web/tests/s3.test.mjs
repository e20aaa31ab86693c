// Attachments through the web client with S3 media: the browser PUTs straight to
// the pre-signed S3 URL (another origin: the bucket's CORS rule from
// docs/media.md and the page's connect-src must both allow it), the other user's
// page shows the image from S3, and a file downloads from S3 (as a download,
// not a page: the URL signs the response's disposition and type).
// natterd, s3s-fs behind the CORS rule (s3.mjs) and chromium, all real.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { expect } from './expect.mjs';
import { Natterd, launch, openPage } from './harness.mjs';
import { S3, BUCKET, documentedCorsRules } from './s3.mjs';

let s3;
let node;
let browser;
let alice;
let bob;

before(async () => {
  s3 = await S3.start();
  node = new Natterd(`registration = "invite"\n${s3.mediaConfig()}`);
  await node.start();
  // As an operator would: the documented rule, with the node's web origin in it.
  s3.setCors(documentedCorsRules(new URL(node.url).origin));
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await node?.cleanup();
  await s3?.stop();
});

async function register(page, name) {
  await page.getByRole('button', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill(name);
  await page.getByLabel('Password').fill(`${name}-password`);
  await page.getByLabel('Invite code').fill(await node.invite());
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.locator('#conn-state')).toHaveText('Connected');
}

const log = (page) => page.getByRole('log', { name: 'Messages' });

/** Every request the page makes (Playwright does not report CORS preflights). */
function record(page) {
  const seen = [];
  page.on('request', (r) => seen.push({ method: r.method(), url: r.url(), type: r.resourceType() }));
  return seen;
}

/** Waits for an upload to finish; a failed one ends the wait with its message. */
async function uploaded(page, name) {
  const entry = page.locator('#uploads li').filter({ hasText: name });
  await expect.poll(async () => ((await entry.evaluate((el) => el.classList.contains('error')))
    ? entry.innerText()
    : page.getByLabel(`Uploading ${name}`).getAttribute('value'))).toBe('100');
}

function clean(page) {
  assert.deepEqual(page.problems, [], 'no script errors, dialogs or CSP violations');
}

// A 24×16 PNG (red and blue halves), made for this test.
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAABgAAAAQCAIAAACDRijCAAAAH0lEQVR42mP4z8BAFcQwatCoQaMGjRo0atCoQSPOIAA4gH+BI8NrSQAAAABJRU5ErkJggg==',
  'base64',
);

test('with S3 media an image goes from the browser straight to the bucket and is shown from it', async () => {
  alice = await openPage(browser, node);
  bob = await openPage(browser, node);
  const aliceSaw = record(alice);
  const bobSaw = record(bob);
  await register(alice, 'alice');
  await register(bob, 'bob');
  await alice.getByRole('button', { name: 'New chat' }).click();
  await alice.getByRole('dialog').getByLabel('Participants').fill('bob');
  await alice.getByRole('dialog').getByLabel('Chat name').fill('Photos');
  await alice.getByRole('button', { name: 'Create' }).click();
  await expect(alice.getByRole('heading', { name: 'Photos' })).toBeVisible();

  await alice.getByLabel('Attach file').setInputFiles({ name: 'pixels.png', mimeType: 'image/png', buffer: PNG });
  await uploaded(alice, 'pixels.png');
  await alice.getByLabel('Message', { exact: true }).fill('from the bucket');
  await alice.getByRole('button', { name: 'Send' }).click();
  await bob.getByRole('navigation', { name: 'Chats' }).getByRole('button', { name: /Photos/ }).click();
  for (const page of [alice, bob]) {
    const img = log(page).getByRole('img', { name: 'pixels.png' });
    await expect(img).toBeVisible();
    await expect.poll(() => img.evaluate((el) => el.complete && el.naturalWidth)).toBe(24);
  }

  // The bytes went to S3, not through the node: the page's PUT is to the bucket,
  // after a preflight the bucket's rule allowed for the node's origin.
  const origin = new URL(node.url).origin;
  const puts = aliceSaw.filter((r) => r.method === 'PUT');
  assert.equal(puts.length, 1, JSON.stringify(puts));
  assert.ok(puts[0].url.startsWith(`${s3.endpoint}/${BUCKET}/natter/`), puts[0].url);
  const atS3 = (method) => s3.requests.filter((r) => r.method === method && r.origin === origin);
  assert.deepEqual(atS3('OPTIONS').map((r) => r.status), [200]);
  assert.deepEqual(atS3('PUT').map((r) => r.status), [200]);
  // Bob's image comes from the bucket (the copy the send sealed, under sent/).
  const sealed = `${s3.endpoint}/${BUCKET}/natter/sent/`;
  const images = (seen) => seen.filter((r) => r.type === 'image').map((r) => r.url);
  assert.equal(images(bobSaw).filter((u) => u.startsWith(sealed)).length, 1, JSON.stringify(images(bobSaw)));
  // Alice's page showed her image from the file; loaded afresh, from the bucket.
  // (A URL asked for while the send was pending would name the upload, which the
  // send deletes: the image would break.)
  assert.deepEqual(images(aliceSaw).filter((u) => u.startsWith(s3.endpoint)), []);
  await alice.reload();
  await alice.getByRole('navigation', { name: 'Chats' }).getByRole('button', { name: /Photos/ }).click();
  const again = log(alice).getByRole('img', { name: 'pixels.png' });
  await expect.poll(() => again.evaluate((el) => el.complete && el.naturalWidth)).toBe(24);
  assert.ok((await again.evaluate((el) => el.src)).startsWith(sealed));
  clean(alice);
  clean(bob);
});

test('with S3 media another file is a link that downloads from a fresh S3 URL', async () => {
  const notes = 'meeting at 10, bring the photos\n';
  await alice.getByLabel('Attach file').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from(notes) });
  await uploaded(alice, 'notes.txt');
  await alice.getByRole('button', { name: 'Send' }).click();
  const link = log(bob).getByRole('link', { name: /notes\.txt/ });
  await expect(link).toBeVisible();
  // The URL signs `response-content-disposition: attachment` with the file's
  // name and an opaque type, so the bucket serves it as a download, as the
  // embedded store does: nothing but raster images, audio and video is
  // rendered on the bucket's origin. (Chromium reports the popup's download
  // on the page that opened it.)
  const [download] = await Promise.all([bob.waitForEvent('download', { timeout: 10000 }), link.click()]);
  assert.ok(download.url().startsWith(`${s3.endpoint}/${BUCKET}/natter/sent/`), download.url());
  assert.equal(download.suggestedFilename(), 'notes.txt');
  assert.equal(readFileSync(await download.path(), 'utf8'), notes);
  clean(alice);
  clean(bob);
});
