"""Dependencies that tests can break: a private PostgreSQL cluster, a TCP proxy, a private Redis.

:class:`PrivateCluster` runs ``initdb``/``pg_ctl`` under a temporary directory on a free port, so a
test can stop and restart a database nobody else uses (as the ``postgres`` OS user when the tests run
as root, because ``initdb`` refuses root). :class:`FaultProxy` sits on loopback in front of any TCP
server and can *freeze* (connections open, nothing forwarded: a network partition), go *down* (every
connection closed, new ones closed at once) and *resume*.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("IDHUB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateCluster:
    """A throwaway PostgreSQL cluster: trust authentication on 127.0.0.1, fsync off."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="idhub-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_user: list[str] = []

    @classmethod
    def start_or_skip(cls) -> PrivateCluster:
        """Create and start a cluster, or skip the test with the reason it cannot be done here."""
        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"PostgreSQL server binaries not found under {PG_BIN} (set IDHUB_TEST_PG_BIN)")
        cluster = cls()
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(PG_OS_USER)
            except KeyError:
                cluster.remove()
                pytest.skip("initdb refuses to run as root and there is no 'postgres' OS user to run it as")
            if shutil.which("runuser") is None:
                cluster.remove()
                pytest.skip("initdb refuses to run as root and 'runuser' is missing")
            os.chown(cluster.root, account.pw_uid, account.pw_gid)
            cluster._as_user = ["runuser", "-u", PG_OS_USER, "--"]
        try:
            cluster._run(str(PG_BIN / "initdb"), "-D", str(cluster.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
            cluster.start()
        except (OSError, subprocess.CalledProcessError) as exc:
            cluster.remove()
            pytest.skip(f"could not start a private PostgreSQL cluster: {exc}")
        return cluster

    @property
    def url(self) -> str:
        """Return the SQLAlchemy URL of the cluster's ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=60, cwd=self.root)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c full_page_writes=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Stop the server at once (``immediate``: clients see their connections drop)."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete everything it wrote."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class FaultProxy:
    """A TCP proxy on loopback that a test can freeze, take down and resume (one thread per direction)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._state = "up"
        self._freezes = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    # --- control ------------------------------------------------------------------------------
    def freeze(self, *, at_most: float = 15.0) -> None:
        """Keep every connection open but forward nothing (new connections hang too).

        The partition heals by itself after ``at_most`` seconds, so code without timeouts makes a
        test fail on its timing assertions instead of hanging it.
        """
        self._state = "frozen"
        self._freezes += 1
        timer = threading.Timer(at_most, self._heal, args=(self._freezes,))
        timer.daemon = True
        timer.start()

    def _heal(self, freeze: int) -> None:
        if self._state == "frozen" and self._freezes == freeze:
            self._state = "up"

    def down(self) -> None:
        """Close every connection and close new ones at once."""
        self._state = "down"
        self._close_all()

    def resume(self) -> None:
        """Forward again; frozen connections carry on where they stopped."""
        self._state = "up"

    def close(self) -> None:
        """Stop the proxy for good."""
        self._closed = True
        self._close_all()
        with contextlib.suppress(OSError):
            self._listener.close()

    # --- plumbing -----------------------------------------------------------------------------
    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._state == "down":
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        while self._state == "frozen" and not self._closed:
            time.sleep(0.02)  # a partition: the handshake never reaches the server
        if self._state == "down" or self._closed:
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.update((client, server))
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while not self._closed:
                if self._state != "up":
                    if self._state == "down":
                        break
                    time.sleep(0.02)
                    continue
                readable, _, _ = select.select([source], [], [], 0.05)
                if not readable or self._state != "up":
                    continue
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.difference_update((source, target))
