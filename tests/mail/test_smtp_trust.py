"""Trust toward the relay (smtp.ca_file, smtp.tls_fingerprint) and the SMTP hops of
`doctor`, against real aiosmtpd with real TLS and certificates of the test CA."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from feishu_mailbot.config.settings import PemBundle, Secret, SmtpSettings
from feishu_mailbot.core import hops
from feishu_mailbot.mail import smtp
from feishu_mailbot.mail.smtp import DeliveryError, SmtpTransport, walk
from tests import certs
from tests.smtp_server import HOST, Dribbler, SmtpServer, free_port


def test_the_test_ca_signs_leaves_a_client_verifies_and_no_system_store_trusts() -> None:
    leaf = certs.leaf()
    assert certs.leaf(["127.0.0.1", "localhost"]) is leaf  # made once
    with SmtpServer(tls=True, leaf=leaf) as srv:
        with (
            socket.create_connection((HOST, srv.port), 5) as raw,
            certs.client_context().wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            seen = tls.getpeercert()
        assert der is not None
        assert leaf.fingerprint == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        assert seen is not None and (("commonName", certs.CA_NAME),) in seen["issuer"]
        with (
            socket.create_connection((HOST, srv.port), 5) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"),
        ):
            ssl.create_default_context().wrap_socket(raw, server_hostname=HOST)
    other = certs.leaf(["localhost"])
    assert other.fingerprint != leaf.fingerprint
    assert other.hostnames == ("localhost",)


# -- delivery: smtp.ca_file and smtp.tls_fingerprint ------------------------------------

USER, PASSWORD = "bot", "hunter2-Sekrit"
SENDER = "bot@example.test"


def settings_for(
    srv: SmtpServer,
    *,
    ca: bool = False,
    pin: str | None = None,
    host: str = HOST,
    timeout: float = 5.0,
) -> SmtpSettings:
    """The settings a relay `srv` needs, trusting the test CA only if `ca`."""
    bundle = None
    if ca:
        bundle = PemBundle(certs.ca_file(), Path(certs.ca_file()).read_text())
    return SmtpSettings(
        host=host,
        port=srv.port,
        security="tls" if srv.tls else "starttls" if srv.starttls else "none",
        sender=f"Feishu Bot <{SENDER}>",
        username=USER if srv.require_auth else None,
        password=Secret(PASSWORD) if srv.require_auth else None,
        timeout=timeout,
        ca_file=bundle,
        tls_fingerprint=pin,
    )


def relay(security: str, leaf: certs.Leaf | None = None) -> SmtpServer:
    return SmtpServer(
        starttls=security == "starttls",
        tls=security == "tls",
        require_auth=(USER, PASSWORD),
        leaf=leaf,
    )


def mail(subject: str = "hello") -> bytes:
    return f"From: {SENDER}\r\nTo: a@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def deliver(settings: SmtpSettings) -> None:
    with SmtpTransport(settings) as transport:
        transport.send(mail(), SENDER, ["a@example.test"])


SECURITY = pytest.mark.parametrize("security", ["starttls", "tls"])


@SECURITY
def test_a_relay_with_a_private_ca_is_refused_until_ca_file_names_it(security: str) -> None:
    with relay(security) as srv:
        with pytest.raises(DeliveryError) as caught:
            deliver(settings_for(srv))  # the system's store only
        assert "TLS handshake failed: certificate verify failed: unable to get local issuer" in (
            caught.value.message
        )
        assert not caught.value.permanent  # the mail waits for the operator's fix
        assert srv.auths == [] and srv.received == []
        deliver(settings_for(srv, ca=True))
        assert srv.auths != [] and srv.received[0].auth_login == USER


def test_ca_file_adds_to_the_system_store_rather_than_replacing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relay signed by a CA of the system's store still verifies when smtp.ca_file names
    another CA: a private CA must not make the public ones fail. Here the test CA plays
    the system's store (OpenSSL reads SSL_CERT_FILE) and an unrelated certificate the
    private CA."""
    monkeypatch.setenv("SSL_CERT_FILE", certs.ca_file())
    unrelated = certs.leaf(["unrelated.test"])
    with relay("starttls") as srv:
        settings = dataclasses.replace(
            settings_for(srv), ca_file=PemBundle(unrelated.cert, Path(unrelated.cert).read_text())
        )
        deliver(settings)
        assert len(srv.received) == 1


@SECURITY
def test_a_pin_takes_the_place_of_the_chain_and_the_name(security: str) -> None:
    """msmtp's tls_fingerprint: the certificate pinned is accepted whoever signed it and
    whatever names it holds; without the pin, the name is still checked."""
    wrong_name = certs.leaf(["localhost"])  # no 127.0.0.1 in it
    with relay(security, leaf=wrong_name) as srv:
        with pytest.raises(DeliveryError) as caught:
            deliver(settings_for(srv, ca=True))
        assert "certificate verify failed: IP address mismatch" in caught.value.message
        assert srv.received == []
        deliver(settings_for(srv, pin=wrong_name.fingerprint))
        assert len(srv.received) == 1


@SECURITY
def test_a_wrong_pin_ends_delivery_before_auth_and_names_both_fingerprints(security: str) -> None:
    presented, pinned = certs.leaf(), certs.leaf(["pinned.test"])
    with relay(security, leaf=presented) as srv:
        settings = settings_for(srv, ca=True, pin=pinned.fingerprint)  # a chain that verifies
        with pytest.raises(DeliveryError) as caught:
            deliver(settings)
        time.sleep(0.1)  # anything the client sent has arrived
        assert srv.auths == [] and srv.received == []
    message = caught.value.message
    assert f"{HOST}:{srv.port}: TLS handshake failed: " in message, message
    assert presented.fingerprint in message and pinned.fingerprint in message, message
    assert not caught.value.permanent


def test_a_reload_with_another_pin_applies_it_to_the_next_session() -> None:
    leaf = certs.leaf()
    with relay("starttls", leaf=leaf) as srv:
        right = settings_for(srv, pin=leaf.fingerprint)
        with SmtpTransport(right) as transport:
            transport.send(mail("one"), SENDER, ["a@example.test"])
            transport.reconfigure(dataclasses.replace(right, tls_fingerprint="AB:" * 31 + "AB"))
            with pytest.raises(DeliveryError, match="not AB:AB"):
                transport.send(mail("two"), SENDER, ["a@example.test"])
            transport.reconfigure(right)
            transport.send(mail("three"), SENDER, ["a@example.test"])
        assert [m["Subject"] for m in srv.messages] == ["one", "three"]


# -- doctor: the SMTP hops ----------------------------------------------------------------


def names(walked: list[hops.Hop]) -> list[str]:
    return [hop.name for hop in walked]


def assert_walked(walked: list[hops.Hop], expected: list[str], *, ok: bool) -> None:
    assert names(walked) == expected, walked
    assert [n for n in hops.SMTP_HOPS if n in expected] == expected  # doctor's order
    assert all(hop.path == hops.SMTP and hop.ms >= 0 for hop in walked)
    assert all(hop.ok for hop in walked[:-1]), walked
    assert walked[-1].ok is ok, walked[-1]


@SECURITY
def test_walk_names_the_ca_no_one_here_trusts_then_passes_with_ca_file(security: str) -> None:
    tls = security == "tls"
    with relay(security) as srv:
        walked = walk(settings_for(srv))
        assert_walked(
            walked,
            ["DNS", "TCP", "TLS"] if tls else ["DNS", "TCP", "greeting", "EHLO", "STARTTLS"],
            ok=False,
        )
        failed = walked[-1]
        assert failed.cause == "smtp-tls-untrusted"
        assert failed.detail.startswith("certificate verify failed: unable to get local issuer")
        assert f"issued by CN={certs.CA_NAME}, O=feishu-mailbot" in failed.detail
        assert "smtp.ca_file" in failed.advice()
        assert failed.target == f"{HOST}:{srv.port}"
        assert srv.auths == []

        walked = walk(settings_for(srv, ca=True))
        expected = ["DNS", "TCP", "TLS", "greeting", "EHLO", "AUTH"]
        if not tls:
            expected = ["DNS", "TCP", "greeting", "EHLO", "STARTTLS", "AUTH"]
        assert_walked(walked, expected, ok=True)
        secured = walked[names(walked).index("TLS" if tls else "STARTTLS")]
        assert secured.detail.startswith("TLSv1.")
        assert f"certificate issued by CN={certs.CA_NAME}" in secured.detail
        assert walked[-1].detail == f"logged in as {USER}"
        assert len(srv.auths) == 1
        time.sleep(0.1)
        assert srv.received == []  # never a mail


@SECURITY
def test_walk_with_a_pin_passes_without_ca_file_and_a_wrong_one_stops_before_auth(
    security: str,
) -> None:
    presented, pinned = certs.leaf(), certs.leaf(["pinned.test"])
    with relay(security, leaf=presented) as srv:
        walked = walk(settings_for(srv, pin=presented.fingerprint))
        assert walked[-1].name == "AUTH" and all(hop.ok for hop in walked), walked
        secured = walked[2 if security == "tls" else 4]
        assert secured.detail.endswith("as smtp.tls_fingerprint pins"), secured
        assert len(srv.auths) == 1

        walked = walk(settings_for(srv, pin=pinned.fingerprint))
        assert names(walked)[-1] == ("TLS" if security == "tls" else "STARTTLS")
        failed = walked[-1]
        assert not failed.ok and failed.cause == "smtp-pin"
        assert presented.fingerprint in failed.detail and pinned.fingerprint in failed.detail
        assert "smtp.tls_fingerprint" in failed.advice()
        time.sleep(0.1)
        assert len(srv.auths) == 1 and srv.received == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_walk_over_plain_smtp_and_a_wrong_password() -> None:
    with SmtpServer(require_auth=(USER, PASSWORD)) as srv:
        walked = walk(settings_for(srv))
        assert_walked(walked, ["DNS", "TCP", "greeting", "EHLO", "AUTH"], ok=True)
        dns, tcp, greeting, ehlo, _ = walked
        assert dns.detail == HOST
        assert tcp.detail == f"connected to {HOST}:{srv.port}"
        assert greeting.detail.startswith("220 smtp.test ")
        assert "AUTH LOGIN PLAIN" in ehlo.detail and "SIZE 33554432" in ehlo.detail

        wrong = dataclasses.replace(settings_for(srv), password=Secret("not-" + PASSWORD))
        walked = walk(wrong)
        assert_walked(walked, ["DNS", "TCP", "greeting", "EHLO", "AUTH"], ok=False)
        assert walked[-1].cause == "smtp-auth"
        assert walked[-1].detail.startswith("authentication rejected (535 ")
        assert "smtp.password" in walked[-1].advice()
        assert not any(PASSWORD in hop.detail for hop in walked)


def test_walk_stops_at_a_name_that_does_not_resolve() -> None:
    settings = dataclasses.replace(
        settings_for(SmtpServer(port=25)), host="nonexistent.invalid", timeout=3
    )
    walked = walk(settings)
    assert_walked(walked, ["DNS"], ok=False)
    assert walked[0].cause == "smtp-dns" and walked[0].target == "nonexistent.invalid:25"
    assert "cannot resolve host" in walked[0].detail or "resolver" in walked[0].detail
    assert "feishu.proxy" in walked[0].advice()  # to say SMTP never goes through it


def test_walk_stops_at_a_port_nobody_listens_on() -> None:
    walked = walk(settings_for(SmtpServer(port=free_port())))
    assert_walked(walked, ["DNS", "TCP"], ok=False)
    assert walked[-1].cause == "smtp-tcp" and walked[-1].detail == "connection refused"


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections (the kernel does) and never says a word."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_relay_that_never_greets_fails_the_greeting_within_the_timeout(silent: int) -> None:
    started = time.monotonic()
    walked = walk(settings_for(SmtpServer(port=silent), timeout=1))
    took = time.monotonic() - started
    assert_walked(walked, ["DNS", "TCP", "greeting"], ok=False)
    assert walked[-1].cause == "smtp-greeting"
    assert walked[-1].detail == "timed out after 1 s"
    assert 900 <= walked[-1].ms < 2500 and took < 3


@pytest.mark.parametrize(
    ("timeout", "deadline", "words"),
    [(1.0, 30.0, "timed out after 1 s"), (20.0, 1.5, "the walk's 1.5 s deadline")],
    ids=["hop", "walk"],
)
def test_a_greeting_that_trickles_is_bounded_by_the_hop_and_by_the_walk(
    timeout: float, deadline: float, words: str
) -> None:
    """A byte every 0.3 s trips no socket timeout; the clock of the walk cuts it off."""
    with Dribbler() as relay:
        started = time.monotonic()
        settings = settings_for(SmtpServer(port=relay.port), timeout=timeout)
        walked = walk(settings, deadline=deadline)
        took = time.monotonic() - started
    assert_walked(walked, ["DNS", "TCP", "greeting"], ok=False)
    assert words in walked[-1].detail, walked[-1]
    assert took < min(timeout, deadline) + 1.5, took


def test_the_wrong_security_for_the_port_is_named() -> None:
    with SmtpServer() as plain:  # no TLS at all: as port 587 before STARTTLS
        implicit = dataclasses.replace(settings_for(plain), security="tls")
        walked = walk(implicit)
        assert_walked(walked, ["DNS", "TCP", "TLS"], ok=False)
        assert walked[-1].cause == "smtp-tls" and "465" in walked[-1].advice()
        starttls = dataclasses.replace(settings_for(plain), security="starttls")
        walked = walk(starttls)
        assert_walked(walked, ["DNS", "TCP", "greeting", "EHLO", "STARTTLS"], ok=False)
        assert walked[-1].cause == "smtp-starttls"
        assert walked[-1].detail == "server does not offer STARTTLS"


def test_walk_names_a_certificate_made_out_to_other_names() -> None:
    with relay("starttls", leaf=certs.leaf(["localhost"])) as srv:
        walked = walk(settings_for(srv, ca=True))
    failed = walked[-1]
    assert (failed.name, failed.cause) == ("STARTTLS", "smtp-tls-cert")
    assert failed.detail.startswith("certificate verify failed: IP address mismatch")
    assert f"issued by CN={certs.CA_NAME}" in failed.detail
    assert "smtp.host" in failed.advice()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_what_a_relay_echoes_of_the_password_is_masked_in_the_hops() -> None:
    careless = SmtpServer(
        require_auth=(USER, "not-" + PASSWORD), auth_mechanisms=("PLAIN",), echo_auth=True
    )
    with careless as srv:
        walked = walk(settings_for(srv))
    blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert walked[-1].detail == "authentication rejected (535 5.7.8 rejected AUTH PLAIN ***)"
    assert not any(PASSWORD in hop.detail or blob in hop.detail for hop in walked)


def test_every_cause_the_smtp_hops_give_is_explained() -> None:
    """Hop.advice() looks the cause up in hops.CAUSES: a typo would raise in doctor."""
    source = Path(smtp.__file__).read_text("utf-8")
    given = set(re.findall(r'(?<!name=)"(smtp(?:-[a-z]+)*|timeout)"', source))  # not threads
    assert {"smtp-pin", "smtp-tls-untrusted", "smtp-greeting", "timeout"} <= given
    assert given <= set(hops.CAUSES), given - set(hops.CAUSES)
