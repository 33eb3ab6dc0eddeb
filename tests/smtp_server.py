"""A real SMTP server on loopback for tests and the demo: aiosmtpd in a thread.

Real rather than mocked because the failures worth testing (STARTTLS that is
not offered, a certificate nobody trusts, a relay that hangs up on an idle
connection, a port nobody listens on) live in the protocol and the sockets,
which a mock of smtplib would only restate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import functools
import json
import queue
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from tests import certs

HOST = "127.0.0.1"


@dataclass
class Received:
    """One accepted message with its envelope, which the headers alone do not show."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    auth_login: str | None = None

    @functools.cached_property
    def message(self) -> EmailMessage:
        """Parsed when first asked for: parsing in the server thread made `make bench`
        measure this process's GIL contention as the bot's ack and drain times."""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        return cast(EmailMessage, parsed)


class _Controller(Controller):
    """Controller that binds port 0 (no free-port race) and remembers its protocols."""

    def __init__(self, owner: SmtpServer, handler: _Handler, port: int, **kwargs: Any) -> None:
        super().__init__(handler, hostname=HOST, port=port, **kwargs)
        self._owner = owner

    def factory(self) -> SMTP:
        protocol = super().factory()  # type: ignore[no-untyped-call]
        self._owner._protocols.append(protocol)
        return cast(SMTP, protocol)

    def _trigger_server(self) -> None:
        if self.port == 0 and isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class _Handler:
    """aiosmtpd hooks; all state lives on the SmtpServer so tests can steer it."""

    def __init__(self, owner: SmtpServer) -> None:
        self._owner = owner

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must do this itself
        self._owner._saw_connection(server)
        return responses

    async def handle_HELO(self, server: SMTP, session: Any, envelope: Any, hostname: str) -> str:
        session.host_name = hostname
        self._owner._saw_connection(server)
        return f"250 {server.hostname}"

    async def handle_AUTH(self, server: SMTP, session: Any, envelope: Any, args: list[str]) -> Any:
        session.auth_args = list(args)  # as the client sent them, for echo_auth
        with self._owner._cond:
            self._owner.auths.append(args[0].upper() if args else "")
        return MISSING  # aiosmtpd goes on with its own AUTH

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self._owner._trickle and self._owner._trickle_at == "MAIL":
            while self._owner._trickle and server.transport is not None:
                server.transport.write(b"2")
                await asyncio.sleep(self._owner._trickle)
            return "451 4.3.0 trickled"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self._owner._refused_rcpts:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        owner = self._owner
        if owner._trickle and owner._trickle_at == "DATA":
            # A relay that answers one byte at a time, each just within a client's
            # timeout: no single read times out, and the reply never ends.
            while owner._trickle and server.transport is not None:
                server.transport.write(b"2")
                await asyncio.sleep(owner._trickle)
            return "451 4.3.0 trickled"
        if owner._delay:
            await asyncio.sleep(owner._delay)  # yields: other connections keep being served
        if owner._hold is not None:
            gate = owner._hold
            with owner._cond:
                owner.holding += 1
                owner._cond.notify_all()
            answer = await asyncio.get_running_loop().run_in_executor(None, gate.get)
            with owner._cond:
                owner.holding -= 1
            if not answer.startswith("250"):
                return answer
        with owner._cond:
            if owner._fail_left > 0:
                owner._fail_left -= 1
                status = "4.3.0" if owner._fail_code < 500 else "5.3.0"
                return f"{owner._fail_code} {status} try again later"
        raw = bytes(envelope.original_content or envelope.content)
        login = getattr(session, "auth_data", None)
        record = Received(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            raw=raw,
            auth_login=login.login.decode() if isinstance(login, LoginPassword) else None,
        )
        with owner._cond:
            owner.received.append(record)
            owner._cond.notify_all()
        return "250 2.0.0 OK queued"


@dataclass
class SmtpServer:
    """Loopback SMTP server with switches for the failure modes delivery must survive.

    require_auth: (user, password), offered as AUTH PLAIN/LOGIN and required
        before MAIL. Without starttls it is offered in cleartext (test only).
    starttls: offer STARTTLS (and then require it), presenting `leaf`.
    tls: implicit TLS on connect (SMTP_SSL / port 465 style), presenting `leaf`.
    leaf: the certificate, from tests/certs.py (default: 127.0.0.1 and localhost,
        signed by the test CA, which no system store trusts);
        `ssl_context_for_client` trusts the test CA only.
    auth_mechanisms: offer only these (aiosmtpd offers LOGIN and PLAIN).
    echo_auth: a careless relay: its 535 repeats what the client sent, the AUTH
        line's base64 and, for LOGIN, the base64 password that answered 334.
    """

    require_auth: tuple[str, str] | None = None
    size_limit: int | None = None  # EHLO SIZE, bytes; aiosmtpd's default is 32 MiB
    starttls: bool = False
    tls: bool = False
    auth_mechanisms: tuple[str, ...] | None = None
    echo_auth: bool = False
    leaf: certs.Leaf | None = None
    port: int = 0
    received: list[Received] = field(default_factory=list, init=False)
    auths: list[str] = field(default_factory=list, init=False)  # AUTH lines, as mechanisms
    ssl_context_for_client: ssl.SSLContext | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._greeted: list[SMTP] = []
        self._protocols: list[SMTP] = []
        self._fail_left = 0
        self._fail_code = 451
        self._delay = 0.0
        self._trickle = 0.0
        self._trickle_at = "DATA"
        self._refused_rcpts: set[str] = set()
        self._hold: queue.Queue[str] | None = None  # hold_data
        self._gates: list[queue.Queue[str]] = []  # every hold so far, answered at stop()
        self.holding = 0  # DATA commands waiting at the hold now
        self._handler = _Handler(self)
        self._controller: _Controller | None = None
        self._server_tls: ssl.SSLContext | None = None
        if self.starttls or self.tls:
            if self.leaf is None:
                self.leaf = certs.leaf()
            self._server_tls = certs.server_context(self.leaf)
            self.ssl_context_for_client = ssl.create_default_context(cafile=certs.ca_file())

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> SmtpServer:
        assert self._controller is None, "already running"
        kwargs: dict[str, Any] = {"server_hostname": "smtp.test", "timeout": 30}
        if self.size_limit is not None:
            kwargs["data_size_limit"] = self.size_limit
        if self.tls:
            kwargs["ssl_context"] = self._server_tls
        if self.starttls:
            kwargs["tls_context"] = self._server_tls
            kwargs["require_starttls"] = True
        if self.require_auth is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
            # Without TLS on the wire aiosmtpd would hide AUTH entirely.
            kwargs["auth_require_tls"] = self.starttls
            if self.auth_mechanisms is not None:
                others = {"LOGIN", "PLAIN"} - set(self.auth_mechanisms)
                kwargs["auth_exclude_mechanism"] = sorted(others)
        controller = _Controller(self, self._handler, self.port, **kwargs)
        controller.start()
        self.port = controller.port
        self._controller = controller
        return self

    def stop(self) -> None:
        self._hold = None
        for gate in self._gates:  # DATA still held: answered, or its thread blocks the exit
            for _ in range(self.holding + 8):
                gate.put("421 4.3.0 the server stops")
        if self._controller is not None:
            # Hang up first: stopping the loop alone would leave accepted sockets
            # open and unserved, so a client would hang instead of seeing a close.
            self.drop_connections()
            controller, self._controller = self._controller, None
            controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observations ----------------------------------------------------------

    @property
    def connections(self) -> int:
        """Connections that got as far as EHLO/HELO (the controller's start-up probe does not)."""
        with self._cond:
            return len(self._greeted)

    @property
    def messages(self) -> list[EmailMessage]:
        with self._cond:
            received = list(self.received)
        return [r.message for r in received]

    @property
    def raw(self) -> list[bytes]:
        with self._cond:
            return [r.raw for r in self.received]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[EmailMessage]:
        """Blocks until at least n messages arrived; returns them all."""
        self.wait_count(n, timeout)
        return self.messages

    def wait_count(self, n: int, timeout: float = 5.0) -> int:
        """Blocks until at least n messages arrived; returns how many, parsing none."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"got {len(self.received)} of {n} messages in {timeout} s")
                self._cond.wait(left)
            return len(self.received)

    # -- failure switches ------------------------------------------------------

    def fail_next(self, n: int, code: int = 451) -> None:
        """Answer the next n DATA commands (after the content) with `code`."""
        with self._cond:
            self._fail_left = n
            self._fail_code = code

    def hold_data(self) -> None:
        """From now on each DATA waits, its content read, until answer_data says what to
        answer: a test can act while the daemon is in the middle of an SMTP attempt."""
        self._hold = queue.Queue()
        self._gates.append(self._hold)

    def wait_holding(self, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.holding > 0, timeout):
                raise AssertionError(f"no DATA held within {timeout}s")

    def answer_data(self, answer: str = "250 2.0.0 OK queued", *, release: bool = True) -> None:
        """Answer one held DATA (a 250 keeps the mail); `release`: hold no more after it."""
        assert self._hold is not None
        self._hold.put(answer)
        if release:
            self._hold = None

    def delay_per_message(self, seconds: float) -> None:
        """Sleep before answering each DATA, like a slow relay; other sessions go on."""
        self._delay = seconds

    def trickle(self, seconds_per_byte: float, at: str = "DATA") -> None:
        """Answer DATA (or MAIL) one byte every `seconds_per_byte`, for ever (0: stop)."""
        self._trickle, self._trickle_at = seconds_per_byte, at

    def freeze(self, seconds: float) -> None:
        """Answer nothing at all for `seconds`, on every session: a relay that hangs."""
        assert self._controller is not None and self._controller.loop is not None
        self._controller.loop.call_soon_threadsafe(time.sleep, seconds)

    def permanent_fail_rcpt(self, address: str) -> None:
        """Answer RCPT TO:<address> with 550."""
        self._refused_rcpts.add(address.lower())

    @property
    def refuse(self) -> bool:
        return self._controller is None

    @refuse.setter
    def refuse(self, value: bool) -> None:
        """True: close the listener (and live sessions) so connects get ECONNREFUSED.

        False: listen again on the same port, as a relay coming back would.
        """
        if value and self._controller is not None:
            self.stop()
        elif not value and self._controller is None:
            self.start()

    def drop_connections(self) -> None:
        """Hang up on every open session without a word, as a relay's idle timeout does."""
        controller = self._controller
        if controller is None:
            return
        done = threading.Event()

        def close_all() -> None:
            for protocol in self._protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
            done.set()

        controller.loop.call_soon_threadsafe(close_all)
        done.wait(5)

    # -- internals ---------------------------------------------------------------

    def _saw_connection(self, protocol: SMTP) -> None:
        with self._cond:
            # Keyed on the protocol object: aiosmtpd starts a fresh Session after
            # STARTTLS, but it is still one TCP connection.
            if not any(p is protocol for p in self._greeted):
                self._greeted.append(protocol)

    def _authenticate(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.require_auth is not None
        user, password = self.require_auth
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        if ok or not self.echo_auth:
            return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
        sent = list(getattr(session, "auth_args", [mechanism]))
        if mechanism == "LOGIN" and isinstance(auth_data, LoginPassword):
            sent.append(base64.b64encode(auth_data.password).decode("ascii"))
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 rejected AUTH {' '.join(sent)}"
        )


class Dribbler:
    """A relay that greets one byte every `every` seconds, for ever: no socket timeout
    trips, so only a deadline on the clock ends the wait."""

    def __init__(self, every: float = 0.3) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port = int(self._listener.getsockname()[1])
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dribble, daemon=True)
        self._thread.start()

    def _dribble(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self._listener.accept()
            with conn:
                while not self._stop.wait(self._every):
                    conn.sendall(b"2")

    def __enter__(self) -> Dribbler:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)


def free_port() -> int:
    """A port nobody listens on (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- in a process of its own (make bench) ------------------------------------------------

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)


class SmtpProcess:
    """An SmtpServer in a child process, driven over a pipe of one-line commands.

    For `make bench`: in the bench's own process the server's Python competed for
    the GIL with the Feishu emulator, so the emulator's ack times and the drain
    rate measured the bench as much as the bot. Covers what the bench needs:
    delay, refuse, waiting for a count, and the received Message-IDs.
    """

    def __init__(self, delay: float = 0.0, refuse: bool = False) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.smtp_server", str(delay), "1" if refuse else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
            text=True,
        )
        self.port = int(self._read())
        self._refuse = refuse

    @property
    def pid(self) -> int:
        """The server process's (for the bench's CPU accounting)."""
        return self._proc.pid

    def _read(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"SMTP server process exited ({self._proc.wait()})")
        return line.strip()

    def _ask(self, command: str) -> str:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._read()

    @property
    def refuse(self) -> bool:
        return self._refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        self._ask(f"refuse {int(value)}")
        self._refuse = value

    def wait_for(self, n: int, timeout: float = 5.0) -> int:
        answer = self._ask(f"wait {n} {timeout}")
        if answer.startswith("timeout"):
            raise TimeoutError(f"got {answer.split()[1]} of {n} messages in {timeout} s")
        return int(answer)

    def message_ids(self) -> list[str]:
        return list(json.loads(self._ask("ids")))

    def stop(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                self._ask("quit")
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _serve(delay: float, refuse: bool) -> None:
    """The child's side of SmtpProcess: commands on stdin, one answer line each."""
    server = SmtpServer().start()
    server.delay_per_message(delay)
    server.refuse = refuse
    print(server.port, flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "refuse":
            server.refuse = args[0] == "1"
            answer = "ok"
        elif command == "wait":
            try:
                answer = str(server.wait_count(int(args[0]), float(args[1])))
            except TimeoutError:
                answer = f"timeout {len(server.raw)}"
        elif command == "ids":
            found = (_MESSAGE_ID.search(raw) for raw in server.raw)
            answer = json.dumps([m.group(1).decode("ascii", "replace") for m in found if m])
        else:
            break
        print(answer, flush=True)
    server.stop()


if __name__ == "__main__":
    _serve(float(sys.argv[1]), sys.argv[2] == "1")
