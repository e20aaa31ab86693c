// The connection to the node: one WebSocket per browser profile and device.
//
// Tabs of one profile share the signed-in device. The tab holding the Web Lock
// `natter-leader` owns the WebSocket (the leader); the others send their
// commands to it over a BroadcastChannel and get every event from it. When the
// leader tab closes, another takes the lock, connects, and the others re-send
// what was still unanswered.

import { randomId } from './dom.js';

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const RETRYABLE = new Set(['unavailable', 'internal']);

/** Thrown for an `error` answer: `code` is the protocol's error code. */
export class CommandError extends Error {
  constructor(code, message, retryAfterMs) {
    super(message || code);
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * The WebSocket session (leader only): auth frame, request ids, re-sending after
 * a reconnect, batched acks, reconnect with back-off.
 */
class Socket {
  constructor(token, onEvent, onState) {
    this.token = token;
    this.onEvent = onEvent;
    this.onState = onState;
    this.next = 0;
    this.pending = new Map(); // id -> {frame, resolve, reject, sent}
    this.acks = [];
    this.attempt = 0;
    this.stopped = false;
    this.ws = null;
    this.ready = false;
  }

  start() {
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
    for (const p of this.pending.values()) p.reject(new CommandError('stopped', 'signed out'));
    this.pending.clear();
  }

  connect() {
    if (this.stopped) return;
    this.onState({ state: 'connecting' });
    const url = new URL('/v1/ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: this.token }));
    ws.onmessage = (e) => this.receive(e.data);
    ws.onclose = (e) => this.closed(ws, e.code);
  }

  closed(ws, code) {
    if (this.ws !== ws) return;
    this.ready = false;
    this.ws = null;
    for (const p of this.pending.values()) p.sent = false;
    if (this.stopped) return;
    if (code === 4401) {
      this.onState({ state: 'unauthorized' });
      return;
    }
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const wait = delay / 2 + Math.random() * delay / 2;
    this.attempt += 1;
    this.onState({ state: 'offline', retryAt: Date.now() + wait });
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  /** Reconnects now (the user asked, or the network came back). */
  retryNow() {
    if (this.ws || this.stopped) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  receive(data) {
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    if (frame.type === 'ready') {
      this.ready = true;
      this.attempt = 0;
      this.onState({ state: 'online', userId: frame.userId, node: frame.node });
      for (const [id, p] of this.pending) if (!p.sent) this.transmit(id, p);
      return;
    }
    if (frame.type === 'result' || frame.type === 'error') {
      this.answer(frame);
      return;
    }
    if (frame.deliveryId !== undefined) {
      try { this.onEvent(frame); } finally { this.ack(frame.deliveryId); }
    }
  }

  answer(frame) {
    const p = this.pending.get(frame.id);
    if (!p) return;
    if (frame.type === 'result') {
      this.pending.delete(frame.id);
      p.resolve(frame);
      return;
    }
    // Sends carry a clientMsgId: trying again is safe and applied once.
    const again = frame.code === 'rate_limited' || RETRYABLE.has(frame.code);
    if (again && p.frame.clientMsgId && p.tries < 8) {
      p.tries += 1;
      p.sent = false;
      const wait = frame.retryAfterMs ?? BACKOFF_MS[Math.min(p.tries, BACKOFF_MS.length - 1)];
      setTimeout(() => { if (this.pending.has(frame.id) && this.ready) this.transmit(frame.id, p); }, wait);
      return;
    }
    this.pending.delete(frame.id);
    p.reject(new CommandError(frame.code, frame.message, frame.retryAfterMs));
  }

  request(frame) {
    return new Promise((resolve, reject) => {
      const id = `r${++this.next}`;
      const p = { frame, resolve, reject, sent: false, tries: 0 };
      this.pending.set(id, p);
      if (this.ready) this.transmit(id, p);
    });
  }

  transmit(id, p) {
    p.sent = true;
    this.ws.send(JSON.stringify({ ...p.frame, id }));
  }

  ack(deliveryId) {
    this.acks.push(deliveryId);
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      // Unacked events come again on the next connection; nothing is lost.
      const ids = this.acks.splice(0);
      for (let i = 0; this.ready && i < ids.length; i += 1024) {
        this.ws.send(JSON.stringify({ type: 'ack', deliveryIds: ids.slice(i, i + 1024) }));
      }
    }, 20);
  }
}

/**
 * What the app talks to: `request(frame)`, and `onEvent`/`onState` callbacks.
 * Works the same in the leader tab and in the others.
 */
export class Link {
  constructor(session, { onEvent, onState, onSignOut }) {
    this.session = session;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onSignOut = onSignOut;
    this.tab = randomId();
    this.socket = null;
    this.state = { state: 'connecting' };
    this.waiting = new Map(); // follower: fid -> {frame, resolve, reject}
    this.next = 0;
    this.channel = new BroadcastChannel(`natter-${session.deviceId}`);
    this.channel.onmessage = (e) => this.onChannel(e.data);
  }

  start() {
    if (!navigator.locks) {
      this.lead();
      return;
    }
    navigator.locks.request(`natter-leader-${this.session.deviceId}`, () => {
      if (this.stopped) return undefined;
      this.lead();
      return new Promise((release) => { this.release = release; });
    });
    this.channel.postMessage({ kind: 'hello', tab: this.tab });
  }

  lead() {
    this.socket = new Socket(
      this.session.token,
      (event) => {
        this.channel.postMessage({ kind: 'event', event });
        this.onEvent(event);
      },
      (state) => this.setState(state, true),
    );
    this.socket.start();
    this.channel.postMessage({ kind: 'leader', tab: this.tab });
    // What this tab asked the previous leader and never heard back about.
    for (const [fid, w] of this.waiting) {
      this.waiting.delete(fid);
      this.socket.request(w.frame).then(w.resolve, w.reject);
    }
  }

  setState(state, broadcast) {
    this.state = state;
    if (broadcast) this.channel.postMessage({ kind: 'state', state });
    this.onState(state);
  }

  onChannel(msg) {
    // Events come from the leader, and from any tab that sent a message
    // (its device gets the `result`, never a `newMessage`, for it).
    if (msg.kind === 'event') this.onEvent(msg.event);
    else if (this.socket) this.onChannelAsLeader(msg);
    else this.onChannelAsFollower(msg);
    if (msg.kind === 'signout') this.onSignOut();
  }

  onChannelAsLeader(msg) {
    if (msg.kind === 'hello') this.channel.postMessage({ kind: 'state', state: this.state });
    if (msg.kind !== 'cmd') return;
    const reply = (ok, value) => this.channel.postMessage({ kind: 'res', tab: msg.tab, fid: msg.fid, ok, value });
    this.socket.request(msg.frame).then(
      (r) => reply(true, r),
      (e) => reply(false, { code: e.code, message: e.message, retryAfterMs: e.retryAfterMs }),
    );
  }

  onChannelAsFollower(msg) {
    if (msg.kind === 'state') this.setState(msg.state, false);
    else if (msg.kind === 'leader') {
      for (const [fid, w] of this.waiting) this.post(fid, w.frame);
    } else if (msg.kind === 'res' && msg.tab === this.tab) {
      const w = this.waiting.get(msg.fid);
      if (!w) return;
      this.waiting.delete(msg.fid);
      if (msg.ok) w.resolve(msg.value);
      else w.reject(new CommandError(msg.value.code, msg.value.message, msg.value.retryAfterMs));
    }
  }

  post(fid, frame) {
    this.channel.postMessage({ kind: 'cmd', tab: this.tab, fid, frame });
  }

  /** Sends a command; resolves with its `result`, rejects with a CommandError. */
  request(frame) {
    if (this.socket) return this.socket.request(frame);
    return new Promise((resolve, reject) => {
      const fid = ++this.next;
      this.waiting.set(fid, { frame, resolve, reject });
      this.post(fid, frame);
    });
  }

  /** Tells the other tabs about an event this tab learnt of (its own sends). */
  share(event) {
    this.channel.postMessage({ kind: 'event', event });
  }

  retryNow() {
    if (this.socket) this.socket.retryNow();
  }

  /** Stops this tab's part; `everywhere` signs the other tabs out too. */
  stop(everywhere) {
    this.stopped = true;
    if (everywhere) this.channel.postMessage({ kind: 'signout' });
    if (this.socket) this.socket.stop();
    if (this.release) this.release();
    this.channel.close();
  }
}
