"""The bot's own mailbox over IMAP: where replies to its mail arrive.

stdlib imaplib, used from one thread of its own: its calls block, and nothing
here may wait on the event loop. imaplib has no IDLE before Python 3.14, so
`idle` speaks it (RFC 2177) on imaplib's socket, with a pipe that `interrupt`
writes to so that a stopping daemon need not wait for the server. Mail is
named by (UIDVALIDITY, UID): the caller records the last UID it took, and a
new UIDVALIDITY means the mailbox was recreated and its UIDs start over.

Chinese providers (163, 126, Tencent) refuse SELECT to a client that has not
sent the ID command (RFC 2971) after LOGIN; it is sent wherever the server
offers it.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import os
import select
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feishu_mailbot import __version__
from feishu_mailbot.config.settings import ImapSettings

imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
imaplib.Commands.setdefault("MOVE", ("SELECTED",))


# The most of a mail that is read: a reply's text comes first, and a mail of 100 MB
# must not take the daemon's memory (what is cut is attachments, named as cut).
MAX_MAIL_BYTES = 8 * 1024 * 1024


class ImapError(Exception):
    """The mailbox cannot be read now; the text says which step failed and why."""


@dataclass(frozen=True)
class Opened:
    uidvalidity: int
    idle: bool  # the server offers IDLE (else the caller polls)


def tls_context(settings: ImapSettings) -> ssl.SSLContext:
    """The system's CAs, plus inbound.imap.ca_file's (added, as for SMTP)."""
    context = ssl.create_default_context()
    if settings.ca_file is not None:
        context.load_verify_locations(cadata=settings.ca_file.pem)
    return context


def mailbox_name(name: str) -> str:
    """A mailbox name as IMAP writes it: modified UTF-7 (RFC 3501 §5.1.3), quoted."""
    out: list[str] = []
    wide = ""
    for ch in name + "\0":  # the NUL only flushes the last run
        if ch != "\0" and not 0x20 <= ord(ch) <= 0x7E:
            wide += ch
            continue
        if wide:
            encoded = base64.b64encode(wide.encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + encoded.replace("/", ",") + "-")
            wide = ""
        if ch != "\0":
            out.append("&-" if ch == "&" else ch)
    quoted = "".join(out).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}"'


class Mailbox:
    """One session with the mailbox of `settings`, from one thread at a time."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self._conn: imaplib.IMAP4 | None = None
        self._capabilities: tuple[str, ...] = ()  # the server's, once logged in
        self._wake_lock = threading.Lock()  # interrupt() and shutdown() come from two threads
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def open(self, filing: tuple[str, ...] = ()) -> Opened:
        """Connect, log in, say who we are, select the mailbox; the folders in `filing`
        must exist (mail is moved there)."""
        s = self.settings
        self.close()
        step = "connect"
        try:
            if s.security == "tls":
                conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    s.host, s.port, ssl_context=tls_context(s), timeout=s.timeout
                )
            else:
                conn = imaplib.IMAP4(s.host, s.port, timeout=s.timeout)
            self._conn = conn
            if s.security == "starttls":
                step = "STARTTLS"
                conn.starttls(ssl_context=tls_context(s))
            step = "LOGIN"
            conn.login(s.username, s.password.reveal())
            self._capabilities = self._asked_capabilities(conn)
            if "ID" in self._capabilities:
                step = "ID"
                conn._simple_command("ID", f'("name" "feishu-mailbot" "version" "{__version__}")')
            step = f"SELECT {s.mailbox}"
            kind, data = conn.select(mailbox_name(s.mailbox))
            if kind != "OK":
                raise ImapError(self._said(data))
            found = conn.response("UIDVALIDITY")[1]
            if not found or found[0] is None:
                raise ImapError("the server sent no UIDVALIDITY")
            for counted in ("EXISTS", "RECENT"):  # the mailbox as selected: not news
                conn.untagged_responses.pop(counted, None)
            for folder in filing:
                step = f"LIST {folder}"
                kind, listed = conn.list('""', mailbox_name(folder))
                if kind != "OK" or not [d for d in listed if d]:
                    raise ImapError(f"there is no folder {folder!r}: create it, or fix the config")
            return Opened(int(found[0]), "IDLE" in self._capabilities)
        except ImapError as e:
            self.close()
            raise ImapError(f"IMAP {s.host}:{s.port}: {step} failed: {e}") from e
        except (imaplib.IMAP4.error, OSError, ValueError) as e:
            self.close()
            raise ImapError(f"IMAP {s.host}:{s.port}: {step} failed: {_reason(e)}") from e

    def uids_after(self, last: int) -> list[int]:
        """The UIDs above `last`, oldest first. ("n:*" names the newest mail even when
        its UID is below n, so the list is filtered.) A NOOP first: a server shows a
        session the mail delivered since its last command only then."""
        conn = self._session()
        self._checked("NOOP", conn.noop)
        data = self._ok("UID SEARCH", "SEARCH", None, f"UID {last + 1}:*")
        for seen in ("EXISTS", "RECENT"):  # looked at now: `idle` waits for news after this
            conn.untagged_responses.pop(seen, None)
        words = b" ".join(d for d in data if isinstance(d, bytes)).split()
        return sorted(u for u in (int(w) for w in words if w.isdigit()) if u > last)

    def fetch(self, uid: int) -> bytes | None:
        """The mail (its first MAX_MAIL_BYTES), without marking it seen; None if it is
        gone."""
        part = f"(BODY.PEEK[]<0.{MAX_MAIL_BYTES}>)"
        for item in self._ok("UID FETCH", "FETCH", str(uid), part):
            if isinstance(item, tuple) and len(item) == 2:
                return bytes(item[1])
        return None

    def mark(self, uid: int, flag: str = "\\Seen") -> None:
        self._ok("UID STORE", "STORE", str(uid), "+FLAGS.SILENT", f"({flag})")

    def move(self, uid: int, folder: str) -> None:
        """Into `folder`: MOVE where the server has it, else COPY and delete."""
        target = mailbox_name(folder)
        conn = self._session()
        if "MOVE" in self._capabilities:
            self._ok("UID MOVE", "MOVE", str(uid), target)
            return
        self._ok("UID COPY", "COPY", str(uid), target)
        self.mark(uid, "\\Deleted")
        if "UIDPLUS" in self._capabilities:  # this mail only
            self._ok("UID EXPUNGE", "EXPUNGE", str(uid))
        else:  # a server without UIDPLUS: any mail a person marked deleted goes too
            self._checked("EXPUNGE", conn.expunge)

    def idle(self, seconds: float) -> bool:
        """Wait up to `seconds` for the server to announce mail (IDLE); True if it did,
        False on timeout or `interrupt`. The session is usable again afterwards."""
        conn = self._session()
        for news in ("EXISTS", "RECENT"):  # with an answer since `uids_after` looked
            if conn.untagged_responses.pop(news, None):
                return True
        tag = conn._new_tag()
        try:
            conn.send(tag + b" IDLE\r\n")
            while not (line := conn.readline()).startswith(b"+"):  # untagged lines may come first
                if not line or line.startswith(tag):
                    raise ImapError(f"the server refused IDLE: {line.decode('utf-8', 'replace')}")
            sock = conn.socket()
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if not pending:
                select.select([sock.fileno(), self._wake_r], [], [], seconds)
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 64):  # the rings of `interrupt`, spent
                    pass
            conn.send(b"DONE\r\n")
            announced = False
            while True:
                line = conn.readline()
                if not line:
                    raise ImapError("the server closed the connection")
                if line.startswith(tag):
                    if not line[len(tag) :].lstrip().startswith(b"OK"):
                        raise ImapError(line.decode("utf-8", "replace").strip())
                    return announced
                announced = announced or b"EXISTS" in line or b"RECENT" in line
        except ImapError:
            self.close()
            raise
        except (imaplib.IMAP4.error, OSError, ValueError) as e:
            self.close()
            raise ImapError(f"IMAP {self.settings.host}: IDLE failed: {_reason(e)}") from e

    def interrupt(self) -> None:
        """Ends an `idle` under way in another thread (a stopping daemon)."""
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"x")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            conn.logout()

    def shutdown(self) -> None:
        """For good: the session and the wake pipe."""
        self.close()
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def _session(self) -> imaplib.IMAP4:
        if self._conn is None:
            raise ImapError("not connected")
        return self._conn

    @staticmethod
    def _asked_capabilities(conn: imaplib.IMAP4) -> tuple[str, ...]:
        """Asked again after LOGIN: a server may offer more to a logged-in client."""
        kind, data = conn.capability()
        words = b" ".join(d for d in data if isinstance(d, bytes)).decode("ascii", "replace")
        return tuple(words.upper().split()) if kind == "OK" else tuple(conn.capabilities)

    def _ok(self, what: str, command: str, *args: str | None) -> list[Any]:
        conn = self._session()
        return self._checked(what, lambda: conn.uid(command, *args))  # type: ignore[arg-type]

    def _checked(self, what: str, call: Callable[[], tuple[str, list[Any]]]) -> list[Any]:
        try:
            kind, data = call()
        except (imaplib.IMAP4.error, OSError) as e:
            self.close()
            raise ImapError(f"IMAP {self.settings.host}: {what} failed: {_reason(e)}") from e
        if kind != "OK":
            raise ImapError(f"IMAP {self.settings.host}: {what} refused: {self._said(data)}")
        return list(data)

    @staticmethod
    def _said(data: object) -> str:
        parts = data if isinstance(data, list) else [data]
        return " ".join(
            p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p) for p in parts
        )


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({e.verify_message}); set ca_file"
    if isinstance(e, TimeoutError):
        return "no answer in time"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = e.args[0] if e.args else type(e).__name__
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text)
