"""Subject templates (`[{chat_name}] {sender_name}: {preview}`): check and fill.

Shared by the rules' forwarded mail and the daily-report digest. Filling never
fails — a bad subject must not stop a mail, and config validation has already
reported what is wrong — and the result is one line, so nothing typed in a
chat can reach another header.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from datetime import date as Date

from feishu_mailbot.core.text import single_line

SUBJECT_MAX = 200
#: What a rule's `subject:` may name, and a daily report's.
SUBJECT_FIELDS = frozenset({"chat_name", "sender_name", "preview", "rule", "msg_type", "date"})
_FORMATTER = string.Formatter()


def _literal_field(field: str, conversion: str | None, spec: str) -> str:
    text = "{" + field
    if conversion:
        text += "!" + conversion
    if spec:
        text += ":" + spec
    return text + "}"


def fill(template: str, values: Mapping[str, str | int], prefix: str = "") -> str:
    """The template with `values`; unknown fields and bad specs stay in it literally."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError:
        parts = [(template, None, None, None)]
    out = [prefix]
    for literal, field, spec, conversion in parts:
        out.append(literal)
        if field is None:
            continue
        spec = spec or ""
        value = values.get(field)
        if value is None or conversion not in (None, "s") or "{" in spec:
            out.append(_literal_field(field, conversion, spec))
            continue
        try:
            out.append(format(str(value) if conversion == "s" else value, spec))
        except ValueError:
            out.append(_literal_field(field, conversion, spec))
    return single_line("".join(out))[:SUBJECT_MAX].rstrip()


def problem(template: str, fields: Collection[str], samples: Mapping[str, str | int]) -> str | None:
    """What is wrong with the template for config validation, or None if it is usable.

    `samples` are values of the right type for each field, to try format specs on.
    """
    allowed = ", ".join(sorted(fields))
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        return f"bad braces: {exc} (write {{{{ and }}}} for literal braces)"
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if field == "":
            return f"empty placeholder {{}} (expected one of: {allowed})"
        if field not in fields:
            return f"unknown placeholder {{{field}}} (expected one of: {allowed})"
        if conversion not in (None, "s"):
            return f"conversion !{conversion} in {{{field}}} is not supported"
        if spec and "{" in spec:
            return f"nested placeholder in the format of {{{field}}} is not supported"
        if spec:
            sample = samples.get(field, "")
            try:
                format(str(sample) if conversion == "s" else sample, spec)
            except ValueError as exc:
                return f"bad format {spec!r} in {{{field}}}: {exc}"
    return None


# ------------------------------------------------------------------ a rule's forward


def render_subject(
    template: str,
    *,
    chat_name: str,
    sender_name: str,
    preview: str,
    rule: str,
    msg_type: str,
    date: str,
) -> str:
    """Fill the template; chat users' values are flattened to one line."""
    values = {
        "chat_name": chat_name,
        "sender_name": sender_name,
        "preview": preview,
        "rule": rule,
        "msg_type": msg_type,
        "date": date,
    }
    return fill(template, values)


def validate_subject_template(template: str) -> str | None:
    """An error description for config validation, or None if the template is usable."""
    return problem(template, SUBJECT_FIELDS, {})


# ------------------------------------------------------------------ a daily report's digest

DIGEST_SUBJECT_FIELDS = frozenset({"date", "chat_name", "submitted", "expected", "missing"})
SUPPLEMENT_TAG = "[补充]"


def render_digest_subject(
    template: str,
    day: Date,
    chat_name: str,
    submitted: int,
    expected: int,
    *,
    supplement: bool = False,
) -> str:
    """Fill the subject template (see subjects.py); a supplement is tagged at the front.

    Counts are integers so ``{submitted:02d}`` works.
    """
    values: Mapping[str, str | int] = {
        "date": day.isoformat(),
        "chat_name": chat_name,
        "submitted": submitted,
        "expected": expected,
        "missing": max(expected - submitted, 0),
    }
    return fill(template, values, prefix=f"{SUPPLEMENT_TAG} " if supplement else "")


def validate_digest_subject(template: str) -> str | None:
    """An error description for config validation, or None if the template is usable."""
    samples: Mapping[str, str | int] = {
        "date": "",
        "chat_name": "",
        "submitted": 0,
        "expected": 0,
        "missing": 0,
    }
    return problem(template, DIGEST_SUBJECT_FIELDS, samples)
