// net.js — the WebSocket link to the server: one protocol frame per text
// message, replies matched to requests by `reqid` (promises), and
// reconnection with backoff while the link is wanted.
//
// States: 'idle' (no socket, nothing scheduled), 'connecting', 'open',
// 'waiting' (a reconnect is scheduled at `retryAt`).

import { MSG, Backoff } from './store.js';

/** The server refused a request: `errno`, `errmsg`, `re`. */
export class ProtoError extends Error {
  constructor(frame) {
    super(frame.errmsg || `error ${frame.errno}`);
    this.errno = frame.errno;
    this.errmsg = frame.errmsg || '';
    this.re = frame.re;
    this.frame = frame;
  }
}

/** The request got no reply: the link was lost (`lost`) or it took too long (`timeout`). */
export class LinkError extends Error {
  constructor(kind, message) {
    super(message);
    this.lost = kind === 'lost';
    this.timeout = kind === 'timeout';
  }
}

const REPLY_TYPES = new Set([MSG.ACK, MSG.PONG, MSG.ERROR, MSG.LOGIN_ACK, MSG.REG_ACK]);

/** The WebSocket address of the page's own server. */
export function wsUrl(loc = globalThis.location) {
  const scheme = loc.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${loc.host}/ws`;
}

export class Link {
  /**
   * @param {object} o
   * @param {string} o.url
   * @param {(f: object) => void} o.onFrame   frames that are not replies to a request
   * @param {() => void} o.onOpen
   * @param {(info: {reason: string, lastErrno: number|null, wasOpen: boolean}) => boolean|void} o.onClose
   *        return true to take over (no automatic reconnect this time)
   * @param {() => void} o.onState            any state change
   */
  constructor({ url, onFrame, onOpen, onClose, onState, backoff = new Backoff(), WebSocketImpl = globalThis.WebSocket,
    connectTimeoutMs = 10000, stableMs = 5000 }) {
    this.url = url;
    this.onFrame = onFrame || (() => {});
    this.onOpen = onOpen || (() => {});
    this.onClose = onClose || (() => {});
    this.onState = onState || (() => {});
    this.backoff = backoff;
    this.WebSocketImpl = WebSocketImpl;
    this.connectTimeoutMs = connectTimeoutMs;
    this.stableMs = stableMs;
    this.ws = null;
    this.state = 'idle';
    this.retryAt = 0;
    this.auto = false;
    this.everOpen = false;
    this.nextReqid = 1;
    this.pending = new Map();
    this.timer = null;
    this.connectTimer = null;
    this.stableTimer = null;
    this.lastErrno = null;
    this.lastReason = '';
  }

  get isOpen() {
    return this.state === 'open';
  }

  /** Keeps the link up from now on: connects, and reconnects after drops. */
  start() {
    this.auto = true;
    if (!this.ws && this.state !== 'waiting') this.connect();
  }

  /** Closes the link and stops reconnecting. */
  stop(reason = 'stopped') {
    this.auto = false;
    this.clearTimer();
    if (this.ws) this.teardown(reason, true);
    this.setState('idle');
  }

  /** Connects at once, skipping a scheduled wait. */
  connectNow() {
    if (this.ws) return;
    this.clearTimer();
    this.connect();
  }

  connect() {
    this.clearTimer();
    this.lastErrno = null;
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url);
    } catch (e) {
      this.lastReason = `cannot open a connection (${e && e.message ? e.message : e})`;
      this.setState('idle');
      if (this.auto) this.schedule();
      return;
    }
    this.ws = ws;
    this.setState('connecting');
    this.connectTimer = setTimeout(() => {
      if (this.ws === ws && this.state === 'connecting') this.teardown('connecting timed out');
    }, this.connectTimeoutMs);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      clearTimeout(this.connectTimer);
      this.everOpen = true;
      this.setState('open');
      // A connection that stays up a while resets the backoff, so a server
      // that accepts and at once closes (busy) is not hammered.
      this.stableTimer = setTimeout(() => {
        if (this.ws === ws) this.backoff.reset();
      }, this.stableMs);
      this.onOpen();
    };
    ws.onmessage = (ev) => {
      if (this.ws === ws) this.handleMessage(ev.data);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      const why = ev && ev.reason ? ev.reason : (this.state === 'open' ? 'the connection closed' : 'cannot reach the server');
      this.teardown(why);
    };
  }

  /** Drops the connection now (e.g. no PONG); reconnects when wanted. */
  drop(reason = 'dropped') {
    if (this.ws) this.teardown(reason);
  }

  handleMessage(data) {
    if (typeof data !== 'string') return;
    let f;
    try {
      f = JSON.parse(data.trim());
    } catch {
      return;
    }
    if (!f || typeof f !== 'object' || Array.isArray(f)) return;
    if (f.msgid === MSG.ERROR) this.lastErrno = f.errno ?? null;
    const p = this.takePending(f);
    if (!p) {
      this.onFrame(f);
      return;
    }
    clearTimeout(p.timer);
    if (f.msgid === MSG.ERROR || (Number.isInteger(f.errno) && f.errno !== 0)) p.reject(new ProtoError(f));
    else p.resolve(f);
  }

  takePending(f) {
    if (!REPLY_TYPES.has(f.msgid)) return null;
    if (f.reqid !== undefined && this.pending.has(f.reqid)) {
      const p = this.pending.get(f.reqid);
      this.pending.delete(f.reqid);
      return p;
    }
    // LOGIN_ACK / REG_ACK without a reqid: the oldest LOGIN / REG waiting.
    if (f.msgid === MSG.LOGIN_ACK || f.msgid === MSG.REG_ACK) {
      for (const [id, p] of this.pending) {
        if (p.expect === f.msgid) {
          this.pending.delete(id);
          return p;
        }
      }
    }
    return null;
  }

  /**
   * Sends a request with a fresh reqid; resolves with its reply, rejects
   * with ProtoError (refused) or LinkError (lost, timed out).
   */
  request(obj, { timeout = 30000 } = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.state !== 'open') {
        reject(new LinkError('lost', 'not connected'));
        return;
      }
      const reqid = this.nextReqid++;
      const frame = { ...obj, reqid };
      const expect = obj.msgid === MSG.LOGIN ? MSG.LOGIN_ACK : obj.msgid === MSG.REG ? MSG.REG_ACK : null;
      const p = { resolve, reject, expect, timer: null };
      p.timer = setTimeout(() => {
        if (this.pending.get(reqid) === p) {
          this.pending.delete(reqid);
          reject(new LinkError('timeout', 'no reply'));
        }
      }, timeout);
      this.pending.set(reqid, p);
      try {
        this.ws.send(JSON.stringify(frame));
      } catch {
        this.pending.delete(reqid);
        clearTimeout(p.timer);
        reject(new LinkError('lost', 'cannot send'));
      }
    });
  }

  /** Sends a frame that gets no reply (DELIVERED); false when not open. */
  send(obj) {
    if (!this.ws || this.state !== 'open') return false;
    try {
      this.ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  teardown(reason, stopping = false) {
    const ws = this.ws;
    if (!ws) return;
    const wasOpen = this.state === 'open';
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close();
    } catch {
      /* ignore */
    }
    clearTimeout(this.connectTimer);
    clearTimeout(this.stableTimer);
    const pend = [...this.pending.values()];
    this.pending.clear();
    for (const p of pend) {
      clearTimeout(p.timer);
      p.reject(new LinkError('lost', reason));
    }
    const info = { reason, lastErrno: this.lastErrno, wasOpen };
    this.lastErrno = null;
    this.lastReason = reason;
    this.state = 'idle';
    if (stopping) return;
    const handled = this.onClose(info) === true;
    if (!handled && this.auto && !this.ws && this.state === 'idle') this.schedule();
    else this.setState(this.state);
  }

  schedule() {
    this.clearTimer();
    const delay = this.backoff.next();
    this.retryAt = Date.now() + delay;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.auto && !this.ws) this.connect();
    }, delay);
    this.setState('waiting');
  }

  clearTimer() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  setState(s) {
    this.state = s;
    this.onState();
  }
}
