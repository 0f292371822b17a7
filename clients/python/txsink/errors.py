"""The exceptions of the txsink client.

Every error answer of the sidecar is an RFC 9457 problem with a stable
``code`` (api/openapi.yaml, ``components.schemas.Code``); the client raises
one class per code family, all of them subclasses of :class:`TxsinkError`.
Switch on the class or on ``.code``, never on ``.detail``.

The classes that derive from :class:`Reopen` mean: this session is over.
Open the writer again (``job.writer(name)``), resume the input from the
``state`` the new session restores and replay what came after it. The
records written since the last checkpoint were aborted by the sidecar, so
replaying them writes each exactly once. The client never reopens by
itself: only the application knows how to go back to that state.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "TxsinkError",
    "Reopen",
    "SessionFenced",
    "SessionLost",
    "NoSession",
    "SeqConflict",
    "CheckpointOrder",
    "SinkFailure",
    "OwnerUnavailable",
    "NoAnswer",
    "RecordRejected",
    "DataLoss",
    "Backpressure",
    "Unavailable",
    "Unreachable",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "Conflict",
    "TooLarge",
    "error_from_problem",
]


class TxsinkError(Exception):
    """An error answer of the sidecar, or a call that got none.

    Attributes:
        status: the HTTP status (0 when no answer came back).
        code: the problem's stable code, e.g. ``"session_fenced"``.
        title: the problem's title.
        detail: the problem's human-readable detail.
        problem: the whole decoded problem object (empty if the answer was
            not a problem).
    """

    def __init__(self, status: int, code: str, detail: str = "", title: str = "",
                 problem: Optional[Dict[str, Any]] = None) -> None:
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.problem: Dict[str, Any] = problem or {}
        msg = f"txsink: {status} {code}" if status else f"txsink: {code}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class Reopen(TxsinkError):
    """The session is over: reopen the writer and resume from the restored state.

    Catch this class to handle every member of the family: SessionFenced,
    SessionLost, NoSession, SeqConflict, CheckpointOrder, SinkFailure,
    OwnerUnavailable and NoAnswer (and a RecordRejected whose
    ``session_failed`` is true is one too).
    """


class SessionFenced(Reopen):
    """409 session_fenced: a newer session of the writer exists.

    Another process (or this one) opened the same writer since. Reopening
    fences that one in turn, so reopen only when this process is meant to
    be the writer.
    """


class SessionLost(Reopen):
    """409 session_lost: the sidecar no longer holds the session.

    It restarted, or forgot an idle session (limits.session_idle_timeout).
    """


class NoSession(Reopen):
    """409 no_session: the writer has no open session on the sidecar."""


class SeqConflict(Reopen):
    """409 seq_conflict: a write's seq is below the session's, or repeats it with another body."""


class CheckpointOrder(Reopen):
    """409 checkpoint_order: the checkpoint number is not above the last one.

    Or it repeats the last one after records were written or with another
    state. The client numbers nothing by itself here: the application
    passed a wrong ``n``, or lost track after an error.
    """


class SinkFailure(Reopen):
    """502 sink_failure: a sink failed and every branch of the checkpoint was aborted."""


class OwnerUnavailable(Reopen):
    """503 unavailable naming ``owner``: the node holding the session could not be reached.

    The call's outcome there is unknown. Reopen the session on a reachable
    node: that moves the writer there.
    """

    @property
    def owner(self) -> str:
        """The id of the node holding the session."""
        return str(self.problem.get("owner", ""))


class NoAnswer(Reopen):
    """A session call (write or checkpoint) was sent and got no answer.

    The connection broke or timed out after the request left, so its
    outcome is unknown (the sidecar may have been killed while serving
    it). status is 0 and code ``"no_answer"``. The client does not send
    such a call again: reopen, and the restored state says what counts.
    """

    def __init__(self, detail: str, cause: BaseException) -> None:
        super().__init__(0, "no_answer", detail)
        self.__cause__ = cause


class RecordRejected(TxsinkError):
    """422 record_rejected: a sink refused one record for good.

    ``record`` is its 1-based index in the write call (its NDJSON line).
    The record will never be accepted: fix or skip it. When
    ``session_failed`` is false the call changed nothing and the session
    goes on (write the batch again without that record). When it is true
    (a checkpoint call, or records of the call had reached another sink)
    the session's open branches were aborted: handle it like
    :class:`Reopen` and replay without the record. The API has no field for
    this; the client reads it from the kind of call and the detail, which
    says "the session failed" in that case (twopc/reject.go).
    """

    def __init__(self, status: int, code: str, detail: str = "", title: str = "",
                 problem: Optional[Dict[str, Any]] = None, session_failed: bool = False) -> None:
        super().__init__(status, code, detail, title, problem)
        self.session_failed = session_failed

    @property
    def record(self) -> int:
        """The 1-based index of the refused record in the call (0 if the answer named none)."""
        r = self.problem.get("record", 0)
        return r if isinstance(r, int) else 0

    line = record  # the same number: one record a line


class DataLoss(TxsinkError):
    """A checkpoint was decided to commit but a sink had already aborted it.

    502 data_loss on a checkpoint or commit (``result`` holds what the call
    would have returned, with the lost branches marked), or a session open
    that found lost checkpoints (status 200, ``session`` holds the opened
    session; its ``data_loss`` lists them). The records of those
    checkpoints are not in the sink: stop and let an operator decide.
    """

    def __init__(self, status: int, code: str, detail: str = "", title: str = "",
                 problem: Optional[Dict[str, Any]] = None, session: Any = None) -> None:
        super().__init__(status, code, detail, title, problem)
        self.session = session

    @property
    def result(self) -> Optional[Dict[str, Any]]:
        """The checkpoint or commit result of a 502 data_loss answer."""
        r = self.problem.get("result")
        return r if isinstance(r, dict) else None


class Backpressure(TxsinkError):
    """429 backpressure, raised only after the client's retries ran out."""


class Unavailable(TxsinkError):
    """503 unavailable (no journal leader, not ready), raised only after retries ran out."""


class Unreachable(TxsinkError):
    """The sidecar could not be connected to for the whole retry period.

    The request never left, so nothing changed. status is 0 and code
    ``"unreachable"``.
    """

    def __init__(self, detail: str, cause: Optional[BaseException]) -> None:
        super().__init__(0, "unreachable", detail)
        self.__cause__ = cause


class BadRequest(TxsinkError):
    """400: invalid_request, invalid_name, malformed_body or unknown_sink. Nothing changed."""

    @property
    def record(self) -> int:
        """The 1-based index of the invalid record of a write call (0 if none)."""
        r = self.problem.get("record", 0)
        return r if isinstance(r, int) else 0


class Unauthorized(TxsinkError):
    """401 unauthorized: the call lacks the sidecar's bearer token (or has another one)."""


class NotFound(TxsinkError):
    """404: job_not_found, node_not_found or not_found."""


class Conflict(TxsinkError):
    """409 mode_conflict, writer_in_doubt or membership_conflict."""


class TooLarge(TxsinkError):
    """413 body_too_large: the body, the records of one call or the state is over its limit."""


_BY_CODE: Dict[str, Type[TxsinkError]] = {
    "session_fenced": SessionFenced,
    "session_lost": SessionLost,
    "no_session": NoSession,
    "seq_conflict": SeqConflict,
    "checkpoint_order": CheckpointOrder,
    "sink_failure": SinkFailure,
    "record_rejected": RecordRejected,
    "data_loss": DataLoss,
    "backpressure": Backpressure,
    "unavailable": Unavailable,
    "invalid_request": BadRequest,
    "invalid_name": BadRequest,
    "malformed_body": BadRequest,
    "unknown_sink": BadRequest,
    "unauthorized": Unauthorized,
    "job_not_found": NotFound,
    "node_not_found": NotFound,
    "not_found": NotFound,
    "mode_conflict": Conflict,
    "writer_in_doubt": Conflict,
    "membership_conflict": Conflict,
    "body_too_large": TooLarge,
}


def error_from_problem(status: int, problem: Dict[str, Any], checkpoint_call: bool = False) -> TxsinkError:
    """Returns the exception for an error answer (a decoded problem, or {} for a bare one).

    checkpoint_call says whether the call was a checkpoint: a 422 there
    always failed the session.
    """
    code = str(problem.get("code") or "")
    detail = str(problem.get("detail") or "")
    title = str(problem.get("title") or "")
    if not code:
        code = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 413: "body_too_large",
                429: "backpressure", 503: "unavailable"}.get(status, f"http_{status}")
    if code == "unavailable" and problem.get("owner"):
        return OwnerUnavailable(status, code, detail, title, problem)
    if code == "record_rejected":
        failed = checkpoint_call or "session failed" in detail
        return RecordRejected(status, code, detail, title, problem, session_failed=failed)
    cls = _BY_CODE.get(code, TxsinkError)
    return cls(status, code, detail, title, problem)
