// The txsink client for Node.js: see README.md next to this folder.
export { Client, Job, Writer, encodeOffsets } from './client.js';
export {
  TxsinkError, SessionError, SessionLost, SessionFenced, SinkFailure, SessionConflict, OwnerUnreachable,
  DataLoss, RecordRejected, BadRequest, Unauthorized, Backpressure, Unavailable, isReopen,
} from './errors.js';
