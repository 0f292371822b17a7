// The txsink client for Node.js (≥ 20), standard library only.
//
// Shape: new Client(...) → client.job(name, {commit}) → job.writer(name)
// opens a session and exposes what it restored (`restored.checkpoint`,
// `state`); writer.write(records) sends NDJSON with an automatic `seq`, and
// writer.checkpoint(n, state) completes checkpoint n.
//
// Retries: 429 backpressure and 503 unavailable are retried after
// Retry-After (or a backoff), for at most `retryFor` ms per call; every call
// the client makes is safe to repeat as it was (a write repeats its seq and
// body, a checkpoint its number and state; api/openapi.yaml). A call that
// could not connect is retried the same way, except a session call
// (records, checkpoint): the sidecar is down, so the session is lost when it
// comes back, and only the application can replay - it gets SessionLost.
//
// Like the Go client (api/client/client.go) it never reopens a session by
// itself: reopening aborts the records written since the last checkpoint,
// and only the application can replay them from the restored state.

import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { TxsinkError, SessionLost, DataLoss, Unavailable, problemError } from './errors.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MAX_STATE = 1 << 20; // the sidecar's limit of a checkpoint state (openapi.yaml CheckpointRequest)
const MAX_RECORDS = 100000; // the sidecar's default limit of records per write call

/**
 * @typedef {object} ClientOptions
 * @property {string} [url] base URL, e.g. "http://127.0.0.1:8470" (default when neither url nor socketPath is given)
 * @property {string} [socketPath] the sidecar's Unix socket instead of TCP
 * @property {string} [token] bearer token; default the environment's TXSINK_TOKEN
 * @property {number} [timeout] ms one HTTP call may take (default 130000: above the sidecar's checkpoint timeout)
 * @property {number} [retryFor] ms a call keeps retrying 429/503/no connection (default 60000; 0 = no retries)
 * @property {Record<string,string>} [headers] extra headers on every call
 */

export class Client {
  /** @param {ClientOptions} [opts] */
  constructor(opts = {}) {
    if (opts === null || typeof opts !== 'object') throw new TypeError('txsink: Client options must be an object');
    if (opts.url !== undefined && opts.socketPath !== undefined) {
      throw new TypeError('txsink: give url or socketPath, not both');
    }
    if (opts.socketPath !== undefined) {
      if (typeof opts.socketPath !== 'string' || opts.socketPath === '') {
        throw new TypeError('txsink: socketPath must be a non-empty string');
      }
      this.socketPath = opts.socketPath;
      this.host = 'localhost';
      this.port = undefined;
      this.endpoint = 'unix:' + opts.socketPath;
    } else {
      const u = new URL(opts.url ?? 'http://127.0.0.1:8470');
      if (u.protocol !== 'http:') {
        throw new TypeError(`txsink: url ${opts.url}: only http:// is supported (or socketPath)`);
      }
      this.socketPath = undefined;
      this.host = u.hostname.replace(/^\[|\]$/g, '');
      this.port = u.port ? Number(u.port) : 80;
      this.prefix = u.pathname.replace(/\/+$/, '');
      this.endpoint = u.origin;
    }
    this.prefix ??= '';
    const token = opts.token ?? process.env.TXSINK_TOKEN ?? '';
    this.token = String(token).trim();
    this.timeout = positive(opts.timeout ?? 130000, 'timeout');
    this.retryFor = nonNegative(opts.retryFor ?? 60000, 'retryFor');
    this.headers = { ...(opts.headers ?? {}) };
    // One keep-alive agent per client: a checkpoint every few hundred
    // records should not pay a TCP handshake each time.
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  }

  /**
   * Creates or updates a job (idempotent) and returns its handle.
   *
   * `guarantee` is the job's delivery guarantee: 'exactly_once' (the
   * sidecar's default when left out), 'at_least_once' (a crash may repeat
   * what was written since the last checkpoint) or 'none' (fire and
   * forget). The sidecar checks its value, so a guarantee this client does
   * not know yet still works; an unknown one is a BadRequest (400).
   * @param {string} name
   * @param {{commit?: 'auto'|'external', sinks?: string[], guarantee?: 'exactly_once'|'at_least_once'|'none'}} [spec]
   */
  async job(name, spec = {}) {
    checkName(name, 'job');
    const body = {};
    if (spec.commit !== undefined) {
      if (spec.commit !== 'auto' && spec.commit !== 'external') {
        throw new TypeError(`txsink: commit must be "auto" or "external", got ${JSON.stringify(spec.commit)}`);
      }
      body.commit = spec.commit;
    }
    if (spec.sinks !== undefined) {
      if (!Array.isArray(spec.sinks)) throw new TypeError('txsink: sinks must be an array of sink names');
      spec.sinks.forEach((s) => checkName(s, 'sink'));
      body.sinks = spec.sinks;
    }
    if (spec.guarantee !== undefined) {
      if (typeof spec.guarantee !== 'string') {
        throw new TypeError(`txsink: guarantee must be a string such as "at_least_once", got ${typeof spec.guarantee}`);
      }
      body.guarantee = spec.guarantee;
    }
    const info = await this.request({ method: 'PUT', path: jobPath(name), json: body, kind: REPEATABLE });
    return new Job(this, name, info);
  }

  /** Lists every job with its writers. */
  async jobs() {
    const out = await this.request({ method: 'GET', path: '/v1/jobs', kind: REPEATABLE });
    return out.jobs;
  }

  /** Resolves when the sidecar is ready (journal leader, sinks reachable); throws otherwise. */
  async ready() {
    await this.request({ method: 'GET', path: '/readyz', kind: REPEATABLE, retryFor: 0 });
  }

  /** Closes the idle keep-alive connections. */
  close() {
    this.agent.destroy();
  }

  /**
   * One call with the retries its kind allows.
   * @param {{method: string, path: string, query?: Record<string,string|number>, json?: any,
   *   body?: Buffer, contentType?: string, kind: number, retryFor?: number, okStatus?: number[]}} call
   * @returns {Promise<any>}
   */
  async request(call) {
    let path = this.prefix + call.path;
    if (call.query) {
      path += '?' + new URLSearchParams(Object.entries(call.query).map(([k, v]) => [k, String(v)])).toString();
    }
    let body = call.body;
    let contentType = call.contentType;
    if (call.json !== undefined) {
      body = Buffer.from(JSON.stringify(call.json));
      contentType = 'application/json';
    }
    const what = `${call.method} ${call.path}`;
    const retryFor = call.retryFor ?? this.retryFor;
    const deadline = Date.now() + retryFor;
    let backoff = 100;
    let resetRetried = false;
    for (;;) {
      let res;
      try {
        res = await this.send(call.method, path, body, contentType);
      } catch (err) {
        const e = /** @type {NodeJS.ErrnoException & {reusedSocket?: boolean}} */ (err);
        // A keep-alive connection the server closed just as we sent on it:
        // the call may not have been read. Every call of this client may be
        // repeated as it was, so send it once more on a fresh connection.
        if (e.reusedSocket && e.code === 'ECONNRESET' && !resetRetried) {
          resetRetried = true;
          continue;
        }
        if (call.kind === SESSION) {
          const neverSent = NOT_CONNECTED.has(e.code ?? '');
          throw new SessionLost(
            `txsink: ${what}: ${neverSent ? 'could not connect' : 'no answer, its outcome is unknown'} (${e.message}); ` +
              'open the writer again and resume from the state it restores',
            { code: 'no_answer', cause: err });
        }
        if (call.kind === ONCE && !NOT_CONNECTED.has(e.code ?? '')) {
          throw new TxsinkError(`txsink: ${what}: no answer, its outcome is unknown (${e.message})`,
            { code: 'no_answer', cause: err });
        }
        if (Date.now() + backoff > deadline) {
          throw new Unavailable(`txsink: ${what}: no answer from ${this.endpoint} (${e.message})`,
            { code: 'no_answer', cause: err });
        }
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 2000);
        continue;
      }
      const ok = call.okStatus ?? [200];
      if (ok.includes(res.status)) {
        if (res.json === null) {
          // Not the sidecar (a proxy's page?): no result to hand back.
          throw new TxsinkError(`txsink: ${what}: ${res.status} without a JSON body: ${res.text.slice(0, 200)}`,
            { status: res.status });
        }
        return res.json;
      }
      const err = problemError(res.status, res.json, what, res.text, call.kind === SESSION);
      // 429 means not done: always safe to repeat. A 503 can also be a
      // timeout with the outcome unknown, so a send-once call (commit,
      // abort, delete) reports it instead of repeating it.
      if (res.status === 429 || (res.status === 503 && !err.owner && call.kind !== ONCE)) {
        const ra = Number.parseFloat(res.retryAfter ?? '');
        const wait = Number.isFinite(ra) && ra >= 0 ? Math.max(ra * 1000, 50) : backoff;
        if (Date.now() + wait <= deadline) {
          await sleep(wait);
          backoff = Math.min(backoff * 2, 2000);
          continue;
        }
      }
      throw err;
    }
  }

  /**
   * One HTTP exchange, bounded by this.timeout.
   * @returns {Promise<{status: number, json: any, text: string, retryAfter: string|undefined}>}
   */
  send(method, path, body, contentType) {
    /** @type {Record<string,string>} */
    const headers = { Accept: 'application/json, application/problem+json', ...this.headers };
    if (contentType) headers['Content-Type'] = contentType;
    if (body) headers['Content-Length'] = String(body.length);
    if (this.token) headers.Authorization = 'Bearer ' + this.token;
    return new Promise((resolve, reject) => {
      const req = http.request({
        method, path, headers, agent: this.agent,
        socketPath: this.socketPath, host: this.host, port: this.port,
        signal: AbortSignal.timeout(this.timeout),
      }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', (err) => reject(Object.assign(err, { reusedSocket: false })));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json = null;
          if (text !== '' && /json/.test(res.headers['content-type'] ?? '')) {
            try {
              json = JSON.parse(text);
            } catch {
              json = null;
            }
          }
          const ra = res.headers['retry-after'];
          resolve({ status: res.statusCode ?? 0, json, text, retryAfter: Array.isArray(ra) ? ra[0] : ra });
        });
      });
      req.on('error', (err) => reject(Object.assign(err, { reusedSocket: req.reusedSocket })));
      req.end(body);
    });
  }
}

/** A job; its writers are opened with writer(). */
export class Job {
  /**
   * @param {Client} client
   * @param {string} name
   * @param {any} info the job as stored
   */
  constructor(client, name, info) {
    this.client = client;
    this.name = name;
    /** The job as the sidecar stored it: {name, commit, guarantee, sinks, writers}. */
    this.info = info;
  }

  /**
   * Opens a new session of the writer (fencing any previous one) and
   * returns it with the restored checkpoint and state: resume the input
   * from there. Throws DataLoss (with `writer` set) when checkpoints of the
   * writer lost data.
   * @param {string} name
   * @param {{restore?: number}} [opts] external mode: the checkpoint the application restored
   */
  async writer(name, opts = {}) {
    checkName(name, 'writer');
    let json;
    if (opts.restore !== undefined) {
      checkpointNumber(opts.restore, 'restore', 0);
      json = { restore: opts.restore };
    }
    const s = await this.client.request({
      method: 'POST', path: writerPath(this.name, name) + '/session', json, kind: REPEATABLE,
    });
    const w = new Writer(this, name, s);
    if (w.dataLoss.length > 0 || s.status === 'data_loss') {
      throw new DataLoss(
        `txsink: session of ${this.name}/${name} opened (epoch ${s.epoch}) restoring checkpoint ${s.checkpoint} ` +
          `(${s.status}); checkpoints ${JSON.stringify(w.dataLoss)} lost data in a sink: stop and let an operator decide`,
        { status: 200, code: 'data_loss', result: s, writer: w });
    }
    return w;
  }

  /** Describes the job and its writers. */
  async describe() {
    return this.client.request({ method: 'GET', path: jobPath(this.name), kind: REPEATABLE });
  }

  /** External mode: commits every writer's prepared checkpoints ≤ n. Status "committing" (202) is durable, not yet confirmed. */
  async commit(n) {
    checkpointNumber(n, 'n', 1);
    return this.client.request({
      method: 'POST', path: `${jobPath(this.name)}/checkpoints/${n}/commit`, kind: REPEATABLE, okStatus: [200, 202],
    });
  }

  /** External mode: aborts every writer's prepared checkpoint n. */
  async abort(n) {
    checkpointNumber(n, 'n', 1);
    return this.client.request({
      method: 'POST', path: `${jobPath(this.name)}/checkpoints/${n}/abort`, kind: REPEATABLE, okStatus: [200, 202],
    });
  }

  /** Forgets a writer with nothing in doubt; resolves to false when it did not exist. */
  async deleteWriter(name) {
    checkName(name, 'writer');
    const out = await this.client.request({ method: 'DELETE', path: writerPath(this.name, name), kind: ONCE });
    return out.deleted;
  }
}

/** One open session of a writer. */
export class Writer {
  constructor(job, name, session) {
    this.job = job;
    this.name = name;
    /** The session's fencing token. */
    this.epoch = session.epoch;
    /** What the open restored: resume the input from `state`. */
    this.restored = Object.freeze({
      checkpoint: session.checkpoint,
      state: session.state == null ? null : Buffer.from(session.state, 'base64'),
      status: session.status,
    });
    /** The restored checkpoint's state (null when nothing was restored). */
    this.state = this.restored.state;
    /** The last checkpoint of the writer this session knows: restored, then each completed one. */
    this.lastCheckpoint = session.checkpoint;
    /** Checkpoints that lost data (see DataLoss). */
    this.dataLoss = Array.isArray(session.data_loss) ? session.data_loss : [];
    this.seq = 0;
    this.path = writerPath(job.name, name);
  }

  /**
   * Appends records to the session's open transactions (NDJSON, with the
   * next seq). Nothing is visible before the next checkpoint commits.
   * @param {object[]} records
   * @returns {Promise<{accepted: number, seq?: number, duplicate?: boolean}>}
   */
  async write(records) {
    if (!Array.isArray(records) || records.length === 0) {
      throw new TypeError('txsink: write takes a non-empty array of record objects');
    }
    if (records.length > MAX_RECORDS) {
      throw new RangeError(`txsink: ${records.length} records in one write, the sidecar takes at most ${MAX_RECORDS}`);
    }
    const lines = new Array(records.length);
    for (let i = 0; i < records.length; i++) {
      const r = records[i];
      if (r === null || typeof r !== 'object' || Array.isArray(r)) {
        throw new TypeError(`txsink: record ${i + 1} is not an object`);
      }
      const line = JSON.stringify(bytesToB64(r, i + 1));
      if (line === undefined) throw new TypeError(`txsink: record ${i + 1} cannot be encoded as JSON`);
      lines[i] = line;
    }
    const body = Buffer.from(lines.join('\n') + '\n');
    this.seq += 1; // a new call gets a new seq even if an earlier one failed: gaps are allowed, repeats are not
    return this.job.client.request({
      method: 'POST', path: this.path + '/records', query: { epoch: this.epoch, seq: this.seq },
      body, contentType: 'application/x-ndjson', kind: SESSION,
    });
  }

  /**
   * Completes checkpoint n with the application's input position as state:
   * its records and the state become durable together. Resolves to the
   * result; status "committing" (202) means the commit decision is durable
   * and a sink has not confirmed yet (the sidecar finishes it).
   *
   * An app that reads its input from Kafka can pass `opts.offsets`
   * (`{sink, group, topics: {topic: {partition: nextOffset}}}`, optional
   * `generation`, `member_id`, `group_instance_id`) with or instead of
   * state: the sidecar commits them as the consumer group's offsets inside
   * this checkpoint's transaction of that Kafka sink, so they move exactly
   * when the output commits. Resume from the group's committed offsets read
   * with require_stable (examples/pageviews-go/group.go shows why).
   * @param {number} n greater than the last checkpoint
   * @param {Uint8Array|string|null} [state] bytes (a string is taken as UTF-8)
   * @param {{wait?: 'committed'|'prepared', offsets?: object}} [opts]
   */
  async checkpoint(n, state = null, opts = {}) {
    checkpointNumber(n, 'checkpoint', 1);
    const json = {};
    if (opts.offsets !== undefined && opts.offsets !== null) json.offsets = encodeOffsets(opts.offsets);
    if (state !== null && state !== undefined) {
      let buf;
      if (typeof state === 'string') buf = Buffer.from(state, 'utf8');
      else if (state instanceof Uint8Array) buf = Buffer.from(state.buffer, state.byteOffset, state.byteLength);
      else throw new TypeError('txsink: state must be a Uint8Array (e.g. a Buffer), a string or null');
      if (buf.length > MAX_STATE) {
        throw new RangeError(`txsink: state is ${buf.length} bytes, the sidecar takes at most ${MAX_STATE}`);
      }
      json.state = buf.toString('base64');
    }
    if (opts.wait !== undefined) {
      if (opts.wait !== 'committed' && opts.wait !== 'prepared') {
        throw new TypeError('txsink: wait must be "committed" or "prepared"');
      }
      json.wait = opts.wait;
    }
    const res = await this.job.client.request({
      method: 'POST', path: `${this.path}/checkpoints/${n}`, query: { epoch: this.epoch }, json,
      kind: SESSION, okStatus: [200, 202],
    });
    this.lastCheckpoint = n;
    return res;
  }
}

// Call kinds: what a call may do when it got no answer.
const REPEATABLE = 0; // safe to send again (PUT job, open session, reads, commit/abort of a job)
const SESSION = 1; // records and checkpoints: no connection means the session is lost
const ONCE = 2; // sent again only when it never left (delete: a repeat would answer deleted: false)

const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOENT', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);

/**
 * A record whose key or value is bytes (a Uint8Array, e.g. a Buffer) goes
 * out with key_b64/value_b64: JSON.stringify would turn a Buffer into
 * {"type":"Buffer","data":[…]}, which the sink would store as that text.
 */
function bytesToB64(r, i) {
  if (!(r.key instanceof Uint8Array) && !(r.value instanceof Uint8Array)) return r;
  const out = { ...r };
  for (const f of ['key', 'value']) {
    const b = r[f];
    if (!(b instanceof Uint8Array)) continue;
    if (r[f + '_b64'] !== undefined) throw new TypeError(`txsink: record ${i} has both ${f} and ${f}_b64`);
    out[f + '_b64'] = Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
    delete out[f];
  }
  return out;
}

const OFFSETS_FIELDS = ['sink', 'group', 'topics', 'generation', 'member_id', 'group_instance_id'];
const MAX_INT32 = 2147483647;

/**
 * Checks a checkpoint's offsets and returns the JSON body's form of them
 * (partitions as strings). Throws a TypeError naming the bad part before
 * anything is sent.
 */
export function encodeOffsets(o) {
  const plain = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Map);
  if (!plain(o)) throw new TypeError('txsink: offsets must be an object {sink, group, topics}');
  const unknown = Object.keys(o).filter((k) => !OFFSETS_FIELDS.includes(k));
  if (unknown.length) throw new TypeError(`txsink: offsets: unknown field(s) ${JSON.stringify(unknown)}; want ${JSON.stringify(OFFSETS_FIELDS)}`);
  const out = {};
  for (const f of ['sink', 'group']) {
    if (typeof o[f] !== 'string' || o[f] === '') throw new TypeError(`txsink: offsets.${f} must be a non-empty string`);
    out[f] = o[f];
  }
  if (!plain(o.topics) || Object.keys(o.topics).length === 0) {
    throw new TypeError('txsink: offsets.topics must be a non-empty object {topic: {partition: offset}}');
  }
  out.topics = {};
  for (const [topic, parts] of Object.entries(o.topics)) {
    if (topic === '') throw new TypeError('txsink: offsets.topics: a topic must be a non-empty string');
    if (!plain(parts) || Object.keys(parts).length === 0) {
      throw new TypeError(`txsink: offsets.topics[${JSON.stringify(topic)}] must be a non-empty object {partition: offset}`);
    }
    const enc = {};
    for (const [p, off] of Object.entries(parts)) {
      if (!/^\d+$/.test(p) || Number(p) > MAX_INT32) {
        throw new TypeError(`txsink: offsets.topics[${JSON.stringify(topic)}]: partition ${JSON.stringify(p)} is not a partition number`);
      }
      if (!Number.isSafeInteger(off) || off < 0) {
        throw new TypeError(`txsink: offsets.topics[${JSON.stringify(topic)}][${p}]: offset must be an integer ≥ 0, got ${String(off)}`);
      }
      enc[String(Number(p))] = off;
    }
    out.topics[topic] = enc;
  }
  if (o.generation !== undefined && o.generation !== null) {
    if (!Number.isInteger(o.generation) || o.generation < -1 || o.generation > MAX_INT32) {
      throw new TypeError('txsink: offsets.generation must be an integer (-1: none)');
    }
    out.generation = o.generation;
  }
  for (const f of ['member_id', 'group_instance_id']) {
    if (o[f] === undefined || o[f] === null) continue;
    if (typeof o[f] !== 'string') throw new TypeError(`txsink: offsets.${f} must be a string`);
    if (o[f] !== '') out[f] = o[f];
  }
  return out;
}

function jobPath(job) {
  return '/v1/jobs/' + encodeURIComponent(job);
}

function writerPath(job, writer) {
  return jobPath(job) + '/writers/' + encodeURIComponent(writer);
}

function checkName(name, what) {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new TypeError(`txsink: ${what} name ${JSON.stringify(name)} is invalid: want 1-64 of A-Z a-z 0-9 . _ - ` +
      'starting with a letter or digit');
  }
}

function checkpointNumber(n, what, min) {
  if (!Number.isSafeInteger(n) || n < min) {
    throw new RangeError(`txsink: ${what} must be an integer from ${min} to 2^53-1, got ${String(n)}`);
  }
}

function positive(v, what) {
  if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) throw new TypeError(`txsink: ${what} must be a positive number of ms`);
  return v;
}

function nonNegative(v, what) {
  if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v)) throw new TypeError(`txsink: ${what} must be a number of ms ≥ 0`);
  return v;
}
