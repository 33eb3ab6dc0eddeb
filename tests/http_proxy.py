"""A real HTTP proxy on loopback for tests: Debian's tinyproxy with a config of its own.

Real rather than mocked because what goes wrong between the bot and Feishu (a proxy
that wants credentials, one that will not tunnel, a tunnel that times out) lives in
the proxy's own protocol handling, which a stand-in would only restate (DESIGN §4).
`make test` installs the package; its packaged service is never started.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

HOST = "127.0.0.1"
TINYPROXY = "/usr/bin/tinyproxy"
# What LogLevel Connect writes for each request tinyproxy reads, e.g.
# "CONNECT   Dec 06 15:46:28.178 [7314]: Request (file descriptor 5): GET http://h:1/x HTTP/1.1"
_REQUEST = re.compile(r"^\w+\s.*?\]: Request \(file descriptor \d+\): (\S+) (\S+) HTTP/[\d.]+$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    """Whether something listens on HOST:port, read from /proc so as not to connect:
    a probe connection would show up in the proxy's log as a client."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
            return True
    return False


class Tinyproxy:
    """tinyproxy in the foreground (-d) on 127.0.0.1 and a free port, logging each
    request line (LogLevel Connect) to a file in its own temporary directory.

    CONNECT is allowed to any port (no ConnectPort line), since the emulators listen
    on random ones. `auth=(user, password)` makes it demand Basic credentials: none
    get HTTP 407, wrong ones HTTP 401 (tinyproxy 1.11's answer).

    The log records a request when tinyproxy reads it, before it checks credentials:
    `requests()` and `connects()` include requests it then refused.
    """

    def __init__(self, auth: tuple[str, str] | None = None, timeout: int = 60) -> None:
        self.auth = auth
        self.timeout = timeout
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """The proxy URL with credentials in it, percent-encoded as URLs need them."""
        return f"http://{quote(user, safe='')}:{quote(password, safe='')}@{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "start() first"
        return self.dir / "tinyproxy.log"

    def _config(self) -> str:
        # User/Group: whoever runs the tests, so that the log in our directory stays
        # writable; as root tinyproxy would otherwise only warn and keep running as root.
        lines = [
            f"User {os.geteuid()}",
            f"Group {os.getegid()}",
            f"Listen {HOST}",
            f"Port {self.port}",
            f"Timeout {self.timeout}",
            f'LogFile "{self.log_path}"',
            "LogLevel Connect",
            f"Allow {HOST}",
            "DisableViaHeader Yes",
            "MaxClients 100",
        ]
        if self.auth:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        return "\n".join(lines) + "\n"

    def start(self, attempts: int = 3) -> Tinyproxy:
        """Start it and wait until it listens; a port taken in between is retried."""
        if not os.access(TINYPROXY, os.X_OK):
            raise RuntimeError(
                f"{TINYPROXY} not found: the proxy tests need Debian's tinyproxy, which "
                "`make test` installs (or: apt-get install --no-install-recommends tinyproxy)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="tinyproxy-"))
        for attempt in range(attempts):
            self.port = _free_port()
            conf = self.dir / "tinyproxy.conf"
            self.log_path.unlink(missing_ok=True)
            conf.write_text(self._config(), "utf-8")
            out_path = self.dir / "tinyproxy.out"
            with open(out_path, "wb") as out:
                self.proc = subprocess.Popen(
                    [TINYPROXY, "-d", "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and not _listening(self.port):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tinyproxy did not listen on {self.port} within 10 s")
                time.sleep(0.02)
            if self.proc.poll() is None:
                return self
            if attempt == attempts - 1:
                text = out_path.read_text("utf-8", "replace") + self.log()
                self.stop()
                raise RuntimeError(f"tinyproxy exited ({self.proc.returncode}):\n{text}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Terminate it and wait; killed if it lingers. Its directory goes too."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Tinyproxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text("utf-8", "replace")
        return ""

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"tinyproxy did not log {text!r} within {timeout}s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def _request_lines(self) -> list[tuple[str, str]]:
        found = (_REQUEST.match(line) for line in self.log().splitlines())
        return [(m.group(1), m.group(2)) for m in found if m]

    def connects(self) -> list[str]:
        """host:port of each CONNECT tinyproxy read, in order."""
        return [target for method, target in self._request_lines() if method == "CONNECT"]

    def requests(self) -> list[str]:
        """'METHOD absolute-URL' of each plain-HTTP request tinyproxy read, in order."""
        return [f"{m} {target}" for m, target in self._request_lines() if m != "CONNECT"]
