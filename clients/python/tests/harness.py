"""A real `sidecar dev` for the tests, and independent readers of its sinks.

The sidecar binary comes from $TXSINK_SIDECAR_BIN (systemtest/client_python_test.go
builds it and sets it); MariaDB from $TXSINK_TEST_MYSQL_DSN (a Go DSN such as
``root@unix(/path/mysqld.sock)/`` or ``user:pw@tcp(127.0.0.1:3306)/``), else the
local server's socket. Nothing is skipped: a missing binary, kcat or mariadb
client fails the tests with a message saying how to get it.

`sidecar dev` starts a Kafka broker process of its own that survives a kill -9
of the sidecar (as a real broker would); stop() stops the sidecar gracefully
and then runs `sidecar dev --stop-broker` for its data dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # clients/python, for `import txsink`

import txsink  # noqa: E402

LOCAL_DSN = "root@unix(/run/mysqld/mysqld.sock)/"

_handed_out: set = set()


def free_port() -> int:
    """A loopback port no earlier call returned (the kernel may hand a released one out again)."""
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("free_port: 100 tries returned ports handed out before")


def sidecar_bin() -> str:
    path = os.environ.get("TXSINK_SIDECAR_BIN", "")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"TXSINK_SIDECAR_BIN={path!r} is not an executable: build the sidecar first, e.g. from the repository "
            "root `go build -o /tmp/sidecar ./cmd/sidecar && TXSINK_SIDECAR_BIN=/tmp/sidecar python3 -m unittest "
            "discover -s clients/python/tests -v` (or run `go test ./systemtest -run Python`)")
    return path


def need_tool(name: str, how: str) -> str:
    path = shutil.which(name)
    if not path:
        raise RuntimeError(f"these tests need {name}: {how}")
    return path


def mysql_dsn() -> str:
    return os.environ.get("TXSINK_TEST_MYSQL_DSN") or LOCAL_DSN


def mariadb_args(dsn: str) -> List[str]:
    """The mariadb CLI arguments for a Go MySQL DSN ``user[:pass]@net(addr)/…``."""
    m = re.match(r"^([^:@]*)(?::([^@]*))?@(unix|tcp)\(([^)]*)\)/", dsn)
    if not m:
        raise RuntimeError(f"cannot read the MySQL DSN {dsn!r}: want user[:pass]@unix(/path)/ or user[:pass]@tcp(host:port)/")
    user, pw, net, addr = m.groups()
    args = ["-u" + (user or "root")]
    if pw:
        args.append("-p" + pw)
    if net == "unix":
        args.append("--socket=" + addr)
    else:
        host, _, port = addr.rpartition(":")
        args += ["--protocol=tcp", "-h" + host, "-P" + port]
    return args


def mariadb_query(sql: str) -> List[List[str]]:
    """Runs sql in database txsink_dev with the mariadb CLI; rows as lists of strings."""
    exe = need_tool("mariadb", "apt-get install mariadb-client")
    out = subprocess.run([exe, *mariadb_args(mysql_dsn()), "--batch", "--skip-column-names", "txsink_dev", "-e", sql],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"mariadb: exit {out.returncode}: {out.stderr}")
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def kcat_keys(broker: str, topic: str) -> List[str]:
    """Every key of topic as a read_committed consumer sees it, read by kcat to the end."""
    exe = need_tool("kcat", "apt-get install kcat")
    out = subprocess.run([exe, "-C", "-b", broker, "-t", topic, "-X", "isolation.level=read_committed", "-e", "-q",
                          "-f", "%k\n"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kcat: exit {out.returncode}: {out.stderr}")
    return [line for line in out.stdout.splitlines() if line]


def group_offsets(broker: str, group: str) -> Dict[str, Dict[str, int]]:
    """The consumer group's committed offsets, {topic: {partition: next offset}}, read by an independent reader.

    The standard library has no Kafka client and kcat cannot show group
    offsets, so this runs the repository's tiny Go reader
    (internal/cmd/groupoffsets, franz-go's kadm with require_stable: offsets
    in an open transaction are waited for, never reported as committed)
    from $TXSINK_GROUPOFFSETS_BIN.
    """
    path = os.environ.get("TXSINK_GROUPOFFSETS_BIN", "")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"TXSINK_GROUPOFFSETS_BIN={path!r} is not an executable: build it from the repository root with "
            "`go build -o /tmp/groupoffsets ./internal/cmd/groupoffsets` and set TXSINK_GROUPOFFSETS_BIN=/tmp/groupoffsets "
            "(`go test ./systemtest -run Python` does both)")
    out = subprocess.run([path, "--brokers", broker, "--group", group], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"groupoffsets: exit {out.returncode}: {out.stderr}")
    return json.loads(out.stdout)


class DevSidecar:
    """One `sidecar dev` installation: a data dir and fixed ports, so it can be killed and started again."""

    def __init__(self, token: Optional[str] = None) -> None:
        self.bin = sidecar_bin()
        # Short: the socket path must stay below 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="txsink-py-")
        self.socket = os.path.join(self.dir, "sidecar.sock")
        self.http_addr = f"127.0.0.1:{free_port()}"
        self.kafka_addr = f"127.0.0.1:{free_port()}"
        self.token = token
        self.args = [self.bin, "dev", "--data-dir", self.dir, "--http-addr", self.http_addr,
                     "--kafka-addr", self.kafka_addr, "--raft-addr", f"127.0.0.1:{free_port()}",
                     "--mysql-dsn", mysql_dsn()]
        if token is not None:
            path = os.path.join(self.dir, "token")
            with open(path, "w") as f:
                f.write(token + "\n")
            os.chmod(path, 0o600)
            self.args += ["--token-file", path]
        self.log_path = os.path.join(self.dir, "sidecar.log")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return "http://" + self.http_addr

    def start(self) -> None:
        """Runs the sidecar and waits (30 s at most) until it is ready and has the db sink."""
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.pop("TXSINK_TOKEN", None)
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        probe = txsink.Client(self.url, token=self.token, timeout=2, retry_for=0)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited during start ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                probe.ready()
                break
            except txsink.TxsinkError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sidecar not ready after 30s ({e}):\n{self.log_tail()}")
            time.sleep(0.05)
        probe.close()
        if 'sink "db"' not in self.log():
            raise RuntimeError("the sidecar has no db sink: MariaDB does not answer at "
                               f"{mysql_dsn()} (set TXSINK_TEST_MYSQL_DSN):\n{self.log_tail()}")

    def kill9(self) -> None:
        """SIGKILL; the broker keeps running."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        """Stops the sidecar (SIGINT, SIGKILL after 20 s), then any broker left, and removes the data dir."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self.proc = None
        out = subprocess.run([self.bin, "dev", "--data-dir", self.dir, "--stop-broker"], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"sidecar dev --stop-broker: exit {out.returncode}: {out.stdout}{out.stderr}")
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-n:])


def counts(items: List[str]) -> Dict[str, int]:
    c: Dict[str, int] = {}
    for i in items:
        c[i] = c.get(i, 0) + 1
    return c
