"""A real ``redis-server`` for the tests of the Redis coordinator and ledger.

:class:`RedisServer` starts Debian's ``redis-server`` on a free loopback port with a temporary
directory (no persistence, no config file), waits until it answers ``PING`` and stops it.
Where no ``redis-server`` can be found the tests that need one are skipped, except in CI
(``CI`` set), where that is a failure: ``.ci/run`` installs the server, and a test of a real
service must never be skipped silently there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server_or_skip"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, for a test session."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = 0
        self._dir = tempfile.TemporaryDirectory(prefix="flux-async-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(5):  # a port taken between choosing and binding it: choose again
            self.port = _free_port()
            self._proc = subprocess.Popen(
                [
                    self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--dir", self._dir.name, "--save", "", "--appendonly", "no",
                    "--protected-mode", "no", "--loglevel", "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError("redis-server did not start")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    # Ours, not another server that took the port between choosing and binding
                    # it (another pytest-xdist worker's): that one would answer PING too.
                    conn.sendall(b"INFO server\r\n")
                    mine = f"process_id:{self._proc.pid}\r\n".encode()
                    return mine in self._answer(conn)  # else ours failed to bind: choose again
            except OSError:
                pass
            time.sleep(0.02)  # a server process starting: nothing to wait on but its socket
        return False

    @staticmethod
    def _answer(conn: socket.socket) -> bytes:
        """One bulk-string reply (``$<length>\\r\\n<data>\\r\\n``), read whole."""
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return data
            data += chunk
        header, _, body = data.partition(b"\r\n")
        if not header.startswith(b"$"):
            return data
        length = int(header[1:])
        while len(body) < length:
            chunk = conn.recv(4096)
            if not chunk:
                break
            body += chunk
        return body

    def flush(self) -> None:
        """Empty every database (between tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"FLUSHALL\r\n")
            conn.recv(16)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


def redis_server_or_skip() -> str:
    """The ``redis-server`` executable; skips the test where there is none, fails in CI."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
    )
    if found is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it, so CI must have it", pytrace=False)
        pytest.skip(message)
    return found
