// The chat list: what the node said in listChats, kept current by events.

import { h, formatTime } from './dom.js';

export class Chats {
  constructor(listEl, emptyEl, me, onOpen) {
    this.listEl = listEl;
    this.emptyEl = emptyEl;
    this.me = me;
    this.onOpen = onOpen;
    this.byId = new Map();
    this.openId = null;
  }

  /** A chat's display name: its name, or the other participants. */
  title(chat) {
    if (chat.name) return chat.name;
    const others = chat.participants.filter((p) => p !== this.me);
    return others.length ? others.map((p) => shortName(p, this.me)).join(', ') : 'Just you';
  }

  /** Replaces the list with a listChats answer (keeps known previews). */
  load(chats) {
    const old = this.byId;
    this.byId = new Map();
    chats.forEach((c, i) => {
      const prev = old.get(c.chatId);
      this.byId.set(c.chatId, {
        ...c,
        preview: prev?.preview ?? null,
        previewSeq: prev?.previewSeq ?? 0,
        activity: c.lastMessageAt ? Date.parse(c.lastMessageAt) : (prev?.activity ?? -i),
      });
    });
    this.render();
  }

  get(chatId) {
    return this.byId.get(chatId);
  }

  /** A chatUpdate: creates, renames, changes participants, or drops the chat. */
  update(ev) {
    if (ev.reason === 'removed' && !ev.participants.includes(this.me)) {
      this.byId.delete(ev.chatId);
    } else {
      const chat = this.byId.get(ev.chatId) ?? {
        chatId: ev.chatId, lastSeq: 0, lastMessageAt: null, unread: 0, preview: null, previewSeq: 0, activity: Date.now(),
      };
      chat.name = ev.name;
      chat.participants = ev.participants;
      this.byId.set(ev.chatId, chat);
    }
    this.render();
  }

  /** A message of a chat (live, sent here, or read from history). */
  message(msg, { live }) {
    const chat = this.byId.get(msg.chatId);
    if (!chat) return;
    if (msg.seq >= chat.previewSeq) {
      chat.preview = previewOf(msg, this.me);
      chat.previewSeq = msg.seq;
    }
    if (live && msg.seq > chat.lastSeq) {
      if (msg.from !== this.me && chat.chatId !== this.openId) chat.unread += msg.seq - chat.lastSeq;
      chat.lastSeq = msg.seq;
      chat.lastMessageAt = msg.sentAt;
      chat.activity = Date.parse(msg.sentAt) || Date.now();
    }
    this.render();
  }

  setRead(chatId, seq) {
    const chat = this.byId.get(chatId);
    if (!chat) return;
    chat.lastSeq = Math.max(chat.lastSeq, seq);
    chat.unread = Math.max(0, Math.min(chat.unread, chat.lastSeq - seq));
    this.render();
  }

  sorted() {
    return [...this.byId.values()].sort((a, b) => b.activity - a.activity);
  }

  render() {
    const items = this.sorted().map((chat) => {
      const title = this.title(chat);
      const unread = chat.unread > 0 ? h('span', { class: 'badge' }, `${chat.unread} unread`) : null;
      return h('li', {},
        h('button', {
          type: 'button',
          class: 'chat-item',
          'aria-current': chat.chatId === this.openId ? 'true' : null,
          'data-chat': chat.chatId,
          onclick: () => this.onOpen(chat.chatId),
        },
        h('span', { class: 'chat-line' }, h('span', { class: 'chat-name' }, title), unread),
        h('span', { class: 'chat-line muted' },
          h('span', { class: 'preview' }, chat.preview ?? (chat.lastSeq ? '…' : 'No messages yet')),
          chat.lastMessageAt ? h('time', { datetime: chat.lastMessageAt }, formatTime(chat.lastMessageAt)) : null)));
    });
    const focused = document.activeElement?.dataset?.chat;
    this.listEl.replaceChildren(...items);
    if (focused) this.listEl.querySelector(`[data-chat="${CSS.escape(focused)}"]`)?.focus();
    this.emptyEl.hidden = items.length > 0;
  }
}

export function shortName(userId, me) {
  if (userId === me) return 'You';
  const [name, node] = userId.split('@');
  return node === me.split('@')[1] ? name : userId;
}

function previewOf(msg, me) {
  const who = msg.from === me ? 'You: ' : '';
  const text = msg.message || (msg.attachments?.length ? `Attachment: ${msg.attachments[0].name || 'file'}` : '');
  return who + text.replace(/\s+/g, ' ').slice(0, 80);
}
