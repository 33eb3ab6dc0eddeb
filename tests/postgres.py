"""A real PostgreSQL 15 on loopback for tests: Debian's postgresql-15, a cluster of its own.

`initdb` and `pg_ctl` in a temporary directory, on 127.0.0.1 and a free port, with the
socket in that directory too; never the packaged cluster, whose service `make test`
does not start (DESIGN §4). PostgreSQL refuses to run as root, so under root the
server runs as the `postgres` user the package created; otherwise as the caller.

The bot connects over TCP as the role `bot`, with a password (scram-sha-256), as it
would to a database on another host; the test code's own connections use the socket
as the superuser.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg2
import psycopg2.extensions

HOST = "127.0.0.1"
BIN = Path("/usr/lib/postgresql/15/bin")
BOT_ROLE = "bot"
BOT_PASSWORD = "pg-test-secret-9e1c"
SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Postgres:
    """One cluster. `database()` makes a fresh, empty database owned by `bot` and
    returns its URL (without the password: that is in `password_file`)."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync  # off for tests (nothing crashes the machine); on for the bench
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fmb-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.password_file = self.dir / "bot.password"
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", SUPERUSER, "--"]

    def __enter__(self) -> Postgres:
        self.start_cluster()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}\n{log}")

    def start_cluster(self) -> None:
        if self._as:
            owner = pwd.getpwnam(SUPERUSER)
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.password_file.write_text(BOT_PASSWORD + "\n")
        self._run(
            str(BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8",
            "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{HOST}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\n"
                f"fsync = {'on' if self.fsync else 'off'}\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
        self.start()
        with self.admin() as db:
            db.execute(f"CREATE ROLE {BOT_ROLE} LOGIN PASSWORD '{BOT_PASSWORD}'")

    def start(self) -> None:
        self._run(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def pids(self) -> list[int]:
        """The server's processes now: the postmaster and its children (for the bench)."""
        first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        children = subprocess.run(["pgrep", "-P", first], capture_output=True, text=True)
        return [int(first), *(int(p) for p in children.stdout.split())]

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def admin(self, dbname: str = "postgres") -> Admin:
        """A superuser connection over the socket, autocommit; closed by `with`."""
        conn = psycopg2.connect(host=str(self.dir), port=self.port, user=SUPERUSER, dbname=dbname)
        conn.autocommit = True
        return Admin(conn)

    def database(self) -> str:
        """A new empty database that `bot` owns; its URL."""
        name = f"fmb_{os.getpid()}_{next(self._names)}_{int(time.time() * 1000) % 100000}"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {BOT_ROLE}")
        return self.url(name)

    def url(self, dbname: str) -> str:
        return f"postgresql://{BOT_ROLE}@{HOST}:{self.port}/{dbname}"


class Admin:
    """The test code's own session: `execute` gives the cursor, as sqlite3's does."""

    def __init__(self, conn: psycopg2.extensions.connection) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: tuple[object, ...] | None = None) -> Any:
        cursor = self.conn.cursor()
        cursor.execute(sql, parameters)
        return cursor

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
