// store.js — the pure logic of the clusterchat web client: protocol
// constants, reconnect backoff, delivery bookkeeping (seq / DELIVERED),
// the outbox of unacknowledged sends, time and error formatting, and the
// localStorage keys. Nothing here touches the DOM or the network, so it can
// be unit-tested under Node.

export const MSG = Object.freeze({
  LOGIN: 1, LOGIN_ACK: 2, LOGINOUT: 3, REG: 4, REG_ACK: 5,
  ONE_CHAT: 6, ADD_FRIEND: 7, CREATE_GROUP: 8, ADD_GROUP: 9, GROUP_CHAT: 10,
  ERROR: 11, ACK: 12, DEL_FRIEND: 13, QUIT_GROUP: 14, DISBAND_GROUP: 15,
  DELIVERED: 16, HISTORY: 17, PING: 18, PONG: 19, PRESENCE: 20, KICKED: 21,
  FIND_USER: 22, ROSTER: 23,
});

/** Protocol limits (docs/protocol.md, "Limits"). */
export const LIMITS = Object.freeze({
  MSG_BYTES: 16 * 1024,
  FRAME_BYTES: 64 * 1024,
  NAME_CHARS: 50,
  PASSWORD_BYTES: 128,
  GROUP_DESC_CHARS: 200,
  HISTORY_PAGE: 50,
});

const encoder = new TextEncoder();

/** UTF-8 length of a string. */
export function byteLength(s) {
  return encoder.encode(s).length;
}

/** UTF-8 length of the frame that carries `obj`. */
export function frameBytes(obj) {
  return byteLength(JSON.stringify(obj));
}

/** Number of characters (Unicode scalar values) in `s`. */
export function charCount(s) {
  return [...s].length;
}

/**
 * Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... up to 10 s, each
 * wait randomised to 80–120 % (never above the maximum).
 */
export class Backoff {
  constructor({ base = 500, max = 10000, random = Math.random } = {}) {
    this.base = base;
    this.max = max;
    this.random = random;
    this.attempt = 0;
  }

  /** The wait before the next attempt, in ms; each call doubles the next. */
  next() {
    const cap = Math.min(this.max, this.base * 2 ** Math.min(this.attempt, 20));
    this.attempt += 1;
    const jittered = cap * (0.8 + 0.4 * this.random());
    return Math.round(Math.min(this.max, jittered));
  }

  reset() {
    this.attempt = 0;
  }
}

/**
 * Delivery bookkeeping for level 2 (a port of the terminal client's
 * delivery.rs): the highest contiguous `seq` held, which is confirmed with
 * DELIVERED and saved as `last_seq`.
 */
export class Delivery {
  constructor(lastSeq = 0) {
    this.last = lastSeq;
    this.confirmed = lastSeq;
    this.first = true;
    this.ahead = new Set();
  }

  /** A new session whose LOGIN carried `lastSeq`. */
  startSession(lastSeq) {
    this.last = lastSeq;
    this.confirmed = lastSeq;
    this.first = true;
    this.ahead.clear();
  }

  /** Records the seq of a pushed chat message. */
  receive(seq) {
    if (!Number.isInteger(seq) || seq <= 0) return;
    if (this.first) {
      // The server replays from its first unconfirmed seq, so the first
      // push of a session says where the confirmed prefix ends (another
      // device may have confirmed more than this browser saved).
      this.first = false;
      this.last = seq - 1;
      this.confirmed = Math.min(this.confirmed, this.last);
    }
    if (seq === this.last + 1) {
      this.last = seq;
      while (this.ahead.delete(this.last + 1)) this.last += 1;
    } else if (seq > this.last + 1 && this.ahead.size < 100000) {
      this.ahead.add(seq);
    }
  }

  /** The seq to confirm with DELIVERED, or null when nothing is new. */
  toConfirm() {
    return this.last > this.confirmed ? this.last : null;
  }

  /** Notes that `seq` was confirmed to the server. */
  markConfirmed(seq) {
    this.confirmed = Math.max(this.confirmed, seq);
  }
}

/** A fresh client message id (`cmid`): "w" and 22 random hex digits. */
export function newCmid(random = globalThis.crypto) {
  const bytes = new Uint8Array(11);
  random.getRandomValues(bytes);
  return 'w' + [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Messages typed and not yet acknowledged, in the order typed. Each has a
 * `cmid` that stays the same across resends, so the server stores it once.
 * `load()` returns the saved list, `save(list)` stores it (localStorage in
 * the app), so a reload mid-send sends again.
 */
export class Outbox {
  constructor({ load = () => [], save = () => {}, makeCmid = newCmid, now = () => Date.now() } = {}) {
    this.saveFn = save;
    this.makeCmid = makeCmid;
    this.now = now;
    this.items = [];
    let saved = [];
    try {
      saved = load() || [];
    } catch {
      saved = [];
    }
    for (const e of Array.isArray(saved) ? saved : []) {
      if (
        e && typeof e.cmid === 'string' && (e.kind === 'u' || e.kind === 'g') &&
        Number.isInteger(e.to) && typeof e.text === 'string'
      ) {
        this.items.push({ cmid: e.cmid, kind: e.kind, to: e.to, text: e.text, t: Number(e.t) || 0 });
      }
    }
  }

  /** Adds a message for conversation kind `u`/`g` and id `to`. */
  add(kind, to, text) {
    const e = { cmid: this.makeCmid(), kind, to, text, t: this.now() };
    this.items.push(e);
    this.persist();
    return e;
  }

  get(cmid) {
    return this.items.find((e) => e.cmid === cmid) || null;
  }

  has(cmid) {
    return this.items.some((e) => e.cmid === cmid);
  }

  /** Removes a message (ACKed or refused); returns it. */
  remove(cmid) {
    const i = this.items.findIndex((e) => e.cmid === cmid);
    if (i < 0) return null;
    const [e] = this.items.splice(i, 1);
    this.persist();
    return e;
  }

  list() {
    return [...this.items];
  }

  get size() {
    return this.items.length;
  }

  /** The request frame that sends entry `e` (without reqid). */
  static request(e) {
    return e.kind === 'g'
      ? { msgid: MSG.GROUP_CHAT, groupid: e.to, msg: e.text, cmid: e.cmid }
      : { msgid: MSG.ONE_CHAT, toid: e.to, msg: e.text, cmid: e.cmid };
  }

  persist() {
    try {
      this.saveFn(this.items.map(({ cmid, kind, to, text, t }) => ({ cmid, kind, to, text, t })));
    } catch {
      /* storage full or disabled: the in-memory outbox still works */
    }
  }
}

/** Conversation key: `u:7` (one-to-one with user 7) or `g:5` (group 5). */
export function convKey(kind, id) {
  return `${kind}:${id}`;
}

/** The conversation a chat frame (push or HISTORY entry) belongs to. */
export function chatTarget(f, me) {
  if (f.msgid === MSG.GROUP_CHAT || (f.groupid !== undefined && f.toid === undefined)) {
    return { kind: 'g', id: f.groupid };
  }
  // One-to-one: the other party; a message to yourself is with yourself.
  if (f.id === me) return { kind: 'u', id: f.toid ?? me };
  return { kind: 'u', id: f.id };
}

/** The server's `time` ("YYYY-MM-DD HH:MM:SS", UTC) as a Date, or null. */
export function parseServerTime(t) {
  if (typeof t !== 'string') return null;
  const m = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})/.exec(t);
  if (!m) return null;
  const d = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]));
  return Number.isNaN(d.getTime()) ? null : d;
}

/** A message time for display, in the browser's time zone. */
export function formatTime(d, now = new Date()) {
  if (!(d instanceof Date)) return '';
  const sameDay = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth() &&
    d.getDate() === now.getDate();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString([], { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

const ERRNO_TEXT = {
  1: 'Wrong user id or password.',
  3: 'No such user or group.',
  4: 'That is not allowed.',
  5: 'That already exists.',
  6: 'The server did not accept the request (a value is missing or invalid).',
  7: 'You are not logged in.',
  8: 'The request was too large.',
  9: 'Too many requests: please slow down and try again in a moment.',
  10: 'The server is busy or unavailable: please try again later.',
};

/** A sentence for a failed request: the server's errmsg when it sent one. */
export function errorText(err) {
  if (!err) return 'Something went wrong.';
  if (err.lost) return 'The connection to the server was lost.';
  if (err.timeout) return 'The server did not answer in time.';
  let msg = typeof err.errmsg === 'string' ? err.errmsg.trim() : '';
  if (msg) {
    msg = msg[0].toUpperCase() + msg.slice(1);
    if (!/[.!?]$/.test(msg)) msg += '.';
    return msg;
  }
  if (Number.isInteger(err.errno)) return ERRNO_TEXT[err.errno] || `The server refused the request (error ${err.errno}).`;
  return err.message || 'Something went wrong.';
}

/** localStorage keys. */
export const KEYS = Object.freeze({
  lastId: 'clusterchat.lastId',
  session: 'clusterchat.session',
  seq: (id) => `clusterchat.seq.${id}`,
  outbox: (id) => `clusterchat.outbox.${id}`,
  unread: (id) => `clusterchat.unread.${id}`,
  others: (id) => `clusterchat.others.${id}`,
});

/** JSON in localStorage, failing soft (storage may be full or disabled). */
export function loadJSON(storage, key, fallback) {
  try {
    const raw = storage.getItem(key);
    if (raw == null) return fallback;
    const v = JSON.parse(raw);
    return v ?? fallback;
  } catch {
    return fallback;
  }
}

export function saveJSON(storage, key, value) {
  try {
    if (value === undefined || value === null) storage.removeItem(key);
    else storage.setItem(key, JSON.stringify(value));
  } catch {
    /* ignore */
  }
}
