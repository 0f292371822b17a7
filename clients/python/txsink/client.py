"""Client, Job and Writer: txsink's HTTP API over TCP or a Unix socket.

The contract is api/openapi.yaml; api/client/client.go is the Go client
whose semantics this one follows. In short:

* Calls that were refused for a while (429 backpressure, 503 unavailable
  without an ``owner``) and calls that could not connect are retried with a
  backoff for up to ``retry_for`` seconds. That is safe for every call:
  refused or never sent means nothing happened, and the session calls carry
  what makes a repeat harmless (a write repeats its ``seq`` and body byte for
  byte; a checkpoint repeats its number and state).
* A write or checkpoint that was sent and got no answer (the connection broke,
  or timed out) is not sent again: its outcome is unknown. It raises
  :class:`~txsink.errors.NoAnswer`, a :class:`~txsink.errors.Reopen`.
* The client never reopens a session by itself. Reopening aborts what was
  written since the last checkpoint, and only the application can replay it:
  after a ``Reopen`` it opens the writer again and resumes from the state the
  new session restores.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket as _socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from .errors import (
    DataLoss,
    NoAnswer,
    TxsinkError,
    Unreachable,
    error_from_problem,
)

__all__ = ["Client", "Job", "Writer", "Session", "WriteResult", "CheckpointResult", "DEFAULT_ADDR", "encode_offsets"]

#: Where the sidecar listens by default (`make run`, `sidecar run`).
DEFAULT_ADDR = "http://127.0.0.1:8470"

#: The largest checkpoint number every client holds exactly (2^53-1).
MAX_CHECKPOINT = 9007199254740991

# A kept-alive connection idle for longer than this is not reused: the
# sidecar closes idle connections after 2 minutes (api.DefaultIdleTimeout),
# and a session call sent on a connection the server just closed would get
# no answer and have to be reported as NoAnswer.
_MAX_IDLE = 60.0

StateLike = Union[bytes, bytearray, memoryview, str]
Record = Mapping[str, Any]


@dataclass(frozen=True)
class Session:
    """An opened session: the answer of POST …/writers/{w}/session.

    Attributes:
        epoch: the session's fencing token (the client passes it on every call).
        checkpoint: the restored checkpoint, 0 when there is none.
        state: the restored checkpoint's state (decoded from base64), None when none.
        status: the restored checkpoint's status: none, committed, committing or data_loss.
        data_loss: the writer's checkpoints that lost data; empty on a clean restore.
    """

    epoch: int
    checkpoint: int
    state: Optional[bytes]
    status: str
    data_loss: List[int] = field(default_factory=list)


@dataclass(frozen=True)
class WriteResult:
    """The answer of a write: ``accepted`` records; ``duplicate`` when the call repeated the last seq."""

    accepted: int
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class CheckpointResult:
    """The answer of a checkpoint.

    ``status`` is ``committed`` (200), ``committing`` (202: the commit
    decision is durable and some sink has not confirmed yet; the sidecar
    finishes it, nothing to do) or ``prepared`` (external commit mode, or
    wait="prepared").
    """

    checkpoint: int
    status: str
    branches: List[Dict[str, Any]]
    http_status: int

    @property
    def committing(self) -> bool:
        """True for a 202 committing answer: decided, not yet confirmed by every sink."""
        return self.status == "committing"


def _quote(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"txsink: a job or writer name must be a non-empty str, got {name!r}")
    return urllib.parse.quote(name, safe="")


class _UnixConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def _token_from_env() -> Optional[str]:
    tok = os.environ.get("TXSINK_TOKEN", "").strip()
    if tok:
        return tok
    path = os.environ.get("TXSINK_TOKEN_FILE", "")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    return None


class Client:
    """A client of one sidecar.

    Args:
        addr: ``http://host:port``, ``https://host:port``, ``unix:///path/to/sidecar.sock``
            or the socket's path. Default: ``$TXSINK_ADDR``, else ``http://127.0.0.1:8470``.
        socket: the sidecar's Unix socket path (instead of addr).
        token: the bearer token. Default: ``$TXSINK_TOKEN``, else the contents of
            ``$TXSINK_TOKEN_FILE``, else none.
        timeout: seconds any single connect, send or read may take. A checkpoint
            waits for the sinks' commit, so keep it above the sidecar's checkpoint
            timeout.
        retry_for: seconds to keep retrying a call that could not connect or was
            answered 429/503 (0: no retries).
        ssl_context: for https, e.g. one trusting a private CA.

    Calls are serialized on one kept-alive connection; a Client may be shared
    by threads, which then take turns. Use it as a context manager, or call
    :meth:`close`, to close the connection.
    """

    def __init__(self, addr: Optional[str] = None, *, socket: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = 120.0, retry_for: float = 30.0,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        if timeout <= 0 or retry_for < 0:
            raise ValueError(f"txsink: timeout must be > 0 and retry_for >= 0, got {timeout} and {retry_for}")
        if socket is not None and addr is not None:
            raise ValueError("txsink: pass addr or socket, not both")
        if socket is None:
            addr = addr or os.environ.get("TXSINK_ADDR") or DEFAULT_ADDR
            if addr.startswith("unix://"):
                socket = addr[len("unix://"):]
            elif "://" not in addr:
                socket = addr  # a path, as the sidecar CLI's --addr takes it
        self._socket = socket
        self._host = ""
        self._port: Optional[int] = None
        self._https = False
        if socket is None:
            assert addr is not None
            u = urllib.parse.urlsplit(addr)
            if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/"):
                raise ValueError(f"txsink: address {addr!r}: want http://host:port, https://host:port, "
                                 "unix:///path or a socket path")
            self._host, self._port, self._https = u.hostname, u.port, u.scheme == "https"
        elif not socket:
            raise ValueError("txsink: empty socket path")
        self.token = token if token is not None else _token_from_env()
        self.timeout = float(timeout)
        self.retry_for = float(retry_for)
        self._ssl = ssl_context
        self._mu = threading.Lock()
        self._conn: Optional[http.client.HTTPConnection] = None
        self._last_used = 0.0

    @property
    def endpoint(self) -> str:
        """Where the client sends its calls, for messages."""
        if self._socket is not None:
            return "unix://" + self._socket
        scheme = "https" if self._https else "http"
        return f"{scheme}://{self._host}" + (f":{self._port}" if self._port else "")

    # ---- jobs ----

    def job(self, name: str, commit: Optional[str] = "auto", sinks: Optional[List[str]] = None,
            guarantee: Optional[str] = None) -> "Job":
        """Returns the job ``name``, created or updated first (PUT, idempotent) unless commit is None.

        commit is ``"auto"`` (each checkpoint commits by itself) or
        ``"external"`` (``job.commit(n)`` commits); sinks None means every
        sink of the sidecar. guarantee is the job's delivery guarantee:
        ``"exactly_once"`` (the sidecar's default when None), ``"at_least_once"``
        (a crash may repeat what was written since the last checkpoint) or
        ``"none"`` (fire and forget). With commit=None nothing is sent and the
        job must exist (e.g. declared in the sidecar's config).
        """
        if commit is not None:
            self.put_job(name, commit, sinks, guarantee)
        elif guarantee is not None:
            raise ValueError("txsink: guarantee needs commit (commit=None sends nothing)")
        return Job(self, name)

    def put_job(self, name: str, commit: str = "auto", sinks: Optional[List[str]] = None,
                guarantee: Optional[str] = None) -> Dict[str, Any]:
        """Creates or updates a job (PUT /v1/jobs/{job}); returns the job as stored.

        guarantee None leaves it out (the sidecar's default, exactly_once).
        Its value is checked by the sidecar, so that a guarantee this client
        does not know yet still works: an unknown one raises BadRequest (400).
        """
        if commit not in ("auto", "external"):
            raise ValueError(f"txsink: commit must be 'auto' or 'external', got {commit!r}")
        body: Dict[str, Any] = {"commit": commit}
        if sinks is not None:
            if isinstance(sinks, str) or not all(isinstance(s, str) for s in sinks):
                raise TypeError(f"txsink: sinks must be a list of names, got {sinks!r}")
            body["sinks"] = list(sinks)
        if guarantee is not None:
            if not isinstance(guarantee, str):
                raise TypeError(f"txsink: guarantee must be a str such as 'at_least_once', got {guarantee!r}")
            body["guarantee"] = guarantee
        return self._json("PUT", f"/v1/jobs/{_quote(name)}", body)[1]

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job with its writers."""
        return list(self._json("GET", "/v1/jobs")[1].get("jobs") or [])

    def get_job(self, name: str) -> Dict[str, Any]:
        """One job and its writers (NotFound when there is none)."""
        return self._json("GET", f"/v1/jobs/{_quote(name)}")[1]

    def cluster(self) -> Dict[str, Any]:
        """The node's view of the cluster (GET /v1/cluster)."""
        return self._json("GET", "/v1/cluster")[1]

    def health(self) -> Dict[str, Any]:
        """GET /healthz: raises unless the sidecar serves."""
        return self._json("GET", "/healthz")[1]

    def ready(self) -> Dict[str, Any]:
        """GET /readyz: raises Unavailable (after the retries) unless the sidecar is ready."""
        return self._json("GET", "/readyz")[1]

    def close(self) -> None:
        """Closes the kept-alive connection (a later call opens a new one)."""
        with self._mu:
            self._drop()

    def __enter__(self) -> "Client":
        return self

    def __del__(self) -> None:
        # A client dropped without close() (a script's last line) closes its socket.
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- transport ----

    def _json(self, method: str, path: str, body: Any = None, query: Optional[Dict[str, Any]] = None,
              kind: str = "repeatable") -> Tuple[int, Dict[str, Any]]:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        return self._call(method, path, query, data, "application/json", kind)

    def _new_conn(self) -> http.client.HTTPConnection:
        if self._socket is not None:
            return _UnixConnection(self._socket, self.timeout)
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _pause(self, delay: float, deadline: float, what: str, err: Exception) -> float:
        """Sleeps delay before the next attempt of a call that never reached
        the sidecar and returns the next delay; raises Unreachable when that
        would pass the deadline."""
        if time.monotonic() + delay > deadline:
            raise Unreachable(f"{what} {self.endpoint} ({type(err).__name__}: {err})", err) from err
        time.sleep(delay)
        return min(delay * 2, 2.0)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _call(self, method: str, path: str, query: Optional[Dict[str, Any]], body: Optional[bytes],
              ctype: str, kind: str, checkpoint_call: bool = False) -> Tuple[int, Dict[str, Any]]:
        """Sends one call and returns (status, decoded JSON body) of a 2xx answer.

        kind says what a call without an answer may do: "repeatable" (reads,
        PUT job, session open) is sent again until retry_for runs out;
        "session" (write, checkpoint) raises NoAnswer; "once" (commit, abort,
        delete) raises a TxsinkError with code no_answer.
        """
        if query:
            path += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json, application/problem+json"}
        if body is not None:
            headers["Content-Type"] = ctype
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        with self._mu:
            deadline = time.monotonic() + self.retry_for
            delay = 0.1
            while True:
                wait: Optional[float] = None
                if self._conn is not None and time.monotonic() - self._last_used > _MAX_IDLE:
                    self._drop()
                if self._conn is None:
                    conn = self._new_conn()
                    try:
                        conn.connect()
                    except OSError as e:  # refused, no such socket, timeout: the call never left
                        conn.close()
                        delay = self._pause(delay, deadline, f"{method} {path}: cannot connect to", e)
                        continue
                    self._conn = conn
                try:
                    self._conn.request(method, path, body=body, headers=headers)
                except (OSError, http.client.HTTPException) as e:
                    # Sending failed (EPIPE, reset): the server closed the
                    # connection before it had the whole request, typically a
                    # kept-alive one of a sidecar that died or timed it out.
                    # A server acts only on a complete request, so this one
                    # did nothing and may go again on a new connection.
                    self._drop()
                    delay = self._pause(delay, deadline, f"{method} {path}: cannot send to", e)
                    continue
                try:
                    resp = self._conn.getresponse()
                    raw = resp.read()
                except (OSError, http.client.HTTPException) as e:
                    self._drop()
                    what = f"{method} {path} to {self.endpoint} got no answer ({type(e).__name__}: {e})"
                    if kind == "session":
                        raise NoAnswer(what + "; its outcome is unknown: reopen the session "
                                       "and resume from the checkpoint it restores", e) from e
                    if kind == "once" or time.monotonic() + delay > deadline:
                        raise TxsinkError(0, "no_answer", what) from e
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                self._last_used = time.monotonic()
                if resp.will_close:
                    self._drop()
                status = resp.status
                parsed = _decode(raw, resp.getheader("Content-Type") or "")
                if status < 300:
                    if not isinstance(parsed, dict):
                        raise TxsinkError(status, "bad_answer", f"{method} {path}: answer is not a JSON object: "
                                          f"{raw[:200]!r}")
                    return status, parsed
                problem = parsed if isinstance(parsed, dict) else {"detail": raw[:500].decode(errors="replace")}
                err = error_from_problem(status, problem, checkpoint_call=checkpoint_call)
                # 429 means not done: always safe to repeat. A 503 can also be
                # a timeout with the outcome unknown, so a send-once call
                # (commit, abort, delete) reports it instead of repeating it.
                if err.code == "backpressure" or (err.code == "unavailable" and not problem.get("owner")
                                                  and kind != "once"):
                    wait = max(delay, _retry_after(resp.getheader("Retry-After")))
                    if time.monotonic() + wait <= deadline:
                        time.sleep(wait)
                        delay = min(delay * 2, 2.0)
                        continue
                raise err


def _retry_after(v: Optional[str]) -> float:
    try:
        return max(0.0, float(v)) if v else 0.0
    except ValueError:
        return 0.0  # an HTTP date: the sidecar never sends one; back off by our own delay


def _decode(raw: bytes, ctype: str) -> Any:
    if not raw:
        return {}
    if "json" not in ctype:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _b64(b: StateLike) -> str:
    if isinstance(b, str):
        b = b.encode("utf-8")
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise TypeError(f"txsink: state must be bytes or str, got {type(b).__name__}")
    return base64.b64encode(bytes(b)).decode("ascii")


_OFFSETS_FIELDS = ("sink", "group", "topics", "generation", "member_id", "group_instance_id")
_MAX_INT64 = (1 << 63) - 1


def encode_offsets(offsets: Mapping[str, Any]) -> Dict[str, Any]:
    """Checks a checkpoint's ``offsets`` and returns them as the JSON body wants them.

    ``offsets`` is a mapping ``{"sink": <Kafka sink>, "group": <group id>,
    "topics": {<topic>: {<partition>: <next offset>}}}`` with optional
    ``generation`` (int), ``member_id`` and ``group_instance_id`` (str) for an
    app that is a member of the group (KIP-447). Partitions may be ints or
    digit strings; they are sent as strings. Raises TypeError/ValueError
    naming the bad part, before anything is sent.
    """
    if not isinstance(offsets, Mapping):
        raise TypeError(f"txsink: offsets must be a dict, got {type(offsets).__name__}")
    unknown = sorted(set(offsets) - set(_OFFSETS_FIELDS))
    if unknown:
        raise ValueError(f"txsink: offsets: unknown field(s) {unknown}; want {list(_OFFSETS_FIELDS)}")
    out: Dict[str, Any] = {}
    for f in ("sink", "group"):
        v = offsets.get(f)
        if not isinstance(v, str) or not v:
            raise ValueError(f"txsink: offsets.{f} must be a non-empty string, got {v!r}")
        out[f] = v
    topics = offsets.get("topics")
    if not isinstance(topics, Mapping) or not topics:
        raise ValueError(f"txsink: offsets.topics must be a non-empty dict topic -> {{partition: offset}}, got {topics!r}")
    out["topics"] = {}
    for topic, parts in topics.items():
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"txsink: offsets.topics: a topic must be a non-empty string, got {topic!r}")
        if not isinstance(parts, Mapping) or not parts:
            raise ValueError(f"txsink: offsets.topics[{topic!r}] must be a non-empty dict partition -> offset, got {parts!r}")
        enc: Dict[str, int] = {}
        for p, off in parts.items():
            if isinstance(p, bool) or not ((isinstance(p, int) and 0 <= p <= 2147483647)
                                           or (isinstance(p, str) and p.isdigit() and int(p) <= 2147483647)):
                raise ValueError(f"txsink: offsets.topics[{topic!r}]: partition {p!r} is not a partition number")
            if isinstance(off, bool) or not isinstance(off, int) or not 0 <= off <= _MAX_INT64:
                raise ValueError(f"txsink: offsets.topics[{topic!r}][{p!r}]: offset must be an int >= 0, got {off!r}")
            enc[str(int(p))] = off
        out["topics"][topic] = enc
    gen = offsets.get("generation")
    if gen is not None:
        if isinstance(gen, bool) or not isinstance(gen, int) or not -1 <= gen <= 2147483647:
            raise ValueError(f"txsink: offsets.generation must be an int (-1: none), got {gen!r}")
        out["generation"] = gen
    for f in ("member_id", "group_instance_id"):
        v = offsets.get(f)
        if v is not None:
            if not isinstance(v, str):
                raise ValueError(f"txsink: offsets.{f} must be a string, got {v!r}")
            if v:
                out[f] = v
    return out


def encode_records(records: Iterable[Record]) -> bytes:
    """Encodes records as NDJSON, one JSON object a line.

    A record is a mapping with the fields of api/openapi.yaml's Record
    (sink, topic, key, value, headers, partition, stmt, args). A ``key`` or
    ``value`` given as bytes is sent as ``key_b64``/``value_b64``, so binary
    payloads arrive unchanged. Raises TypeError/ValueError naming the first
    bad record (1-based), before anything is sent.
    """
    if isinstance(records, (str, bytes, Mapping)):
        raise TypeError("txsink: records must be a list (or other iterable) of record dicts, "
                        f"got a single {type(records).__name__}")
    lines: List[bytes] = []
    for i, r in enumerate(records, 1):
        if not isinstance(r, Mapping):
            raise TypeError(f"txsink: record {i}: must be a dict, got {type(r).__name__}")
        rec = dict(r)
        for f in ("key", "value"):
            v = rec.get(f)
            if isinstance(v, (bytes, bytearray, memoryview)):
                if f + "_b64" in rec:
                    raise ValueError(f"txsink: record {i}: both {f} (bytes) and {f}_b64")
                del rec[f]
                rec[f + "_b64"] = base64.b64encode(bytes(v)).decode("ascii")
        try:
            lines.append(json.dumps(rec, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
        except (TypeError, ValueError) as e:
            raise type(e)(f"txsink: record {i}: not JSON-encodable: {e}") from e
    if not lines:
        raise ValueError("txsink: no records to write")
    return b"\n".join(lines) + b"\n"


class Job:
    """A job of the sidecar (returned by :meth:`Client.job`)."""

    def __init__(self, client: Client, name: str) -> None:
        _quote(name)
        self.client = client
        self.name = name

    def writer(self, name: str, restore: Optional[int] = None) -> "Writer":
        """Returns writer ``name`` of the job; ``with`` it (or call :meth:`Writer.open`) to open a session.

        restore (external commit mode only) is the checkpoint the application
        restored: prepared checkpoints up to it are committed, later ones aborted.
        """
        return Writer(self, name, restore)

    def info(self) -> Dict[str, Any]:
        """The job and its writers (GET /v1/jobs/{job})."""
        return self.client.get_job(self.name)

    def checkpoints(self) -> List[Dict[str, Any]]:
        """The job's unresolved and recent checkpoints."""
        _, out = self.client._json("GET", f"/v1/jobs/{_quote(self.name)}/checkpoints")
        return list(out.get("checkpoints") or [])

    def commit(self, n: int) -> Dict[str, Any]:
        """Commits every writer's prepared checkpoints ≤ n (external mode).

        The result's status is ``committed``, or ``committing`` (HTTP 202:
        durable, not yet confirmed by every sink). Raises DataLoss when a
        sink had aborted one of them.
        """
        _check_n(n)
        return self.client._json("POST", f"/v1/jobs/{_quote(self.name)}/checkpoints/{n}/commit", kind="once")[1]

    def abort(self, n: int) -> Dict[str, Any]:
        """Aborts every writer's prepared checkpoint n (external mode)."""
        _check_n(n)
        return self.client._json("POST", f"/v1/jobs/{_quote(self.name)}/checkpoints/{n}/abort", kind="once")[1]

    def delete_writer(self, name: str) -> bool:
        """Forgets a writer with nothing in doubt; False when it did not exist."""
        _, out = self.client._json("DELETE", f"/v1/jobs/{_quote(self.name)}/writers/{_quote(name)}", kind="once")
        return bool(out.get("deleted"))


def _check_n(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHECKPOINT:
        raise ValueError(f"txsink: a checkpoint number must be an int from 1 to {MAX_CHECKPOINT}, got {n!r}")


class Writer:
    """One writer of a job and its current session.

    Use it as a context manager: entering opens a session (which fences
    any earlier session of the writer and aborts what it had written since
    its last checkpoint) and exposes what it restored::

        with job.writer("0") as w:
            pos = int(w.state or b"0")      # resume the input here
            w.write([{"sink": "events", "key": "k", "value": {"n": 1}}])
            w.checkpoint(w.restored + 1, state=b"1")

    Leaving the block sends nothing: there is no call to close a session.
    A :class:`~txsink.errors.Reopen` raised inside means: enter the writer
    again and resume from its new ``state``.

    Attributes (after opening):
        session: the :class:`Session` the open returned.
        restored: the restored checkpoint number (``session.checkpoint``).
        state: the restored state, bytes or None (``session.state``).
        last_checkpoint: the last checkpoint this session completed (starts at ``restored``).
        seq: the seq of the last write call.
    """

    def __init__(self, job: Job, name: str, restore: Optional[int] = None) -> None:
        _quote(name)
        if restore is not None and (isinstance(restore, bool) or not isinstance(restore, int)
                                    or not 0 <= restore <= MAX_CHECKPOINT):
            raise ValueError(f"txsink: restore must be an int from 0 to {MAX_CHECKPOINT}, got {restore!r}")
        self.job = job
        self.name = name
        self._restore = restore
        self._path = f"/v1/jobs/{_quote(job.name)}/writers/{_quote(name)}"
        self._session: Optional[Session] = None
        self.last_checkpoint = 0
        self.seq = 0

    @property
    def client(self) -> Client:
        return self.job.client

    def open(self) -> Session:
        """Opens a new session (POST …/session) and returns it.

        Raises DataLoss, with the opened session in ``.session``, when
        checkpoints of the writer lost data: that is not a clean restore.
        """
        body = None if self._restore is None else {"restore": self._restore}
        _, out = self.client._json("POST", self._path + "/session", body)
        state = out.get("state")
        s = Session(epoch=int(out["epoch"]), checkpoint=int(out.get("checkpoint") or 0),
                    state=None if state is None else base64.b64decode(state),
                    status=str(out.get("status") or ""), data_loss=list(out.get("data_loss") or []))
        self._session = s
        self.last_checkpoint = s.checkpoint
        self.seq = 0
        if s.data_loss or s.status == "data_loss":
            raise DataLoss(200, "data_loss",
                           f"session of {self.job.name}/{self.name} opened (epoch {s.epoch}), restoring checkpoint "
                           f"{s.checkpoint} ({s.status}); checkpoints {s.data_loss} lost data in a sink",
                           "Data loss", out, session=s)
        return s

    def __enter__(self) -> "Writer":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._session = None

    @property
    def session(self) -> Session:
        """The open session (RuntimeError when the writer is not open)."""
        if self._session is None:
            raise RuntimeError(f"txsink: writer {self.job.name}/{self.name} is not open: use `with job.writer(...)`")
        return self._session

    @property
    def epoch(self) -> int:
        return self.session.epoch

    @property
    def restored(self) -> int:
        """The checkpoint the session restored (0: none)."""
        return self.session.checkpoint

    @property
    def state(self) -> Optional[bytes]:
        """The restored checkpoint's state (None: nothing restored)."""
        return self.session.state

    def write(self, records: Iterable[Record]) -> WriteResult:
        """Appends records to the session's open transactions, with the next ``seq``.

        Records are dicts (see :func:`encode_records`). They become visible
        in the sinks when a later checkpoint commits. A bad record raises
        before anything is sent; one the sidecar finds invalid raises
        BadRequest (``.record`` names it) and writes nothing of the call.
        """
        return self.write_ndjson(encode_records(records))

    def write_ndjson(self, body: bytes) -> WriteResult:
        """Appends a ready NDJSON body (one record object a line), with the next ``seq``."""
        if not isinstance(body, (bytes, bytearray)) or not body.strip():
            raise ValueError("txsink: an NDJSON body must be non-empty bytes")
        s = self.session
        # The seq advances only on success. After an error whose outcome may
        # be unknown (Unavailable once the retries ran out) the next call
        # reuses it: the same body again is then acknowledged as a duplicate
        # if the first one was written, and another body is seq_conflict (a
        # Reopen), never a second copy.
        seq = self.seq + 1
        _, out = self.client._call("POST", self._path + "/records", {"epoch": s.epoch, "seq": seq},
                                   bytes(body), "application/x-ndjson", "session")
        self.seq = seq
        return WriteResult(accepted=int(out.get("accepted") or 0), seq=int(out.get("seq") or seq),
                           duplicate=bool(out.get("duplicate")))

    def checkpoint(self, n: Optional[int] = None, state: Optional[StateLike] = None,
                   wait: Optional[str] = None, offsets: Optional[Mapping[str, Any]] = None) -> CheckpointResult:
        """Completes checkpoint n (default: the last one + 1) with state, e.g. the input position.

        Everything written since the previous checkpoint commits together
        with state. An app that reads its input from Kafka can pass, instead
        of (or with) state, ``offsets={"sink": "events", "group": "my-group",
        "topics": {"clicks": {0: 500, 1: 480}}}`` (next offset per
        partition; see :func:`encode_offsets`): the sidecar commits them as
        the consumer group's offsets inside this checkpoint's transaction of
        that Kafka sink, so they move exactly when the output commits. Resume
        from the group's committed offsets read with require_stable (see
        examples/pageviews-go/group.go). Returns when it committed (``status == "committed"``) or
        when the decision is durable and a sink has not confirmed yet
        (``committing``, HTTP 202: not an error, the sidecar finishes it);
        wait="prepared" returns once the decision is durable. In external
        mode the answer is ``prepared`` and :meth:`Job.commit` commits.
        Raises a Reopen (SinkFailure, NoAnswer, …) when the checkpoint did not
        commit or its outcome is unknown, DataLoss when it was decided but a
        sink had aborted it.
        """
        if n is None:
            n = self.last_checkpoint + 1
        _check_n(n)
        if wait not in (None, "committed", "prepared"):
            raise ValueError(f"txsink: wait must be 'committed' or 'prepared', got {wait!r}")
        body: Dict[str, Any] = {}
        if offsets is not None:
            body["offsets"] = encode_offsets(offsets)
        s = self.session
        if state is not None:
            body["state"] = _b64(state)
        if wait is not None:
            body["wait"] = wait
        status, out = self.client._call("POST", f"{self._path}/checkpoints/{n}", {"epoch": s.epoch},
                                        json.dumps(body).encode(), "application/json", "session",
                                        checkpoint_call=True)
        self.last_checkpoint = n
        return CheckpointResult(checkpoint=int(out.get("checkpoint") or n), status=str(out.get("status") or ""),
                                branches=list(out.get("branches") or []), http_status=status)
