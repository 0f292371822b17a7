// Types of the txsink Node client (src/*.js), written by hand from
// api/openapi.yaml (components/schemas). Keep them in step with both.

export interface ClientOptions {
  /** Base URL, e.g. "http://127.0.0.1:8470" (the default when neither url nor socketPath is given). */
  url?: string;
  /** The sidecar's Unix socket, instead of url. */
  socketPath?: string;
  /** Bearer token; default the environment's TXSINK_TOKEN. */
  token?: string;
  /** Milliseconds one HTTP call may take (default 130000). */
  timeout?: number;
  /** Milliseconds a call keeps retrying 429, 503 and refused connections (default 60000; 0 = never). */
  retryFor?: number;
  /** Extra headers on every call. */
  headers?: { [name: string]: string };
}

export type Mode = 'auto' | 'external';
/** A job's delivery guarantee (PUT /v1/jobs/{job}); the sidecar's default is exactly_once. */
export type Guarantee = 'exactly_once' | 'at_least_once' | 'none';
export type Status = 'open' | 'prepared' | 'committing' | 'aborting' | 'committed' | 'aborted' | 'data_loss';

/** One record. Kafka sinks use topic, key/value (or key_b64/value_b64), headers and partition; MySQL sinks stmt and args. */
export interface SinkRecord {
  sink?: string;
  topic?: string;
  /** A string is its UTF-8 bytes, a Uint8Array its bytes (sent as key_b64), any other value its JSON text. */
  key?: unknown;
  /** As key (bytes are sent as value_b64). */
  value?: unknown;
  key_b64?: string;
  value_b64?: string;
  headers?: { [name: string]: string };
  partition?: number;
  stmt?: string;
  args?: Array<string | number | boolean | null>;
}

export interface WriterInfo {
  name: string;
  epoch: number;
  owner: string;
  last_committed: number;
  in_doubt: number[];
}

export interface JobInfo {
  name: string;
  commit: Mode;
  /** The job's delivery guarantee (absent from a sidecar older than it). */
  guarantee?: Guarantee;
  sinks: string[];
  writers: WriterInfo[];
}

export interface WriteResult {
  accepted: number;
  seq?: number;
  duplicate?: boolean;
}

export interface BranchInfo {
  sink: string;
  slot: number;
  status: Status;
  handle?: unknown;
}

export interface CheckpointResult {
  checkpoint: number;
  status: Status;
  branches: BranchInfo[];
}

export interface CommitResult {
  checkpoint: number;
  status: Status;
  writers: { [writer: string]: number[] };
  data_loss?: { [writer: string]: number[] };
}

/**
 * Consumer-group offsets a checkpoint commits inside its transaction of the
 * Kafka sink `sink` (AddOffsetsToTxn + TxnOffsetCommit): the group's
 * committed offsets move exactly when the checkpoint's output commits.
 */
export interface Offsets {
  /** The job's Kafka sink whose transaction carries the offsets. */
  sink: string;
  /** The consumer group id. */
  group: string;
  /** topic → partition → the next offset to consume. */
  topics: { [topic: string]: { [partition: string]: number } };
  /** KIP-447 fencing for an app that is a member of the group: its generation (omit or -1: none). */
  generation?: number;
  member_id?: string;
  group_instance_id?: string;
}

/** Checks offsets and returns them as the request body carries them (partitions as strings); throws TypeError. */
export declare function encodeOffsets(offsets: Offsets): Offsets;

export interface Restored {
  /** The restored checkpoint (0: nothing to restore). */
  readonly checkpoint: number;
  /** Its state, or null when checkpoint is 0. */
  readonly state: Buffer | null;
  readonly status: 'none' | 'committed' | 'committing' | 'data_loss';
}

export declare class Client {
  constructor(opts?: ClientOptions);
  /** "http://host:port" or "unix:<path>". */
  readonly endpoint: string;
  /** Creates or updates a job (idempotent). An unknown guarantee is the sidecar's BadRequest (400). */
  job(name: string, spec?: { commit?: Mode; sinks?: string[]; guarantee?: Guarantee }): Promise<Job>;
  jobs(): Promise<JobInfo[]>;
  /** Resolves when the sidecar is ready; throws (no retries) otherwise. */
  ready(): Promise<void>;
  /** Closes idle keep-alive connections. */
  close(): void;
}

export declare class Job {
  readonly client: Client;
  readonly name: string;
  readonly info: JobInfo;
  /** Opens a new session of the writer (fencing the previous one). Throws DataLoss (with .writer) over lost checkpoints. */
  writer(name: string, opts?: { restore?: number }): Promise<Writer>;
  describe(): Promise<JobInfo>;
  /** External mode: commits every writer's prepared checkpoints ≤ n. */
  commit(n: number): Promise<CommitResult>;
  /** External mode: aborts every writer's prepared checkpoint n. */
  abort(n: number): Promise<CommitResult>;
  deleteWriter(name: string): Promise<boolean>;
}

export declare class Writer {
  readonly job: Job;
  readonly name: string;
  readonly epoch: number;
  /** What the open restored: resume the input from its state. */
  readonly restored: Restored;
  /** The restored state (restored.state). */
  readonly state: Buffer | null;
  /** The restored checkpoint, then the last one this session completed. */
  readonly lastCheckpoint: number;
  /** Checkpoints that lost data. */
  readonly dataLoss: number[];
  /** The seq of the last write call. */
  readonly seq: number;
  /** Appends records (NDJSON with the next seq) to the session's open transactions. */
  write(records: SinkRecord[]): Promise<WriteResult>;
  /**
   * Completes checkpoint n with state (bytes; a string is taken as UTF-8) and/or
   * opts.offsets, consumer-group offsets committed in the checkpoint's Kafka transaction.
   */
  checkpoint(n: number, state?: Uint8Array | string | null,
    opts?: { wait?: 'committed' | 'prepared'; offsets?: Offsets }): Promise<CheckpointResult>;
}

export interface Problem {
  type: string;
  title: string;
  status: number;
  code: string;
  detail?: string;
  instance?: string;
  result?: unknown;
  record?: number;
  owner?: string;
}

export declare class TxsinkError extends Error {
  /** HTTP status; 0 when no answer came back. */
  readonly status: number;
  /** Stable problem code (api/openapi.yaml "Code"), or "no_answer". */
  readonly code: string;
  readonly title: string;
  readonly detail: string;
  /** 1-based index in the write call of the record concerned, or 0. */
  readonly record: number;
  /** Cluster: the session owner the node could not reach, or "". */
  readonly owner: string;
  readonly result: unknown;
  readonly problem: Problem | undefined;
}
/** Open the writer again and resume from the state it restores. */
export declare class SessionError extends TxsinkError {}
export declare class SessionLost extends SessionError {}
export declare class SessionFenced extends SessionError {}
export declare class SinkFailure extends SessionError {}
export declare class SessionConflict extends SessionError {}
export declare class OwnerUnreachable extends SessionError {}
/** Stop and let an operator decide. */
export declare class DataLoss extends TxsinkError {
  readonly writer: Writer | undefined;
}
export declare class RecordRejected extends TxsinkError {
  readonly sessionFailed: boolean;
}
export declare class BadRequest extends TxsinkError {}
export declare class Unauthorized extends TxsinkError {}
export declare class Backpressure extends TxsinkError {}
export declare class Unavailable extends TxsinkError {}
export declare function isReopen(err: unknown): err is SessionError;
