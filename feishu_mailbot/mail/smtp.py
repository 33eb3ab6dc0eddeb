"""The SMTP edge: one reusable, blocking connection to the configured relay.

Blocking stdlib smtplib on purpose: the outbox worker calls it through
asyncio.to_thread, so a slow relay costs a worker thread, never the event loop
that acknowledges Feishu events. Every failure leaves this module as a
DeliveryError that says whether retrying can help, because that decision (keep
the mail in the outbox or give up on it) belongs to the caller, and the caller
must not have to know smtplib's exception zoo.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses

# socket.getaddrinfo encodes host names with this codec. Imported lazily, it loads
# (with stringprep and its tables) in the first SMTP thread to connect, holding the
# GIL for milliseconds while the event loop has acks to send.
import encodings.idna  # noqa: F401
import hashlib
import heapq
import itertools
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from feishu_mailbot.config.settings import SmtpSettings
from feishu_mailbot.core import x509
from feishu_mailbot.core.hops import SMTP, Hop

__all__ = [
    "DeliveryError",
    "SmtpTransport",
    "fingerprint",
    "relay_size",
    "tls_context",
    "walk",
]

Refused = dict[str, tuple[int, bytes]]


class DeliveryError(Exception):
    """A mail could not be handed to the relay.

    `permanent` is the only thing the outbox needs to decide between "retry with
    backoff" and "give up and report": 5xx answers to the transaction and
    rejected credentials will not get better by waiting; everything else
    (4xx, network, TLS, disconnects) might.
    """

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class _StepFailed(Exception):
    """Internal: session setup failed; carries the SMTP code so send() can classify it,
    and what it usually means so walk() can say it."""

    def __init__(
        self, step: str, reason: str, code: int | None = None, *, cause: str = "smtp"
    ) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.code = code
        self.cause = cause  # a key of hops.CAUSES, for walk()


class _Stale(Exception):
    """Internal: a reused connection died before the server accepted anything."""


def _reply(code: int, resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
    return f"{code} {' '.join(text.split())}".strip()


def _os_reason(exc: BaseException, timeout: float) -> str:
    """Plain words for network failures; the exception class names mean nothing to an admin."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        detail = str(exc)
        if "timed out" in detail:
            return f"timed out after {timeout:g} s"
        return "server closed the connection"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scrubber(settings: SmtpSettings) -> Callable[[str], str]:
    """Guards messages against a relay that echoes the credentials in its reply.

    The password travels as base64 too: AUTH LOGIN sends base64(password) on
    its own, AUTH PLAIN one blob base64(authzid NUL user NUL password), in which
    the password's base64 depends on what precedes it; so the blob is masked
    whole, as computed for the configured user (with no authzid, as smtplib
    sends it, or the user again), and so is any base64 token that decodes to
    something holding the password, or that holds the password's base64 as it
    reads at any of the three alignments (a token cut short does not decode).
    """
    secret = settings.password.reveal() if settings.password else ""
    if not secret:
        return lambda text: text
    raw, user = secret.encode("utf-8"), (settings.username or "").encode("utf-8")
    literal = [
        secret,
        _b64(b"\0" + user + b"\0" + raw),
        _b64(user + b"\0" + user + b"\0" + raw),
        _b64(raw),
    ]
    literals = re.compile("|".join(map(re.escape, sorted(set(literal), key=len, reverse=True))))
    cores = []
    for shift in range(3):  # the password starting 0, 1 or 2 bytes into a 3-byte group
        encoded = _b64(b"\0" * shift + raw)
        first, end = (1 if shift else 0), (shift + len(raw)) // 3  # groups of password only
        core = encoded[4 * first : 4 * end]
        if len(core) >= 4:
            cores.append(core)

    def token(found: re.Match[str]) -> str:
        text = found.group()
        if any(core in text for core in cores):
            return "***"
        try:
            decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            return text
        return "***" if raw in decoded else text

    return lambda text: _BASE64_TOKEN.sub(token, literals.sub("***", text))


def tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    """The trust of every SMTP session (delivery, check-config, doctor): decided here only.

    The system's store, plus smtp.ca_file's certificates when set: added, not
    instead, so a relay's private CA (or a TLS-inspecting firewall's) cannot
    make the public ones fail, and a relay that moves to a public certificate
    keeps working. With smtp.tls_fingerprint neither the chain nor the name is
    verified, as with msmtp's tls_fingerprint: _open accepts that certificate
    and no other, which is stricter than any CA. There is no way to verify nothing.
    """
    context = ssl.create_default_context()
    if settings.ca_file is not None:
        context.load_verify_locations(cadata=settings.ca_file.pem)
    if settings.tls_fingerprint:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def fingerprint(der: bytes) -> str:
    """A certificate's SHA-256 as msmtp and openssl print it (AB:CD:…), as config keeps pins."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


class _Trail:
    """The hops a session setup has passed, each timed: walk() reports them, delivery
    only needs the session (its transaction deadline bounds it).

    With `until` (walk's deadline), the trail also keeps the clock: once the
    socket exists it is shut down when a hop outlasts smtp.timeout or the walk
    its deadline, since a relay that trickles a byte per timeout would never
    trip a socket timeout.
    """

    def __init__(
        self, settings: SmtpSettings, scrub: Callable[[str], str], until: float | None = None
    ) -> None:
        self.target = f"{settings.host}:{settings.port}"
        self.timeout = settings.timeout
        self.scrub = scrub
        self.hops: list[Hop] = []
        self.name = "DNS"  # the hop under way
        self.expired = ""  # "hop" or "walk": the clock shut the socket down
        self._until = until
        self._mark = time.monotonic()
        self._handle: socket.socket | None = None
        self._token: int | None = None

    def budget(self) -> float:
        """How long the next blocking call may take."""
        if self._until is None:
            return self.timeout
        return max(0.01, min(self.timeout, self._until - time.monotonic()))

    def begin(self, name: str) -> None:
        self.name, self._mark = name, time.monotonic()
        self._arm()

    def passed(self, detail: str) -> None:
        self.hops.append(Hop(SMTP, self.name, True, self.ms(), self.scrub(detail), "", self.target))

    def ms(self) -> float:
        return (time.monotonic() - self._mark) * 1000

    def watch(self, sock: socket.socket) -> None:
        if self._until is not None:
            self._handle = sock.dup()  # see SmtpTransport._handle
            self._arm()

    def close(self) -> None:
        if self._token is not None:
            _DEADLINES.disarm(self._token)
            self._token = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _arm(self) -> None:
        if self._until is None or self._handle is None:
            return
        if self._token is not None:
            _DEADLINES.disarm(self._token)
        left = self._until - time.monotonic()
        which = "hop" if self.timeout < left else "walk"
        self._token = _DEADLINES.arm(min(self.timeout, left), partial(self._expire, which))

    def _expire(self, which: str) -> None:
        self.expired = which
        _shutdown(self._handle)


def _open(
    settings: SmtpSettings,
    context: ssl.SSLContext,
    trail: _Trail,
    opening: Callable[[socket.socket], None] = lambda sock: None,
) -> smtplib.SMTP:
    """Brings a session up to "ready for MAIL FROM", hop by hop: delivery, check and walk.

    Kept as one function so the online check and `doctor` exercise exactly the
    code path that delivery uses; a check that passes while delivery fails would
    be worse than none. The TCP connection is made here rather than by smtplib
    so that `opening` sees its socket before the TLS handshake and the greeting:
    a deadline can then abort a relay that trickles either.
    """
    timeout = settings.timeout
    raw = _connect(settings, trail)
    opening(raw)
    trail.watch(raw)
    smtp = smtplib.SMTP(timeout=timeout)
    # What STARTTLS verifies the certificate against; smtplib records it only when
    # its constructor connects.
    smtp._host = settings.host  # type: ignore[attr-defined]
    try:
        if settings.security == "tls":
            trail.begin("TLS")
            try:
                smtp.sock = context.wrap_socket(raw, server_hostname=settings.host)
            except (OSError, ssl.SSLError) as exc:
                reason = _os_reason(exc, timeout)
                raise _StepFailed("TLS handshake", reason, cause=_tls_cause(exc)) from exc
            trail.passed(_secured(smtp.sock, settings))
        else:
            smtp.sock = raw

        trail.begin("greeting")
        try:
            code, greeting = smtp.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            raise _StepFailed("connect", _os_reason(exc, timeout), cause="smtp-greeting") from exc
        if code != 220:
            reason = f"greeting rejected ({_reply(code, greeting)})"
            raise _StepFailed("connect", reason, code, cause="smtp")
        trail.passed(_reply(code, greeting)[:120])

        trail.begin("EHLO")
        _ehlo(smtp, timeout)
        trail.passed(_offers(smtp))

        if settings.security == "starttls":
            trail.begin("STARTTLS")
            # Checked here rather than left to smtplib so the message says what the
            # admin must change; the point is to never fall back to cleartext.
            if not smtp.has_extn("starttls"):
                raise _StepFailed(
                    "STARTTLS", "server does not offer STARTTLS", cause="smtp-starttls"
                )
            try:
                code, resp = smtp.starttls(context=context)
            except ssl.SSLError as exc:
                reason = _os_reason(exc, timeout)
                raise _StepFailed("TLS handshake", reason, cause=_tls_cause(exc)) from exc
            except (OSError, smtplib.SMTPException) as exc:
                reason = _os_reason(exc, timeout)
                raise _StepFailed("STARTTLS", reason, cause=_net_cause(exc)) from exc
            if code != 220:
                # smtplib returns instead of raising here; without this check the
                # session would carry on in cleartext.
                reason = f"server refused ({_reply(code, resp)})"
                raise _StepFailed("STARTTLS", reason, code, cause="smtp")
            assert isinstance(smtp.sock, ssl.SSLSocket)
            secured = _secured(smtp.sock, settings)  # before anything is said over it
            _ehlo(smtp, timeout)
            trail.passed(secured)

        if settings.username:
            trail.begin("AUTH")
            _login(smtp, settings)
            trail.passed(f"logged in as {settings.username}")
    except BaseException:
        smtp.close()
        raw.close()
        raise
    return smtp


def _connect(settings: SmtpSettings, trail: _Trail) -> socket.socket:
    """DNS and TCP, each a hop; the name is looked up in a thread of its own because
    getaddrinfo takes no timeout, and a resolver that does not answer must not hold
    a worker (or doctor) longer than the hop may take."""
    trail.begin("DNS")
    found: list[list[tuple[Any, ...]] | BaseException] = []

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the waiting thread
            found.append(exc)

    thread = threading.Thread(target=look_up, name="smtp-dns", daemon=True)
    thread.start()
    wait = trail.budget()
    thread.join(wait)
    if not found:
        reason = f"no answer from the resolver within {wait:g} s"
        raise _StepFailed("connect", reason, cause="smtp-dns")
    if isinstance(found[0], BaseException):
        exc = found[0]
        raise _StepFailed("connect", _os_reason(exc, wait), cause="smtp-dns") from exc
    addresses = found[0]
    shown = list(dict.fromkeys(str(a[4][0]) for a in addresses))
    trail.passed(", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else ""))

    trail.begin("TCP")
    last: OSError = ConnectionError("no address")
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(trail.budget())
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.settimeout(settings.timeout)
        where = f"[{address[0]}]" if family == socket.AF_INET6 else str(address[0])
        trail.passed(f"connected to {where}:{address[1]}")
        return sock
    raise _StepFailed("connect", _os_reason(last, settings.timeout), cause="smtp-tcp") from last


def _secured(sock: ssl.SSLSocket, settings: SmtpSettings) -> str:
    """Checks the pin, if any, right after the handshake: before the greeting is
    believed, and before AUTH or any mail travels. Returns what the hop found."""
    der = sock.getpeercert(binary_form=True) or b""
    presented, issuer = fingerprint(der), x509.issuer_or_why(der)
    if settings.tls_fingerprint and presented != settings.tls_fingerprint:
        raise _StepFailed(
            "TLS handshake",
            f"the certificate's SHA-256 fingerprint is {presented}, not "
            f"{settings.tls_fingerprint} as smtp.tls_fingerprint pins (issued by {issuer})",
            cause="smtp-pin",
        )
    pinned = ", as smtp.tls_fingerprint pins" if settings.tls_fingerprint else ""
    return f"{sock.version()}, certificate issued by {issuer}{pinned}"


def _login(smtp: smtplib.SMTP, settings: SmtpSettings) -> None:
    timeout = settings.timeout
    password = settings.password.reveal() if settings.password else ""
    try:
        smtp.login(settings.username or "", password)
    except smtplib.SMTPAuthenticationError as exc:
        reason = f"authentication rejected ({_reply(exc.smtp_code, exc.smtp_error)})"
        raise _StepFailed("AUTH", reason, exc.smtp_code, cause="smtp-auth") from exc
    except smtplib.SMTPNotSupportedError as exc:
        hint = " before STARTTLS" if settings.security == "none" else ""
        raise _StepFailed("AUTH", f"server does not offer AUTH{hint}", cause="smtp") from exc
    except smtplib.SMTPResponseException as exc:
        reason = f"authentication failed ({_reply(exc.smtp_code, exc.smtp_error)})"
        raise _StepFailed("AUTH", reason, exc.smtp_code, cause="smtp-auth") from exc
    except smtplib.SMTPException as exc:
        offered = smtp.esmtp_features.get("auth", "").strip() or "none"
        reason = f"{exc} (server offers: {offered})"
        raise _StepFailed("AUTH", reason, cause="smtp") from exc
    except OSError as exc:
        raise _StepFailed("AUTH", _os_reason(exc, timeout), cause=_net_cause(exc)) from exc


def _ehlo(smtp: smtplib.SMTP, timeout: float) -> None:
    try:
        code, resp = smtp.ehlo()
    except (OSError, smtplib.SMTPException) as exc:
        raise _StepFailed("EHLO", _os_reason(exc, timeout), cause=_net_cause(exc)) from exc
    if code != 250:
        raise _StepFailed("EHLO", f"rejected ({_reply(code, resp)})", code, cause="smtp")


def _offers(smtp: smtplib.SMTP) -> str:
    """What EHLO offered, for doctor: whether STARTTLS and AUTH are there is the point."""
    shown = []
    for name, value in smtp.esmtp_features.items():
        value = " ".join(value.split()) if name in ("auth", "size") else ""
        shown.append(f"{name.upper()} {value}".strip())
    return "offers " + ", ".join(sorted(shown)) if shown else "offers no extensions"


# The verify results that mean "signed by a CA not trusted here" (OpenSSL's X509_V_ERR_*).
_UNTRUSTED = {2, 18, 19, 20, 21, 27}


def _tls_cause(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "smtp-tls-untrusted" if exc.verify_code in _UNTRUSTED else "smtp-tls-cert"
    return "timeout" if isinstance(exc, TimeoutError) else "smtp-tls"


def _net_cause(exc: BaseException) -> str:
    timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc)
    return "timeout" if timed_out else "smtp"


# The issuer's attributes doctor names, as RFC 4514 writes them.
def _quit(smtp: smtplib.SMTP) -> None:
    """Polite QUIT, but a dying connection must never turn into an error on shutdown."""
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        smtp.close()


_EOL = re.compile(rb"\r\n|\r|\n")


class Transport(Protocol):
    """A delivery backend: one session to a relay, driven from one thread at a time.

    `send` takes the mail's bytes or a spool file of them, raises DeliveryError
    (permanent or not) and returns the recipients the relay refused;
    `size_limit` is the largest mail the relay takes. SmtpTransport is the one
    we ship.
    """

    def send(self, raw: bytes | Path, sender: str, recipients: Sequence[str]) -> Refused: ...
    def size_limit(self) -> int | None: ...
    def close_if_idle(self, idle_seconds: float) -> bool: ...
    def close(self) -> None: ...
    def reconfigure(self, settings: SmtpSettings) -> None: ...


class SmtpTransport:
    """One lazily opened connection, reused across send() calls.

    Reuse matters for bursts (a rule matching many messages, the daily report
    fan-out): a TLS handshake plus AUTH costs more than the mail itself. The
    price is that the relay may have dropped the connection while we were idle,
    so a connection idle for longer than `probe_after` is NOOP-probed first, and
    a reused connection that dies before the server accepted anything of the
    transaction is replaced once, transparently.

    Calls are serialised by a lock, so the object may be shared between the
    worker threads asyncio.to_thread hands out.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        ssl_context: ssl.SSLContext | None = None,
        *,
        probe_after: float = 10.0,
    ) -> None:
        self._given_context = ssl_context  # tests; else the settings' own, made in _apply
        self._probe_after = probe_after
        self._apply(settings)
        self._next: SmtpSettings | None = None  # from reconfigure(), taken up under the lock
        self._smtp: smtplib.SMTP | None = None
        self._last_used = 0.0
        self._lock = threading.Lock()
        self._expired: float | None = None  # set by _abort when a transaction ran out
        # A second descriptor of the session's TCP socket, for _abort: shutting it down
        # wakes the sending thread without touching its TLS state.
        self._handle: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self._smtp is not None

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reconfigure(self, settings: SmtpSettings) -> None:
        """New settings take effect with the next send or close, in the thread doing it.

        Never blocks: the caller is the event loop (a reload), and closing here
        would wait for a send in progress, or for a stuck relay to answer QUIT.
        """
        self._next = settings

    def _apply(self, settings: SmtpSettings) -> None:
        self._settings = settings
        self._where = f"{settings.host}:{settings.port}"
        self._scrub = scrubber(settings)  # a new password must be scrubbed too
        # A reload may bring another ca_file or pin: the next session trusts by those.
        self._context = self._given_context or tls_context(settings)

    def _take_new_settings(self) -> None:
        """Under the lock: a reconfigured transport drops its old connection first."""
        settings, self._next = self._next, None
        if settings is not None:
            self._drop(polite=True)
            self._apply(settings)

    def send(self, raw: bytes | Path, sender: str, recipients: Sequence[str]) -> Refused:
        """Hands one message to the relay: its bytes, or a file of them (streamed).

        Returns the recipients the server refused while accepting the message for
        the others (same shape as smtplib's sendmail), so the caller can log or
        retry just those. Raises DeliveryError when nobody got the message, and
        when the whole transaction outlasts its deadline (a relay that trickles a
        byte per timeout would otherwise hold this thread for ever).
        """
        if not recipients:
            raise ValueError("send() needs at least one recipient")
        # A file is a spooled mail of ours: CRLF already. Bytes may come from anywhere.
        data = raw if isinstance(raw, Path) else _EOL.sub(b"\r\n", raw)
        with self._lock:
            self._take_new_settings()
            size = data.stat().st_size if isinstance(data, Path) else len(data)
            deadline = transaction_deadline(self._settings.timeout, size)
            with _Deadline(self, deadline):
                try:
                    return self._send_once(data, sender, recipients, may_retry=True)
                except _Stale:
                    return self._send_once(data, sender, recipients, may_retry=False)

    def size_limit(self) -> int | None:
        """The relay's EHLO SIZE (RFC 1870), connecting first if need be; None: no limit."""
        with self._lock:
            self._take_new_settings()
            with _Deadline(self, transaction_deadline(self._settings.timeout, 0)):
                smtp, _ = self._session()  # raises DeliveryError
            return _advertised_size(smtp)

    def close(self) -> None:
        """QUITs the connection if there is one; errors are ignored because it is going away."""
        with self._lock:
            self._drop(polite=True)

    def close_if_idle(self, idle_seconds: float) -> bool:
        """Drops a connection unused for `idle_seconds`, before the server's own timeout does.

        Never waits for a send in progress (a busy connection is not idle);
        returns whether a connection was closed.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._take_new_settings()
            if self._smtp is None or time.monotonic() - self._last_used < idle_seconds:
                return False
            self._drop(polite=True)
            return True
        finally:
            self._lock.release()

    # -- internals -------------------------------------------------------------

    def _error(self, what: str, reason: str, permanent: bool) -> DeliveryError:
        if self._expired is not None:
            reason = f"the transaction took over its {self._expired:.0f} s deadline"
            permanent = False
        text = self._scrub(f"{self._where}: {what} failed: {reason}")
        return DeliveryError(text, permanent)

    def _opening(self, sock: socket.socket) -> None:
        self._handle = sock.dup()

    def _abort(self, deadline: float) -> None:
        """From the deadline thread: wakes a send blocked on a trickling relay."""
        self._expired = deadline
        _shutdown(self._handle)

    def _drop(self, polite: bool) -> None:
        smtp, self._smtp = self._smtp, None
        handle, self._handle = self._handle, None
        if smtp is not None and polite:
            # A relay may dribble its answer to QUIT too.
            token = _DEADLINES.arm(self._settings.timeout, partial(_shutdown, handle))
            try:
                _quit(smtp)
            finally:
                _DEADLINES.disarm(token)
        elif smtp is not None:
            smtp.close()
        if handle is not None:
            handle.close()  # the last descriptor: only now does the connection close

    def _connect(self) -> smtplib.SMTP:
        if self._expired is not None:
            # Past the deadline nothing starts again: not a probe's reconnect, not a retry.
            raise self._error("connect", "", False)
        try:
            trail = _Trail(self._settings, self._scrub)
            smtp = _open(self._settings, self._context, trail, self._opening)
        except BaseException as exc:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            if not isinstance(exc, _StepFailed):
                raise
            # Even a 535 is temporary for the outbox: a wrong password is an operator's
            # mistake to fix, and the mail must still be there when it is fixed.
            raise self._error(exc.step, exc.reason, False) from exc
        self._smtp = smtp
        self._last_used = time.monotonic()
        return smtp

    def _session(self) -> tuple[smtplib.SMTP, bool]:
        """Returns a ready session and whether it is a reused one."""
        smtp = self._smtp
        if smtp is None:
            return self._connect(), False
        if time.monotonic() - self._last_used >= self._probe_after:
            try:
                code, _ = smtp.noop()
            except (OSError, smtplib.SMTPException):
                code = -1
            if code != 250:
                self._drop(polite=False)
                return self._connect(), False
        return smtp, True

    def _send_once(
        self, data: bytes | Path, sender: str, recipients: Sequence[str], *, may_retry: bool
    ) -> Refused:
        smtp, reused = self._session()
        timeout = self._settings.timeout
        stage = "MAIL FROM"
        try:
            options = self._mail_options(smtp, data, sender, recipients)
            code, resp = smtp.mail(sender, options)
            if code != 250:
                self._reset_or_drop(smtp, code)
                raise self._error(
                    "MAIL FROM", f"sender refused ({_reply(code, resp)})", code >= 500
                )

            stage = "RCPT TO"
            refused: Refused = {}
            for rcpt in recipients:
                code, resp = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, resp)
                if code == 421:
                    break
            closing = any(c == 421 for c, _ in refused.values())
            if closing or len(refused) == len(recipients):
                self._reset_or_drop(smtp, 421 if closing else 550)
                detail = "; ".join(f"{r}: {_reply(c, m)}" for r, (c, m) in refused.items())
                permanent = all(c >= 500 for c, _ in refused.values())
                what = "server is closing the connection" if closing else "all recipients refused"
                raise self._error("RCPT TO", f"{what} ({detail})", permanent)

            stage = "DATA"
            reply: bytes | str
            try:
                code, reply = _data_from(smtp, data) if isinstance(data, Path) else smtp.data(data)
            except smtplib.SMTPDataError as exc:  # the DATA command itself (not 354)
                code, reply = exc.smtp_code, exc.smtp_error
            if code != 250:
                self._reset_or_drop(smtp, code)
                raise self._error("DATA", f"message refused ({_reply(code, reply)})", code >= 500)
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            self._drop(polite=False)
            if reused and may_retry and stage == "MAIL FROM":
                raise _Stale from exc
            raise self._error(stage, _os_reason(exc, timeout), False) from exc
        except smtplib.SMTPException as exc:  # anything smtplib invents beyond the above
            self._drop(polite=False)
            raise self._error(stage, str(exc), False) from exc
        self._last_used = time.monotonic()
        return refused

    def _mail_options(
        self, smtp: smtplib.SMTP, data: bytes | Path, sender: str, recipients: Sequence[str]
    ) -> list[str]:
        """Declares the size, 8-bit bodies and UTF-8 addresses where the server supports them.

        A mail over the relay's SIZE would be refused after its whole body was
        sent; declared, the relay refuses it at MAIL FROM. Non-ASCII addresses on
        a server without SMTPUTF8 can never be delivered there, hence permanent;
        smtplib would otherwise die with UnicodeEncodeError.
        """
        options: list[str] = []
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        if smtp.has_extn("size"):
            options.append(f"SIZE={size}")
        # A spool file holds only mail we wrote, base64 bodies and ASCII headers.
        if isinstance(data, bytes) and not data.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not all(a.isascii() for a in (sender, *recipients)):
            if not smtp.has_extn("smtputf8"):
                raise self._error("MAIL FROM", "non-ASCII address but server lacks SMTPUTF8", True)
            options.append("SMTPUTF8")
        return options

    def _reset_or_drop(self, smtp: smtplib.SMTP, code: int) -> None:
        """Keeps the connection reusable after a refused transaction; 421 means it is closing."""
        if code == 421:
            self._drop(polite=False)
            return
        try:
            code, _ = smtp.rset()
        except (OSError, smtplib.SMTPException):
            code = -1
        if code != 250:
            self._drop(polite=False)
        else:
            self._last_used = time.monotonic()


def relay_size(settings: SmtpSettings) -> int | None:
    """The relay's SIZE over a session of its own, for a mail composed away from the
    outbox (a digest: attachments.RelaySize keeps it); raises DeliveryError."""
    with SmtpTransport(settings) as transport:
        return transport.size_limit()


def transaction_deadline(timeout: float, size: int) -> float:
    """How long one whole transaction may take: a few round trips of `timeout` each,
    plus the body at 100 kB/s (a 25 MB mail: +6 min), however the relay dribbles."""
    return 4 * timeout + size / 100_000


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Deadlines:
    """One thread keeps every transaction's deadline: arming one costs a heap push,
    not a thread. `fire` runs under the lock, so once disarm() has returned it
    cannot run late and abort the next transaction."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._armed: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, fire: Callable[[], None]) -> int:
        with self._cond:
            token = next(self._tokens)
            heapq.heappush(self._heap, (time.monotonic() + seconds, token, fire))
            self._armed.add(token)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="smtp-deadlines", daemon=True
                )
                self._thread.start()
            if self._heap[0][1] == token:  # sooner than what the thread sleeps towards
                self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.discard(token)
            # Transactions mostly end in the order they began: the heap stays short.
            while self._heap and self._heap[0][1] not in self._armed:
                heapq.heappop(self._heap)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                at, token, fire = self._heap[0]
                if at > time.monotonic():
                    self._cond.wait(at - time.monotonic())
                    continue
                heapq.heappop(self._heap)
                self._armed.discard(token)
                fire()


_DEADLINES = _Deadlines()


class _Deadline:
    """The transport's socket is shut down if the transaction is not over in `seconds`."""

    def __init__(self, transport: SmtpTransport, seconds: float) -> None:
        self._transport = transport
        self._seconds = seconds
        self._token = -1

    def __enter__(self) -> None:
        self._transport._expired = None
        self._token = _DEADLINES.arm(self._seconds, partial(self._transport._abort, self._seconds))

    def __exit__(self, *exc: object) -> None:
        _DEADLINES.disarm(self._token)
        if self._transport._expired is not None:
            # The socket was shut down under the session: never reuse it.
            self._transport._drop(polite=False)
            self._transport._expired = None


def _advertised_size(smtp: smtplib.SMTP) -> int | None:
    value = smtp.esmtp_features.get("size", "").strip()
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


def _data_from(smtp: smtplib.SMTP, path: Path) -> tuple[int, bytes]:
    """smtplib's data(), streaming a file: a 34 MB mail costs 64 KiB, not three copies."""
    smtp.putcmd("data")
    code, reply = smtp.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    chunk: list[bytes] = []
    filled = 0
    last = b"\r\n"
    with open(path, "rb") as source:
        for line in source:
            if line.startswith(b"."):
                line = b"." + line  # RFC 5321 4.5.2 dot-stuffing
            chunk.append(line)
            filled += len(line)
            last = line
            if filled >= 65536:
                smtp.send(b"".join(chunk))
                chunk, filled = [], 0
    if not last.endswith(b"\r\n"):
        chunk.append(b"\r\n")
    chunk.append(b".\r\n")
    smtp.send(b"".join(chunk))
    return smtp.getreply()


def walk(
    settings: SmtpSettings, *, deadline: float = 30.0, ssl_context: ssl.SSLContext | None = None
) -> list[Hop]:
    """`doctor`'s SMTP path: one Hop per hop up to AUTH, then QUIT; never a mail.

    Walks the very session setup that delivery uses (_open: DNS, TCP, TLS,
    greeting, EHLO, STARTTLS, AUTH), so what doctor proves is what the outbox
    will meet, and stops at the first hop that fails, with its usual cause.
    Each hop is bounded by smtp.timeout, the whole walk by `deadline` seconds.
    Every detail has passed the password scrubber.
    """
    context = ssl_context if ssl_context is not None else tls_context(settings)
    until = time.monotonic() + deadline
    trail = _Trail(settings, scrubber(settings), until)
    try:
        try:
            smtp = _open(settings, context, trail)
        except _StepFailed as exc:
            ms, detail, cause = trail.ms(), exc.reason, exc.cause  # ms before any peek
            if trail.expired == "walk":
                detail, cause = f"no answer within the walk's {deadline:g} s deadline", "timeout"
            elif trail.expired == "hop":
                detail = f"timed out after {settings.timeout:g} s"
                cause = "smtp-greeting" if trail.name == "greeting" else "timeout"
            elif cause in ("smtp-tls-untrusted", "smtp-tls-cert"):
                detail += f"; the certificate is issued by {_peek_issuer(settings, until)}"
        except Exception as exc:  # doctor reports what it could not foresee, and goes on
            ms, detail, cause = trail.ms(), f"{type(exc).__name__}: {exc}", "smtp"
        else:
            trail.begin("QUIT")  # not a hop of its own, but bounded like one
            _quit(smtp)
            return trail.hops
        failed = Hop(SMTP, trail.name, False, ms, trail.scrub(detail), cause, trail.target)
        return [*trail.hops, failed]
    finally:
        trail.close()


def _peek_issuer(settings: SmtpSettings, until: float) -> str:
    """Who issued a certificate that failed verification: the question an operator
    behind a TLS-inspecting firewall needs answered. The ssl module does not give a
    failed certificate, so this is a second session that verifies nothing, used for
    nothing but reading the certificate: no pin, no AUTH, no mail; then QUIT."""
    look = dataclasses.replace(settings, username=None, password=None, tls_fingerprint=None)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    trail = _Trail(look, scrubber(settings), until)
    try:
        try:
            smtp = _open(look, context, trail)
        except _StepFailed:
            return "a CA that could not be read (a second handshake to read it failed)"
        sock = smtp.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        _quit(smtp)
        return x509.issuer_or_why(der or b"")
    finally:
        trail.close()
