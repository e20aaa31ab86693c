// A small web-first `expect` for playwright-core (which has none): each check
// retries until it holds or its deadline passes, like @playwright/test's.

const TIMEOUT_MS = 10000;
const POLL_MS = 50;

async function until(describe, check, timeout = TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last.ok) return;
    } catch (e) {
      last = { ok: false, got: e.message };
    }
    if (Date.now() > deadline) throw new Error(`expected ${describe} within ${timeout} ms; got ${JSON.stringify(last.got)}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

const text = async (l) => (await l.count()) === 0 ? null : l.first().innerText({ timeout: 1000 });

function matchers(locator, negate) {
  const is = (ok) => (negate ? !ok : ok);
  const not = negate ? 'not ' : '';
  const m = {
    toBeVisible: (o = {}) => until(`${locator} ${not}visible`, async () => ({ ok: is(await locator.isVisible()), got: null }), o.timeout),
    toBeHidden: (o = {}) => until(`${locator} ${not}hidden`, async () => ({ ok: is(!(await locator.isVisible())), got: null }), o.timeout),
    toBeEnabled: (o = {}) => until(`${locator} ${not}enabled`, async () => ({ ok: is(await locator.isEnabled({ timeout: 1000 })), got: null }), o.timeout),
    toBeDisabled: (o = {}) => until(`${locator} ${not}disabled`, async () => ({ ok: is(await locator.isDisabled({ timeout: 1000 })), got: null }), o.timeout),
    toBeFocused: (o = {}) => until(`${locator} ${not}focused`, async () => ({
      ok: is(await locator.evaluate((el) => el === document.activeElement, null, { timeout: 1000 })), got: null,
    }), o.timeout),
    toHaveText: (want, o = {}) => until(`${locator} ${not}to have text ${JSON.stringify(want)}`, async () => {
      const got = await text(locator);
      return { ok: is(got !== null && (want instanceof RegExp ? want.test(got) : got.trim() === want)), got };
    }, o.timeout),
    toContainText: (want, o = {}) => until(`${locator} ${not}to contain ${JSON.stringify(want)}`, async () => {
      const got = await text(locator);
      return { ok: got !== null && is(got.includes(want)), got };
    }, o.timeout),
    toHaveCount: (want, o = {}) => until(`${locator} ${not}count ${want}`, async () => {
      const got = await locator.count();
      return { ok: is(got === want), got };
    }, o.timeout),
    toHaveAttribute: (name, want, o = {}) => until(`${locator} ${not}[${name}=${want}]`, async () => {
      const got = await locator.first().getAttribute(name, { timeout: 1000 });
      return { ok: is(got === want), got };
    }, o.timeout),
  };
  return m;
}

export function expect(locator) {
  return { ...matchers(locator, false), not: matchers(locator, true) };
}

/** expect.poll(fn).toBe(value): retries fn until it returns value. */
expect.poll = (fn, o = {}) => ({
  toBe: (want) => until(`poll to be ${JSON.stringify(want)}`, async () => {
    const got = await fn();
    return { ok: got === want, got };
  }, o.timeout),
});
