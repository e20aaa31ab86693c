// S3 media for the browser tests: s3s-fs (the S3-compatible server the Rust tests
// use, which verifies SigV4 pre-signed URLs) behind a small proxy that applies the
// bucket's CORS rule the way S3 does. s3s-fs 0.14 answers a CORS preflight with
// 501 and sends no Access-Control-* headers, so a browser cannot use it directly;
// the proxy answers preflights from the rule, refuses any origin, method or
// header the rule does not allow (403, as S3 does), and adds
// Access-Control-Allow-Origin to real answers for allowed origins. Everything
// else, natterd's requests included, goes to s3s-fs unchanged (the Host header
// too: the signatures cover it). Why not an S3 server with CORS of its own:
// docs/web-client.md, "Tests".

import { spawn } from 'node:child_process';
import { createServer, request } from 'node:http';
import { connect, createServer as createTcpServer } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { ROOT } from './harness.mjs';

export const ACCESS_KEY = 'natter-test-access';
export const SECRET_KEY = 'natter-test-secret-key';
export const BUCKET = 'media';
const START_TIMEOUT_MS = 10000;
// The origin docs/media.md's example rule allows; tests put the node's origin there.
const DOCUMENTED_ORIGIN = 'https://chat.example.org';

function s3sFs() {
  const cargoHome = process.env.CARGO_HOME || join(homedir(), '.cargo');
  const dirs = [...(process.env.PATH || '').split(delimiter), join(cargoHome, 'bin')];
  const found = dirs.map((d) => join(d, 's3s-fs')).find((p) => existsSync(p));
  if (!found) {
    throw new Error('s3s-fs is not installed: scripts/test-web installs it, or run '
      + '`cargo install s3s-fs@0.14.1 --features binary --locked`');
  }
  return found;
}

/** A free loopback port (bound and released: s3s-fs cannot pick one itself). */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createTcpServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('connect', () => { socket.destroy(); resolve(true); });
    socket.on('error', () => resolve(false));
  });
}

/**
 * The bucket CORS rules that docs/media.md tells operators to set (its JSON
 * block with "CORSRules", as `aws s3api put-bucket-cors` takes it), with the
 * example origin replaced by `origin`. A change to the documented rule is a
 * change to what the tests run with.
 */
export function documentedCorsRules(origin) {
  const doc = readFileSync(join(ROOT, 'docs', 'media.md'), 'utf8');
  const block = [...doc.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]).find((b) => b.includes('CORSRules'));
  if (!block) throw new Error('docs/media.md has no JSON block with CORSRules');
  const rules = JSON.parse(block).CORSRules;
  return rules.map((r) => ({ ...r, AllowedOrigins: r.AllowedOrigins.map((o) => (o === DOCUMENTED_ORIGIN ? origin : o)) }));
}

/** S3's patterns: exact, or one `*` matching anything. */
function matches(pattern, value, ignoreCase) {
  const escaped = pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${escaped}$`, ignoreCase ? 'i' : '').test(value);
}

/** The first rule allowing this origin, method and every requested header (S3's order). */
export function matchRule(rules, origin, method, headers = []) {
  return rules.find((r) => (r.AllowedOrigins || []).some((o) => matches(o, origin, false))
    && (r.AllowedMethods || []).includes(method)
    && headers.every((h) => (r.AllowedHeaders || []).some((p) => matches(p, h, true))));
}

const FORBIDDEN = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessForbidden</Code>'
  + '<Message>CORSResponse: This CORS request is not allowed. This is usually because the '
  + 'evalution of Origin, request method / Access-Control-Request-Method or '
  + 'Access-Control-Request-Headers are not whitelisted by the resource\'s CORS spec.</Message></Error>';

export class S3 {
  /** Starts s3s-fs on a temporary folder with the bucket, and the CORS proxy in front. */
  static async start() {
    const s3 = new S3();
    s3.dir = mkdtempSync(join(tmpdir(), 'natter-web-s3-'));
    mkdirSync(join(s3.dir, BUCKET));
    const port = await freePort();
    s3.child = spawn(s3sFs(), [
      '--host', '127.0.0.1', '--port', String(port),
      '--access-key', ACCESS_KEY, '--secret-key', SECRET_KEY, s3.dir,
    ], { stdio: 'ignore' });
    s3.exited = new Promise((resolve) => s3.child.on('exit', resolve));
    for (const deadline = Date.now() + START_TIMEOUT_MS; !(await canConnect(port));) {
      if (s3.child.exitCode !== null) throw new Error(`s3s-fs exited (${s3.child.exitCode})`);
      if (Date.now() > deadline) throw new Error('s3s-fs did not listen');
      await new Promise((r) => setTimeout(r, 50));
    }
    s3.upstream = port;
    s3.rules = [];
    s3.requests = [];
    s3.proxy = createServer((req, res) => s3.handle(req, res));
    await new Promise((resolve) => s3.proxy.listen(0, '127.0.0.1', resolve));
    s3.endpoint = `http://127.0.0.1:${s3.proxy.address().port}`;
    return s3;
  }

  /** The bucket's CORS rules (PutBucketCors's CORSRules). */
  setCors(rules) {
    this.rules = rules;
  }

  /** natterd's `[media]` configuration for this bucket (path-style, plain HTTP on loopback). */
  mediaConfig() {
    return `[media]
store = "s3://${BUCKET}/natter"

[media.s3]
endpoint = "${this.endpoint}"
region = "us-east-1"
access_key_id = "${ACCESS_KEY}"
secret_access_key = "${SECRET_KEY}"
path_style = true
allow_http = true
`;
  }

  handle(req, res) {
    const origin = req.headers.origin;
    const seen = { method: req.method, path: req.url.split('?')[0], origin, status: 0 };
    this.requests.push(seen);
    if (req.method === 'OPTIONS') {
      seen.status = this.preflight(req, res, origin);
      return;
    }
    const rule = origin && matchRule(this.rules, origin, req.method);
    const upstream = request({
      host: '127.0.0.1', port: this.upstream, method: req.method, path: req.url, headers: req.headers,
    }, (answer) => {
      const headers = { ...answer.headers };
      if (rule) {
        headers['access-control-allow-origin'] = rule.AllowedOrigins.includes('*') ? '*' : origin;
        if (rule.ExposeHeaders?.length) headers['access-control-expose-headers'] = rule.ExposeHeaders.join(', ');
      }
      if (origin) headers.vary = 'Origin, Access-Control-Request-Headers, Access-Control-Request-Method';
      seen.status = answer.statusCode;
      res.writeHead(answer.statusCode, headers);
      answer.pipe(res);
    });
    upstream.on('error', () => { seen.status = 502; res.destroy(); });
    req.pipe(upstream);
  }

  /** A CORS preflight, answered from the rules as S3 does (it never reaches s3s-fs). */
  preflight(req, res, origin) {
    const method = req.headers['access-control-request-method'];
    req.resume();
    if (!origin || !method) {
      res.writeHead(400, { 'content-type': 'application/xml' }).end('<Error><Code>BadRequest</Code></Error>');
      return 400;
    }
    const asked = (req.headers['access-control-request-headers'] || '')
      .split(',').map((h) => h.trim().toLowerCase()).filter(Boolean);
    const rule = matchRule(this.rules, origin, method, asked);
    if (!rule) {
      res.writeHead(403, { 'content-type': 'application/xml' }).end(FORBIDDEN);
      return 403;
    }
    const headers = {
      'access-control-allow-origin': rule.AllowedOrigins.includes('*') ? '*' : origin,
      'access-control-allow-methods': rule.AllowedMethods.join(', '),
      vary: 'Origin, Access-Control-Request-Headers, Access-Control-Request-Method',
    };
    if (asked.length) headers['access-control-allow-headers'] = asked.join(', ');
    if (rule.MaxAgeSeconds != null) headers['access-control-max-age'] = String(rule.MaxAgeSeconds);
    if (rule.ExposeHeaders?.length) headers['access-control-expose-headers'] = rule.ExposeHeaders.join(', ');
    res.writeHead(200, headers).end();
    return 200;
  }

  async stop() {
    if (this.proxy) {
      const closed = new Promise((resolve) => this.proxy.close(resolve));
      this.proxy.closeAllConnections();
      await closed;
    }
    if (this.child && this.child.exitCode === null) {
      this.child.kill('SIGTERM');
      await this.exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
