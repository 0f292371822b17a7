// Errors of the txsink client. Every error answer of the sidecar is an RFC
// 9457 problem with a stable `code` (api/openapi.yaml, "Code"); the client
// maps the code to a class so that an application can tell with one
// `instanceof` what the contract (README.md, "What your app must do") wants
// from it:
//
//   SessionError (and its subclasses): the session is gone or its open
//     records were aborted. Open the writer again (job.writer), resume the
//     input from the state it restores and replay. Never retried here: only
//     the application can replay.
//   DataLoss: stop and let an operator decide.
//   RecordRejected: the record `record` names will never be accepted.
//   Backpressure / Unavailable: only after the client's retries ran out.

/**
 * A problem answered by the sidecar, or another failed call.
 */
export class TxsinkError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, title?: string, detail?: string,
   *   record?: number, owner?: string, result?: any, problem?: any, cause?: unknown}} [fields]
   */
  constructor(message, fields = {}) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = new.target.name;
    /** HTTP status (0 when no answer came back). */
    this.status = fields.status ?? 0;
    /** Stable problem code, e.g. "session_fenced"; "no_answer" when the call got no answer. */
    this.code = fields.code ?? '';
    this.title = fields.title ?? '';
    this.detail = fields.detail ?? '';
    /** 1-based index in the write call of the record the problem is about, or 0. */
    this.record = fields.record ?? 0;
    /** On a 503 from a cluster node that could not reach the session's owner: that node's id. */
    this.owner = fields.owner ?? '';
    /** With data_loss: the result the call would have returned. */
    this.result = fields.result;
    /** The problem document as answered (undefined for a non-problem answer). */
    this.problem = fields.problem;
  }
}

/**
 * The session is gone, or what it wrote since its last checkpoint was
 * aborted: open the writer again (`job.writer(name)`), resume the input from
 * the restored `state` and replay. The client never does this by itself.
 */
export class SessionError extends TxsinkError {}

/** 409 session_lost / no_session: the sidecar restarted or forgot the idle session; or the call got no answer (code "no_answer"), so its outcome is unknown. */
export class SessionLost extends SessionError {}

/** 409 session_fenced: a newer session of the same writer exists (another process took it over). */
export class SessionFenced extends SessionError {}

/** 502 sink_failure: a sink failed and every open branch of the session was aborted. */
export class SinkFailure extends SessionError {}

/** 409 seq_conflict / checkpoint_order: a repeated call differed from the original - a bug in the caller. */
export class SessionConflict extends SessionError {}

/** 503 unavailable with `owner` set (cluster): the node could not reach the session's owner; reopen on a reachable node. */
export class OwnerUnreachable extends SessionError {}

/**
 * 502 data_loss, or a session opened over lost checkpoints: a sink had
 * aborted a checkpoint the journal decided to commit; its records are not in
 * the sink. Stop and let an operator decide. `result` holds the call's result
 * (checkpoint or commit); on an open, `writer` holds the opened writer.
 */
export class DataLoss extends TxsinkError {
  /**
   * @param {string} message
   * @param {ConstructorParameters<typeof TxsinkError>[1] & {writer?: any}} [fields]
   */
  constructor(message, fields = {}) {
    super(message, fields);
    /** On an open over lost checkpoints: the opened Writer (its `dataLoss` lists them). */
    this.writer = fields.writer;
  }
}

/**
 * 422 record_rejected: the record `record` (1-based in the call) will never
 * be accepted. Fix or skip it and send the call again without it. When
 * `sessionFailed` is true (records of the call had reached another sink, or
 * it came from a checkpoint), the session failed too: reopen and replay
 * without the record.
 */
export class RecordRejected extends TxsinkError {
  /**
   * @param {string} message
   * @param {ConstructorParameters<typeof TxsinkError>[1] & {sessionFailed?: boolean}} [fields]
   */
  constructor(message, fields = {}) {
    super(message, fields);
    this.sessionFailed = fields.sessionFailed ?? false;
  }
}

/** 400: a parameter, name or record is wrong (`record` names the record). The call changed nothing. */
export class BadRequest extends TxsinkError {}

/** 401: the sidecar needs a token (option `token` or TXSINK_TOKEN). */
export class Unauthorized extends TxsinkError {}

/** 429 backpressure, after the client's retries ran out. */
export class Backpressure extends TxsinkError {}

/** 503 unavailable (no journal leader, not ready), or no connection, after the client's retries ran out. */
export class Unavailable extends TxsinkError {}

/**
 * True when the error means: open the writer again and resume from the
 * state it restores (the SessionError family).
 * @param {unknown} err
 */
export function isReopen(err) {
  return err instanceof SessionError;
}

/**
 * Builds the error of a problem answer.
 * @param {number} status
 * @param {any} p the parsed problem (or null)
 * @param {string} what "METHOD path", for the message
 * @param {string} raw the body when it was no problem document
 * @param {boolean} sessionCall a records or checkpoint call
 */
export function problemError(status, p, what, raw, sessionCall) {
  const isProblem = p !== null && typeof p === 'object' && typeof p.code === 'string';
  const code = isProblem ? p.code : '';
  const detail = isProblem ? String(p.detail ?? '') : raw.trim().slice(0, 500);
  const fields = {
    status,
    code,
    title: isProblem ? String(p.title ?? '') : '',
    detail,
    record: isProblem && Number.isInteger(p.record) ? p.record : 0,
    owner: isProblem && typeof p.owner === 'string' ? p.owner : '',
    result: isProblem ? p.result : undefined,
    problem: isProblem ? p : undefined,
  };
  const msg = `txsink: ${what}: ${status}${code ? ' ' + code : ''}${detail ? ': ' + detail : ''}`;
  switch (code) {
    case 'session_lost':
    case 'no_session':
      return new SessionLost(msg, fields);
    case 'session_fenced':
      return new SessionFenced(msg, fields);
    case 'sink_failure':
      return new SinkFailure(msg, fields);
    case 'seq_conflict':
    case 'checkpoint_order':
      return new SessionConflict(msg, fields);
    case 'data_loss':
      return new DataLoss(msg, fields);
    case 'record_rejected':
      // A checkpoint's 422 always failed the session (openapi.yaml); a
      // write's only when its records had reached another sink, which the
      // detail says. The code is the contract; the detail is the only
      // place that tells the two write cases apart.
      return new RecordRejected(msg, {
        ...fields,
        sessionFailed: !what.includes('/records') || /session failed/.test(detail),
      });
    case 'backpressure':
      return new Backpressure(msg, fields);
    case 'unavailable':
      return fields.owner && sessionCall ? new OwnerUnreachable(msg, fields) : new Unavailable(msg, fields);
    case 'unauthorized':
      return new Unauthorized(msg, fields);
  }
  if (status === 400) return new BadRequest(msg, fields);
  if (status === 401) return new Unauthorized(msg, fields);
  if (status === 503) return new Unavailable(msg, fields);
  return new TxsinkError(msg, fields);
}
