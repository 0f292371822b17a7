"""The client against a real `sidecar dev` (Kafka broker process + MariaDB).

Every result is checked with an independent reader: kcat with
isolation.level=read_committed for Kafka, the mariadb CLI for the db sink.
"""

from __future__ import annotations

import json
import os
import unittest
import uuid
from typing import List, Optional

import harness
import txsink


def run_id() -> str:
    return "py" + uuid.uuid4().hex[:10]


class SidecarTest(unittest.TestCase):
    """Calls over the Unix socket and TCP against one sidecar with a token."""

    dev: harness.DevSidecar

    @classmethod
    def setUpClass(cls):
        harness.need_tool("kcat", "apt-get install kcat")
        harness.need_tool("mariadb", "apt-get install mariadb-client")
        cls.dev = harness.DevSidecar(token="tok-" + uuid.uuid4().hex)
        try:
            cls.dev.start()
        except BaseException:
            cls.dev.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.dev.stop()

    def client(self, over: str = "unix", token: Optional[str] = "default") -> txsink.Client:
        tok = self.dev.token if token == "default" else token
        if over == "unix":
            c = txsink.Client(socket=self.dev.socket, token=tok, timeout=60, retry_for=10)
        else:
            c = txsink.Client(self.dev.url, token=tok, timeout=60, retry_for=10)
        self.addCleanup(c.close)
        return c

    def test_write_and_checkpoint_over_unix_and_tcp(self):
        for over in ("unix", "tcp"):
            with self.subTest(over=over):
                rid = run_id()
                job = self.client(over).job(rid, commit="auto", sinks=["events", "db"])
                with job.writer("0") as w:
                    self.assertEqual((w.restored, w.state, w.session.status), (0, None, "none"))
                    res = w.write([{"sink": "events", "topic": rid, "key": "a", "value": {"n": 1}},
                                   {"sink": "events", "topic": rid, "key": "b", "value": b"\x00bin"},
                                   {"sink": "db", "stmt": "insert_event", "args": [rid + "-a", "v"]}])
                    self.assertEqual((res.accepted, res.seq, res.duplicate), (3, 1, False))
                    # Not committed yet: a read_committed reader sees nothing.
                    self.assertEqual(harness.mariadb_query(f"SELECT k FROM events WHERE k = '{rid}-a'"), [])
                    ck = w.checkpoint(state=b"offset=3")
                    self.assertEqual((ck.checkpoint, ck.status, w.last_checkpoint), (1, "committed", 1))
                self.assertEqual(sorted(harness.kcat_keys(self.dev.kafka_addr, rid)), ["a", "b"])
                self.assertEqual(harness.mariadb_query(f"SELECT k, v FROM events WHERE k LIKE '{rid}-%'"),
                                 [[rid + "-a", "v"]])
                with job.writer("0") as w:
                    self.assertEqual((w.restored, w.state, w.session.status), (1, b"offset=3", "committed"))

    def test_token_is_required(self):
        for over in ("unix", "tcp"):
            with self.subTest(over=over):
                for tok in (None, "wrong"):
                    with self.assertRaises(txsink.Unauthorized) as cm:
                        self.client(over, token=tok).job(run_id())
                    self.assertEqual((cm.exception.status, cm.exception.code), (401, "unauthorized"))

    def test_fencing(self):
        rid = run_id()
        job = self.client().job(rid, sinks=["db"])
        old = job.writer("w")
        with old:
            old.write([{"stmt": "insert_event", "args": [rid + "-old", "v"]}])
            # A second process takes the writer over.
            new = self.client("tcp").job(rid, commit=None).writer("w")
            with new:
                self.assertGreater(new.epoch, old.epoch)
                with self.assertRaises(txsink.SessionFenced) as cm:
                    old.write([{"stmt": "insert_event", "args": [rid + "-old2", "v"]}])
                self.assertIsInstance(cm.exception, txsink.Reopen)
                self.assertEqual((cm.exception.status, cm.exception.code), (409, "session_fenced"))
                with self.assertRaises(txsink.SessionFenced):
                    old.checkpoint(1, state=b"old")
                new.write([{"stmt": "insert_event", "args": [rid + "-new", "v"]}])
                self.assertEqual(new.checkpoint(1, state=b"new").status, "committed")
        # The fenced session's write was aborted by the new open.
        self.assertEqual(harness.mariadb_query(f"SELECT k FROM events WHERE k LIKE '{rid}-%'"), [[rid + "-new"]])

    def test_record_rejected(self):
        rid = run_id()
        job = self.client().job(rid, sinks=["db"])
        with job.writer("0") as w:
            ok = {"stmt": "insert_event", "args": [rid + "-1", "v"]}
            too_long = {"stmt": "insert_event", "args": ["x" * 300, "v"]}  # k is VARCHAR(255)
            with self.assertRaises(txsink.RecordRejected) as cm:
                w.write([ok, too_long])
            e = cm.exception
            self.assertEqual((e.status, e.code, e.record, e.session_failed), (422, "record_rejected", 2, False), e)
            # Nothing of the call was written and the session goes on.
            w.write([ok])
            w.checkpoint(state=b"1")
        self.assertEqual(harness.mariadb_query(f"SELECT k FROM events WHERE k LIKE '{rid}-%'"), [[rid + "-1"]])

    def test_bad_input_changes_nothing(self):
        rid = run_id()
        c = self.client()
        with self.assertRaises(txsink.BadRequest) as cm:
            c.job("bad name!")
        self.assertEqual(cm.exception.code, "invalid_name")
        with self.assertRaises(txsink.BadRequest) as cm:
            c.job(rid, sinks=["nosuch"])
        self.assertEqual(cm.exception.code, "unknown_sink")
        with self.assertRaises(txsink.NotFound):
            c.get_job(rid)  # the refused PUT created nothing
        job = c.job(rid, sinks=["events", "db"])
        with job.writer("0") as w:
            good = {"sink": "events", "topic": rid, "key": "a", "value": 1}
            with self.assertRaises(txsink.BadRequest) as cm:
                w.write([good, {"sink": "db", "stmt": "nosuch", "args": []}])
            self.assertEqual((cm.exception.code, cm.exception.record), ("invalid_request", 2), cm.exception)
            with self.assertRaises(txsink.BadRequest) as cm:
                w.write([good, {"sink": "events", "topic": rid, "bogus": 1}])
            self.assertEqual(cm.exception.code, "malformed_body")
            self.assertIn("line 2", cm.exception.detail)
            with self.assertRaises(txsink.BadRequest) as cm:
                w.write_ndjson(b'{"sink":"events","topic":"%s","key":"a","value":1}\n{bad\n' % rid.encode())
            self.assertEqual(cm.exception.code, "malformed_body")
            with self.assertRaises(TypeError):
                w.write([good, "not a record"])  # type: ignore[list-item]
            self.assertEqual(w.seq, 0, "no write succeeded")
            w.write([{"sink": "events", "topic": rid, "key": "good", "value": 1}])
            self.assertEqual(w.checkpoint(state=b"s").status, "committed")
            with self.assertRaises(txsink.CheckpointOrder):
                w.checkpoint(1, state=b"other")
        self.assertEqual(harness.kcat_keys(self.dev.kafka_addr, rid), ["good"])

    def test_at_least_once_job(self):
        rid = run_id()
        c = self.client()
        job = c.job(rid, sinks=["events", "db"], guarantee="at_least_once")
        self.assertEqual(job.info()["guarantee"], "at_least_once")
        with job.writer("0") as w:
            w.write([{"sink": "events", "topic": rid, "key": "a", "value": 1},
                     {"sink": "db", "stmt": "insert_event", "args": [rid + "-a", "v"]}])
            ck = w.checkpoint(state=b"offset=1")
            self.assertEqual((ck.checkpoint, ck.status), (1, "committed"))
        # The checkpoint returned committed: both sinks have the records.
        self.assertEqual(harness.kcat_keys(self.dev.kafka_addr, rid), ["a"])
        self.assertEqual(harness.mariadb_query(f"SELECT k, v FROM events WHERE k LIKE '{rid}-%'"), [[rid + "-a", "v"]])
        # Reopening (a new client, as after a restart of the app) restores the checkpoint and its state.
        with self.client("tcp").job(rid, commit=None).writer("0") as w:
            self.assertEqual((w.restored, w.state, w.session.status), (1, b"offset=1", "committed"))

    def test_bad_guarantee_is_a_bad_request(self):
        rid = run_id()
        c = self.client()
        with self.assertRaises(txsink.BadRequest) as cm:
            c.job(rid, guarantee="twice")
        self.assertEqual(cm.exception.status, 400)
        self.assertIn("guarantee", cm.exception.detail)
        with self.assertRaises(txsink.NotFound):
            c.get_job(rid)  # the refused PUT created nothing

    def test_repeat_of_the_last_checkpoint_returns_its_result(self):
        rid = run_id()
        with self.client().job(rid, sinks=["events"]).writer("0") as w:
            w.write([{"topic": rid, "key": "k", "value": "v"}])
            first = w.checkpoint(1, state=b"s")
            again = w.checkpoint(1, state=b"s")
            self.assertEqual((first.status, again.status), ("committed", "committed"))
        self.assertEqual(harness.kcat_keys(self.dev.kafka_addr, rid), ["k"])

    # A checkpoint's offsets become the consumer group's committed offsets
    # exactly when the output commits. They are read back by an independent
    # reader (harness.group_offsets: internal/cmd/groupoffsets, require_stable).

    def test_checkpoint_offsets_commit_with_the_output(self):
        rid = run_id()
        group = "g-" + rid
        offsets = lambda n: {"sink": "events", "group": group, "topics": {rid: {0: n}}}  # noqa: E731
        job = self.client("tcp").job(rid, commit="auto", sinks=["events", "db"])
        with job.writer("0") as w:
            w.write([{"sink": "events", "topic": rid, "key": "a", "value": 1}])
            # Offsets for a sink that cannot take them, or no sink of the job: 400, and nothing changes.
            for sink, code in (("db", "invalid_request"), ("nosuch", "unknown_sink")):
                with self.assertRaises(txsink.BadRequest) as cm:
                    w.checkpoint(1, offsets={**offsets(1), "sink": sink})
                self.assertEqual(cm.exception.code, code, cm.exception)
            ck = w.checkpoint(1, offsets=offsets(1))
            self.assertEqual((ck.checkpoint, ck.status), (1, "committed"))
            self.assertEqual(harness.group_offsets(self.dev.kafka_addr, group), {rid: {"0": 1}})
            w.write([{"sink": "events", "topic": rid, "key": "b", "value": 2}])
            w.checkpoint(offsets=offsets(2), state=b"both")  # offsets and state together
            self.assertEqual(harness.group_offsets(self.dev.kafka_addr, group), {rid: {"0": 2}})
            w.write([{"sink": "events", "topic": rid, "key": "lost", "value": 3}])
        # Reopening aborts what was written since checkpoint 2: no offsets moved, no record.
        with job.writer("0") as w:
            self.assertEqual((w.restored, w.state), (2, b"both"))
        self.assertEqual(harness.group_offsets(self.dev.kafka_addr, group), {rid: {"0": 2}})
        self.assertEqual(sorted(harness.kcat_keys(self.dev.kafka_addr, rid)), ["a", "b"])

    def test_external_mode_offsets_move_on_commit_not_on_abort(self):
        rid = run_id()
        group = "g-" + rid
        c = self.client()
        job = c.job(rid, commit="external", sinks=["events"])
        with job.writer("0") as w:
            w.write([{"sink": "events", "topic": rid, "key": "a", "value": 1}])
            self.assertEqual(w.checkpoint(1, offsets={"sink": "events", "group": group, "topics": {rid: {0: 1}}}).status,
                             "prepared")
            job.abort(1)
            self.assertEqual(harness.group_offsets(self.dev.kafka_addr, group), {})
        with job.writer("0") as w:
            w.write([{"sink": "events", "topic": rid, "key": "b", "value": 2}])
            # An aborted number is not reused: the next checkpoint is 2.
            w.checkpoint(2, offsets={"sink": "events", "group": group, "topics": {rid: {0: 7}}})
            job.commit(2)
        self.assertEqual(harness.group_offsets(self.dev.kafka_addr, group), {rid: {"0": 7}})
        self.assertEqual(harness.kcat_keys(self.dev.kafka_addr, rid), ["b"])


class ReadmeTest(unittest.TestCase):
    """The example on the first screen of clients/python/README.md runs as printed and does what it says."""

    def test_readme_example(self):
        harness.need_tool("kcat", "apt-get install kcat")
        with open(os.path.join(os.path.dirname(harness.HERE), "README.md")) as f:
            readme = f.read()
        start = readme.index("```python\n") + len("```python\n")
        code = readme[start:readme.index("```", start)]
        self.assertIn('"http://127.0.0.1:8470"', code)
        self.assertLessEqual(len(code.strip().splitlines()), 12, "the README's first example stays short")
        dev = harness.DevSidecar()
        self.addCleanup(dev.stop)
        dev.start()
        code = code.replace("http://127.0.0.1:8470", dev.url)
        for run in range(2):  # a second run restores checkpoint 10 (state 100) and writes nothing
            exec(compile(code, "README.md", "exec"), {})
        keys = harness.kcat_keys(dev.kafka_addr, "events")
        self.assertEqual(harness.counts(keys), {str(i): 1 for i in range(1, 101)})
        with txsink.Client(dev.url).job("demo", commit=None).writer("0") as w:
            self.assertEqual((w.restored, w.state), (10, b"100"))


class CrashTest(unittest.TestCase):
    """The crash contract: kill -9 the sidecar between a write and its checkpoint,
    restart it on the same data dir, reopen, resume from the restored state and
    finish. Every record must be in Kafka and MariaDB exactly once."""

    def setUp(self):
        harness.need_tool("kcat", "apt-get install kcat")
        harness.need_tool("mariadb", "apt-get install mariadb-client")
        self.dev = harness.DevSidecar()
        self.addCleanup(self.dev.stop)
        self.dev.start()

    def test_kill9_between_write_and_checkpoint(self):
        for over in ("unix", "tcp"):
            with self.subTest(over=over):
                self.crash_and_resume(over)

    def crash_and_resume(self, over: str):
        rid = run_id()
        total, batch, crash_at = 300, 50, 150  # crash after writing 151-200, before checkpoint 4
        addr = "unix://" + self.dev.socket if over == "unix" else self.dev.url
        client = txsink.Client(addr, timeout=60, retry_for=30)
        self.addCleanup(client.close)
        job = client.job(rid, commit="auto", sinks=["events", "db"])
        crashed = False
        sessions: List[txsink.Session] = []
        reopens: List[txsink.Reopen] = []
        for _ in range(5):  # bounded: one crash needs two sessions
            try:
                with job.writer("0") as w:
                    sessions.append(w.session)
                    pos = int(w.state or b"0")
                    while pos < total:
                        end = min(pos + batch, total)
                        recs = []
                        for i in range(pos + 1, end + 1):
                            recs.append({"sink": "events", "topic": rid, "key": str(i), "value": {"i": i}})
                            recs.append({"sink": "db", "stmt": "insert_event", "args": [f"{rid}-{i}", str(i)]})
                        w.write(recs)
                        if pos == crash_at and not crashed:
                            crashed = True
                            self.dev.kill9()
                            self.dev.start()  # same data dir and ports; its broker kept running
                        w.checkpoint(state=str(end).encode())
                        pos = end
                break
            except txsink.Reopen as e:
                reopens.append(e)
        else:
            self.fail(f"did not finish in 5 sessions; reopens: {reopens}\n{self.dev.log_tail()}")

        self.assertTrue(crashed)
        self.assertEqual(len(sessions), 2, f"sessions {sessions}, reopens {reopens}")
        self.assertEqual(len(reopens), 1, reopens)
        # The checkpoint after the kill either reached the restarted sidecar,
        # which no longer knew the session (its kept-alive connection failed
        # while sending, so the client sent it again), or was sent on that
        # connection and got no answer: both say reopen.
        self.assertIsInstance(reopens[0], (txsink.SessionLost, txsink.NoAnswer), reopens[0])
        restored = sessions[1]
        self.assertEqual((restored.checkpoint, restored.state, restored.status), (3, b"150", "committed"))
        self.assertGreater(restored.epoch, sessions[0].epoch)

        want = {str(i): 1 for i in range(1, total + 1)}
        keys = harness.kcat_keys(self.dev.kafka_addr, rid)
        self.assertEqual(harness.counts(keys), want, "Kafka (kcat, read_committed): every record exactly once")
        rows = harness.mariadb_query(f"SELECT k, COUNT(*) FROM events WHERE k LIKE '{rid}-%' GROUP BY k")
        got = {k[len(rid) + 1:]: int(n) for k, n in rows}
        self.assertEqual(got, want, "MariaDB (mariadb CLI): every record exactly once")


if __name__ == "__main__":
    unittest.main()
