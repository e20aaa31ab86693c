// Starts a real natterd for the browser tests and drives Debian's chromium.
// Nothing here downloads a browser: playwright-core only, with executablePath.

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = join(here, '..', '..', '..');
// Screenshots go to target/web-screenshots; NATTER_UPDATE_SCREENSHOTS=1 writes
// them over the ones docs/web-client.md and the README show (docs/img).
export const SHOTS = process.env.NATTER_UPDATE_SCREENSHOTS === '1'
  ? join(ROOT, 'docs', 'img')
  : join(ROOT, 'target', 'web-screenshots');
const NATTERD = process.env.NATTERD || join(ROOT, 'target', 'debug', 'natterd');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const START_TIMEOUT_MS = 30000;

function natterdEnv() {
  const env = { ...process.env, NATTER_LOG_FORMAT: 'human' };
  delete env.RUST_LOG;
  return env;
}

export class Natterd {
  constructor(config = '') {
    this.dir = mkdtempSync(join(tmpdir(), 'natter-web-'));
    this.data = join(this.dir, 'data');
    this.configPath = join(this.dir, 'natter.toml');
    // Logins come from one address here; lift the per-address budget.
    writeFileSync(this.configPath, `${config}\n[logins]\nattempt_rate = 1000.0\nattempt_burst = 1000\n`);
    this.port = 0;
    this.log = [];
  }

  /** Starts natterd (on the same port as before, when restarting). */
  async start() {
    if (!existsSync(NATTERD)) throw new Error(`no natterd at ${NATTERD}: run cargo build first`);
    const child = spawn(NATTERD, [
      'serve', '--config', this.configPath, '--data', this.data,
      '--listen', `127.0.0.1:${this.port}`, '--admin-listen', '127.0.0.1:0',
    ], { stdio: ['ignore', 'ignore', 'pipe'], env: natterdEnv() });
    this.child = child;
    this.exited = new Promise((resolve) => child.on('exit', resolve));
    let timer;
    const listening = new Promise((resolve, reject) => {
      let buffer = '';
      child.stderr.on('data', (chunk) => {
        buffer += chunk.toString();
        const lines = buffer.split('\n');
        buffer = lines.pop();
        for (const line of lines) {
          this.log.push(line);
          const url = / url=(\S+)/.exec(line);
          const admin = / admin=(\S+)/.exec(line);
          if (line.includes('listening') && url && admin) resolve({ url: url[1], admin: admin[1] });
        }
      });
      child.on('exit', (code) => reject(new Error(`natterd exited (${code}):\n${this.log.join('\n')}`)));
      timer = setTimeout(() => reject(new Error(`natterd did not start:\n${this.log.join('\n')}`)), START_TIMEOUT_MS);
    });
    // The timer must not keep the test process alive for its 30 s after a start.
    const { url, admin } = await listening.finally(() => clearTimeout(timer));
    this.url = url;
    this.adminUrl = admin;
    this.port = Number(new URL(url).port);
    this.token = readFileSync(join(this.data, 'admin.token'), 'utf8').trim();
    for (const deadline = Date.now() + START_TIMEOUT_MS; ;) {
      const r = await fetch(`${url}/readyz`).catch(() => null);
      if (r?.ok) return;
      if (Date.now() > deadline) throw new Error('natterd never got ready');
      await new Promise((res) => setTimeout(res, 50));
    }
  }

  async stop() {
    if (!this.child) return;
    this.child.kill('SIGTERM');
    await this.exited;
    this.child = null;
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  /** A one-use invite code from the admin API. */
  async invite() {
    const r = await fetch(`${this.adminUrl}/admin/v1/invites`, {
      method: 'POST', headers: { authorization: `Bearer ${this.token}` },
    });
    if (!r.ok) throw new Error(`invite: ${r.status}`);
    return (await r.json()).code;
  }

  async cleanup() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export async function launch() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no chromium at ${CHROMIUM}: apt-get install -y chromium (scripts/test does it)`);
  }
  mkdirSync(SHOTS, { recursive: true });
  return chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
}

/** A new browser profile (context) with a page on the node, failing on page errors. */
export async function openPage(browser, node, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, ...options });
  const page = await context.newPage();
  watch(page);
  await page.goto(node.url);
  return page;
}

/** Records uncaught errors and dialogs (an alert would be an injection). */
export function watch(page) {
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('dialog', (d) => { page.problems.push(`dialog: ${d.message()}`); d.dismiss(); });
  // Refused connections while natterd restarts are expected; CSP violations are not.
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content.Security.Policy/i.test(m.text())) page.problems.push(`console: ${m.text()}`);
  });
}
