"""Trust toward the relay (smtp.ca_file, smtp.tls_fingerprint) and the SMTP hops of
`doctor`, against real aiosmtpd with real TLS and certificates of the test CA."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import ssl
import time
from pathlib import Path

import pytest

from feishu_mailbot.settings import PemBundle, Secret, SmtpSettings
from feishu_mailbot.smtp import DeliveryError, SmtpTransport
from tests import certs
from tests.smtp_server import HOST, SmtpServer


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
