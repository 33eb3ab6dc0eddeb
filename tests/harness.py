"""Runs the real daemon (`python -m feishu_mailbot run`) against the emulators.

Each test gets its own state dir and config; the daemon's stderr goes to a
file the test can read (and that the secret scan in conftest reads too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pwd
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[1]
SMTP_USER = "bot"
SMTP_PASSWORD = "smtp-pass-9f2c"
# The credentials the http_proxy_auth fixture's tinyproxy demands (Basic auth).
PROXY_USER = "proxyuser"
PROXY_PASSWORD = "proxy-pass-71c3"
# The SMTP password as AUTH LOGIN and AUTH PLAIN put it on the wire, which a relay may echo;
# the proxy password as a Proxy-Authorization header carries it.
TEST_SECRETS = (
    "test-secret",
    SMTP_PASSWORD,
    base64.b64encode(SMTP_PASSWORD.encode()).decode(),
    base64.b64encode(f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()).decode(),
    PROXY_PASSWORD,
    base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode(),
)
SCREENSHOTS = REPO / "test-output"  # README pictures are copied from here into docs/


def mail_html(message: EmailMessage) -> str:
    """A mail's HTML part with its cid: images inlined as data: URIs, as a client shows it."""
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    html = str(part.get_content())
    for leaf in message.walk():
        cid = leaf.get("Content-ID")
        if cid:
            data = base64.b64encode(leaf.get_payload(decode=True)).decode()
            html = html.replace(
                f"cid:{cid.strip('<>')}", f"data:{leaf.get_content_type()};base64,{data}"
            )
    return html


def body_of(html: str) -> str:
    """A mail document's <body> as a <div>, to set several mails on one page."""
    found = re.search(r"<body([^>]*)>(.*)</body>", html, re.S)
    return f"<div{found.group(1)}>{found.group(2)}</div>" if found else html


def screenshot(html: str, name: str, scratch: Path, size: str = "760,860") -> bytes:
    """The page as headless Chromium draws it, saved as test-output/<name>.png."""
    page = scratch / f"{name}.html"
    page.write_text(html, "utf-8")
    out = SCREENSHOTS / f"{name}.png"
    out.parent.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={scratch / f'profile-{name}'}",
            "--hide-scrollbars",
            f"--window-size={size}",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    png = out.read_bytes()
    assert png.startswith(b"\x89PNG")
    return png


class Worker(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def last_progress(self) -> float: ...


async def progress_while(
    worker: Worker, started: Callable[[], object], done: Callable[[], object]
) -> list[float]:
    """The worker's last_progress, sampled from when `started` holds until `done` does:
    what the health verdict sees while the worker is busy (the worker is then stopped)."""
    task = asyncio.create_task(worker.run())
    while not started():
        await asyncio.sleep(0.01)
    seen = [worker.last_progress]
    while not done():
        seen.append(worker.last_progress)
        await asyncio.sleep(0.02)
    worker.stop()
    await task
    return seen


def fill(directory: Path) -> Path:
    """Write until the file system says it is full; the file is what frees it again."""
    filler = directory / "filler"
    with open(filler, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def write_config(
    directory: Path,
    *,
    feishu_url: str,
    smtp_port: int,
    chats: str = "  - id: oc_team\n    name: 研发群\n",
    rules: str | None = None,
    smtp_extra: str = "",
    feishu_extra: str = "",
    extra: str = "",
) -> Path:
    if rules is None:
        rules = textwrap.dedent("""\
          - name: oncall
            keywords: [故障, urgent]
            to: [oncall@example.com]
          - name: archive
            keywords: [故障]
            to: [archive@example.com, oncall@example.com]
          - name: files
            regex: '\\[(图片|文件)\\]'
            to: [files@example.com]
        """)
    text = (
        "feishu:\n"
        "  app_id: cli_test\n"
        "  app_secret: test-secret\n"
        f"  domain: {feishu_url}\n"
        f"{feishu_extra}"
        f"chats:\n{chats}"
        "smtp:\n"
        "  host: 127.0.0.1\n"
        f"  port: {smtp_port}\n"
        "  security: none\n"
        '  from: "Feishu Mailbot <bot@example.com>"\n'
        f"  username: {SMTP_USER}\n"
        f"  password: {SMTP_PASSWORD}\n"
        "  timeout: 5\n"
        "  retry_initial: 0.2\n"
        "  retry_max: 1\n"
        f"{smtp_extra}"
        f"rules:\n{textwrap.indent(rules, '  ') if not rules.startswith('  ') else rules}"
        f"state_dir: {directory / 'state'}\n"
        f"{extra}"
    )
    path = directory / "feishu-mailbot.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Bot:
    """One daemon process; `start()` can be called again after `stop()` (a restart).

    `user`: run it as that (unprivileged) user with the unit's UMask=0077, as systemd
    does, instead of as the test's root.
    """

    def __init__(self, config: Path, log_dir: Path, user: str | None = None) -> None:
        self.config = config
        self.log_dir = log_dir
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"daemon-{self.runs}.log"

    def start(self, env: dict[str, str] | None = None, wait_ready: bool = True) -> Bot:
        self.runs += 1
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        account = pwd.getpwnam(self.user) if self.user else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feishu_mailbot", "--config", str(self.config), "run"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            umask=0o077 if account else -1,
        )
        if wait_ready:
            self.wait_log("ready:", timeout=20)
        return self

    def log(self) -> str:
        return "\n".join(
            (self.log_dir / f"daemon-{i}.log").read_text("utf-8", "replace")
            for i in range(1, self.runs + 1)
        )

    def current_log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        def seen() -> bool:
            if (
                self.proc is not None
                and self.proc.poll() is not None
                and text not in self.current_log()
            ):
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before logging {text!r}:\n"
                    + self.current_log()
                )
            return text in self.current_log()

        wait_until(seen, timeout, f"log line {text!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cli(self, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
        """An admin command on this bot's config, as the operator runs it (as `user`, a
        uid without groups, instead of root when given)."""
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
        return subprocess.run(
            [*prefix, sys.executable, "-m", "feishu_mailbot", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )


class Blackhole:
    """A TCP port that takes connections and never answers: the kernel completes the
    handshake from its backlog and nothing reads. A firewall that lets the SYN through
    and drops what follows, as the old bot's users met it for WebSocket."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


class NotifySocket:
    """A NOTIFY_SOCKET like systemd's: records every sd_notify datagram with its time."""

    def __init__(self, directory: Path) -> None:
        import socket
        import threading

        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.decode("utf-8").splitlines():
                self.messages.append((now, line))

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == line]

    def first(self, line: str) -> float | None:
        found = self.times(line)
        return found[0] if found else None

    def statuses(self) -> list[str]:
        return [m[len("STATUS=") :] for _, m in list(self.messages) if m.startswith("STATUS=")]

    def wait(self, line: str, timeout: float = 10.0, after: float = 0.0) -> float:
        wait_until(lambda: any(t >= after for t in self.times(line)), timeout, line)
        return min(t for t in self.times(line) if t >= after)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
