#!/usr/bin/env python3
"""Page views per app, exactly once into Kafka and MariaDB, through txsink.

What this shows: an application with no Kafka or MySQL client at all (only
Python's standard library and txsink's Python client, clients/python) gets
exactly-once output by talking to the txsink sidecar over its Unix socket.
It counts page views per app from a numbered NDJSON input file and, every
--every lines, writes the counts of those lines to Kafka (topic "pageviews")
and MariaDB (table pv, a non-idempotent "views = views + ?" upsert), then
completes a checkpoint whose state is its input position. After any crash
it opens the writer again, gets the last committed position back and
resumes from there: the uncommitted writes of the crashed run are aborted
by the sidecar, so no view is lost or counted twice. `--crash-after K`
crashes on purpose (exit 137) after writing, before the checkpoint; run it
again and the totals come out exact.

The client does the HTTP, the retries and the session bookkeeping (epoch,
seq, base64 state); this file has no HTTP code of its own. It imports the
client from clients/python of this repository (elsewhere: `pip install
clients/python`).

Usage (with `make run` in another terminal, from the repository root):
    python3 examples/pageviews-python/pageviews.py [--crash-after 1200]
"""

import argparse
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# The client from this repository; an installed txsink package works the same.
sys.path.insert(0, os.path.join(REPO, "clients", "python"))

import txsink  # noqa: E402

APPS = ("web", "ios", "android", "tv")  # distinct from examples/pageviews-go's app1…app5: both add into table pv
RETRY_FOR = 60.0  # seconds to keep retrying while the sidecar is unreachable or not ready


def default_socket():
    return os.environ.get("TXSINK_SOCKET") or os.path.join(REPO, "data", "sidecar.sock")


def fatal(e, what):
    """Prints the sidecar's problem and exits 1."""
    print(f"pageviews: {what}: HTTP {e.status} {e.code}", file=sys.stderr)
    print(json.dumps(e.problem or {"detail": e.detail}, indent=2), file=sys.stderr)
    if e.code == "unknown_sink":
        print("pageviews: the sidecar has no such sink. `sidecar dev` has the \"db\" sink only when MariaDB/MySQL "
              "answers (its banner says so); start MariaDB and restart `make run`.", file=sys.stderr)
    sys.exit(1)


def data_loss(e, what):
    """The sidecar could not commit a checkpoint it had decided to commit (a sink
    had aborted it): its records are not in the sink. Say so loudly and stop
    (exit 3); counting on would hide it."""
    print(f"pageviews: DATA LOSS reported by the sidecar: {what}: {e.detail}", file=sys.stderr)
    print(json.dumps(e.problem, indent=2), file=sys.stderr)
    sys.exit(3)


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


class Job:
    def __init__(self, args, client, lines):
        self.a = args
        self.lines = lines
        self.client = client
        self.job = None
        self.run_start = None  # the position this run started from (for --crash-after and the summary)
        self.first_ck = None

    def put_job(self):
        self.job = self.client.job(self.a.job, commit="auto", sinks=["events", "db"])

    def run(self):
        """Runs until the input is counted and committed, reopening the writer whenever told to."""
        while True:
            try:
                # Entering opens a session: it fences any earlier one, aborts what
                # it wrote after its last checkpoint and restores that checkpoint.
                with self.job.writer(self.a.writer) as w:
                    # state is {"line": K}, the lines already counted and committed.
                    line = json.loads(w.state)["line"] if w.state else 0
                    if line > self.lines:
                        sys.exit(f"pageviews: job {self.a.job} has counted {line} lines, but {self.a.input} has "
                                 f"only {self.lines}: a different input? (use another --job for it)")
                    print(f"session epoch {w.epoch}: restored checkpoint {w.restored}, {line} lines already counted "
                          f"and committed; resuming at line {line + 1}", flush=True)
                    if self.run_start is None:
                        self.run_start, self.first_ck = line, w.restored + 1
                    return self.count(w, line)
            except txsink.DataLoss as e:
                data_loss(e, f"job {self.a.job}, writer {self.a.writer}")
            except (txsink.Reopen, txsink.Unavailable) as e:
                # The session is over (the sidecar restarted, a sink failed, …):
                # throw away what was counted since the last checkpoint, the
                # sidecar aborted those writes.
                print(f"  {e}: reopening the session and resuming from the last committed checkpoint", flush=True)

    def count(self, w, pos):
        counts = {}
        start = pos  # lines ≤ start are committed
        for n, app in read_from(self.a.input, pos):
            counts[app] = counts.get(app, 0) + 1
            pos = n
            if pos - start >= self.a.every:
                self.checkpoint(w, counts, start, pos)
                start, counts = pos, {}
        if pos > start:
            self.checkpoint(w, counts, start, pos)
        return w.last_checkpoint, pos

    def checkpoint(self, w, counts, start, end):
        ck = w.last_checkpoint + 1
        recs = []
        for app in sorted(counts):
            c = counts[app]
            value = {"app": app, "views": c, "job": self.a.job, "checkpoint": ck, "from_line": start + 1, "to_line": end}
            recs.append({"sink": "events", "topic": "pageviews", "key": app, "value": value})
            recs.append({"sink": "db", "stmt": "upsert_pv", "args": [app, c]})
        w.write(recs)

        if self.a.crash_after is not None and end - self.run_start >= self.a.crash_after:
            print(f"--crash-after {self.a.crash_after}: crashing after writing lines {start + 1}-{end} "
                  f"(checkpoint {ck} not taken); run again to resume from checkpoint {ck - 1}", flush=True)
            os._exit(137)

        # committed, or committing (202: the commit decision is durable, the sidecar finishes it).
        res = w.checkpoint(ck, state=json.dumps({"line": end}, separators=(",", ":")))
        if res.status not in ("committed", "committing"):
            sys.exit(f"pageviews: checkpoint {ck}: status {res.status!r}, want committed")
        views = ", ".join(f"{a} +{counts[a]}" for a in sorted(counts))
        print(f"checkpoint {ck}: lines {start + 1}-{end} {res.status} ({views})", flush=True)


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

    client = txsink.Client(socket=a.socket, timeout=120.0, retry_for=RETRY_FOR)
    job = Job(a, client, lines)
    print(f"counting {a.input} ({lines} lines) as job {a.job}, writer {a.writer}, "
          f"a checkpoint every {a.every} lines, via {a.socket}", flush=True)
    try:
        job.put_job()
        last_ck, pos = job.run()
    except txsink.Unreachable as e:
        sys.exit(f"pageviews: the sidecar at {a.socket} did not answer for {RETRY_FOR:.0f}s ({e}). "
                 "Is `make run` running? (--socket sets the path)")
    except txsink.TxsinkError as e:
        fatal(e, "the sidecar refused a call")
    client.close()
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
