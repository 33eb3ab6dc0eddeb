"""The pure parts of `doctor`: a certificate's issuer, the words for a failed hop, and
the configuration as the support report shows it."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from feishu_mailbot.cli import support
from feishu_mailbot.core import hops, x509


def self_signed(tmp_path: Path, subject: str) -> bytes:
    subprocess.run(
        ["openssl", "req", "-x509", "-utf8", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", subject,
         "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return ssl.PEM_cert_to_DER_cert((tmp_path / "c.pem").read_text())


def test_the_issuer_of_a_certificate_as_openssl_names_it(tmp_path: Path) -> None:
    der = self_signed(tmp_path, "/C=CN/O=某公司 信息安全部/OU=SSL 检查/CN=Corp Inspection CA")
    assert x509.issuer(der) == "CN=Corp Inspection CA, OU=SSL 检查, O=某公司 信息安全部, C=CN"


def test_a_broken_certificate_is_an_error_not_a_crash() -> None:
    for junk in (b"", b"\x30\x82\xff\xff", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(x509.CertificateError):
            x509.issuer(junk)


def test_a_failed_hop_in_one_line_for_the_journal() -> None:
    hop = hops.Hop(
        hops.FEISHU, "WebSocket upgrade", False, 15000.0,
        "to msg-frontier.feishu.cn:443 timed out after 15 s", "websocket",
        "msg-frontier.feishu.cn:443",
    )  # fmt: skip
    assert hop.sentence() == (
        "WebSocket upgrade to msg-frontier.feishu.cn:443 timed out after 15 s: a firewall or "
        "proxy may be blocking WebSocket: allow WebSocket to msg-frontier.feishu.cn:443, or "
        "route it through a proxy that tunnels it (feishu.proxy); run feishu-mailbot doctor"
    )
    assert "FAILED" in hop.line() and "15000 ms" in hop.line()
    assert all(c in hops.CAUSES for c in ("dns", "tcp", "proxy-auth", "tls-untrusted", "pong"))


def test_the_report_shows_the_configuration_without_its_secrets() -> None:
    text = (
        "feishu:\n"
        "  app_id: cli_x\n"
        '  app_secret: "0123"   # quoted, as check-config asks\n'
        "  proxy: http://alice:pa%40ss@proxy.corp:3128\n"
        "smtp:\n"
        "  password: hunter2\n"
        "  username: bot\n"
        "rules:\n"
        "  - name: x\n"
        "    to: [a@example.com]\n"
    )
    shown = support.redact_config(text)
    assert "0123" not in shown and "hunter2" not in shown and "pa%40ss" not in shown
    assert "app_secret: <redacted>   # quoted, as check-config asks" in shown
    assert "proxy: http://alice:<redacted>@proxy.corp:3128" in shown
    assert "username: bot" in shown and "to: [a@example.com]" in shown
    assert support.redact_config("feishu: [\n").startswith("(the configuration does not parse")
