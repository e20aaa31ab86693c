// The web client in a real browser against a real natterd (issue 9's tests).
// One natterd (invite-only registration) and one chromium for the whole file;
// the tests run in order and build on each other's users and chat.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { expect } from './expect.mjs';
import { Natterd, launch, openPage, watch, SHOTS } from './harness.mjs';

const node = new Natterd('registration = "invite"');
let browser;
let alice;
let bob;

before(async () => {
  await node.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await node.cleanup();
});

/** Registers through the page, with an invite code from the admin API. */
async function register(page, name) {
  await page.getByRole('button', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill(name);
  await page.getByLabel('Password').fill(`${name}-password`);
  await page.getByLabel('Invite code').fill(await node.invite());
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.getByRole('navigation', { name: 'Chats' })).toBeVisible();
  await expect(page.locator('#conn-state')).toHaveText('Connected');
}

async function signIn(page, name) {
  await page.getByLabel('Username').fill(name);
  await page.getByLabel('Password').fill(`${name}-password`);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.locator('#conn-state')).toHaveText('Connected');
}

const log = (page) => page.getByRole('log', { name: 'Messages' });
const chatButton = (page, name) => page.getByRole('navigation', { name: 'Chats' }).getByRole('button', { name });

async function send(page, text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByLabel('Message', { exact: true }).press('Enter');
  const mine = log(page).getByRole('article').filter({ hasText: text }).last();
  await expect(mine).toBeVisible();
  await expect(mine).not.toContainText('Sending…');
}

function clean(page) {
  assert.deepEqual(page.problems, [], 'no script errors, dialogs or CSP violations');
}

test('two users register with invites, create a chat, talk both ways, unread counts change', async () => {
  alice = await openPage(browser, node);
  bob = await openPage(browser, node);
  await expect(alice.getByRole('heading', { name: 'Sign in to localhost' })).toBeVisible();
  await register(alice, 'alice');
  await register(bob, 'bob');

  await alice.getByRole('button', { name: 'New chat' }).click();
  await alice.getByRole('dialog').getByLabel('Participants').fill('bob');
  await alice.getByRole('dialog').getByLabel('Chat name').fill('Study group');
  await alice.getByRole('button', { name: 'Create' }).click();
  await expect(alice.getByRole('heading', { name: 'Study group' })).toBeVisible();
  await send(alice, 'hello bob');
  await send(alice, 'are you there?');

  // Bob sees the chat arrive live, with two unread.
  await expect(chatButton(bob, /Study group/)).toContainText('2 unread');
  await expect(chatButton(bob, /Study group/)).toContainText('are you there?');
  await bob.screenshot({ path: join(SHOTS, 'web-unread.png') });
  await chatButton(bob, /Study group/).click();
  await expect(log(bob).getByRole('article').filter({ hasText: 'hello bob' })).toContainText('alice');
  await expect(chatButton(bob, /Study group/)).not.toContainText('unread');

  // Replies, with the Send button and with Shift+Enter for a new line.
  await bob.getByLabel('Message', { exact: true }).fill('hi alice');
  await bob.getByRole('button', { name: 'Send' }).click();
  await expect(log(alice).getByRole('article').filter({ hasText: 'hi alice' })).toContainText('bob');
  await bob.getByLabel('Message', { exact: true }).pressSequentially('line one');
  await bob.getByLabel('Message', { exact: true }).press('Shift+Enter');
  await bob.getByLabel('Message', { exact: true }).pressSequentially('line two');
  await bob.getByLabel('Message', { exact: true }).press('Enter');
  await expect(log(alice).locator('article .text').last()).toHaveText('line one\nline two');
  // Alice reads as it arrives (the chat is open): no unread for her.
  await expect(chatButton(alice, /Study group/)).not.toContainText('unread');

  // When Alice looks elsewhere, Bob's next message counts as unread for her.
  await alice.getByRole('button', { name: 'New chat' }).click();
  await alice.getByRole('dialog').getByLabel('Participants').fill('alice');
  await alice.getByRole('dialog').getByLabel('Chat name').fill('Notes to self');
  await alice.getByRole('button', { name: 'Create' }).click();
  await expect(alice.getByRole('heading', { name: 'Notes to self' })).toBeVisible();
  await send(bob, 'one more thing');
  await expect(chatButton(alice, /Study group/)).toContainText('1 unread');
  await chatButton(alice, /Study group/).click();
  await expect(chatButton(alice, /Study group/)).not.toContainText('unread');

  // The 16 KiB limit shows before the node would refuse it.
  await alice.getByLabel('Message', { exact: true }).fill('é'.repeat(8193));
  await expect(alice.locator('#message-limit')).toHaveText('Too long: 16386 of 16384 bytes');
  await expect(alice.getByRole('button', { name: 'Send' })).toBeDisabled();
  await alice.getByLabel('Message', { exact: true }).fill('');
  await expect(alice.getByRole('button', { name: 'Send' })).toBeEnabled();
  await alice.screenshot({ path: join(SHOTS, 'web-chat.png') });
  clean(alice);
  clean(bob);
});

test('markup in messages and names shows as text and runs nothing', async () => {
  const attack = '<img src=x onerror=alert(1)>';
  const sneaky = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>';
  await send(alice, attack);
  await send(alice, sneaky);
  await send(alice, 'docs at https://example.org/a?b=1 ok');
  for (const page of [alice, bob]) {
    await expect(log(page).locator('article .text').filter({ hasText: attack })).toHaveText(attack);
    await expect(log(page).locator('article .text').filter({ hasText: 'window.pwned=2' })).toHaveText(sneaky);
    assert.equal(await log(page).locator('img, script').count(), 0);
    assert.equal(await page.evaluate(() => window.pwned), undefined);
    const link = log(page).getByRole('link', { name: 'https://example.org/a?b=1' });
    await expect(link).toHaveAttribute('rel', 'noopener noreferrer');
    await expect(link).toHaveAttribute('href', 'https://example.org/a?b=1');
  }
  // A chat name with markup, too.
  await alice.getByRole('button', { name: 'Chat settings' }).click();
  await alice.getByRole('dialog').getByLabel('Chat name').fill(attack);
  await alice.getByRole('button', { name: 'Rename' }).click();
  await alice.getByRole('button', { name: 'Close' }).click();
  await expect(bob.getByRole('heading', { level: 2, name: attack })).toBeVisible();
  await expect(chatButton(bob, attack)).toBeVisible();
  await bob.screenshot({ path: join(SHOTS, 'web-markup.png') });
  clean(alice);
  clean(bob);
});

// A 24×16 PNG (red and blue halves), made for this test.
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAABgAAAAQCAIAAACDRijCAAAAH0lEQVR42mP4z8BAFcQwatCoQaMGjRo0atCoQSPOIAA4gH+BI8NrSQAAAABJRU5ErkJggg==',
  'base64',
);

test('an image goes up with progress and comes back inline; other files download', async () => {
  await alice.getByLabel('Attach file').setInputFiles({ name: 'pixels.png', mimeType: 'image/png', buffer: PNG });
  await expect(alice.getByLabel('Uploading pixels.png')).toHaveAttribute('value', '100');
  await alice.getByLabel('Message', { exact: true }).fill('a picture');
  await alice.getByRole('button', { name: 'Send' }).click();
  for (const page of [alice, bob]) {
    const img = log(page).getByRole('img', { name: 'pixels.png' });
    await expect(img).toBeVisible();
    await expect.poll(() => img.evaluate((el) => el.complete && el.naturalWidth)).toBe(24);
  }
  const notes = 'meeting at 10\n';
  await alice.getByLabel('Attach file').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from(notes) });
  await expect(alice.getByLabel('Uploading notes.txt')).toHaveAttribute('value', '100');
  await alice.getByRole('button', { name: 'Send' }).click();
  const link = log(bob).getByRole('link', { name: /notes\.txt/ });
  await expect(link).toBeVisible();
  // A fresh URL on click, opened in a new tab; the node serves it as a download.
  // (Chromium reports the popup's download on the page that opened it.)
  const [download] = await Promise.all([bob.waitForEvent('download', { timeout: 10000 }), link.click()]);
  assert.equal(download.suggestedFilename(), 'notes.txt');
  assert.equal(readFileSync(await download.path(), 'utf8'), notes);
  clean(alice);
  clean(bob);
});

test('the 16 KiB limit shows before sending, and a dropped file goes up like a chosen one', async () => {
  const box = alice.getByLabel('Message', { exact: true });
  await box.fill('x'.repeat(16385));
  await expect(alice.locator('#message-limit')).toHaveText('Too long: 16385 of 16384 bytes');
  await expect(box).toHaveAttribute('aria-invalid', 'true');
  await expect(alice.getByRole('button', { name: 'Send' })).toBeDisabled();
  // UTF-8 bytes, not characters: 8,192 two-byte letters are exactly the limit.
  await box.fill('é'.repeat(8192));
  await expect(alice.locator('#message-limit')).toHaveText('16384 of 16384 bytes');
  await expect(alice.getByRole('button', { name: 'Send' })).toBeEnabled();
  await box.fill('');
  await expect(alice.locator('#message-limit')).toHaveText('');

  const dropped = await alice.evaluateHandle(() => {
    const data = new DataTransfer();
    data.items.add(new File(['dropped on the chat\n'], 'dropped.txt', { type: 'text/plain' }));
    return data;
  });
  await alice.locator('#chat-pane').dispatchEvent('drop', { dataTransfer: dropped });
  await expect(alice.getByLabel('Uploading dropped.txt')).toHaveAttribute('value', '100');
  await alice.getByRole('button', { name: 'Send' }).click();
  await expect(log(bob).getByRole('link', { name: /dropped\.txt/ })).toBeVisible();
  clean(alice);
  clean(bob);
});

test('two tabs of one user share one device and both work', async () => {
  const second = await bob.context().newPage();
  watch(second);
  await second.goto(node.url);
  await expect(second.locator('#conn-state')).toHaveText('Connected');
  await chatButton(second, /Study group|img/).click();
  await send(alice, 'for both tabs');
  await expect(log(second).getByRole('article').filter({ hasText: 'for both tabs' })).toHaveCount(1);
  await expect(log(bob).getByRole('article').filter({ hasText: 'for both tabs' })).toHaveCount(1);
  await send(second, 'from the second tab');
  await expect(log(alice).getByRole('article').filter({ hasText: 'from the second tab' })).toHaveCount(1);
  await expect(log(bob).getByRole('article').filter({ hasText: 'from the second tab' })).toHaveCount(1);
  // Closing the tab that holds the connection hands it to the other.
  await bob.close();
  await expect(second.locator('#conn-state')).toHaveText('Connected');
  await send(alice, 'after the first tab closed');
  await expect(log(second).getByRole('article').filter({ hasText: 'after the first tab closed' })).toHaveCount(1);
  await send(second, 'still here');
  await expect(log(alice).getByRole('article').filter({ hasText: 'still here' })).toHaveCount(1);
  bob = second;
  clean(alice);
  clean(bob);
});

test('natterd restarts mid-conversation: nothing lost, nothing doubled', async () => {
  await node.stop();
  await expect(alice.locator('#conn-state')).toContainText('Offline');
  // Sent while the node is down: pending, then sent once it is back.
  await alice.getByLabel('Message', { exact: true }).fill('sent while down 1');
  await alice.getByLabel('Message', { exact: true }).press('Enter');
  await alice.getByLabel('Message', { exact: true }).fill('sent while down 2');
  await alice.getByLabel('Message', { exact: true }).press('Enter');
  await expect(log(alice).getByRole('article').filter({ hasText: 'sent while down 2' })).toContainText('Sending…');
  await alice.screenshot({ path: join(SHOTS, 'web-offline.png') });
  await node.start();
  await expect(alice.locator('#conn-state')).toHaveText('Connected', { timeout: 30000 });
  await expect(bob.locator('#conn-state')).toHaveText('Connected', { timeout: 30000 });
  await send(bob, 'after the restart');
  for (const page of [alice, bob]) {
    for (const text of ['sent while down 1', 'sent while down 2', 'after the restart']) {
      await expect(log(page).getByRole('article').filter({ hasText: text })).toHaveCount(1);
      await expect(log(page).getByRole('article').filter({ hasText: text })).not.toContainText('Sending…');
    }
  }
  // The node's history agrees: reloading shows each message once, in order.
  await bob.reload();
  await chatButton(bob, /img/).click();
  await expect(log(bob).getByRole('article').filter({ hasText: 'after the restart' })).toHaveCount(1);
  const texts = await log(bob).locator('article .text').allTextContents();
  const order = ['sent while down 1', 'sent while down 2', 'after the restart'].map((t) => texts.indexOf(t));
  assert.deepEqual([...order].sort((a, b) => a - b), order);
  assert.equal(new Set(texts).size, texts.length, `duplicates in ${texts}`);
  clean(alice);
});

test('375 px wide and keyboard only', async () => {
  const phone = await openPage(browser, node, { viewport: { width: 375, height: 720 }, isMobile: true, hasTouch: true });
  await signIn(phone, 'bob');
  const width = () => phone.evaluate(() => document.documentElement.scrollWidth);
  assert.ok((await width()) <= 375, `no sideways scrolling (${await width()} px)`);
  await expect(phone.getByRole('navigation', { name: 'Chats' })).toBeVisible();
  await phone.screenshot({ path: join(SHOTS, 'web-mobile-chats.png') });
  // Keyboard: Tab to the chat, Enter opens it, type and Enter sends.
  const chat = chatButton(phone, /img/);
  for (let i = 0; i < 12 && !(await chat.evaluate((el) => el === document.activeElement)); i += 1) {
    await phone.keyboard.press('Tab');
  }
  await expect(chat).toBeFocused();
  await phone.keyboard.press('Enter');
  await expect(log(phone)).toBeVisible();
  await expect(phone.getByRole('navigation', { name: 'Chats' })).toBeHidden();
  await expect(phone.getByLabel('Message', { exact: true })).toBeFocused();
  await phone.keyboard.type('typed on a phone');
  await phone.keyboard.press('Enter');
  await expect(log(alice).getByRole('article').filter({ hasText: 'typed on a phone' })).toHaveCount(1);
  assert.ok((await width()) <= 375, `no sideways scrolling (${await width()} px)`);
  await phone.screenshot({ path: join(SHOTS, 'web-mobile-chat.png') });
  await phone.getByRole('button', { name: 'Back to chats' }).click();
  await expect(phone.getByRole('navigation', { name: 'Chats' })).toBeVisible();
  // Sign out removes the token from this profile.
  await phone.getByRole('button', { name: 'Sign out' }).click();
  await expect(phone.getByRole('button', { name: 'Sign in' })).toBeVisible();
  assert.equal(await phone.evaluate(() => localStorage.getItem('natter.session')), null);
  clean(phone);
});

test('reading on one device clears the unread count on another device of the same user', async () => {
  // A second browser profile signed in as bob: a second device (not a second tab).
  const other = await openPage(browser, node);
  await signIn(other, 'bob');
  // Bob's first device looks at another chat, so the group chat's new message counts there.
  await bob.getByRole('button', { name: 'New chat' }).click();
  await bob.getByRole('dialog').getByLabel('Participants').fill('bob');
  await bob.getByRole('dialog').getByLabel('Chat name').fill('Bob alone');
  await bob.getByRole('button', { name: 'Create' }).click();
  await expect(bob.getByRole('heading', { name: 'Bob alone' })).toBeVisible();
  await send(alice, 'read me elsewhere');
  await expect(chatButton(bob, /img/)).toContainText('1 unread');
  await expect(chatButton(other, /img/)).toContainText('1 unread');
  await chatButton(other, /img/).click();
  await expect(log(other).getByRole('article').filter({ hasText: 'read me elsewhere' })).toHaveCount(1);
  await expect(chatButton(other, /img/)).not.toContainText('unread');
  // No reload: the first device learns of the read from a chatRead event.
  await expect(chatButton(bob, /img/)).not.toContainText('unread');
  clean(bob);
  clean(other);
  await other.context().close();
});

test('a chat is renamed, gains and loses participants, and is left, and every page shows it', async () => {
  const carol = await openPage(browser, node);
  const dave = await openPage(browser, node);
  await register(carol, 'carol');
  await register(dave, 'dave');
  const settings = (page) => page.getByRole('dialog', { name: 'Chat settings' });
  const people = (page) => page.locator('#chat-people');

  await alice.getByRole('button', { name: 'New chat' }).click();
  await alice.getByRole('dialog').getByLabel('Participants').fill('carol');
  await alice.getByRole('dialog').getByLabel('Chat name').fill('Planning');
  await alice.getByRole('button', { name: 'Create' }).click();
  await expect(alice.getByRole('heading', { level: 2, name: 'Planning' })).toBeVisible();
  await send(alice, 'plan one');
  await chatButton(carol, 'Planning').click();
  await expect(log(carol).getByRole('article').filter({ hasText: 'plan one' })).toContainText('alice');

  // Rename: Carol, who has the chat open, sees the new name in the heading and the list.
  await alice.getByRole('button', { name: 'Chat settings' }).click();
  await settings(alice).getByLabel('Chat name').fill('Trip planning');
  await settings(alice).getByRole('button', { name: 'Rename' }).click();
  await settings(alice).getByRole('button', { name: 'Close' }).click();
  await expect(carol.getByRole('heading', { level: 2, name: 'Trip planning' })).toBeVisible();
  await expect(chatButton(carol, /Trip planning/)).toBeVisible();
  await expect(chatButton(carol, /^Planning/)).toHaveCount(0);
  await expect(alice.getByRole('heading', { level: 2, name: 'Trip planning' })).toBeVisible();

  // Add: Dave sees the chat appear (its history not unread), reads what was said before, and talks.
  await alice.getByRole('button', { name: 'Chat settings' }).click();
  await settings(alice).getByLabel('Add participant').fill('dave');
  await settings(alice).getByRole('button', { name: 'Add', exact: true }).click();
  await expect(settings(alice).getByRole('button', { name: 'Remove dave' })).toBeVisible();
  await settings(alice).getByRole('button', { name: 'Close' }).click();
  await expect(chatButton(dave, /Trip planning/)).toBeVisible();
  await expect(chatButton(dave, /Trip planning/)).not.toContainText('unread');
  await chatButton(dave, /Trip planning/).click();
  await expect(log(dave).getByRole('article').filter({ hasText: 'plan one' })).toContainText('alice');
  await expect(people(carol)).toContainText('dave');
  await send(dave, 'dave is in');
  for (const page of [alice, carol]) {
    await expect(log(page).getByRole('article').filter({ hasText: 'dave is in' })).toContainText('dave');
  }

  // Remove: the chat leaves Carol's page; the others see she is gone; she gets nothing more of it.
  await alice.getByRole('button', { name: 'Chat settings' }).click();
  await settings(alice).getByRole('button', { name: 'Remove carol' }).click();
  await expect(settings(alice).getByRole('button', { name: 'Remove carol' })).toHaveCount(0);
  await settings(alice).getByRole('button', { name: 'Close' }).click();
  await expect(chatButton(carol, /Trip planning/)).toHaveCount(0);
  await expect(log(carol)).toBeHidden();
  for (const page of [alice, dave]) {
    await expect(people(page)).not.toContainText('carol');
  }
  await send(alice, 'carol is out');
  await expect(log(dave).getByRole('article').filter({ hasText: 'carol is out' })).toHaveCount(1);
  // A page loaded afresh asks the node: the chat is not Carol's any more.
  await carol.reload();
  await expect(carol.locator('#conn-state')).toHaveText('Connected');
  await expect(chatButton(carol, /Trip planning|carol is out/)).toHaveCount(0);
  await expect(carol.getByText('carol is out')).toHaveCount(0);

  // Leave: the chat goes from Dave's page; Alice sees him gone and is alone in it.
  await dave.getByRole('button', { name: 'Chat settings' }).click();
  await settings(dave).getByRole('button', { name: 'Leave chat' }).click();
  await expect(settings(dave)).toBeHidden();
  await expect(log(dave)).toBeHidden();
  await expect(chatButton(dave, /Trip planning/)).toHaveCount(0);
  await expect(people(alice)).not.toContainText('dave');
  await expect(people(alice)).toHaveText('You');
  await send(alice, 'alone now');
  await dave.reload();
  await expect(dave.locator('#conn-state')).toHaveText('Connected');
  await expect(chatButton(dave, /Trip planning/)).toHaveCount(0);
  for (const page of [alice, carol, dave]) clean(page);
  await carol.context().close();
  await dave.context().close();
});
