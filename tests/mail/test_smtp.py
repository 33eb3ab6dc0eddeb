"""SmtpTransport and walk() (doctor's SMTP hops) against a real aiosmtpd server on loopback."""

from __future__ import annotations

import contextlib
import email.policy
import smtplib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from feishu_mailbot.config.settings import Secret, SmtpSettings
from feishu_mailbot.core.hops import Hop
from feishu_mailbot.mail.smtp import DeliveryError, SmtpTransport, walk
from tests.smtp_server import HOST, Dribbler, SmtpServer, free_port

PASSWORD = "hunter2-Sekrit"
SENDER = "bot@example.test"


def make_settings(
    port: int,
    security: str = "none",
    username: str | None = None,
    password: str | None = None,
    timeout: float = 5.0,
) -> SmtpSettings:
    return SmtpSettings(
        host=HOST,
        port=port,
        security=security,  # type: ignore[arg-type]
        sender=f"Feishu Bot <{SENDER}>",
        username=username,
        password=Secret(password) if password is not None else None,
        timeout=timeout,
    )


def make_mail(subject: str = "日报：测试 ✓ report", to: str = "alice@example.test") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Feishu Bot <{SENDER}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("正文 body\n.leading dot line\n")
    return msg.as_bytes(policy=email.policy.SMTP)


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with SmtpServer() as srv:
        yield srv


# -- delivery ------------------------------------------------------------------


def test_plain_send_round_trips_utf8_subject(server: SmtpServer) -> None:
    with SmtpTransport(make_settings(server.port)) as transport:
        refused = transport.send(make_mail(), SENDER, ["alice@example.test"])
    assert refused == {}
    [msg] = server.wait_for(1)
    assert msg["Subject"] == "日报：测试 ✓ report"
    body = msg.get_body()
    assert body is not None
    # CRLF survives parsing of an 8bit part; the point is that dot-stuffing was undone.
    assert body.get_content().replace("\r\n", "\n") == "正文 body\n.leading dot line\n"
    assert server.received[0].mail_from == SENDER
    assert server.received[0].rcpt_tos == ["alice@example.test"]
    assert server.raw[0].startswith(b"From: ")


def test_three_sends_share_one_connection(server: SmtpServer) -> None:
    with SmtpTransport(make_settings(server.port)) as transport:
        for i in range(3):
            transport.send(make_mail(f"n{i}"), SENDER, ["alice@example.test"])
        assert transport.connected
    assert [m["Subject"] for m in server.wait_for(3)] == ["n0", "n1", "n2"]
    assert server.connections == 1


@pytest.mark.parametrize("probe_after", [0.0, 3600.0], ids=["noop-probe", "mail-fails"])
def test_reconnects_once_after_server_dropped_idle_connection(
    server: SmtpServer, probe_after: float
) -> None:
    with SmtpTransport(make_settings(server.port), probe_after=probe_after) as transport:
        transport.send(make_mail("before"), SENDER, ["alice@example.test"])
        server.drop_connections()
        time.sleep(0.05)  # let the FIN arrive
        transport.send(make_mail("after"), SENDER, ["alice@example.test"])
    assert [m["Subject"] for m in server.wait_for(2)] == ["before", "after"]
    assert server.connections == 2


def test_starttls_and_auth() -> None:
    with SmtpServer(starttls=True, require_auth=("bot", PASSWORD)) as srv:
        settings = make_settings(srv.port, "starttls", "bot", PASSWORD)
        with SmtpTransport(settings, ssl_context=srv.ssl_context_for_client) as transport:
            transport.send(make_mail(), SENDER, ["alice@example.test"])
        srv.wait_for(1)
        assert srv.received[0].auth_login == "bot"


def test_implicit_tls() -> None:
    with SmtpServer(tls=True) as srv:
        settings = make_settings(srv.port, "tls")
        with SmtpTransport(settings, ssl_context=srv.ssl_context_for_client) as transport:
            transport.send(make_mail(), SENDER, ["alice@example.test"])
        srv.wait_for(1)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_wrong_password_keeps_mail_retrying_and_is_not_echoed() -> None:
    """A 535 is an operator's mistake to fix; the mail must survive until it is fixed."""
    with SmtpServer(require_auth=("bot", "right")) as srv:
        settings = make_settings(srv.port, "none", "bot", PASSWORD)
        with SmtpTransport(settings) as transport, pytest.raises(DeliveryError) as info:
            transport.send(make_mail(), SENDER, ["alice@example.test"])
        assert not info.value.permanent
        text = str(info.value)
        assert f"{HOST}:{srv.port}: AUTH failed" in text
        assert "535" in text
        assert PASSWORD not in text and PASSWORD not in repr(info.value)
        assert srv.messages == []


def test_451_is_temporary_and_connection_stays_usable(server: SmtpServer) -> None:
    server.fail_next(1)
    with SmtpTransport(make_settings(server.port)) as transport:
        with pytest.raises(DeliveryError) as info:
            transport.send(make_mail("first"), SENDER, ["alice@example.test"])
        assert not info.value.permanent
        assert "DATA failed" in str(info.value) and "451" in str(info.value)
        transport.send(make_mail("second"), SENDER, ["alice@example.test"])
    assert [m["Subject"] for m in server.wait_for(1)] == ["second"]
    assert server.connections == 1


def test_5xx_on_data_is_permanent(server: SmtpServer) -> None:
    server.fail_next(1, code=554)
    with SmtpTransport(make_settings(server.port)) as transport, pytest.raises(DeliveryError) as e:
        transport.send(make_mail(), SENDER, ["alice@example.test"])
    assert e.value.permanent


def test_some_recipients_refused_is_success_for_the_rest(server: SmtpServer) -> None:
    server.permanent_fail_rcpt("gone@example.test")
    with SmtpTransport(make_settings(server.port)) as transport:
        refused = transport.send(make_mail(), SENDER, ["alice@example.test", "gone@example.test"])
        assert list(refused) == ["gone@example.test"]
        assert refused["gone@example.test"][0] == 550
        with pytest.raises(DeliveryError) as info:
            transport.send(make_mail(), SENDER, ["gone@example.test"])
        assert info.value.permanent
        assert "RCPT TO failed: all recipients refused" in str(info.value)
    server.wait_for(1)
    assert server.received[0].rcpt_tos == ["alice@example.test"]
    assert len(server.messages) == 1


def test_refused_port_is_temporary() -> None:
    port = free_port()
    with SmtpTransport(make_settings(port)) as transport, pytest.raises(DeliveryError) as info:
        transport.send(make_mail(), SENDER, ["alice@example.test"])
    assert not info.value.permanent
    assert str(info.value) == f"{HOST}:{port}: connect failed: connection refused"


def test_server_going_away_and_coming_back(server: SmtpServer) -> None:
    with SmtpTransport(make_settings(server.port)) as transport:
        transport.send(make_mail("one"), SENDER, ["alice@example.test"])
        server.refuse = True
        with pytest.raises(DeliveryError) as info:
            transport.send(make_mail("lost"), SENDER, ["alice@example.test"])
        assert not info.value.permanent
        assert "connection refused" in str(info.value)
        server.refuse = False
        transport.send(make_mail("two"), SENDER, ["alice@example.test"])
    assert [m["Subject"] for m in server.wait_for(2)] == ["one", "two"]


def test_starttls_not_offered_never_sends_in_clear(server: SmtpServer) -> None:
    with (
        SmtpTransport(make_settings(server.port, "starttls")) as transport,
        pytest.raises(DeliveryError) as info,
    ):
        transport.send(make_mail(), SENDER, ["alice@example.test"])
    assert not info.value.permanent
    assert "STARTTLS failed: server does not offer STARTTLS" in str(info.value)
    assert server.messages == []


def test_slow_server_does_not_serialise_connections_and_times_out(server: SmtpServer) -> None:
    server.delay_per_message(0.4)
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            with SmtpTransport(make_settings(server.port)) as transport:
                transport.send(make_mail(), SENDER, ["alice@example.test"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert time.monotonic() - started < 1.0  # three 0.4 s DATA answers overlapped

    with (
        SmtpTransport(make_settings(server.port, timeout=0.1)) as transport,
        pytest.raises(DeliveryError) as info,
    ):
        transport.send(make_mail(), SENDER, ["alice@example.test"])
    assert not info.value.permanent
    assert "DATA failed: timed out after 0.1 s" in str(info.value)
    assert not transport.connected


def test_close_if_idle(server: SmtpServer) -> None:
    transport = SmtpTransport(make_settings(server.port))
    assert not transport.close_if_idle(0)  # nothing to close
    transport.send(make_mail(), SENDER, ["alice@example.test"])
    assert not transport.close_if_idle(3600)
    assert transport.connected
    assert transport.close_if_idle(0)
    assert not transport.connected
    transport.send(make_mail(), SENDER, ["alice@example.test"])  # reconnects lazily
    transport.close()
    transport.close()  # idempotent
    assert server.connections == 2


# -- doctor's SMTP path -------------------------------------------------------------


def failed(hops: list[Hop]) -> Hop:
    """The hop a walk stopped at: the last, and the only one that failed."""
    assert [h.ok for h in hops] == [True] * (len(hops) - 1) + [False], hops
    return hops[-1]


def test_walk_success_sends_nothing() -> None:
    with SmtpServer(starttls=True, require_auth=("bot", PASSWORD)) as srv:
        settings = make_settings(srv.port, "starttls", "bot", PASSWORD)
        hops = walk(settings, ssl_context=srv.ssl_context_for_client)
        assert [h.name for h in hops if h.ok] == [
            "DNS", "TCP", "greeting", "EHLO", "STARTTLS", "AUTH"
        ]  # fmt: skip
        assert hops[1].detail == f"connected to {HOST}:{srv.port}"
        assert hops[4].detail.startswith("TLSv1.")
        assert "certificate issued by CN=feishu-mailbot test CA" in hops[4].detail
        assert hops[5].detail == "logged in as bot"
        time.sleep(0.05)
        assert srv.messages == []
        assert srv.connections == 1


def test_walk_refused() -> None:
    hop = failed(walk(make_settings(free_port())))
    assert (hop.name, hop.detail) == ("TCP", "connection refused")
    assert "smtp.port" in hop.advice()


def test_walk_bad_auth_names_the_hop_and_hides_the_password() -> None:
    with SmtpServer(starttls=True, require_auth=("bot", "right")) as srv:
        settings = make_settings(srv.port, "starttls", "bot", PASSWORD)
        hop = failed(walk(settings, ssl_context=srv.ssl_context_for_client))
        assert hop.name == "AUTH"
        assert hop.detail.startswith("authentication rejected (535")
        assert PASSWORD not in hop.line() + hop.advice()
        assert srv.messages == []


def test_walk_starttls_not_offered(server: SmtpServer) -> None:
    hop = failed(walk(make_settings(server.port, "starttls")))
    assert (hop.name, hop.detail) == ("STARTTLS", "server does not offer STARTTLS")


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_walk_untrusted_certificate(security: str) -> None:
    srv = SmtpServer(starttls=security == "starttls", tls=security == "tls")
    with srv:
        hop = failed(walk(make_settings(srv.port, security)))  # the system's store: no test CA
    assert hop.name == security.upper()
    assert hop.detail.startswith("certificate verify failed: ")
    assert "issued by CN=feishu-mailbot test CA" in hop.detail
    assert "smtp.ca_file" in hop.advice()
    assert srv.messages == []


def test_the_scrubber_masks_every_base64_form_of_the_password() -> None:
    """What a relay might echo beyond what smtplib sends (tests/app/test_logs.py has the
    real relay): another client's authzid, a blob cut short, the password inside a
    longer blob at each of the three alignments."""
    from base64 import b64encode

    from feishu_mailbot.mail.smtp import scrubber

    scrub = scrubber(make_settings(25, username="bot", password=PASSWORD))
    secret = PASSWORD.encode()

    def b64(data: bytes) -> str:
        return b64encode(data).decode()

    echoed = [
        b64(b"admin\0bot\0" + secret),
        b64(b"bot\0bot\0" + secret),
        b64(b"\0bot\0" + secret)[:-4],  # no longer decodes
        *(b64(b"x" * k + secret + b"tail") for k in range(3)),
        *(b64(b"x" * k + secret + b"tail")[:-8] for k in range(3)),
    ]
    for form in echoed:
        assert scrub(f"535 5.7.8 rejected {form}.") == "535 5.7.8 rejected ***.", form
    plain = "535 5.7.8 Authentication credentials invalid (AUTH LOGIN Ym90)"
    assert scrub(plain) == plain  # the user's base64 and the words stay
    assert scrubber(make_settings(25))(plain) == plain  # no password: nothing to hide


# -- bounded transactions and large mail -----------------------------------------


def test_a_spooled_mail_is_streamed_with_dots_stuffed_and_its_size_declared(
    server: SmtpServer, tmp_path: Path
) -> None:
    raw = make_mail() + b".starts with a dot\r\n" + b"x" * 76 + b"\r\n" * 3000
    spooled = tmp_path / "mail.eml"
    spooled.write_bytes(raw)
    declared: list[str] = []
    with SmtpTransport(make_settings(server.port)) as transport:
        real_mail = smtplib.SMTP.mail

        def mail(smtp: smtplib.SMTP, sender: str, options: Sequence[str] = ()) -> Any:
            declared.extend(options)
            return real_mail(smtp, sender, options)

        smtplib.SMTP.mail = mail  # type: ignore[method-assign]
        try:
            assert transport.send(spooled, SENDER, ["alice@example.test"]) == {}
        finally:
            smtplib.SMTP.mail = real_mail  # type: ignore[method-assign]
        assert transport.size_limit() == 33554432  # aiosmtpd's default, from EHLO
    assert server.raw[0] == raw  # byte for byte: the leading dots came back unstuffed
    assert f"SIZE={len(raw)}" in declared


def test_a_mail_over_the_relays_size_is_refused_before_its_body(tmp_path: Path) -> None:
    with SmtpServer(size_limit=100_000) as small:
        spooled = tmp_path / "mail.eml"
        spooled.write_bytes(make_mail() + (b"y" * 76 + b"\r\n") * 2000)
        with SmtpTransport(make_settings(small.port)) as transport:
            assert transport.size_limit() == 100_000
            with pytest.raises(DeliveryError) as caught:
                transport.send(spooled, SENDER, ["alice@example.test"])
    assert caught.value.permanent
    assert "MAIL FROM" in caught.value.message and "552" in caught.value.message


def test_a_relay_that_trickles_is_given_up_at_the_deadline(server: SmtpServer) -> None:
    server.trickle(0.3)  # a byte each 0.3 s: no read ever times out (timeout 1 s)
    try:
        with SmtpTransport(make_settings(server.port, timeout=1.0)) as transport:
            started = time.monotonic()
            with pytest.raises(DeliveryError) as caught:
                transport.send(make_mail(), SENDER, ["alice@example.test"])
            took = time.monotonic() - started
            assert not transport.connected  # the aborted session is never reused
    finally:
        server.trickle(0)
    assert not caught.value.permanent  # the mail stays queued and is retried
    assert "took over its 4 s deadline" in caught.value.message, caught.value.message
    assert took < 30  # bounded: without the deadline this send would never return
    assert server.raw == []


def test_a_greeting_that_trickles_is_given_up_at_the_deadline() -> None:
    """Before the session exists: the deadline must reach a socket still connecting."""
    with Dribbler() as relay:
        settings = make_settings(relay.port, timeout=1.0)
        with SmtpTransport(settings) as transport, pytest.raises(DeliveryError) as caught:
            transport.send(make_mail(), SENDER, ["alice@example.test"])
    assert "connect failed: the transaction took over its 4 s deadline" in caught.value.message
    assert not caught.value.permanent


def test_past_the_deadline_a_reused_session_is_not_retried_on_a_new_one(
    server: SmtpServer,
) -> None:
    """A reused connection that dies at MAIL FROM is normally replaced once; not when the
    deadline killed it, or the new session would run with no deadline at all."""
    with SmtpTransport(make_settings(server.port, timeout=1.0)) as transport:
        transport.send(make_mail(), SENDER, ["alice@example.test"])  # the session to reuse
        connections = server.connections
        server.trickle(0.3, at="MAIL")
        try:
            started = time.monotonic()
            with pytest.raises(DeliveryError) as caught:
                transport.send(make_mail(), SENDER, ["alice@example.test"])
            took = time.monotonic() - started
        finally:
            server.trickle(0)
    assert "the transaction took over its 4 s deadline" in caught.value.message
    assert took < 8, took  # one deadline, not a second session trickled as long again
    assert server.connections == connections


def test_a_tls_handshake_that_trickles_cannot_hold_a_worker() -> None:
    """CPython bounds a whole TLS handshake by the socket timeout (not each read), so a
    relay dribbling its certificate is given up on after `timeout`, before the deadline."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen()
    stop = threading.Event()

    def tarpit() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)  # the ClientHello
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB ...
            while not stop.wait(0.3):  # ... that arrives a byte at a time
                with contextlib.suppress(OSError):
                    conn.sendall(b"\x00")

    thread = threading.Thread(target=tarpit, daemon=True)
    thread.start()
    try:
        settings = make_settings(listener.getsockname()[1], security="tls", timeout=1.0)
        started = time.monotonic()
        with SmtpTransport(settings) as transport, pytest.raises(DeliveryError) as caught:
            transport.send(make_mail(), SENDER, ["alice@example.test"])
        assert time.monotonic() - started < 4
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert "timed out after 1 s" in caught.value.message, caught.value.message
    assert not caught.value.permanent
