// Signing in, registering and signing out over the HTTP API of protocol v1.
// The session (token, device, user) is kept in this browser profile's
// localStorage and removed on sign-out.

import { $ } from './dom.js';

const KEY = 'natter.session';

export function savedSession() {
  try {
    const s = JSON.parse(localStorage.getItem(KEY));
    return s && s.token && s.deviceId && s.userId ? s : null;
  } catch {
    return null;
  }
}

export function forgetSession() {
  localStorage.removeItem(KEY);
}

async function post(path, body, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(path, { method: 'POST', headers, body: body && JSON.stringify(body) });
  if (r.ok) return r.status === 204 ? null : r.json();
  let err = { code: 'http', message: `HTTP ${r.status}` };
  try { err = await r.json(); } catch { /* not JSON */ }
  throw Object.assign(new Error(err.message), { code: err.code });
}

const MESSAGES = {
  bad_credentials: 'Wrong username or password.',
  user_disabled: 'This account is disabled.',
  username_taken: 'That username is taken.',
  invalid_username: 'Usernames are 1–32 of a–z, 0–9, ".", "_" and "-", starting with a letter or digit.',
  weak_password: 'The password is too short (at least 8 characters).',
  invalid_invite: 'That invite code is not valid.',
  registration_closed: 'This node does not take new accounts.',
  rate_limited: 'Too many attempts; wait a moment.',
};

/** Wires the sign-in and registration forms; `onSession` gets the new session. */
export function setUpSignIn(info, onSession) {
  const form = $('#signin-form');
  const error = $('#signin-error');
  const registering = () => form.dataset.mode === 'register';
  const mode = (m) => {
    form.dataset.mode = m;
    $('#signin-title').textContent = m === 'register' ? `Create an account on ${info.node}` : `Sign in to ${info.node}`;
    $('#invite-row').hidden = !(m === 'register' && info.registration === 'invite');
    $('#invite').required = m === 'register' && info.registration === 'invite';
    $('#signin-submit').textContent = m === 'register' ? 'Create account' : 'Sign in';
    $('#switch-mode').textContent = m === 'register' ? 'I have an account' : 'Create an account';
    $('#password').autocomplete = m === 'register' ? 'new-password' : 'current-password';
    error.textContent = '';
  };
  $('#switch-mode').hidden = info.registration === 'closed';
  $('#switch-mode').onclick = () => mode(registering() ? 'signin' : 'register');
  mode('signin');
  form.onsubmit = async (e) => {
    e.preventDefault();
    const username = $('#username').value.trim().toLowerCase();
    const password = $('#password').value;
    error.textContent = '';
    $('#signin-submit').disabled = true;
    try {
      if (registering()) {
        const invite = $('#invite').value.trim() || undefined;
        await post('/v1/register', { username, password, invite });
      }
      const r = await post('/v1/login', { username, password, deviceName: 'Web browser' });
      const session = { token: r.token, deviceId: r.deviceId, userId: r.userId };
      localStorage.setItem(KEY, JSON.stringify(session));
      $('#password').value = '';
      onSession(session);
    } catch (err) {
      error.textContent = MESSAGES[err.code] || err.message || 'Could not reach the node.';
    } finally {
      $('#signin-submit').disabled = false;
    }
  };
}

/** Ends the device on the node (best effort) and forgets it here. */
export async function signOut(session) {
  forgetSession();
  try { await post('/v1/logout', null, session.token); } catch { /* already gone */ }
}
