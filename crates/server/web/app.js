// app.js — the clusterchat web client: login / register, the friend and
// group lists, conversations, sending with exactly-once resend, and
// reconnection. Speaks protocol level 2 (docs/protocol.md) over the
// WebSocket at /ws, one JSON frame per text message.
//
// ─── Element contract (stable ids / data-testids for tests) ───────────────
// Connection banner  #banner [data-testid=banner] data-state="online|offline|reconnecting"
//                    (hidden while online); #banner-text; #banner-retry ("Retry now" /
//                    "Use here" after being signed in elsewhere: data-kicked="true" on #banner)
// Login form         #login-form, #login-id, #login-password, #login-submit, #login-error
// Register form      #register-form, #reg-name, #reg-password, #reg-submit, #reg-error,
//                    #reg-result [data-testid=reg-result] data-id="N" text "Your id is N. …",
//                    with the number alone in #reg-id
// Views              #auth-view and #chat-view (one is hidden); #chat-view data-pane="list|conversation"
//                    (which pane shows on narrow screens)
// Logged-in user     #me [data-testid=me] data-id="N" (name), #me-id ("#N"); #logout
// Find people        #find-form, #find-name, #find-submit, #find-error;
//                    result #find-result [data-testid=find-result] data-id, .name, .presence[data-online],
//                    #find-chat ("Chat"), #find-add-friend ("Add friend"; hidden when already a friend or you)
// Sidebar lists      #friend-list, #group-list, #other-list (people you chat with who are not friends)
//                    each entry: button [data-testid=contact][data-kind=friend|group|user][data-id=N]
//                    with .name, .cid ("#N"), .unread (data-count="N", text N, hidden when 0),
//                    .presence[data-online=true|false] (friends and users only), aria-current="true" when open
// Groups             #create-group-form, #group-name, #group-desc, #group-create, #group-status, #group-error;
//                    #join-group-form, #join-group-id, #join-group-submit, #join-status, #join-error
// Conversation       #no-conversation (shown until a contact is clicked); #conversation data-kind data-id;
//                    #back (narrow screens), #conv-title, #conv-sub,
//                    #conv-add-friend, #conv-remove-friend, #conv-leave-group,
//                    #conv-disband-group (creator only; asks in #confirm-dialog: #confirm-ok / #confirm-cancel)
//                    #message-scroll (scrolls; near the top loads older), #load-older, #history-status
//                    #messages [data-testid=messages]: each li [data-testid=message] data-mid, data-seq (pushed
//                    ones), data-from, data-own="true|false", data-state="sending|sent|failed" (own only),
//                    children .sender, .time (<time datetime>), .text, .status (own), .retry (failed only)
// Composer           #composer-form, #composer (Enter sends, Shift+Enter newline), #send, #composer-error
// Notices            #notice [data-testid=notice] data-kind="info|error" (events and errors, 10 s)
// ──────────────────────────────────────────────────────────────────────────
//
// localStorage: clusterchat.lastId, clusterchat.session ({id,name,token}),
// clusterchat.seq.<id> (last confirmed seq), clusterchat.outbox.<id>
// (unacknowledged sends), clusterchat.unread.<id>, clusterchat.others.<id>.

import { Link, wsUrl } from './net.js';
import {
  MSG, LIMITS, Backoff, Delivery, Outbox, KEYS, byteLength, charCount, frameBytes, convKey, chatTarget,
  parseServerTime, formatTime, errorText, loadJSON, saveJSON,
} from './store.js';

const $ = (id) => document.getElementById(id);
const storage = (() => {
  try {
    const s = globalThis.localStorage;
    s.getItem('x');
    return s;
  } catch {
    const m = new Map();
    return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k) };
  }
})();

const PING_EVERY_MS = 20000;
const PING_WAIT_MS = 10000;
const CONFIRM_DELAY_MS = 50;

// ─── State ────────────────────────────────────────────────────────────────
const app = {
  session: null, // {id, name, token}: logged in, or resuming with the token
  loggedIn: false, // the current connection has a LOGIN_ACK
  loggingIn: false, // a password login is in flight
  loggingOut: false,
  kicked: false,
  quietReconnect: false,
  sentLastSeq: 0,
  friends: new Map(), // id → true
  groups: new Map(), // id → {id, name, desc, creator, members: Map(id → role)}
  others: new Map(), // id → true: people (not friends) with a conversation here
  names: new Map(), // user id → name
  online: new Map(), // user id → bool
  convs: new Map(), // key → conversation
  open: null, // key of the open conversation
  unread: {}, // key → count
  delivery: new Delivery(0),
  outbox: null,
  confirmTimer: null,
  pingTimer: null,
  found: null, // the FIND_USER result {id, name, online}
};
let localOrder = 0;

const link = new Link({
  url: wsUrl(),
  backoff: new Backoff({ base: 500, max: 10000 }),
  onOpen,
  onClose,
  onFrame,
  onState: renderBanner,
});

// ─── Helpers ──────────────────────────────────────────────────────────────
function userName(id) {
  return app.names.get(id) || `User #${id}`;
}

function groupName(id) {
  const g = app.groups.get(id);
  return g && g.name ? g.name : `Group #${id}`;
}

function learnName(id, name) {
  if (Number.isInteger(id) && typeof name === 'string' && name !== '') app.names.set(id, name);
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function setText(id, text) {
  const e = $(id);
  e.textContent = text || '';
  if ('hidden' in e && e.classList.contains('auto-hide')) e.hidden = !text;
}

let noticeTimer = null;
function notice(text, kind = 'info') {
  const n = $('notice');
  n.textContent = text;
  n.dataset.kind = kind;
  n.hidden = !text;
  clearTimeout(noticeTimer);
  if (text) noticeTimer = setTimeout(() => { n.hidden = true; n.textContent = ''; }, 10000);
}

function isNarrow() {
  return globalThis.matchMedia && matchMedia('(max-width: 700px)').matches;
}

// ─── Conversations ────────────────────────────────────────────────────────
function ensureConv(kind, id) {
  const key = convKey(kind, id);
  let c = app.convs.get(key);
  if (!c) {
    c = { key, kind, id, msgs: new Map(), pending: [], loaded: false, loading: false, more: false, historyMin: null, historyError: '' };
    app.convs.set(key, c);
  }
  return c;
}

/** Adds a message with a mid; false when the conversation already holds it. */
function addMessage(conv, m) {
  const old = conv.msgs.get(m.mid);
  if (old) {
    if (m.seq != null && old.seq == null) old.seq = m.seq;
    if (m.serverTime) { old.time = m.time; old.serverTime = true; }
    return false;
  }
  conv.msgs.set(m.mid, m);
  return true;
}

function messageFromFrame(f, seq = null) {
  const me = app.session.id;
  return {
    mid: f.mid,
    seq,
    from: f.id,
    fromName: typeof f.name === 'string' ? f.name : '',
    text: typeof f.msg === 'string' ? f.msg : '',
    time: parseServerTime(f.time) || new Date(),
    serverTime: true,
    own: f.id === me,
    state: f.id === me ? 'sent' : null,
    local: ++localOrder,
  };
}

function sortedMessages(conv) {
  const withMid = [...conv.msgs.values()].sort((a, b) => a.mid - b.mid);
  return withMid.concat(conv.pending);
}

function addOther(id) {
  if (id === app.session.id || app.friends.has(id) || app.others.has(id)) return;
  app.others.set(id, true);
  saveOthers();
}

function saveOthers() {
  if (!app.session) return;
  const o = {};
  for (const id of app.others.keys()) o[id] = app.names.get(id) || '';
  saveJSON(storage, KEYS.others(app.session.id), o);
}

function saveUnread() {
  if (app.session) saveJSON(storage, KEYS.unread(app.session.id), app.unread);
}

function bumpUnread(key) {
  app.unread[key] = (app.unread[key] || 0) + 1;
  saveUnread();
}

// ─── Session life ─────────────────────────────────────────────────────────
function saveSession() {
  if (!app.session || app.kicked) return;
  saveJSON(storage, KEYS.session, { id: app.session.id, name: app.session.name, token: app.session.token });
  storage.setItem(KEYS.lastId, String(app.session.id));
}

/** Sets up the per-user state for `session` (from a login, or a saved token). */
function beginSession(session) {
  app.session = session;
  app.loggedIn = false;
  app.kicked = false;
  app.loggingOut = false;
  app.friends.clear();
  app.groups.clear();
  app.others.clear();
  app.names.clear();
  app.online.clear();
  app.convs.clear();
  app.open = null;
  app.found = null;
  app.names.set(session.id, session.name || `User #${session.id}`);
  const uid = session.id;
  const seq = Number(storage.getItem(KEYS.seq(uid))) || 0;
  app.delivery = new Delivery(seq >= 0 ? seq : 0);
  app.unread = loadJSON(storage, KEYS.unread(uid), {});
  if (typeof app.unread !== 'object' || Array.isArray(app.unread)) app.unread = {};
  const others = loadJSON(storage, KEYS.others(uid), {});
  for (const [id, name] of Object.entries(others || {})) {
    const n = Number(id);
    if (Number.isInteger(n)) { app.others.set(n, true); learnName(n, name); }
  }
  app.outbox = new Outbox({
    load: () => loadJSON(storage, KEYS.outbox(uid), []),
    save: (list) => saveJSON(storage, KEYS.outbox(uid), list.length ? list : null),
  });
  // Messages that were typed and not acknowledged (maybe before a reload)
  // show as "sending…" and go out again after the login.
  for (const e of app.outbox.list()) {
    const conv = ensureConv(e.kind, e.to);
    conv.pending.push(pendingMessage(e));
    if (e.kind === 'u') addOther(e.to);
  }
  $('find-name').value = '';
  $('composer').value = '';
  ['find-error', 'group-error', 'group-status', 'join-error', 'join-status', 'composer-error'].forEach((id) => setText(id, ''));
  renderAll();
}

function pendingMessage(e) {
  return {
    mid: null, seq: null, from: app.session.id, fromName: app.session.name, text: e.text,
    time: new Date(e.t || Date.now()), serverTime: false, own: true, state: 'sending', cmid: e.cmid,
    local: ++localOrder,
  };
}

/** Back to the login form; `why` is shown there. */
function endSession(why) {
  const id = app.session ? app.session.id : null;
  stopPing();
  clearTimeout(app.confirmTimer);
  app.confirmTimer = null;
  app.session = null;
  app.loggedIn = false;
  app.loggingOut = false;
  app.kicked = false;
  app.convs.clear();
  app.open = null;
  app.found = null;
  saveJSON(storage, KEYS.session, null);
  if (id != null) $('login-id').value = String(id);
  $('login-password').value = '';
  setText('login-error', why || '');
  link.start();
  renderAll();
  if (!why) $('login-password').focus();
}

function onLoggedIn(ack) {
  const s = app.session;
  s.id = ack.id ?? s.id;
  s.name = typeof ack.name === 'string' ? ack.name : s.name;
  if (typeof ack.token === 'string' && ack.token) s.token = ack.token;
  app.loggedIn = true;
  saveSession();
  link.backoff.reset();
  app.names.set(s.id, s.name);
  app.delivery.startSession(app.sentLastSeq);
  loadLists(ack);
  // Re-read each conversation's newest page when it is next shown: messages
  // sent from another device while away are only in history.
  for (const c of app.convs.values()) c.loaded = false;
  startPing();
  resendAll();
  renderAll();
  const open = currentConv();
  if (open) loadHistory(open, false);
}

function loadLists(ack) {
  app.friends.clear();
  app.groups.clear();
  for (const f of Array.isArray(ack.friends) ? ack.friends : []) {
    if (!f || !Number.isInteger(f.id)) continue;
    app.friends.set(f.id, true);
    learnName(f.id, f.name);
    if (f.state) app.online.set(f.id, f.state === 'online');
    app.others.delete(f.id);
  }
  for (const g of Array.isArray(ack.groups) ? ack.groups : []) {
    if (!g || !Number.isInteger(g.id)) continue;
    const group = { id: g.id, name: g.groupname || '', desc: g.groupdesc || '', creator: null, members: new Map() };
    for (const u of Array.isArray(g.users) ? g.users : []) {
      if (!u || !Number.isInteger(u.id)) continue;
      group.members.set(u.id, u.role || 'normal');
      if (u.role === 'creator') group.creator = u.id;
      learnName(u.id, u.name);
      if (u.state) app.online.set(u.id, u.state === 'online');
    }
    app.groups.set(g.id, group);
  }
  saveOthers();
}

async function passwordLogin(id, password) {
  app.loggingIn = true;
  renderAuthBusy();
  try {
    if (!link.isOpen) {
      link.start();
      link.connectNow();
      await whenOpen(10000);
    }
    const lastSeq = Number(storage.getItem(KEYS.seq(id))) || 0;
    const ack = await link.request({ msgid: MSG.LOGIN, id, password, v: 2, last_seq: lastSeq }, { timeout: 30000 });
    app.loggingIn = false;
    beginSession({ id: ack.id ?? id, name: ack.name || '', token: ack.token || '' });
    app.sentLastSeq = lastSeq;
    onLoggedIn(ack);
    $('login-password').value = '';
  } catch (e) {
    app.loggingIn = false;
    let why;
    if (e.errno === 1) why = 'Wrong user id or password.';
    else if (e.lost || e.notOpen) why = 'Cannot reach the server. Check your connection and try again.';
    else why = `Could not log in: ${errorText(e)}`;
    if (e.errno === 9 && e.errmsg) why = `Could not log in: ${errorText(e)}`;
    setText('login-error', why);
  } finally {
    app.loggingIn = false;
    renderAuthBusy();
  }
}

function whenOpen(ms) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (link.isOpen) resolve();
      else if (Date.now() - t0 > ms) reject(Object.assign(new Error('not connected'), { notOpen: true }));
      else setTimeout(tick, 100);
    };
    tick();
  });
}

function tokenLogin() {
  const s = app.session;
  app.sentLastSeq = app.delivery.confirmed;
  link.request({ msgid: MSG.LOGIN, id: s.id, token: s.token, v: 2, last_seq: app.sentLastSeq }, { timeout: 20000 })
    .then((ack) => {
      if (app.session !== s || app.loggingOut) return;
      onLoggedIn(ack);
    }, (e) => {
      if (app.session !== s || app.loggingOut) return;
      if (e.lost) return; // the next connection tries again with the same token
      if (e.timeout || e.errno === 9 || e.errno === 10) {
        link.drop('login not answered');
        return;
      }
      endSession(e.errno === 1
        ? 'Your session has ended. Please log in again.'
        : `Your session could not be resumed: ${errorText(e)} Please log in again.`);
    });
}

async function logout() {
  if (!app.session) return;
  const btn = $('logout');
  btn.disabled = true;
  app.loggingOut = true;
  flushDelivered();
  if (app.loggedIn) {
    try {
      await link.request({ msgid: MSG.LOGINOUT }, { timeout: 5000 });
    } catch {
      // Not acknowledged: drop the connection, so it cannot stay logged in.
      link.drop('logged out');
    }
  }
  btn.disabled = false;
  endSession('');
  setText('login-error', '');
}

// ─── Link events ──────────────────────────────────────────────────────────
function onOpen() {
  app.quietReconnect = false;
  if (app.session && !app.kicked && !app.loggingOut) tokenLogin();
  renderBanner();
}

function onClose(info) {
  const wasLoggedIn = app.loggedIn;
  app.loggedIn = false;
  stopPing();
  if (wasLoggedIn) flushDeliveredTimerOnly();
  if (app.kicked) return true; // stays offline until "Use here"
  // A connection that was never logged in is closed by the server after
  // the login window (errno 7): open a fresh one quietly.
  if (!app.session && info.wasOpen && info.lastErrno === 7) {
    app.quietReconnect = true;
    link.backoff.reset();
    link.connectNow();
    return true;
  }
  if (info.lastErrno === 8) notice('A request was too large for the server, so it closed the connection.', 'error');
  renderAll();
  return false;
}

function onFrame(f) {
  switch (f.msgid) {
    case MSG.ONE_CHAT:
    case MSG.GROUP_CHAT:
      if (app.session && app.loggedIn) onChat(f);
      break;
    case MSG.PRESENCE:
      if (app.session) onPresence(f);
      break;
    case MSG.ROSTER:
      if (app.session) onRoster(f);
      break;
    case MSG.KICKED:
      onKicked(f);
      break;
    case MSG.ERROR:
      onStrayError(f);
      break;
    default:
      break;
  }
}

function onStrayError(f) {
  if (f.errno === 7 && !app.session) return; // login window: reconnects quietly
  if (f.errno === 7 && app.session) return; // a reconnect follows
  notice(errorText(f), 'error');
}

function onKicked(f) {
  if (!app.session) return;
  app.kicked = true;
  app.loggedIn = false;
  stopPing();
  link.stop('kicked');
  const why = typeof f.errmsg === 'string' && f.errmsg ? errorText(f) : 'This session was replaced by a newer login.';
  notice(why, 'error');
  renderAll();
}

function useHere() {
  // Resume with the newest token this browser holds (another tab may have
  // logged in since), which signs the other place out.
  const saved = loadJSON(storage, KEYS.session, null);
  app.kicked = false;
  if (saved && saved.id === app.session.id && typeof saved.token === 'string') app.session.token = saved.token;
  link.backoff.reset();
  link.start();
  renderAll();
}

// ─── Chat messages ────────────────────────────────────────────────────────
function onChat(f) {
  const me = app.session.id;
  const seq = Number.isInteger(f.seq) ? f.seq : null;
  if (seq != null) {
    app.delivery.receive(seq);
    scheduleConfirm();
  }
  learnName(f.id, f.name);
  const t = chatTarget(f, me);
  if (!Number.isInteger(t.id)) return;
  if (t.kind === 'g' && !app.groups.has(t.id)) {
    app.groups.set(t.id, { id: t.id, name: '', desc: '', creator: null, members: new Map() });
  }
  if (t.kind === 'u') addOther(t.id);
  const conv = ensureConv(t.kind, t.id);
  const m = messageFromFrame(f, seq);
  let isNew = true;
  if (Number.isInteger(f.mid)) isNew = addMessage(conv, m);
  else { m.mid = null; conv.pending.push(m); } // no mid (never at level 2): cannot dedupe
  if (isNew && !m.own && app.open !== conv.key) bumpUnread(conv.key);
  if (isNew && !m.own && app.open === conv.key && document.hidden) bumpUnread(conv.key);
  renderSidebar();
  if (app.open === conv.key) renderMessages({ stick: true });
  renderTitle();
}

function scheduleConfirm() {
  if (app.confirmTimer) return;
  app.confirmTimer = setTimeout(() => {
    app.confirmTimer = null;
    flushDelivered();
  }, CONFIRM_DELAY_MS);
}

function flushDeliveredTimerOnly() {
  clearTimeout(app.confirmTimer);
  app.confirmTimer = null;
}

/** Confirms with DELIVERED everything held, and saves it as last_seq. */
function flushDelivered() {
  if (!app.session || !app.loggedIn) return;
  const seq = app.delivery.toConfirm();
  if (seq == null) return;
  if (link.send({ msgid: MSG.DELIVERED, seq })) {
    app.delivery.markConfirmed(seq);
    if (!app.kicked) storage.setItem(KEYS.seq(app.session.id), String(app.delivery.confirmed));
  }
}

function sendMessage() {
  const conv = currentConv();
  if (!conv) return;
  const box = $('composer');
  const text = box.value;
  if (!text.trim()) return;
  const bytes = byteLength(text);
  if (bytes > LIMITS.MSG_BYTES) {
    setText('composer-error', `This message is too long (${bytes} bytes; the limit is ${LIMITS.MSG_BYTES} bytes, 16 KiB). Shorten it or split it.`);
    return;
  }
  const probe = conv.kind === 'g'
    ? { msgid: MSG.GROUP_CHAT, groupid: conv.id, msg: text, cmid: 'w'.repeat(23), reqid: 1e9 }
    : { msgid: MSG.ONE_CHAT, toid: conv.id, msg: text, cmid: 'w'.repeat(23), reqid: 1e9 };
  if (frameBytes(probe) > LIMITS.FRAME_BYTES) {
    setText('composer-error', 'This message has too many special characters to send in one piece (the request would be over 64 KiB). Split it.');
    return;
  }
  setText('composer-error', '');
  const e = app.outbox.add(conv.kind, conv.id, text);
  conv.pending.push(pendingMessage(e));
  if (conv.kind === 'u') addOther(conv.id);
  box.value = '';
  autoGrow();
  renderMessages({ bottom: true });
  renderSidebar();
  trySend(e);
}

const inflight = new Set();
const retryWait = new Map();

function trySend(e) {
  if (!app.session || !app.loggedIn || inflight.has(e.cmid) || !app.outbox.has(e.cmid)) return;
  inflight.add(e.cmid);
  const session = app.session;
  link.request(Outbox.request(e), { timeout: 30000 }).then((ack) => {
    inflight.delete(e.cmid);
    retryWait.delete(e.cmid);
    if (app.session !== session) return;
    onSent(e, ack.mid);
  }, (err) => {
    inflight.delete(e.cmid);
    if (app.session !== session) return;
    if (err.lost) return; // sent again after the next login, same cmid
    if (err.timeout || err.errno === 9 || err.errno === 10) {
      // Busy or too fast: try again later with the same cmid.
      const wait = Math.min(10000, (retryWait.get(e.cmid) || 1000) * 2);
      retryWait.set(e.cmid, wait);
      setTimeout(() => trySend(e), wait);
      return;
    }
    onSendFailed(e, err);
  });
}

function resendAll() {
  for (const e of app.outbox.list()) trySend(e);
}

function findPending(e) {
  const conv = app.convs.get(convKey(e.kind, e.to));
  if (!conv) return [null, null];
  return [conv, conv.pending.find((m) => m.cmid === e.cmid) || null];
}

function onSent(e, mid) {
  app.outbox.remove(e.cmid);
  const [conv, m] = findPending(e);
  if (!conv || !m) return;
  conv.pending = conv.pending.filter((x) => x !== m);
  if (Number.isInteger(mid)) {
    m.mid = mid;
    m.state = 'sent';
    if (conv.msgs.has(mid)) {
      // Already here (a message to yourself is pushed back; or history
      // came first): keep that one.
      const old = conv.msgs.get(mid);
      old.own = true;
      old.state = 'sent';
      m.el?.remove();
    } else {
      conv.msgs.set(mid, m);
    }
  } else {
    m.state = 'sent';
    conv.pending.push(m);
  }
  if (app.open === conv.key) renderMessages({});
}

function onSendFailed(e, err) {
  app.outbox.remove(e.cmid);
  const [conv, m] = findPending(e);
  if (!conv || !m) return;
  m.state = 'failed';
  m.error = errorText(err);
  m.cmid = null;
  if (app.open === conv.key) renderMessages({});
}

function retryFailed(conv, m) {
  conv.pending = conv.pending.filter((x) => x !== m);
  m.el?.remove();
  const e = app.outbox.add(conv.kind, conv.id, m.text);
  conv.pending.push(pendingMessage(e));
  renderMessages({ bottom: true });
  trySend(e);
}

// ─── History ──────────────────────────────────────────────────────────────
async function loadHistory(conv, older) {
  if (!app.loggedIn || conv.loading) return;
  if (older && (!conv.more || conv.historyMin == null)) return;
  conv.loading = true;
  conv.historyError = '';
  if (app.open === conv.key) renderHistoryStatus(conv);
  const req = { msgid: MSG.HISTORY, limit: LIMITS.HISTORY_PAGE };
  if (conv.kind === 'g') req.groupid = conv.id;
  else req.toid = conv.id;
  if (older) req.before = conv.historyMin;
  const session = app.session;
  try {
    const ack = await link.request(req, { timeout: 30000 });
    if (app.session !== session) return;
    const list = Array.isArray(ack.messages) ? ack.messages : [];
    let min = null;
    for (const f of list) {
      if (!f || !Number.isInteger(f.mid)) continue;
      learnName(f.id, f.name);
      addMessage(conv, messageFromFrame(f));
      min = min == null ? f.mid : Math.min(min, f.mid);
    }
    if (older) conv.historyMin = min == null ? conv.historyMin : Math.min(conv.historyMin, min);
    else conv.historyMin = min;
    conv.more = ack.more === true && min != null;
    conv.loaded = true;
  } catch (e) {
    if (app.session !== session) return;
    if (!e.lost) conv.historyError = `Could not load messages: ${errorText(e)}`;
  } finally {
    conv.loading = false;
  }
  if (app.open === conv.key) {
    if (older) renderMessages({ keepFromBottom: true });
    else renderMessages({ stick: true });
  }
}

// ─── Presence and roster ──────────────────────────────────────────────────
function onPresence(f) {
  if (!Number.isInteger(f.id)) return;
  app.online.set(f.id, f.state === 'online');
  // PRESENCE comes from friends only, including new ones.
  if (!app.friends.has(f.id)) {
    app.friends.set(f.id, true);
    app.others.delete(f.id);
  }
  renderSidebar();
  renderHeader();
}

const ownRequests = { addFriend: new Set(), delFriend: new Set(), quit: new Set(), disband: new Set(), join: new Set() };

function onRoster(f) {
  const id = f.id;
  if (!Number.isInteger(id)) return;
  learnName(id, f.name);
  if (f.state) app.online.set(id, f.state === 'online');
  const me = app.session.id;
  const gid = Number.isInteger(f.groupid) ? f.groupid : null;
  if (gid != null && f.groupname && app.groups.has(gid)) app.groups.get(gid).name = f.groupname;
  const who = userName(id);
  switch (f.event) {
    case 'friend_added': {
      const mine = app.friends.has(id) || ownRequests.addFriend.has(id);
      app.friends.set(id, true);
      app.others.delete(id);
      saveOthers();
      if (!mine) notice(`${who} added you as a friend.`);
      break;
    }
    case 'friend_removed': {
      const mine = !app.friends.has(id) || ownRequests.delFriend.has(id);
      unfriend(id);
      if (!mine) notice(`${who} removed you from their friends.`);
      break;
    }
    case 'member_joined': {
      if (gid == null) break;
      let g = app.groups.get(gid);
      if (!g) {
        g = { id: gid, name: f.groupname || '', desc: '', creator: null, members: new Map() };
        app.groups.set(gid, g);
      }
      if (!g.members.has(id)) g.members.set(id, 'normal');
      if (id !== me) notice(`${who} joined ${groupName(gid)}.`);
      break;
    }
    case 'member_left': {
      if (gid == null) break;
      if (id === me) {
        const title = groupName(gid);
        if (removeGroup(gid) && !ownRequests.quit.has(gid)) notice(`You left ${title}.`);
      } else {
        app.groups.get(gid)?.members.delete(id);
        if (app.groups.has(gid)) notice(`${who} left ${groupName(gid)}.`);
      }
      break;
    }
    case 'group_disbanded': {
      if (gid == null) break;
      const title = f.groupname || groupName(gid);
      if (removeGroup(gid) && !ownRequests.disband.has(gid)) notice(`${title} was disbanded by ${who}.`);
      break;
    }
    default:
      break;
  }
  renderSidebar();
  renderHeader();
}

function unfriend(id) {
  app.friends.delete(id);
  const conv = app.convs.get(convKey('u', id));
  // Keep the conversation reachable when there is one.
  if (conv && (app.open === conv.key || conv.msgs.size || conv.pending.length)) addOther(id);
}

/** Removes a group from the lists (and closes it); false when it was not there. */
function removeGroup(gid) {
  const had = app.groups.delete(gid);
  const key = convKey('g', gid);
  if (app.open === key) closeConv();
  delete app.unread[key];
  saveUnread();
  return had;
}

// ─── Requests from the sidebar and header ─────────────────────────────────
function needOnline(errId) {
  if (app.loggedIn) return true;
  const text = 'You are offline. Try again when the connection is back.';
  if (errId) setText(errId, text);
  else notice(text, 'error');
  return false;
}

async function findUser(name) {
  setText('find-error', '');
  app.found = null;
  renderFound();
  if (!name) return;
  if (!needOnline('find-error')) return;
  const btn = $('find-submit');
  btn.disabled = true;
  try {
    const ack = await link.request({ msgid: MSG.FIND_USER, name });
    const u = ack.user;
    if (!u || !Number.isInteger(u.id)) throw Object.assign(new Error(''), { errno: 3 });
    learnName(u.id, u.name || name);
    if (typeof u.online === 'boolean') app.online.set(u.id, u.online);
    app.found = { id: u.id, name: u.name || name, online: u.online === true };
  } catch (e) {
    setText('find-error', e.errno === 3
      ? `No one is called "${name}". Names must match exactly, including capital letters.`
      : `Could not search: ${errorText(e)}`);
  } finally {
    btn.disabled = false;
  }
  renderFound();
}

async function addFriend(id, errTarget) {
  if (!needOnline(errTarget)) return;
  ownRequests.addFriend.add(id);
  try {
    await link.request({ msgid: MSG.ADD_FRIEND, friendid: id });
    app.friends.set(id, true);
    app.others.delete(id);
    saveOthers();
    notice(`${userName(id)} is now your friend.`);
  } catch (e) {
    const text = e.errno === 5 ? `${userName(id)} is already your friend.` : `Could not add ${userName(id)} as a friend: ${errorText(e)}`;
    if (errTarget) setText(errTarget, text);
    else notice(text, 'error');
    if (e.errno === 5) { app.friends.set(id, true); app.others.delete(id); }
  } finally {
    ownRequests.addFriend.delete(id);
  }
  renderSidebar();
  renderHeader();
  renderFound();
}

async function removeFriend(id) {
  if (!needOnline()) return;
  ownRequests.delFriend.add(id);
  try {
    await link.request({ msgid: MSG.DEL_FRIEND, friendid: id });
    unfriend(id);
    notice(`${userName(id)} is no longer your friend.`);
  } catch (e) {
    if (e.errno === 3) unfriend(id);
    notice(`Could not remove ${userName(id)}: ${errorText(e)}`, 'error');
  } finally {
    ownRequests.delFriend.delete(id);
  }
  renderSidebar();
  renderHeader();
  renderFound();
}

async function createGroup(name, desc) {
  setText('group-error', '');
  setText('group-status', '');
  delete $('group-status').dataset.id;
  if (!name.trim()) { setText('group-error', 'Give the group a name.'); return; }
  if (charCount(name) > LIMITS.NAME_CHARS) { setText('group-error', `The name is too long (at most ${LIMITS.NAME_CHARS} characters).`); return; }
  if (charCount(desc) > LIMITS.GROUP_DESC_CHARS) { setText('group-error', `The description is too long (at most ${LIMITS.GROUP_DESC_CHARS} characters).`); return; }
  if (!needOnline('group-error')) return;
  const btn = $('group-create');
  btn.disabled = true;
  try {
    const ack = await link.request({ msgid: MSG.CREATE_GROUP, groupname: name, groupdesc: desc });
    const gid = ack.groupid;
    if (Number.isInteger(gid)) {
      const me = app.session.id;
      app.groups.set(gid, { id: gid, name, desc, creator: me, members: new Map([[me, 'creator']]) });
      setText('group-status', `Group "${name}" created. Its id is ${gid}: others join with it.`);
      $('group-status').dataset.id = String(gid);
    }
    $('group-name').value = '';
    $('group-desc').value = '';
  } catch (e) {
    setText('group-error', e.errno === 5 ? `A group called "${name}" already exists. Choose another name.` : `Could not create the group: ${errorText(e)}`);
  } finally {
    btn.disabled = false;
  }
  renderSidebar();
}

async function joinGroup(gid) {
  setText('join-error', '');
  setText('join-status', '');
  if (!Number.isInteger(gid) || gid <= 0) { setText('join-error', 'Enter the group id, a number.'); return; }
  if (!needOnline('join-error')) return;
  const btn = $('join-group-submit');
  btn.disabled = true;
  ownRequests.join.add(gid);
  try {
    await link.request({ msgid: MSG.ADD_GROUP, groupid: gid });
    if (!app.groups.has(gid)) app.groups.set(gid, { id: gid, name: '', desc: '', creator: null, members: new Map() });
    app.groups.get(gid).members.set(app.session.id, 'normal');
    setText('join-status', `You joined ${groupName(gid)}.`);
    $('join-group-id').value = '';
  } catch (e) {
    let text;
    if (e.errno === 3) text = `There is no group with id ${gid}.`;
    else if (e.errno === 5) text = `You are already in ${groupName(gid)}.`;
    else text = `Could not join group ${gid}: ${errorText(e)}`;
    setText('join-error', text);
  } finally {
    ownRequests.join.delete(gid);
    btn.disabled = false;
  }
  renderSidebar();
}

async function leaveGroup(gid) {
  if (!needOnline()) return;
  const title = groupName(gid);
  ownRequests.quit.add(gid);
  try {
    await link.request({ msgid: MSG.QUIT_GROUP, groupid: gid });
    removeGroup(gid);
    notice(`You left ${title}.`);
  } catch (e) {
    notice(e.errno === 4 && app.groups.get(gid)?.creator === app.session.id
      ? 'You created this group, so you cannot leave it; you can disband it.'
      : `Could not leave ${title}: ${errorText(e)}`, 'error');
  } finally {
    ownRequests.quit.delete(gid);
  }
  renderSidebar();
}

async function disbandGroup(gid) {
  if (!needOnline()) return;
  const title = groupName(gid);
  ownRequests.disband.add(gid);
  try {
    await link.request({ msgid: MSG.DISBAND_GROUP, groupid: gid });
    removeGroup(gid);
    notice(`${title} was disbanded.`);
  } catch (e) {
    notice(`Could not disband ${title}: ${errorText(e)}`, 'error');
  } finally {
    ownRequests.disband.delete(gid);
  }
  renderSidebar();
}

function confirmDialog(text) {
  const d = $('confirm-dialog');
  $('confirm-text').textContent = text;
  return new Promise((resolve) => {
    const done = (v) => {
      $('confirm-ok').onclick = $('confirm-cancel').onclick = null;
      d.onclose = null;
      if (d.open) d.close();
      resolve(v);
    };
    $('confirm-ok').onclick = () => done(true);
    $('confirm-cancel').onclick = () => done(false);
    d.onclose = () => done(false);
    if (typeof d.showModal === 'function') d.showModal();
    else d.setAttribute('open', '');
    $('confirm-cancel').focus();
  });
}

// ─── Heartbeat ────────────────────────────────────────────────────────────
function startPing() {
  stopPing();
  app.pingTimer = setInterval(() => {
    if (!app.loggedIn) return;
    link.request({ msgid: MSG.PING }, { timeout: PING_WAIT_MS }).catch((e) => {
      if (e.timeout) link.drop('the server stopped answering');
    });
  }, PING_EVERY_MS);
}

function stopPing() {
  clearInterval(app.pingTimer);
  app.pingTimer = null;
}

// ─── Opening conversations ────────────────────────────────────────────────
function currentConv() {
  return app.open ? app.convs.get(app.open) || null : null;
}

function openConv(kind, id) {
  const conv = ensureConv(kind, id);
  if (kind === 'u' && id !== app.session.id && !app.friends.has(id)) addOther(id);
  const changed = app.open !== conv.key;
  app.open = conv.key;
  if (app.unread[conv.key]) { delete app.unread[conv.key]; saveUnread(); }
  $('chat-view').dataset.pane = 'conversation';
  if (changed) {
    setText('composer-error', '');
    $('messages').replaceChildren();
  }
  renderAll();
  scrollToBottom();
  if (!conv.loaded) loadHistory(conv, false);
  if (!isNarrow()) $('composer').focus();
}

function closeConv() {
  app.open = null;
  $('chat-view').dataset.pane = 'list';
  $('messages').replaceChildren();
  renderAll();
}

// ─── Rendering ────────────────────────────────────────────────────────────
function renderAll() {
  const signedIn = !!app.session;
  $('auth-view').hidden = signedIn;
  $('chat-view').hidden = !signedIn;
  if (!signedIn) {
    renderBanner();
    renderAuthBusy();
    renderTitle();
    return;
  }
  const me = $('me');
  me.dataset.id = String(app.session.id);
  $('me-name').textContent = app.session.name || userName(app.session.id);
  $('me-id').textContent = `#${app.session.id}`;
  renderBanner();
  renderSidebar();
  renderFound();
  renderConversation();
  renderTitle();
}

function renderAuthBusy() {
  $('login-submit').disabled = app.loggingIn;
  $('login-submit').textContent = app.loggingIn ? 'Logging in…' : 'Log in';
}

let bannerTicker = null;
function renderBanner() {
  const b = $('banner');
  const text = $('banner-text');
  const retry = $('banner-retry');
  let state;
  let words = '';
  b.dataset.kicked = app.kicked ? 'true' : 'false';
  if (app.kicked) {
    state = 'offline';
    words = 'You are signed in somewhere else, so this page is offline.';
    retry.textContent = 'Use here';
  } else if (link.state === 'open') {
    state = app.session && !app.loggedIn ? 'reconnecting' : 'online';
    words = 'Reconnecting…';
  } else if (link.state === 'waiting') {
    state = app.quietReconnect ? 'online' : 'offline';
    const secs = Math.max(1, Math.ceil((link.retryAt - Date.now()) / 1000));
    words = `Offline — reconnecting in ${secs}s…`;
    retry.textContent = 'Retry now';
  } else if (link.state === 'connecting') {
    state = app.quietReconnect ? 'online' : 'reconnecting';
    words = link.everOpen ? 'Reconnecting…' : 'Connecting…';
  } else {
    state = 'offline';
    words = 'Offline.';
    retry.textContent = 'Retry now';
  }
  b.dataset.state = state;
  b.hidden = state === 'online';
  text.textContent = words;
  retry.hidden = !(app.kicked || link.state === 'waiting' || link.state === 'idle');
  const needTick = link.state === 'waiting' && !app.kicked;
  if (needTick && !bannerTicker) bannerTicker = setInterval(renderBanner, 500);
  if (!needTick && bannerTicker) { clearInterval(bannerTicker); bannerTicker = null; }
}

function renderTitle() {
  const n = Object.values(app.unread).reduce((a, b) => a + (Number(b) || 0), 0);
  document.title = app.session && n > 0 ? `(${n}) clusterchat` : 'clusterchat';
}

function byName(a, b) {
  const na = a.name.toLocaleLowerCase();
  const nb = b.name.toLocaleLowerCase();
  return na < nb ? -1 : na > nb ? 1 : a.id - b.id;
}

function renderSidebar() {
  if (!app.session) return;
  const friends = [...app.friends.keys()].map((id) => ({ id, name: userName(id) })).sort(byName);
  const groups = [...app.groups.values()].map((g) => ({ id: g.id, name: groupName(g.id) })).sort(byName);
  const others = [...app.others.keys()].filter((id) => !app.friends.has(id)).map((id) => ({ id, name: userName(id) })).sort(byName);
  renderList($('friend-list'), 'friend', 'u', friends);
  renderList($('group-list'), 'group', 'g', groups);
  renderList($('other-list'), 'user', 'u', others);
  $('friends-empty').hidden = friends.length > 0;
  $('groups-empty').hidden = groups.length > 0;
  $('other-section').hidden = others.length === 0;
  renderTitle();
}

function renderList(ul, dataKind, kind, items) {
  const existing = new Map();
  for (const li of [...ul.children]) existing.set(li.dataset.key, li);
  let prev = null;
  for (const it of items) {
    const key = convKey(kind, it.id);
    let li = existing.get(key);
    existing.delete(key);
    if (!li) li = makeContact(dataKind, kind, it.id);
    updateContact(li, dataKind, kind, it);
    const want = prev ? prev.nextSibling : ul.firstChild;
    if (want !== li) ul.insertBefore(li, want);
    prev = li;
  }
  for (const li of existing.values()) li.remove();
}

function makeContact(dataKind, kind, id) {
  const li = el('li', { 'data-key': convKey(kind, id) });
  const btn = el('button', { type: 'button', class: 'contact', 'data-testid': 'contact', 'data-kind': dataKind, 'data-id': id });
  if (kind === 'u') btn.append(el('span', { class: 'presence', 'data-online': 'false', 'aria-hidden': 'true' }));
  else btn.append(el('span', { class: 'group-icon', 'aria-hidden': 'true', text: '#' }));
  btn.append(el('span', { class: 'name' }), el('span', { class: 'cid' }), el('span', { class: 'unread', 'data-count': '0', hidden: true }));
  btn.addEventListener('click', () => openConv(kind, id));
  li.append(btn);
  return li;
}

function updateContact(li, dataKind, kind, it) {
  const btn = li.firstChild;
  btn.dataset.kind = dataKind;
  const key = convKey(kind, it.id);
  const unread = app.unread[key] || 0;
  const online = kind === 'u' && app.online.get(it.id) === true;
  btn.querySelector('.name').textContent = it.name;
  btn.querySelector('.cid').textContent = `#${it.id}`;
  const u = btn.querySelector('.unread');
  u.dataset.count = String(unread);
  u.textContent = unread ? String(unread) : '';
  u.hidden = !unread;
  const p = btn.querySelector('.presence');
  if (p) p.dataset.online = online ? 'true' : 'false';
  let label = kind === 'g' ? `Group ${it.name}, id ${it.id}` : `${it.name}, id ${it.id}, ${online ? 'online' : 'offline'}`;
  if (unread) label += `, ${unread} unread`;
  btn.setAttribute('aria-label', label);
  if (app.open === key) btn.setAttribute('aria-current', 'true');
  else btn.removeAttribute('aria-current');
}

function renderFound() {
  const box = $('find-result');
  const f = app.found;
  box.hidden = !f;
  if (!f || !app.session) return;
  box.dataset.id = String(f.id);
  box.querySelector('.name').textContent = f.name;
  box.querySelector('.cid').textContent = `#${f.id}`;
  const online = f.id === app.session.id || (app.online.has(f.id) ? app.online.get(f.id) === true : f.online);
  box.querySelector('.presence').dataset.online = online ? 'true' : 'false';
  box.querySelector('.state').textContent = f.id === app.session.id ? 'this is you' : app.friends.has(f.id) ? `your friend · ${online ? 'online' : 'offline'}` : (online ? 'online' : 'offline');
  $('find-add-friend').hidden = app.friends.has(f.id) || f.id === app.session.id;
}

function renderConversation() {
  const conv = currentConv();
  $('conversation').hidden = !conv;
  $('no-conversation').hidden = !!conv;
  if (!conv) {
    $('chat-view').dataset.pane = 'list';
    return;
  }
  $('conversation').dataset.kind = conv.kind === 'g' ? 'group' : (app.friends.has(conv.id) ? 'friend' : 'user');
  $('conversation').dataset.id = String(conv.id);
  renderHeader();
  renderMessages({});
}

function renderHeader() {
  const conv = currentConv();
  if (!conv || !app.session) return;
  const me = app.session.id;
  let title;
  let sub;
  if (conv.kind === 'g') {
    const g = app.groups.get(conv.id);
    title = groupName(conv.id);
    const parts = [`Group #${conv.id}`];
    if (g && g.desc) parts.push(g.desc);
    if (g && g.members.size) parts.push(`${g.members.size} member${g.members.size === 1 ? '' : 's'}`);
    sub = parts.join(' · ');
    const creator = g && g.creator === me;
    $('conv-leave-group').hidden = !g || creator;
    $('conv-disband-group').hidden = !g || !creator;
    $('conv-add-friend').hidden = true;
    $('conv-remove-friend').hidden = true;
    $('conversation').dataset.kind = 'group';
  } else {
    const friend = app.friends.has(conv.id);
    title = conv.id === me ? `${userName(me)} (you)` : userName(conv.id);
    const online = app.online.get(conv.id) === true;
    if (conv.id === me) sub = `User #${conv.id} · notes to yourself`;
    else if (friend) sub = `User #${conv.id} · ${online ? 'online' : 'offline'}`;
    else sub = `User #${conv.id} · not your friend`;
    $('conv-add-friend').hidden = friend || conv.id === me;
    $('conv-remove-friend').hidden = !friend;
    $('conv-leave-group').hidden = true;
    $('conv-disband-group').hidden = true;
    $('conversation').dataset.kind = friend ? 'friend' : 'user';
  }
  $('conv-title').textContent = title;
  $('conv-sub').textContent = sub;
}

function renderHistoryStatus(conv) {
  const st = $('history-status');
  const btn = $('load-older');
  if (conv.loading) st.textContent = 'Loading messages…';
  else if (conv.historyError) st.textContent = conv.historyError;
  else if (conv.loaded && !conv.more && (conv.msgs.size || conv.pending.length)) st.textContent = 'This is the beginning of the conversation.';
  else if (conv.loaded && !conv.msgs.size && !conv.pending.length) st.textContent = 'No messages yet. Say hello!';
  else if (!conv.loaded && !app.loggedIn) st.textContent = 'Offline: older messages load when the connection is back.';
  else st.textContent = '';
  btn.hidden = !(conv.loaded && conv.more && !conv.loading);
}

function scrollToBottom() {
  const s = $('message-scroll');
  s.scrollTop = s.scrollHeight;
}

/**
 * Renders the open conversation's messages, reusing each message's element
 * (so element references stay valid). opts: bottom (scroll to the end),
 * stick (scroll to the end if it was near the end), keepFromBottom (keep the
 * view still while older messages are put above it).
 */
function renderMessages(opts) {
  const conv = currentConv();
  if (!conv) return;
  const scroller = $('message-scroll');
  const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  const ol = $('messages');
  const list = sortedMessages(conv);
  const keep = new Set(list.map((m) => m.el).filter(Boolean));
  for (const child of [...ol.children]) if (!keep.has(child)) child.remove();
  let prev = null;
  for (const m of list) {
    if (!m.el) m.el = makeMessage(conv, m);
    updateMessage(m);
    const want = prev ? prev.nextSibling : ol.firstChild;
    if (want !== m.el) ol.insertBefore(m.el, want);
    prev = m.el;
  }
  renderHistoryStatus(conv);
  if (opts.keepFromBottom) scroller.scrollTop = scroller.scrollHeight - fromBottom;
  else if (opts.bottom || (opts.stick && nearBottom)) scrollToBottom();
}

function makeMessage(conv, m) {
  const li = el('li', { 'data-testid': 'message', class: 'message' });
  const meta = el('div', { class: 'meta' }, el('span', { class: 'sender' }), el('time', { class: 'time' }));
  const text = el('div', { class: 'text' });
  li.append(meta, text);
  if (m.own) {
    li.append(el('div', { class: 'status' }));
  }
  return li;
}

function updateMessage(m) {
  const li = m.el;
  if (m.mid != null) li.dataset.mid = String(m.mid);
  else delete li.dataset.mid;
  if (m.seq != null) li.dataset.seq = String(m.seq);
  li.dataset.from = String(m.from);
  li.dataset.own = m.own ? 'true' : 'false';
  li.classList.toggle('own', m.own);
  if (m.own) li.dataset.state = m.state || 'sent';
  else delete li.dataset.state;
  li.querySelector('.sender').textContent = m.own ? `${m.fromName || userName(m.from)} (you)` : (m.fromName || userName(m.from));
  const t = li.querySelector('.time');
  t.textContent = formatTime(m.time);
  if (m.time instanceof Date) {
    t.setAttribute('datetime', m.time.toISOString());
    t.title = m.time.toLocaleString();
  }
  const text = li.querySelector('.text');
  if (text.textContent !== m.text) text.textContent = m.text; // never innerHTML
  if (m.own) {
    let st = li.querySelector('.status');
    if (!st) { st = el('div', { class: 'status' }); li.append(st); }
    if (m.state === 'sending') st.textContent = app.loggedIn ? 'sending…' : 'sending… (waiting for the connection)';
    else if (m.state === 'failed') st.textContent = `Not sent: ${m.error || 'refused'}`;
    else st.textContent = '✓ sent';
    st.setAttribute('aria-label', m.state === 'sent' || !m.state ? 'sent' : st.textContent);
    let retry = li.querySelector('.retry');
    if (m.state === 'failed' && !retry) {
      retry = el('button', { type: 'button', class: 'retry', text: 'Retry', 'aria-label': 'Send this message again' });
      retry.addEventListener('click', () => {
        const conv = currentConv();
        if (conv) retryFailed(conv, m);
      });
      li.append(retry);
    } else if (m.state !== 'failed' && retry) retry.remove();
  }
}

// ─── Composer ─────────────────────────────────────────────────────────────
function autoGrow() {
  const c = $('composer');
  c.style.height = 'auto';
  // scrollHeight leaves out the border, which the height (border-box) counts:
  // without it the box is a little short and shows a scrollbar.
  const want = c.scrollHeight + c.offsetHeight - c.clientHeight;
  c.style.height = `${Math.min(want, 160)}px`;
  c.style.overflowY = want > 160 ? 'auto' : 'hidden';
}

// ─── Wiring ───────────────────────────────────────────────────────────────
function wire() {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const raw = $('login-id').value.trim();
    const password = $('login-password').value;
    setText('login-error', '');
    if (!/^\d+$/.test(raw) || Number(raw) <= 0 || !Number.isSafeInteger(Number(raw))) {
      setText('login-error', 'Enter your user id: the number you got when you registered.');
      $('login-id').focus();
      return;
    }
    if (!password) {
      setText('login-error', 'Enter your password.');
      $('login-password').focus();
      return;
    }
    if (byteLength(password) > LIMITS.PASSWORD_BYTES) {
      setText('login-error', `Passwords are at most ${LIMITS.PASSWORD_BYTES} bytes long.`);
      return;
    }
    if (app.loggingIn) return;
    passwordLogin(Number(raw), password);
  });

  $('register-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = $('reg-name').value;
    const password = $('reg-password').value;
    setText('reg-error', '');
    $('reg-result').hidden = true;
    if (!name.trim()) { setText('reg-error', 'Choose a name.'); $('reg-name').focus(); return; }
    if (charCount(name) > LIMITS.NAME_CHARS) { setText('reg-error', `Names are at most ${LIMITS.NAME_CHARS} characters long.`); return; }
    if (name !== name.trim()) { setText('reg-error', 'A name cannot start or end with a space.'); return; }
    if (!password) { setText('reg-error', 'Choose a password.'); $('reg-password').focus(); return; }
    if (byteLength(password) > LIMITS.PASSWORD_BYTES) { setText('reg-error', `Passwords are at most ${LIMITS.PASSWORD_BYTES} bytes long.`); return; }
    const btn = $('reg-submit');
    btn.disabled = true;
    try {
      if (!link.isOpen) {
        link.start();
        link.connectNow();
        await whenOpen(10000);
      }
      const ack = await link.request({ msgid: MSG.REG, name, password }, { timeout: 30000 });
      const id = ack.id;
      const r = $('reg-result');
      r.dataset.id = String(id);
      r.replaceChildren('Your id is ', el('strong', { id: 'reg-id', text: String(id) }), `. Use it with your password to log in, ${name}.`);
      r.hidden = false;
      $('reg-password').value = '';
      $('login-id').value = String(id);
      $('login-password').value = '';
    } catch (e) {
      let why;
      if (e.lost || e.notOpen) why = 'Cannot reach the server. Check your connection and try again.';
      else if (e.errno === 1) why = `That name cannot be used: ${errorText(e)}`;
      else why = `Could not register: ${errorText(e)}`;
      setText('reg-error', why);
    } finally {
      btn.disabled = false;
    }
  });

  $('logout').addEventListener('click', logout);
  $('banner-retry').addEventListener('click', () => {
    if (app.kicked) useHere();
    else { link.start(); link.connectNow(); }
  });

  $('find-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    findUser($('find-name').value);
  });
  $('find-chat').addEventListener('click', () => {
    if (!app.found) return;
    const id = app.found.id;
    openConv('u', id);
  });
  $('find-add-friend').addEventListener('click', () => {
    if (app.found) addFriend(app.found.id, 'find-error');
  });

  $('create-group-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    createGroup($('group-name').value, $('group-desc').value);
  });
  $('join-group-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const raw = $('join-group-id').value.trim().replace(/^#/, '');
    joinGroup(/^\d+$/.test(raw) ? Number(raw) : NaN);
  });

  $('back').addEventListener('click', closeConv);
  $('conv-add-friend').addEventListener('click', () => {
    const c = currentConv();
    if (c && c.kind === 'u') addFriend(c.id);
  });
  $('conv-remove-friend').addEventListener('click', () => {
    const c = currentConv();
    if (c && c.kind === 'u') removeFriend(c.id);
  });
  $('conv-leave-group').addEventListener('click', () => {
    const c = currentConv();
    if (c && c.kind === 'g') leaveGroup(c.id);
  });
  $('conv-disband-group').addEventListener('click', async () => {
    const c = currentConv();
    if (!c || c.kind !== 'g') return;
    const gid = c.id;
    if (await confirmDialog(`Disband ${groupName(gid)} for everyone? Its members are removed and this cannot be undone.`)) disbandGroup(gid);
  });

  $('load-older').addEventListener('click', () => {
    const c = currentConv();
    if (c) loadHistory(c, true);
  });
  $('message-scroll').addEventListener('scroll', () => {
    const c = currentConv();
    if (c && $('message-scroll').scrollTop < 60 && c.loaded && c.more && !c.loading) loadHistory(c, true);
  }, { passive: true });

  $('composer-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sendMessage();
    $('composer').focus();
  });
  $('composer').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      sendMessage();
    }
  });
  $('composer').addEventListener('input', autoGrow);

  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && app.open && isNarrow() && !$('confirm-dialog').open) closeConv();
  });
  window.addEventListener('online', () => {
    if (!app.kicked && link.state === 'waiting') link.connectNow();
  });
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) return;
    if (!app.kicked && link.state === 'waiting') link.connectNow();
    const c = currentConv();
    if (c && app.unread[c.key]) { delete app.unread[c.key]; saveUnread(); renderSidebar(); }
  });
  window.addEventListener('pagehide', (ev) => {
    flushDelivered();
    // Into the back/forward cache: close the socket, so the server sees
    // this session end (presence) instead of a frozen page holding it.
    if (ev.persisted) {
      app.loggedIn = false;
      stopPing();
      link.stop('page hidden');
    }
  });
  window.addEventListener('pageshow', (ev) => {
    if (ev.persisted && !app.kicked) {
      link.backoff.reset();
      link.start();
      renderAll();
    }
  });
}

function boot() {
  wire();
  const lastId = storage.getItem(KEYS.lastId);
  if (lastId && /^\d+$/.test(lastId)) $('login-id').value = lastId;
  const saved = loadJSON(storage, KEYS.session, null);
  if (saved && Number.isInteger(saved.id) && typeof saved.token === 'string' && saved.token) {
    beginSession({ id: saved.id, name: typeof saved.name === 'string' ? saved.name : '', token: saved.token });
  } else {
    renderAll();
  }
  link.start();
  renderBanner();
}

boot();
