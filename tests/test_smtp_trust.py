"""Trust toward the relay (smtp.ca_file, smtp.tls_fingerprint) and the SMTP hops of
`doctor`, against real aiosmtpd with real TLS and certificates of the test CA."""

from __future__ import annotations

import hashlib
import socket
import ssl

import pytest

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
