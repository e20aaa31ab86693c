// natter's web client: wires the page to the node. Protocol v1 only, as any
// outside client speaks it (docs/protocol.md).

import { $, h, announce, formatSize, randomId, utf8Length } from './dom.js';
import { savedSession, forgetSession, setUpSignIn, signOut } from './auth.js';
import { Link, CommandError } from './conn.js';
import { Chats, shortName } from './chats.js';
import { MessageView } from './messages.js';

const DEFAULT_INFO = {
  node: location.host, registration: 'open',
  limits: { maxMessageBytes: 16384, maxAttachmentBytes: 100 << 20, maxAttachments: 10 },
};

const app = {
  info: DEFAULT_INFO, session: null, link: null, chats: null, view: null,
  openId: null, readSent: new Map(), uploads: [], urls: new Map(), previews: new Map(), online: false,
};

async function boot() {
  try {
    const r = await fetch('/v1/info');
    if (r.ok) app.info = await r.json();
  } catch { /* the defaults will do until the node answers */ }
  $('#node-name').textContent = app.info.node;
  document.title = `natter · ${app.info.node}`;
  const session = savedSession();
  if (session) start(session);
  else showSignIn();
}

function showSignIn() {
  $('#app').hidden = true;
  $('#signin').hidden = false;
  const note = sessionStorage.getItem('natter.note');
  sessionStorage.removeItem('natter.note');
  setUpSignIn(app.info, (session) => {
    $('#signin').hidden = true;
    start(session);
  });
  if (note) $('#signin-error').textContent = note;
  $('#username').focus();
}

function start(session) {
  app.session = session;
  const me = session.userId;
  $('#signin').hidden = true;
  $('#app').hidden = false;
  $('#me').textContent = me;
  app.chats = new Chats($('#chat-list'), $('#no-chats'), me, openChat);
  app.chats.render();
  app.link = new Link(session, { onEvent, onState, onSignOut: () => location.reload() });
  const request = (frame) => app.link.request(frame);
  app.view = new MessageView($('#messages'), me, request, attachment);
  $('#messages').addEventListener('scroll', () => markSeen(), { passive: true });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') { markSeen(); if (app.online) refresh(); }
  });
  window.addEventListener('online', () => app.link.retryNow());
  setUpComposer();
  setUpDialogs();
  $('#sign-out').onclick = async () => {
    app.link.stop(true);
    await signOut(session);
    location.reload();
  };
  app.link.start();
}

const request = (frame) => app.link.request(frame);

// ------------------------------------------------------------------ state

function onState(s) {
  clearInterval(app.stateTimer);
  const el = $('#conn-state');
  el.dataset.state = s.state;
  const wasOnline = app.online;
  app.online = s.state === 'online';
  if (s.state === 'online') el.textContent = 'Connected';
  else if (s.state === 'connecting') el.textContent = 'Connecting…';
  else if (s.state === 'offline') {
    const tick = () => {
      const secs = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
      el.textContent = secs ? `Offline, reconnecting in ${secs} s` : 'Offline, reconnecting…';
    };
    tick();
    app.stateTimer = setInterval(tick, 1000);
  } else if (s.state === 'unauthorized') {
    forgetSession();
    sessionStorage.setItem('natter.note', 'Your session ended. Sign in again.');
    app.link.stop(true);
    location.reload();
  }
  if (app.online && !wasOnline) refresh();
}

/** After (re)connecting: the chat list, previews, and what the open chat missed. */
async function refresh() {
  try {
    const r = await request({ type: 'listChats' });
    app.chats.load(r.chats);
    if (app.openId && !app.chats.get(app.openId)) closeChat();
    if (app.openId) await app.view.catchUp();
    markSeen();
    const missing = app.chats.sorted().filter((c) => c.lastSeq > 0 && c.previewSeq < c.lastSeq).slice(0, 30);
    await Promise.all(missing.map(async (c) => {
      const p = await request({ type: 'getHistory', chatId: c.chatId, limit: 1 });
      for (const m of p.messages) app.chats.message(m, { live: false });
    }));
  } catch (e) {
    if (!(e instanceof CommandError) || e.code !== 'stopped') announce(`Could not load chats: ${e.message}`);
  }
}

function onEvent(ev) {
  if (ev.type === 'newMessage') {
    app.chats.message(ev, { live: true });
    if (ev.chatId === app.openId) app.view.add(ev).then(markSeen, () => {});
  } else if (ev.type === 'chatUpdate') {
    app.chats.update(ev);
    if (ev.chatId === app.openId) {
      if (ev.participants.includes(app.session.userId)) showChatHead();
      else closeChat();
    }
  } else if (ev.type === 'chatRead') {
    // Read on another device of this user (extension): same count, no markRead back.
    app.chats.setRead(ev.chatId, ev.seq);
    if ((app.readSent.get(ev.chatId) ?? 0) < ev.seq) app.readSent.set(ev.chatId, ev.seq);
  } else if (ev.type === 'expired') {
    refresh();
  }
}

/** Marks the open chat read up to its last message, once it is in view. */
function markSeen() {
  const chatId = app.openId;
  if (!chatId || !app.online || document.visibilityState !== 'visible' || !app.view.atBottom()) return;
  const seq = app.view.lastSeq;
  if (!seq || (app.readSent.get(chatId) ?? 0) >= seq) return;
  app.readSent.set(chatId, seq);
  app.chats.setRead(chatId, seq);
  request({ type: 'markRead', chatId, seq }).catch(() => app.readSent.delete(chatId));
}

// ------------------------------------------------------------------ chats

async function openChat(chatId) {
  app.openId = chatId;
  app.chats.openId = chatId;
  app.chats.render();
  document.body.classList.add('chat-open');
  $('#no-chat').hidden = true;
  $('#chat-pane').hidden = false;
  showChatHead();
  clearUploads();
  $('#message').value = '';
  updateLimit();
  $('#message').focus();
  try {
    await app.view.open(chatId);
    markSeen();
  } catch (e) {
    announce(`Could not open the chat: ${e.message}`);
  }
}

function closeChat() {
  app.openId = null;
  app.chats.openId = null;
  app.chats.render();
  app.view.reset(null);
  document.body.classList.remove('chat-open');
  $('#chat-pane').hidden = true;
  $('#no-chat').hidden = false;
}

function showChatHead() {
  const chat = app.chats.get(app.openId);
  if (!chat) return;
  $('#chat-title').textContent = app.chats.title(chat);
  $('#chat-people').textContent = chat.participants.map((p) => shortName(p, app.session.userId)).join(', ');
}

// ------------------------------------------------------------------ composer

function setUpComposer() {
  const text = $('#message');
  text.addEventListener('input', updateLimit);
  text.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('#composer').requestSubmit();
    }
  });
  $('#composer').onsubmit = (e) => {
    e.preventDefault();
    send();
  };
  $('#attach').onchange = () => {
    for (const file of $('#attach').files) upload(file);
    $('#attach').value = '';
  };
  const pane = $('#chat-pane');
  pane.addEventListener('dragover', (e) => { e.preventDefault(); pane.classList.add('drop'); });
  pane.addEventListener('dragleave', () => pane.classList.remove('drop'));
  pane.addEventListener('drop', (e) => {
    e.preventDefault();
    pane.classList.remove('drop');
    for (const file of e.dataTransfer.files) upload(file);
  });
  $('#back').onclick = closeChat;
}

/** Shows the size against the 16 KiB limit before the node would refuse it. */
function updateLimit() {
  const max = app.info.limits.maxMessageBytes;
  const bytes = utf8Length($('#message').value);
  const over = bytes > max;
  const el = $('#message-limit');
  el.textContent = over ? `Too long: ${bytes} of ${max} bytes` : bytes > max * 0.75 ? `${bytes} of ${max} bytes` : '';
  el.classList.toggle('error', over);
  $('#message').setAttribute('aria-invalid', over ? 'true' : 'false');
  $('#message').style.height = 'auto';
  $('#message').style.height = `${Math.min($('#message').scrollHeight, 160)}px`;
  updateSend();
}

function updateSend() {
  const over = utf8Length($('#message').value) > app.info.limits.maxMessageBytes;
  const busy = app.uploads.some((u) => !u.meta && !u.error);
  $('#send').disabled = over || busy;
}

function send() {
  const message = $('#message').value;
  const ready = app.uploads.filter((u) => u.meta);
  if (!app.openId || $('#send').disabled || (!message.trim() && ready.length === 0)) return;
  const local = {
    chatId: app.openId,
    clientMsgId: randomId(),
    from: app.session.userId,
    message: message.trim() ? message : '',
    attachments: ready.map((u) => u.meta),
  };
  $('#message').value = '';
  clearUploads();
  updateLimit();
  app.view.addPending(local);
  transmit(local);
}

/** Sends (or re-sends, with the same clientMsgId) a message; pending until its result. */
function transmit(local) {
  request({
    type: 'sendMessage',
    chatId: local.chatId,
    message: local.message,
    attachments: local.attachments.map((a) => a.attachmentId),
    clientMsgId: local.clientMsgId,
  }).then((r) => {
    Object.assign(local, { messageId: r.messageId, seq: r.seq, sentAt: r.sentAt, failed: null });
    if (local.chatId === app.openId) app.view.settle(local);
    app.chats.message(local, { live: true });
    app.chats.setRead(local.chatId, r.seq);
    app.readSent.set(local.chatId, Math.max(app.readSent.get(local.chatId) ?? 0, r.seq));
    const { chatId, messageId, seq, from, sentAt, message, attachments } = local;
    app.link.share({ type: 'newMessage', chatId, messageId, seq, from, sentAt, message, attachments });
  }, (e) => {
    local.failed = e.message || e.code;
    local.retry = () => { local.failed = null; app.view.settle(local); transmit(local); };
    if (local.chatId === app.openId) app.view.settle(local);
  });
}

// ------------------------------------------------------------------ attachments

/** Types shown inline (the embedded store serves just these without Content-Disposition). */
const IMAGE = /^image\/(png|jpeg|gif|webp|avif|bmp)$/;

function clearUploads() {
  for (const u of app.uploads) u.xhr?.abort();
  app.uploads = [];
  $('#uploads').replaceChildren();
  updateSend();
}

async function upload(file) {
  const limits = app.info.limits;
  if (app.uploads.length >= limits.maxAttachments) { announce(`At most ${limits.maxAttachments} files per message.`); return; }
  if (file.size === 0 || file.size > limits.maxAttachmentBytes) {
    announce(`${file.name}: files must be 1 byte to ${formatSize(limits.maxAttachmentBytes)}.`);
    return;
  }
  const u = { file };
  const progress = h('progress', { max: 100, value: 0, 'aria-label': `Uploading ${file.name}` });
  const remove = h('button', { type: 'button', class: 'link', 'aria-label': `Remove ${file.name}`, onclick: () => {
    u.xhr?.abort();
    app.uploads = app.uploads.filter((x) => x !== u);
    u.li.remove();
    updateSend();
  } }, '×');
  u.li = h('li', {}, h('span', {}, `${file.name} (${formatSize(file.size)})`), progress, remove);
  app.uploads.push(u);
  $('#uploads').append(u.li);
  updateSend();
  try {
    const contentType = file.type || 'application/octet-stream';
    const name = file.name.replace(/[/\\\u0000-\u001f\u007f]/g, '_').slice(0, 255);
    const t = await request({ type: 'getAttachmentTarget', size: file.size, contentType, name });
    await put(u, t, file, progress);
    u.meta = { attachmentId: t.attachmentId, contentType, size: file.size, name };
    // The sender's page shows its own image from the file: a URL asked for before
    // the send would name the upload, which S3 storage deletes once the send seals it.
    if (IMAGE.test(contentType)) app.previews.set(t.attachmentId, URL.createObjectURL(file));
    progress.value = 100;
    u.li.classList.add('done');
  } catch (e) {
    u.error = e.message || 'upload failed';
    u.li.classList.add('error');
    u.li.firstChild.textContent = `${file.name}: ${u.error}`;
  }
  updateSend();
}

/** PUTs the file to the signed URL, straight to storage, with progress. */
function put(u, target, file, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    u.xhr = xhr;
    xhr.open(target.method || 'PUT', target.uploadUrl);
    for (const [k, v] of Object.entries(target.headers || {})) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = Math.floor((e.loaded / e.total) * 100); };
    xhr.onload = () => (xhr.status >= 200 && xhr.status < 300 ? resolve() : reject(new Error(`storage answered ${xhr.status}`)));
    xhr.onerror = () => reject(new Error('could not reach the storage'));
    xhr.onabort = () => reject(new Error('cancelled'));
    xhr.send(file);
  });
}

/** A download URL, fresh from getAttachmentUrl (images reuse one while valid). */
async function attachmentUrl(id, fresh) {
  const known = app.urls.get(id);
  if (!fresh && known && known.expires > Date.now() + 60000) return known.url;
  const r = await request({ type: 'getAttachmentUrl', attachmentId: id });
  app.urls.set(id, { url: r.url, expires: Date.parse(r.expiresAt) || 0 });
  return r.url;
}

/** An attachment of a message: images inline, other files as download links. */
function attachment(a) {
  const label = `${a.name || 'file'} (${formatSize(a.size)})`;
  const link = h('a', { href: '#', class: 'file', rel: 'noopener noreferrer', onclick: async (e) => {
    e.preventDefault();
    try {
      window.open(await attachmentUrl(a.attachmentId, true), '_blank', 'noopener,noreferrer');
    } catch (err) {
      announce(`${a.name || 'file'}: ${err.message}`);
    }
  } }, label);
  if (!IMAGE.test(a.contentType)) return link;
  const img = h('img', { alt: a.name || 'image', loading: 'lazy', decoding: 'async' });
  const preview = app.previews.get(a.attachmentId);
  if (preview) img.src = preview;
  else attachmentUrl(a.attachmentId, false).then((url) => { img.src = url; }, () => { img.alt = `${label}: unavailable`; });
  return h('figure', {}, img, h('figcaption', {}, link));
}

// ------------------------------------------------------------------ dialogs

function participantsOf(text) {
  return text.split(/[\s,;]+/).map((s) => s.trim().toLowerCase()).filter(Boolean);
}

function setUpDialogs() {
  const dialog = $('#new-chat-dialog');
  $('#new-chat').onclick = () => {
    $('#new-chat-form').reset();
    $('#new-chat-error').textContent = '';
    dialog.showModal();
  };
  $('#new-chat-cancel').onclick = () => dialog.close();
  $('#new-chat-form').onsubmit = async (e) => {
    e.preventDefault();
    const name = $('#chat-name').value.trim() || undefined;
    const participants = participantsOf($('#participants').value);
    try {
      const r = await request({ type: 'createChat', participants, name });
      dialog.close();
      if (!app.chats.get(r.chatId)) {
        const all = [app.session.userId, ...participants.map((p) => (p.includes('@') ? p : `${p}@${app.info.node}`))];
        app.chats.update({ chatId: r.chatId, name: name ?? null, participants: [...new Set(all)], reason: 'created' });
      }
      openChat(r.chatId);
    } catch (err) {
      $('#new-chat-error').textContent = err.message;
    }
  };
  setUpSettings();
}

function setUpSettings() {
  const dialog = $('#settings-dialog');
  const error = $('#settings-error');
  const fail = (err) => { error.textContent = err.message; };
  const people = () => {
    const chat = app.chats.get(app.openId);
    if (!chat) { dialog.close(); return; }
    $('#people').replaceChildren(...chat.participants.map((p) => h('li', {},
      h('span', {}, p === app.session.userId ? `${p} (you)` : p),
      p === app.session.userId ? null : h('button', {
        type: 'button', class: 'link',
        onclick: () => modify(p, 'REMOVE').then(people, fail),
      }, `Remove ${shortName(p, app.session.userId)}`))));
  };
  const modify = async (userId, operation) => {
    error.textContent = '';
    const r = await request({ type: 'modifyChatParticipants', chatId: app.openId, userId, operation });
    const chat = app.chats.get(app.openId);
    if (chat && r.participants) chat.participants = r.participants;
    return r;
  };
  $('#chat-settings').onclick = () => {
    const chat = app.chats.get(app.openId);
    $('#rename').value = chat?.name ?? '';
    error.textContent = '';
    people();
    dialog.showModal();
  };
  $('#settings-close').onclick = () => dialog.close();
  $('#rename-form').onsubmit = async (e) => {
    e.preventDefault();
    error.textContent = '';
    const name = $('#rename').value.trim() || null;
    try {
      await request({ type: 'renameChat', chatId: app.openId, name });
      announce('Renamed.');
    } catch (err) { fail(err); }
  };
  $('#add-form').onsubmit = async (e) => {
    e.preventDefault();
    try {
      await modify($('#add-person').value.trim().toLowerCase(), 'ADD');
      $('#add-person').value = '';
      people();
    } catch (err) { fail(err); }
  };
  $('#leave').onclick = async () => {
    try {
      await modify(app.session.userId, 'REMOVE');
      dialog.close();
      closeChat();
    } catch (err) { fail(err); }
  };
}

boot();
