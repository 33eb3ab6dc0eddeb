"""Who issued a certificate, read from its DER bytes.

`doctor` (both paths) names the issuer of a certificate this machine does not trust: a
company CA there means a TLS-inspecting proxy, and `ca_file` is the fix.
Python's ssl module gives the parsed fields only of a certificate it
verified, so the few DER structures on the way to the issuer are walked
here (RFC 5280 §4.1: Certificate → tbsCertificate → [version], serialNumber,
signature, issuer), rather than adding a library for one field.
"""

from __future__ import annotations

# Attribute types shown, as OpenSSL abbreviates them (RFC 4519).
_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "0.9.2342.19200300.100.1.25": "DC",
}
# String types that are not UTF-8 (or its ASCII subsets): BMPString, UniversalString.
_CODECS = {0x1E: "utf-16-be", 0x1C: "utf-32-be"}


class CertificateError(ValueError):
    """The bytes are not a DER certificate."""


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    if pos + 2 > len(der):
        raise CertificateError("truncated")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise CertificateError("bad length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise CertificateError("truncated")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, content, stop = _element(der, start)
        out.append((tag, content, stop))
        start = stop
    return out


def _oid(value: bytes) -> str:
    if not value:
        return ""
    parts = [value[0] // 40, value[0] % 40]
    number = 0
    for byte in value[1:]:
        number = (number << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(number)
            number = 0
    return ".".join(map(str, parts))


def issuer(der: bytes) -> str:
    """The issuer's name as `CN=…, O=…, C=…`, most specific first."""
    _, cert, cert_end = _element(der, 0)
    tbs_tag, tbs, tbs_end = _children(der, cert, cert_end)[0]
    fields = _children(der, tbs, tbs_end)
    if fields and fields[0][0] == 0xA0:  # [0] version, present from v2 on
        fields = fields[1:]
    if len(fields) < 3 or tbs_tag != 0x30:
        raise CertificateError("no issuer")
    _, name, name_end = fields[2]
    shown = []
    for _, rdn, rdn_end in _children(der, name, name_end):  # SET OF AttributeTypeAndValue
        for _, pair, pair_end in _children(der, rdn, rdn_end):
            (_, o, o_end), (kind, v, v_end) = _children(der, pair, pair_end)[:2]
            oid = _oid(der[o:o_end])
            value = der[v:v_end].decode(_CODECS.get(kind, "utf-8"), "replace")
            value = "".join(c if c.isprintable() else "?" for c in value)  # a terminal's safety
            shown.append(f"{_NAMES.get(oid, oid)}={value}")
    return ", ".join(reversed(shown)) or "(an issuer with no name)"


def issuer_or_why(der: bytes) -> str:
    """`issuer`, or words for a certificate that cannot be read: for a message, which
    must not fail because the certificate it speaks of is broken."""
    try:
        return issuer(der)
    except (CertificateError, IndexError, ValueError):
        return "an issuer that cannot be read"
