"""Which of our modules a message passes through, from the WebSocket frame to SMTP DATA.

    .venv/bin/python -m tests.trace            # both paths, a summary each
    .venv/bin/python -m tests.trace --moves    # and every move between modules

Runs the real daemon (`python -m feishu_mailbot run`, as tests/harness.Bot does) against
the Feishu emulator and a local SMTP server, with a profiler (sys.setprofile, in every
thread) that records each call into a function of `feishu_mailbot`, and the call of
smtplib's `data`. Two paths are traced, each from the first call after the emulator
pushed the event to the first DATA that follows it:

- forward: one text message that one rule forwards;
- daily report: a report posted earlier, then the chat command "发送日报" mentioning the
  bot; the digest is built by the action worker and mailed by the outbox.

A *move* is a call into a module other than the one the previous call was in; a move
*back* goes into a module visited before on the same path. Coroutine resumptions are
calls too (that is how control comes back to a worker after an await). Workers that
wake on their own timers may add a few calls to a path; `--moves` lists them all.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, SMTP_PASSWORD, SMTP_USER, wait_until, write_config
from tests.smtp_server import SmtpServer

PACKAGE = str(REPO / "feishu_mailbot") + os.sep
RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"
REPORTS = (
    "daily_report:\n  chat: oc_team\n  recipients: [manager@example.com]\n"
    "  roster:\n    - {name: 张三, open_id: ou_alice}\n    - {name: 李四, open_id: ou_bob}\n"
)
DATA = "smtplib.data"


def _profile_daemon(out: str, argv: list[str]) -> int:
    """The daemon, with every call into our package recorded to `out` when it exits."""
    calls: list[tuple[int, str]] = []
    names: dict[str, str] = {}

    def module_of(filename: str) -> str | None:
        if filename in names:
            return names[filename]
        name = None
        if filename.startswith(PACKAGE):
            rel = filename[len(str(REPO)) + 1 : -3].replace(os.sep, ".")
            name = rel.removesuffix(".__init__")
        names[filename] = name  # type: ignore[assignment]
        return name

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_name == "data" and code.co_filename.endswith("smtplib.py"):
            calls.append((time.time_ns(), DATA))
            return
        module = module_of(code.co_filename)
        if module is not None:
            calls.append((time.time_ns(), f"{module}.{code.co_qualname}"))

    def dump() -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        Path(out).write_text(json.dumps(calls))

    atexit.register(dump)
    threading.setprofile(profile)
    sys.setprofile(profile)
    from feishu_mailbot.cli.main import main

    sys.argv = ["feishu-mailbot", *argv]
    return main()


@dataclass
class Path_:
    name: str
    calls: list[str]

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(_module(c) for c in self.calls))

    def moves(self, of: Callable[[str], str] = lambda module: module) -> tuple[int, int]:
        """Moves between modules (or, with `of=_layer`, between layers), and how many of
        them went back to one visited before."""
        seen: set[str] = set()
        moves = back = 0
        last = None
        for call in self.calls:
            module = of(_module(call))
            if last is not None and module != last:
                moves += 1
                back += module in seen
            seen.add(module)
            last = module
        return moves, back

    def count(self, function: str) -> int:
        return sum(1 for c in self.calls if c == function)


def _layer(module: str) -> str:
    """`feishu_mailbot.mail.forward` → `mail`."""
    parts = module.split(".")
    return parts[1] if parts[0] == "feishu_mailbot" and len(parts) > 1 else module


def _module(call: str) -> str:
    """`feishu_mailbot.mail.forward.forward_mail` → `feishu_mailbot.mail.forward`."""
    if call == DATA:
        return "smtplib"
    parts = call.split(".")
    for n in range(len(parts), 0, -1):
        candidate = REPO.joinpath(*parts[:n])
        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
            return ".".join(parts[:n])
    return call


def _between(calls: list[list[Any]], start_ns: int) -> list[str]:
    out: list[str] = []
    for at, name in calls:
        if at < start_ns:
            continue
        out.append(name)
        if name == DATA:
            break
    return out


@contextmanager
def _daemon(directory: Path, config: Path, out: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(directory / "daemon.log", "wb")  # noqa: SIM115 - closed below
    argv = ["--config", str(config), "run"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.trace", "--profile-daemon", str(out), *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_until(lambda: b"ready:" in (directory / "daemon.log").read_bytes(), 60, "ready")
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _traced(extra: str, scenario: Callable[[FeishuEmulator, SmtpServer], int]) -> list[str]:
    """The calls from the moment `scenario` returns to the first DATA after it."""
    with (
        tempfile.TemporaryDirectory(prefix="feishu-mailbot-trace-") as tmp,
        FeishuEmulator() as emulator,
        SmtpServer(require_auth=(SMTP_USER, SMTP_PASSWORD)) as smtp,
    ):
        directory = Path(tmp)
        emulator.register_chat("oc_team", "研发群")
        emulator.register_user("ou_alice", "张三")
        emulator.register_user("ou_bob", "李四")
        config = write_config(
            directory, feishu_url=emulator.base_url, smtp_port=smtp.port, rules=RULE, extra=extra
        )
        out = directory / "calls.json"
        with _daemon(directory, config, out):
            time.sleep(1)  # the start-up's own calls are over
            start = scenario(emulator, smtp)
            smtp.wait_for(1, timeout=20)
        return _between(json.loads(out.read_text()), start)


def _forward(emulator: FeishuEmulator, smtp: SmtpServer) -> int:
    start = time.time_ns()
    emulator.push_text("oc_team", "ou_alice", "线上故障：支付接口超时")
    return start


def _daily_report(emulator: FeishuEmulator, smtp: SmtpServer) -> int:
    emulator.wait_ack(emulator.push_text("oc_team", "ou_bob", "日报：完成登录页改版"))
    time.sleep(1)
    start = time.time_ns()
    emulator.push_text(
        "oc_team", "ou_alice", "@_user_1 发送日报", mentions=[("ou_mailbot", "Mailbot")]
    )
    return start


def trace() -> list[Path_]:
    return [
        Path_("forward", _traced("", _forward)),
        Path_("daily report", _traced(REPORTS, _daily_report)),
    ]


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--profile-daemon":
        return _profile_daemon(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", action="store_true", help="print every move")
    args = parser.parse_args()
    for path in trace():
        moves, back = path.moves()
        print(f"{path.name}: {moves} moves, {len(path.modules)} modules, {back} back")
        layers = list(dict.fromkeys(_layer(m) for m in path.modules))
        crossings, returns = path.moves(_layer)
        print(
            f"  {crossings} moves between {len(layers)} layers, {returns} back: {' '.join(layers)}"
        )
        for module in path.modules:
            print(f"    {module}")
        renders = {c for c in path.calls if c.endswith(".render_text")}
        for function in sorted(renders):
            print(f"  {function}: called {path.count(function)}×")
        if args.moves:
            last = None
            for call in path.calls:
                if _module(call) != last:
                    print(f"      → {call}")
                last = _module(call)
    return 0


if __name__ == "__main__":
    sys.exit(main())
