"""txsink: exactly-once output into Kafka and MySQL/MariaDB through the txsink sidecar.

Standard library only. Quick start (api/openapi.yaml is the contract)::

    import txsink

    client = txsink.Client("unix:///path/to/data/sidecar.sock")   # or "http://127.0.0.1:8470"
    job = client.job("demo", commit="auto")
    while True:
        try:
            with job.writer("0") as w:          # opens a session, restores the last checkpoint
                pos = int(w.state or b"0")      # resume the input here
                ...                             # w.write([...]); w.checkpoint(state=b"...")
            break
        except txsink.Reopen:                   # session over: reopen and resume from the state
            continue
"""

from .client import (
    DEFAULT_ADDR,
    CheckpointResult,
    Client,
    Job,
    Session,
    WriteResult,
    Writer,
    encode_offsets,
    encode_records,
)
from . import errors as _errors
from .errors import *  # noqa: F401,F403  (the exception family; errors.__all__ names it)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ADDR",
    "Client",
    "Job",
    "Writer",
    "Session",
    "WriteResult",
    "CheckpointResult",
    "encode_records",
    "encode_offsets",
] + [n for n in _errors.__all__ if n != "error_from_problem"]
