"""Client behaviour that a real sidecar cannot be made to show on demand.

Retries on 429/503 and a call that gets no answer are checked against a tiny
scripted HTTP server; everything else is tested against a real sidecar
(test_sidecar.py). Bad input is checked here too: it must fail before
anything is sent.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import unittest
from typing import Any, Dict, List, Optional, Tuple
from unittest import mock

import harness  # noqa: F401  (puts clients/python on sys.path)
import txsink

# One scripted answer: (status, problem or body dict, headers); None: close
# the connection without answering.
Answer = Optional[Tuple[int, Dict[str, Any], Dict[str, str]]]


class Stub:
    """A local HTTP server answering a script, recording every request it got."""

    def __init__(self, script: List[Answer]) -> None:
        self.script = list(script)
        self.requests: List[Dict[str, Any]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def handle_one(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                stub.requests.append({"method": self.command, "path": self.path, "body": body,
                                      "auth": self.headers.get("Authorization")})
                ans = stub.script.pop(0) if stub.script else (500, {"code": "internal"}, {})
                if ans is None:
                    self.close_connection = True
                    return
                status, obj, headers = ans
                raw = json.dumps(obj).encode()
                self.send_response(status)
                ctype = "application/json" if status < 300 else "application/problem+json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


SESSION = (200, {"epoch": 7, "checkpoint": 2, "state": "cG9zPTQy", "status": "committed", "data_loss": []}, {})


def problem(status: int, code: str, **extra: Any) -> Tuple[int, Dict[str, Any], Dict[str, str]]:
    headers = {"Retry-After": "0"} if status in (429, 503) else {}
    return status, {"type": "urn:txsink:problem:" + code, "title": code, "status": status, "code": code,
                    "detail": "scripted", **extra}, headers


class RetryTest(unittest.TestCase):
    def run_script(self, script: List[Answer], retry_for: float = 5.0):
        stub = Stub(script)
        self.addCleanup(stub.close)
        c = txsink.Client(stub.url, token="t0k", timeout=5, retry_for=retry_for)
        self.addCleanup(c.close)
        w = c.job("j", commit=None).writer("w")
        w.open()
        return stub, w

    def test_write_retries_429_and_503_with_the_same_seq_and_body(self):
        stub, w = self.run_script([SESSION, problem(429, "backpressure"), problem(503, "unavailable"),
                                   (200, {"accepted": 1, "seq": 1}, {})])
        self.assertEqual(w.restored, 2)
        self.assertEqual(w.state, b"pos=42")
        res = w.write([{"sink": "events", "key": "k", "value": "v"}])
        self.assertEqual(res, txsink.WriteResult(accepted=1, seq=1, duplicate=False))
        writes = stub.requests[1:]
        self.assertEqual(len(writes), 3, [r["path"] for r in writes])
        for r in writes:
            self.assertEqual(r["path"], "/v1/jobs/j/writers/w/records?epoch=7&seq=1")
            self.assertEqual(r["body"], writes[0]["body"])
            self.assertEqual(r["auth"], "Bearer t0k")

    def test_backpressure_surfaces_after_retries_run_out(self):
        stub, w = self.run_script([SESSION] + [problem(429, "backpressure")] * 50, retry_for=0.5)
        with self.assertRaises(txsink.Backpressure) as cm:
            w.checkpoint(3, state=b"x")
        self.assertEqual((cm.exception.status, cm.exception.code), (429, "backpressure"))
        self.assertGreaterEqual(len(stub.requests), 3, "retried at least twice within 0.5 s")
        self.assertEqual(w.last_checkpoint, 2, "a checkpoint that did not complete does not count")

    def test_unavailable_naming_the_owner_is_not_retried(self):
        stub, w = self.run_script([SESSION, problem(503, "unavailable", owner="node2")])
        with self.assertRaises(txsink.OwnerUnavailable) as cm:
            w.write([{"value": 1}])
        self.assertIsInstance(cm.exception, txsink.Reopen)
        self.assertEqual(cm.exception.owner, "node2")
        self.assertEqual(len(stub.requests), 2)

    def test_send_once_call_is_not_repeated_on_503(self):
        # A 503 may be a timeout with the outcome unknown: a commit, abort or
        # delete reports it rather than sending itself again.
        stub, w = self.run_script([SESSION, problem(503, "unavailable"), (200, {"deleted": True}, {})])
        with self.assertRaises(txsink.Unavailable):
            w.job.delete_writer("w")
        self.assertEqual(len(stub.requests), 2, "the delete was sent once")

    def test_session_call_without_an_answer_is_no_answer_and_not_resent(self):
        stub, w = self.run_script([SESSION, None, (200, {"accepted": 1}, {})])
        with self.assertRaises(txsink.NoAnswer) as cm:
            w.write([{"value": 1}])
        self.assertIsInstance(cm.exception, txsink.Reopen)
        self.assertEqual((cm.exception.status, cm.exception.code), (0, "no_answer"))
        self.assertEqual(len(stub.requests), 2, "the write was sent once")

    def test_open_without_an_answer_is_sent_again(self):
        stub = Stub([None, SESSION])
        self.addCleanup(stub.close)
        c = txsink.Client(stub.url, timeout=5, retry_for=5)
        self.addCleanup(c.close)
        s = c.job("j", commit=None).writer("w").open()
        self.assertEqual(s.epoch, 7)
        self.assertEqual(len(stub.requests), 2)

    def test_seq_is_reused_after_a_failed_write(self):
        stub, w = self.run_script([SESSION, problem(400, "malformed_body"), (200, {"accepted": 1, "seq": 1}, {}),
                                   (200, {"accepted": 1, "seq": 2}, {})])
        with self.assertRaises(txsink.BadRequest):
            w.write([{"value": 1}])
        w.write([{"value": 1}])
        w.write([{"value": 2}])
        self.assertEqual([r["path"].rsplit("seq=", 1)[1] for r in stub.requests[1:]], ["1", "1", "2"])

    def test_202_committing_is_a_result(self):
        stub, w = self.run_script([SESSION, (202, {"checkpoint": 3, "status": "committing", "branches": []}, {})])
        res = w.checkpoint(state=b"p")
        self.assertTrue(res.committing)
        self.assertEqual((res.checkpoint, res.http_status, w.last_checkpoint), (3, 202, 3))
        self.assertEqual(json.loads(stub.requests[1]["body"]), {"state": "cA=="})

    def test_checkpoint_with_offsets_sends_them_and_no_state(self):
        stub, w = self.run_script([SESSION, (200, {"checkpoint": 3, "status": "committed", "branches": []}, {})])
        w.checkpoint(offsets={"sink": "events", "group": "g", "topics": {"clicks": {0: 500, "1": 480}}})
        self.assertEqual(json.loads(stub.requests[1]["body"]),
                         {"offsets": {"sink": "events", "group": "g", "topics": {"clicks": {"0": 500, "1": 480}}}})

    def test_data_loss_on_open_carries_the_session(self):
        stub = Stub([(200, {"epoch": 3, "checkpoint": 2, "state": None, "status": "data_loss", "data_loss": [2]},
                      {})])
        self.addCleanup(stub.close)
        c = txsink.Client(stub.url, timeout=5, retry_for=0)
        self.addCleanup(c.close)
        with self.assertRaises(txsink.DataLoss) as cm:
            c.job("j", commit=None).writer("w").open()
        self.assertEqual(cm.exception.session.data_loss, [2])

    def test_problem_codes_map_to_classes(self):
        cases = [
            (409, "session_fenced", txsink.SessionFenced, True),
            (409, "session_lost", txsink.SessionLost, True),
            (409, "no_session", txsink.NoSession, True),
            (409, "seq_conflict", txsink.SeqConflict, True),
            (409, "checkpoint_order", txsink.CheckpointOrder, True),
            (502, "sink_failure", txsink.SinkFailure, True),
            (502, "data_loss", txsink.DataLoss, False),
            (422, "record_rejected", txsink.RecordRejected, False),
            (409, "mode_conflict", txsink.Conflict, False),
            (401, "unauthorized", txsink.Unauthorized, False),
            (413, "body_too_large", txsink.TooLarge, False),
        ]
        for status, code, cls, reopen in cases:
            with self.subTest(code=code):
                stub, w = self.run_script([SESSION, problem(status, code, record=2)])
                with self.assertRaises(cls) as cm:
                    w.write([{"value": 1}])
                self.assertEqual((cm.exception.status, cm.exception.code), (status, code))
                self.assertEqual(isinstance(cm.exception, txsink.Reopen), reopen)


class JobSpecTest(unittest.TestCase):
    def test_guarantee_goes_in_the_put_body_only_when_given(self):
        stub = Stub([(200, {"name": "j", "commit": "auto", "guarantee": "at_least_once"}, {}),
                     (200, {"name": "j", "commit": "auto"}, {})])
        self.addCleanup(stub.close)
        c = txsink.Client(stub.url, timeout=5, retry_for=0)
        self.addCleanup(c.close)
        c.job("j", guarantee="at_least_once")
        c.job("j", sinks=["events"])
        bodies = [json.loads(r["body"]) for r in stub.requests]
        self.assertEqual([r["method"] + " " + r["path"] for r in stub.requests], ["PUT /v1/jobs/j"] * 2)
        self.assertEqual(bodies, [{"commit": "auto", "guarantee": "at_least_once"},
                                  {"commit": "auto", "sinks": ["events"]}])

    def test_bad_guarantee_arguments_raise_before_sending(self):
        c = txsink.Client("http://127.0.0.1:9", retry_for=0)
        with self.assertRaisesRegex(TypeError, "guarantee must be a str"):
            c.job("j", guarantee=1)  # type: ignore[arg-type]
        with self.assertRaisesRegex(ValueError, "guarantee needs commit"):
            c.job("j", commit=None, guarantee="none")


class BadInputTest(unittest.TestCase):
    """Bad input raises before anything is sent (no server here: a call would fail differently)."""

    def setUp(self):
        self.c = txsink.Client("http://127.0.0.1:9", retry_for=0)
        self.w = self.c.job("j", commit=None).writer("w")
        # An open writer without a server: the session is set as an open would.
        self.w._session = txsink.Session(epoch=1, checkpoint=0, state=None, status="none")

    def test_records(self):
        cases = [
            ("a dict, not a list", {"value": 1}, TypeError, "got a single dict"),
            ("a string", "x", TypeError, "got a single str"),
            ("no records", [], ValueError, "no records"),
            ("not a dict", [{"value": 1}, 3], TypeError, "record 2: must be a dict"),
            ("not JSON", [{"value": object()}], TypeError, "record 1: not JSON-encodable"),
            ("NaN", [{"value": float("nan")}], ValueError, "record 1: not JSON-encodable"),
            ("bytes and b64", [{"value": b"x", "value_b64": "eA=="}], ValueError, "both value"),
        ]
        for name, recs, exc, msg in cases:
            with self.subTest(name):
                with self.assertRaisesRegex(exc, msg):
                    self.w.write(recs)
        self.assertEqual(self.w.seq, 0)

    def test_checkpoint_numbers_and_state(self):
        for n in (0, -1, 2 ** 53, 1.5, True, "3"):
            with self.subTest(n=n):
                with self.assertRaisesRegex(ValueError, "checkpoint number"):
                    self.w.checkpoint(n)
        with self.assertRaisesRegex(TypeError, "state must be bytes or str"):
            self.w.checkpoint(1, state=42)  # type: ignore[arg-type]
        with self.assertRaisesRegex(ValueError, "wait must be"):
            self.w.checkpoint(1, wait="soon")

    def test_offsets(self):
        good = {"sink": "events", "group": "g", "topics": {"t": {0: 1}}}
        cases = [
            ("not a dict", [("t", 0, 1)], TypeError, "offsets must be a dict"),
            ("unknown field", {**good, "group_id": "g"}, ValueError, r"unknown field\(s\) \['group_id'\]"),
            ("no sink", {"group": "g", "topics": {"t": {0: 1}}}, ValueError, "offsets.sink must be a non-empty string"),
            ("empty group", {**good, "group": ""}, ValueError, "offsets.group must be a non-empty string"),
            ("no topics", {**good, "topics": {}}, ValueError, "offsets.topics must be a non-empty dict"),
            ("no partitions", {**good, "topics": {"t": {}}}, ValueError, r"offsets.topics\['t'\] must be a non-empty dict"),
            ("bad partition", {**good, "topics": {"t": {"x": 1}}}, ValueError, "partition 'x' is not a partition number"),
            ("negative partition", {**good, "topics": {"t": {-1: 1}}}, ValueError, "partition -1 is not"),
            ("negative offset", {**good, "topics": {"t": {0: -5}}}, ValueError, "offset must be an int >= 0"),
            ("float offset", {**good, "topics": {"t": {0: 1.5}}}, ValueError, "offset must be an int >= 0"),
            ("bool offset", {**good, "topics": {"t": {0: True}}}, ValueError, "offset must be an int >= 0"),
            ("bad generation", {**good, "generation": "1"}, ValueError, "offsets.generation must be an int"),
            ("bad member_id", {**good, "member_id": 3}, ValueError, "offsets.member_id must be a string"),
        ]
        for name, offs, exc, msg in cases:
            with self.subTest(name):
                with self.assertRaisesRegex(exc, msg):
                    self.w.checkpoint(1, offsets=offs)  # type: ignore[arg-type]
        self.assertEqual(self.w.last_checkpoint, 0)
        self.assertEqual(txsink.encode_offsets({**good, "generation": 4, "member_id": "m", "group_instance_id": ""}),
                         {"sink": "events", "group": "g", "topics": {"t": {"0": 1}}, "generation": 4, "member_id": "m"})

    def test_bytes_become_b64(self):
        body = txsink.encode_records([{"sink": "events", "key": b"\x00k", "value": b"\xff"}, {"value": {"n": 1}}])
        lines = [json.loads(x) for x in body.splitlines()]
        self.assertEqual(lines, [{"sink": "events", "key_b64": "AGs=", "value_b64": "/w=="}, {"value": {"n": 1}}])

    def test_addresses(self):
        for addr, want in [("unix:///tmp/x.sock", "unix:///tmp/x.sock"), ("/tmp/y.sock", "unix:///tmp/y.sock"),
                           ("http://127.0.0.1:8470", "http://127.0.0.1:8470"), ("https://h:1", "https://h:1")]:
            with self.subTest(addr=addr):
                self.assertEqual(txsink.Client(addr).endpoint, want)
        for bad in ("ftp://h", "http://h:1/v1", "http://"):
            with self.subTest(bad=bad):
                with self.assertRaisesRegex(ValueError, "address"):
                    txsink.Client(bad)
        with self.assertRaises(ValueError):
            txsink.Client("http://h:1", socket="/tmp/s")
        with self.assertRaisesRegex(ValueError, "name"):
            self.c.job("", commit=None)
        with self.assertRaisesRegex(ValueError, "commit must be"):
            self.c.job("j", commit="sometimes")

    def test_token_and_addr_from_env(self):
        with mock.patch.dict(os.environ, {"TXSINK_TOKEN": " s3cret\n", "TXSINK_ADDR": "unix:///tmp/z.sock"}):
            c = txsink.Client()
            self.assertEqual((c.token, c.endpoint), ("s3cret", "unix:///tmp/z.sock"))
            self.assertEqual(txsink.Client(token="arg").token, "arg")

    def test_unreachable(self):
        c = txsink.Client("unix:///nonexistent/txsink.sock", retry_for=0.3)
        with self.assertRaises(txsink.Unreachable) as cm:
            c.job("j")
        self.assertEqual((cm.exception.status, cm.exception.code), (0, "unreachable"))
        self.assertNotIsInstance(cm.exception, txsink.Reopen)


if __name__ == "__main__":
    unittest.main()
