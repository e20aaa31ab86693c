// Small DOM helpers. Everything that comes from the network is set as text:
// nothing here ever assigns HTML.

/** Makes an element: h('button', {class: 'x', onclick: f}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Text with its http(s) links as anchors that open without opener or referrer. */
export function linkified(text) {
  const out = [];
  const re = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    let url;
    try { url = new URL(m[0]); } catch { continue; }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') continue;
    out.push(text.slice(last, m.index));
    out.push(h('a', { href: url.href, target: '_blank', rel: 'noopener noreferrer' }, m[0]));
    last = m.index + m[0].length;
  }
  out.push(text.slice(last));
  return out.filter((p) => p !== '');
}

export function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

export function formatTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/** A random id (clientMsgId, tab id). */
export function randomId() {
  return crypto.randomUUID();
}

/** Shows a short message in the page's live region. */
export function announce(text) {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.hidden = !text;
  clearTimeout(announce.timer);
  if (text) announce.timer = setTimeout(() => { el.hidden = true; }, 6000);
}
