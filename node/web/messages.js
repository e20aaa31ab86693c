// The open chat's messages: history pages from getHistory, live messages, and
// this device's pending sends. Only a window of them is in the page (WINDOW
// articles at most); scrolling moves the window and loads older pages.

import { h, linkified, formatTime } from './dom.js';
import { shortName } from './chats.js';

const WINDOW = 150;
const STEP = 50;
const PAGE = 100;

export class MessageView {
  /** `request` sends a command; `media` renders attachments. */
  constructor(logEl, me, request, media) {
    this.el = logEl;
    this.me = me;
    this.request = request;
    this.media = media;
    this.chatId = null;
    this.el.addEventListener('scroll', () => this.scrolled(), { passive: true });
  }

  reset(chatId) {
    this.chatId = chatId;
    this.msgs = [];
    this.ids = new Set();
    this.pending = [];
    this.complete = false;
    this.start = 0;
    this.end = 0;
    this.loading = null;
    this.nodes = new Map();
    this.el.replaceChildren();
  }

  /** Opens a chat at its latest messages. */
  async open(chatId) {
    this.reset(chatId);
    const r = await this.request({ type: 'getHistory', chatId, limit: PAGE });
    if (this.chatId !== chatId) return;
    this.insert(r.messages);
    this.complete = r.messages.length === 0 || r.messages[0].seq <= 1;
    this.end = this.msgs.length;
    this.start = Math.max(0, this.end - WINDOW);
    this.render('bottom');
  }

  get lastSeq() {
    return this.msgs.length ? this.msgs[this.msgs.length - 1].seq : 0;
  }

  atBottom() {
    return this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 48;
  }

  /** Adds messages (any order, duplicates dropped); returns how many were new. */
  insert(messages) {
    let added = 0;
    for (const m of messages) {
      if (this.ids.has(m.messageId)) continue;
      this.ids.add(m.messageId);
      let i = this.msgs.length;
      while (i > 0 && this.msgs[i - 1].seq > m.seq) i -= 1;
      this.msgs.splice(i, 0, m);
      // Before the window (an older page): the window keeps its messages.
      if (i <= this.start && this.end > this.start) { this.start += 1; this.end += 1; } else if (i < this.end) this.end += 1;
      added += 1;
    }
    return added;
  }

  /** A message of this chat that arrived live (or a catch-up page). */
  async add(msg) {
    const follow = this.atBottom() && this.end === this.msgs.length;
    const gap = this.msgs.length && msg.seq > this.lastSeq + 1;
    if (!this.insert([msg])) return;
    if (gap) await this.catchUp();
    this.follow(follow);
  }

  /** Reads what this chat got while we were away (after a reconnect). */
  async catchUp() {
    const chatId = this.chatId;
    for (;;) {
      const after = this.lastSeq;
      const r = await this.request({ type: 'getHistory', chatId, afterSeq: after, limit: 200 });
      if (this.chatId !== chatId) return;
      const follow = this.atBottom() && this.end === this.msgs.length;
      this.insert(r.messages);
      this.follow(follow);
      if (r.messages.length < 200) return;
    }
  }

  follow(follow) {
    if (follow) {
      this.end = this.msgs.length;
      this.start = Math.max(0, this.end - WINDOW);
      this.render('bottom');
    } else {
      this.render('anchor');
    }
  }

  addPending(local) {
    this.pending.push(local);
    this.end = this.msgs.length;
    this.start = Math.max(0, this.end - WINDOW);
    this.render('bottom');
  }

  /** A pending send got its result (or failed): show it as sent (or failed). */
  settle(local) {
    if (local.messageId) {
      this.pending = this.pending.filter((p) => p !== local);
      this.nodes.delete(local.clientMsgId);
      this.insert([local]);
    }
    this.follow(this.atBottom());
  }

  async scrolled() {
    if (this.el.scrollTop < 300) await this.older();
    else if (this.atBottom() && this.end < this.msgs.length) {
      this.end = Math.min(this.msgs.length, this.end + STEP);
      this.start = Math.max(0, this.end - WINDOW);
      this.render('anchor');
    }
  }

  /** Moves the window up, loading an older page when it is at the oldest loaded. */
  async older() {
    if (this.start === 0 && !this.complete && !this.loading && this.msgs.length) {
      const chatId = this.chatId;
      this.loading = this.request({ type: 'getHistory', chatId, beforeSeq: this.msgs[0].seq, limit: PAGE });
      try {
        const r = await this.loading;
        if (this.chatId !== chatId) return;
        if (r.messages.length === 0 || r.messages[0].seq <= 1) this.complete = true;
        this.insert(r.messages);
      } finally {
        this.loading = null;
      }
    }
    if (this.start > 0) {
      this.start = Math.max(0, this.start - STEP);
      this.end = Math.min(this.msgs.length, this.start + WINDOW);
      this.render('anchor');
    }
  }

  /** Puts the window's articles in the page, keeping what the reader sees in place. */
  render(keep) {
    let anchor = null;
    if (keep === 'anchor') {
      const top = this.el.scrollTop;
      for (const child of this.el.children) {
        if (child.offsetTop + child.offsetHeight > top) {
          anchor = { el: child, offset: child.offsetTop - top };
          break;
        }
      }
    }
    const shown = this.msgs.slice(this.start, this.end);
    const rows = shown.map((m) => this.article(m));
    if (this.end === this.msgs.length) rows.push(...this.pending.map((p) => this.article(p)));
    if (this.start === 0 && this.complete) rows.unshift(h('p', { class: 'muted start' }, 'The start of this chat.'));
    const keys = new Set(rows.map((r) => r.dataset.key));
    for (const key of this.nodes.keys()) if (!keys.has(key)) this.nodes.delete(key);
    this.el.replaceChildren(...rows);
    if (keep === 'bottom') this.el.scrollTop = this.el.scrollHeight;
    else if (anchor && anchor.el.isConnected) this.el.scrollTop = anchor.el.offsetTop - anchor.offset;
  }

  article(m) {
    const key = m.messageId ?? m.clientMsgId;
    const state = m.failed ? 'failed' : m.messageId ? 'sent' : 'pending';
    const cached = this.nodes.get(key);
    if (cached && cached.dataset.state === state) return cached;
    const mine = m.from === this.me;
    const status = state === 'pending' ? h('span', { class: 'status' }, 'Sending…')
      : state === 'failed' ? h('span', { class: 'status error' }, `Not sent: ${m.failed}`,
        m.retry ? h('button', { type: 'button', class: 'link', onclick: m.retry }, 'Retry') : null)
        : null;
    const el = h('article', {
      class: `msg ${mine ? 'mine' : 'theirs'} ${state}`,
      'data-key': key,
      'data-state': state,
      'data-seq': m.seq ?? '',
    },
    h('header', {},
      h('span', { class: 'from' }, shortName(m.from, this.me)),
      m.sentAt ? h('time', { datetime: m.sentAt, title: m.sentAt }, formatTime(m.sentAt)) : null,
      status),
    m.message ? h('p', { class: 'text' }, ...linkified(m.message)) : null,
    m.attachments?.length ? h('div', { class: 'files' }, m.attachments.map((a) => this.media(a))) : null);
    this.nodes.set(key, el);
    return el;
  }
}
