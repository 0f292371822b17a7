#!/usr/bin/env python3
"""Page views per app, exactly once into Kafka and MariaDB, through txsink.

What this shows: an application with no Kafka or MySQL client at all (only
Python's standard library) gets exactly-once output by talking to the txsink
sidecar over its Unix socket. It counts page views per app from a numbered
NDJSON input file and, every --every lines, writes the counts of those lines
to Kafka (topic "pageviews") and MariaDB (table pv, a non-idempotent
"views = views + ?" upsert), then completes a checkpoint whose state is its
input position. After any crash it opens a session again, gets the last
committed position back and resumes from there: the uncommitted writes of
the crashed run are aborted by the sidecar, so no view is lost or counted
twice. `--crash-after K` crashes on purpose (exit 137) after writing, before
the checkpoint; run it again and the totals come out exact.

Protocol (docs/DESIGN.md §1-§3): PUT /v1/jobs/{job}; POST …/writers/{w}/session
→ {epoch, checkpoint, state}; POST …/records?epoch=E&seq=S (NDJSON);
POST …/checkpoints/{n}?epoch=E {"state": base64(position)}.

Usage (with `make run` in another terminal, from the repository root):
    python3 examples/pageviews-python/pageviews.py [--crash-after 1200]
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import socket
import sys
import time

APPS = ("web", "ios", "android", "tv")  # distinct from examples/pageviews-go's app1…app5: both add into table pv
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RETRY_FOR = 60.0  # seconds to keep retrying while the sidecar is unreachable


def default_socket():
    return os.environ.get("TXSINK_SOCKET") or os.path.join(REPO, "data", "sidecar.sock")


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX stream socket."""

    def __init__(self, socket_path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.socket_path)
        except OSError:
            s.close()
            raise
        self.sock = s


class Problem(Exception):
    """An RFC 9457 problem answered by the sidecar."""

    def __init__(self, status, body):
        self.status = status
        self.body = body
        self.code = body.get("code", "") if isinstance(body, dict) else ""
        super().__init__(f"{status} {self.code}: {body.get('detail', '') if isinstance(body, dict) else body}")


class Reopen(Exception):
    """The session is gone or its checkpoint failed: reopen and resume from the committed state."""


# Answers after which the app reopens its session and replays from the restored state.
REOPEN = {(409, "session_fenced"), (409, "session_lost"), (409, "no_session"), (409, "seq_conflict"),
          (502, "sink_failure")}


class Sidecar:
    def __init__(self, socket_path, timeout=120.0):
        self.socket_path = socket_path
        self.timeout = timeout
        self.conn = None

    def call(self, method, path, body=None, ctype="application/json"):
        """One HTTP call → (status, parsed JSON). Connection errors (the sidecar
        restarting) are retried with a bounded backoff; every call we make is
        safe to repeat (PUT job is idempotent, records carry seq, a repeated
        checkpoint returns its result, a repeated session open just fences the
        previous one). 429 backpressure is retried after Retry-After."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        headers = {"Content-Type": ctype} if data is not None else {}
        start = time.monotonic()
        deadline = start + RETRY_FOR
        delay = 0.1
        while True:
            try:
                if self.conn is None:
                    self.conn = UnixHTTPConnection(self.socket_path, self.timeout)
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                status = resp.status
                if status == 429 and time.monotonic() < deadline:
                    wait = float(resp.getheader("Retry-After") or 1)
                    print(f"  sidecar says backpressure; retrying in {wait:g}s", flush=True)
                    time.sleep(wait)
                    continue
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = {"detail": raw.decode(errors="replace")}
                return status, parsed
            except (OSError, http.client.HTTPException) as e:
                # ConnectionRefused / FileNotFound (socket gone), reset, timeout, RemoteDisconnected …
                self.close()
                if time.monotonic() + delay > deadline:
                    sys.exit(f"pageviews: the sidecar at {self.socket_path} did not answer for "
                             f"{time.monotonic() - start:.0f}s "
                             f"({type(e).__name__}: {e}). Is `make run` running? (--socket sets the path)")
                print(f"  sidecar unreachable at {self.socket_path} ({type(e).__name__}: {e}); "
                      f"retrying in {delay:.1f}s", flush=True)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def fatal(status, body, what):
    print(f"pageviews: {what}: HTTP {status}", file=sys.stderr)
    print(json.dumps(body, indent=2), file=sys.stderr)
    sys.exit(1)


def data_loss(body, what):
    """The sidecar could not commit a checkpoint it had decided to commit (a sink
    had aborted it): its records are not in the sink. Say so loudly and stop
    (exit 3); counting on would hide it."""
    print(f"pageviews: DATA LOSS reported by the sidecar: {what}", file=sys.stderr)
    print(json.dumps(body, indent=2), file=sys.stderr)
    sys.exit(3)


def check(status, body, what, ok=(200,)):
    """Returns the body of a good answer; raises Reopen on an answer that means
    "reopen the session"; exits on anything else (3 on data loss)."""
    code = body.get("code", "") if isinstance(body, dict) else ""
    if status == 502 and code == "data_loss":
        data_loss(body, what)
    if status in ok:
        return body
    if (status, code) in REOPEN or status == 503:
        raise Reopen(f"{what}: {status} {code or 'unavailable'}")
    if status == 400 and code == "unknown_sink":
        print("pageviews: the sidecar has no such sink. `sidecar dev` has the \"db\" sink only when MariaDB/MySQL "
              "answers (its banner says so); start MariaDB and restart `make run`.", file=sys.stderr)
    fatal(status, body, what)


# ---- input ----


def app_of(n):
    """The app of event n, from a hash of n (the same on every machine and Python
    version): about 40% web, 30% android, 20% ios, 10% tv."""
    h = int.from_bytes(hashlib.sha256(b"%d" % n).digest()[:4], "big") % 10
    return "web" if h < 4 else "android" if h < 7 else "ios" if h < 9 else "tv"


def generate(path, events):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for n in range(1, events + 1):
            user = "u%d" % (int.from_bytes(hashlib.sha256(b"user%d" % n).digest()[:4], "big") % 1000 + 1)
            f.write(json.dumps({"n": n, "app": app_of(n), "user": user}, separators=(",", ":")) + "\n")
    os.replace(tmp, path)  # never leave half a file behind


def read_from(path, skip):
    """Yields (line number, app) for every line after the first `skip`; checks the numbering."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if i <= skip:
                continue
            ev = json.loads(line)
            if ev.get("n") != i:
                sys.exit(f"pageviews: {path} line {i}: n is {ev.get('n')!r}, want {i} (the input must be numbered)")
            yield i, ev["app"]


def totals(path):
    out = {a: 0 for a in APPS}
    lines = 0
    for _, app in read_from(path, 0):
        out[app] = out.get(app, 0) + 1
        lines += 1
    return out, lines


# ---- the job ----


def b64json(obj):
    return base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


class Job:
    def __init__(self, args, sc, lines):
        self.a = args
        self.lines = lines
        self.sc = sc
        self.base = f"/v1/jobs/{args.job}"
        self.wbase = f"{self.base}/writers/{args.writer}"
        self.run_start = None  # the position this run started from (for --crash-after and the summary)
        self.first_ck = None

    def put_job(self):
        st, body = self.sc.call("PUT", self.base, {"commit": "auto", "sinks": ["events", "db"]})
        check(st, body, f"PUT {self.base}")

    def open_session(self):
        """Opens a session: returns (epoch, last committed checkpoint, lines already counted)."""
        deadline = time.monotonic() + RETRY_FOR
        while True:
            st, body = self.sc.call("POST", f"{self.wbase}/session")
            if st == 503 and time.monotonic() < deadline:  # no journal leader yet (e.g. the sidecar is starting)
                time.sleep(0.5)
                continue
            if st != 200:
                fatal(st, body, f"POST {self.wbase}/session")
            # The session is open, but a restore over lost checkpoints is not
            # a clean one: the counts of those checkpoints are missing.
            if body.get("data_loss") or body.get("status") == "data_loss":
                data_loss(body, f"POST {self.wbase}/session: checkpoints {body.get('data_loss')} lost data")
            state = body["state"]
            line = json.loads(base64.b64decode(state))["line"] if state else 0
            return body["epoch"], body["checkpoint"], line

    def run(self):
        """Runs until the input is counted and committed, reopening the session whenever told to."""
        while True:
            epoch, ck, line = self.open_session()
            if line > self.lines:
                sys.exit(f"pageviews: job {self.a.job} has counted {line} lines, but {self.a.input} has only "
                         f"{self.lines}: a different input? (use another --job for it)")
            print(f"session epoch {epoch}: restored checkpoint {ck}, {line} lines already counted "
                  f"and committed; resuming at line {line + 1}", flush=True)
            if self.run_start is None:
                self.run_start, self.first_ck = line, ck + 1
            try:
                return self.count(epoch, ck, line)
            except Reopen as e:
                # Throw away what was counted since the last checkpoint: the sidecar aborted those writes.
                print(f"  {e}: reopening the session and resuming from the last committed checkpoint", flush=True)

    def count(self, epoch, ck, pos):
        seq = 0
        counts = {}
        start = pos  # lines ≤ start are committed
        for n, app in read_from(self.a.input, pos):
            counts[app] = counts.get(app, 0) + 1
            pos = n
            if pos - start >= self.a.every:
                ck, seq = self.checkpoint(epoch, ck + 1, seq + 1, counts, start, pos)
                start, counts = pos, {}
        if pos > start:
            ck, seq = self.checkpoint(epoch, ck + 1, seq + 1, counts, start, pos)
        return ck, pos

    def checkpoint(self, epoch, ck, seq, counts, start, end):
        recs = []
        for app in sorted(counts):
            c = counts[app]
            value = {"app": app, "views": c, "job": self.a.job, "checkpoint": ck, "from_line": start + 1, "to_line": end}
            recs.append({"sink": "events", "topic": "pageviews", "key": app, "value": value})
            recs.append({"sink": "db", "stmt": "upsert_pv", "args": [app, c]})
        body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs).encode()
        path = f"{self.wbase}/records?epoch={epoch}&seq={seq}"
        st, res = self.sc.call("POST", path, body, "application/x-ndjson")
        check(st, res, f"POST {path}")

        if self.a.crash_after is not None and end - self.run_start >= self.a.crash_after:
            print(f"--crash-after {self.a.crash_after}: crashing after writing lines {start + 1}-{end} "
                  f"(checkpoint {ck} not taken); run again to resume from checkpoint {ck - 1}", flush=True)
            os._exit(137)

        path = f"{self.wbase}/checkpoints/{ck}?epoch={epoch}"
        st, res = self.sc.call("POST", path, {"state": b64json({"line": end})})
        # 200 committed; 202 committing: the commit decision is durable, the sidecar finishes it.
        res = check(st, res, f"POST {path}", ok=(200, 202))
        if res.get("status") == "data_loss":
            data_loss(res, f"POST {path}")
        if res.get("status") not in ("committed", "committing"):
            fatal(st, res, f"POST {path}: status {res.get('status')!r}, want committed")
        views = ", ".join(f"{a} +{counts[a]}" for a in sorted(counts))
        print(f"checkpoint {ck}: lines {start + 1}-{end} {res['status']} ({views})", flush=True)
        return ck, seq


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", default=default_socket(),
                   help="the sidecar's Unix socket (default $TXSINK_SOCKET or <repo>/data/sidecar.sock, as `make run` makes it)")
    p.add_argument("--input", default=os.path.join(HERE, "clicks.ndjson"),
                   help="numbered NDJSON input; generated if missing (default: clicks.ndjson next to this script)")
    p.add_argument("--events", type=int, default=10000, help="lines to generate when the input is missing (default 10000)")
    p.add_argument("--every", type=int, default=500, help="lines per checkpoint (default 500)")
    p.add_argument("--crash-after", type=int, metavar="K",
                   help="exit 137 once K lines of this run are written but not yet checkpointed")
    p.add_argument("--job", default="pageviews-py", help="job name (default pageviews-py)")
    p.add_argument("--writer", default="0", help="writer name (default 0)")
    p.add_argument("--kafka", default="127.0.0.1:9092", help="broker address, only for the printed kcat command")
    a = p.parse_args()
    if a.every < 1 or a.events < 1:
        p.error("--every and --events must be positive")

    if not os.path.exists(a.input):
        generate(a.input, a.events)
        print(f"generated {a.input} ({a.events} events)")
    expected, lines = totals(a.input)

    sc = Sidecar(a.socket)
    job = Job(a, sc, lines)
    print(f"counting {a.input} ({lines} lines) as job {a.job}, writer {a.writer}, "
          f"a checkpoint every {a.every} lines, via {a.socket}", flush=True)
    job.put_job()
    last_ck, pos = job.run()
    sc.close()
    if pos == job.run_start:
        print(f"nothing left to count: checkpoint {last_ck} already covers all {pos} lines")
    else:
        print(f"done: lines {job.run_start + 1}-{pos} in checkpoints {job.first_ck}-{last_ck}; "
              f"all {pos} lines are committed exactly once")

    print(f"\nexpected totals from {os.path.basename(a.input)} ({lines} lines):")
    for app in sorted(APPS):  # the order of pv's primary key, as the SELECT below prints them
        print(f"  {app:<8} {expected[app]}")
    apps = ",".join(f"'{x}'" for x in APPS)
    print("\ncheck them (pv holds exactly these if this job is its only writer of these apps since it was created):")
    print(f"""  mariadb txsink_dev -e "SELECT app, views FROM pv WHERE app IN ({apps})\"""")
    print(f"  kcat -C -b {a.kafka} -t pageviews -X isolation.level=read_committed -e -q -f '%s\\n' | python3 -c "
          f"""'import sys,json,collections; c=collections.Counter(); [c.update({{v["app"]: v["views"]}}) """
          f"""for v in map(json.loads, sys.stdin) if v["job"]=="{a.job}"]; print(sorted(c.items()))'""")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\npageviews: interrupted; run again to resume from the last committed checkpoint")
