"""A test CA and the leaf certificates it signs, made once per test process.

Relays with a private CA, TLS-inspecting proxies and certificate pins are
tested against real handshakes, so they need real certificates: one CA
("feishu-mailbot test CA", which no system trust store holds: a stand-in for a
company's or an inspecting proxy's CA) and leaves for the names a test server
listens on. Made with Debian's `openssl` command (a few ms each), in a
temporary directory removed at exit; nothing here is a dependency of the
product.

    from tests import certs
    leaf = certs.leaf(["127.0.0.1", "localhost"])
    server = certs.server_context(leaf)      # for an ssl server socket
    client = certs.client_context()          # trusts the test CA only
    settings.ca_file → certs.ca_file(); settings.tls_fingerprint → leaf.fingerprint
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CA_NAME", "Leaf", "ca_file", "client_context", "fingerprint", "leaf", "server_context"]

CA_NAME = "feishu-mailbot test CA"

# Our own openssl config: the system's openssl.cnf adds extensions of its own.
_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_KEY = ["-nodes", "-days", "3", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


@dataclass(frozen=True)
class Leaf:
    """A server certificate signed by the test CA: PEM paths, and its SHA-256 fingerprint
    as msmtp --serverinfo and `openssl x509 -fingerprint -sha256` print it (AB:CD:…)."""

    cert: str
    key: str
    fingerprint: str
    hostnames: tuple[str, ...]


_lock = threading.Lock()
_dir: Path | None = None
_leaves: dict[tuple[str, ...], Leaf] = {}


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"openssl {args[0]} failed: {e.stderr.strip()}") from e


def _directory() -> Path:
    """Under the lock: the CA, made on first use."""
    global _dir
    if _dir is None:
        directory = Path(tempfile.mkdtemp(prefix="feishu-mailbot-test-ca-"))
        atexit.register(shutil.rmtree, directory, True)
        (directory / "openssl.cnf").write_text(_CONFIG)
        _openssl(
            "req", "-x509", "-config", str(directory / "openssl.cnf"), "-extensions", "ca",
            *_KEY, "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem"),
            "-subj", f"/O=feishu-mailbot/CN={CA_NAME}",
        )  # fmt: skip
        _dir = directory
    return _dir


def ca_file() -> str:
    """The test CA's certificate (PEM): what smtp.ca_file or feishu.ca_file would name."""
    with _lock:
        return str(_directory() / "ca.pem")


def fingerprint(cert: str) -> str:
    """SHA-256 of a PEM certificate's DER bytes, colon-separated upper-case hex."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def leaf(hostnames: Sequence[str] = ("127.0.0.1", "localhost")) -> Leaf:
    """A certificate for `hostnames` (IP addresses become IP SANs), signed by the test CA;
    the same names give the same leaf for the whole process."""
    names = tuple(hostnames)
    if not names:
        raise ValueError("leaf() needs at least one host name")
    with _lock:
        if names in _leaves:
            return _leaves[names]
        directory = _directory()
        stem = directory / f"leaf-{len(_leaves)}"
        sans = ",".join(f"{'IP' if _is_ip(n) else 'DNS'}:{n}" for n in names)
        _openssl(
            "req", "-x509", "-config", str(directory / "openssl.cnf"), "-extensions", "leaf",
            *_KEY, "-keyout", f"{stem}.key", "-out", f"{stem}.pem", "-subj", f"/CN={names[0]}",
            "-addext", f"subjectAltName={sans}",
            "-CA", str(directory / "ca.pem"), "-CAkey", str(directory / "ca.key"),
        )  # fmt: skip
        made = Leaf(f"{stem}.pem", f"{stem}.key", fingerprint(f"{stem}.pem"), names)
        _leaves[names] = made
        return made


def server_context(of: Leaf) -> ssl.SSLContext:
    """A TLS server context presenting `of`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(of.cert, of.key)
    return context


def client_context() -> ssl.SSLContext:
    """A client context that trusts the test CA and nothing else."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca_file())
    return context


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
