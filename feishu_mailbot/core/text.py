"""Chat text compared, cut to one line, and made safe for a terminal.

`fold` is one rule for keywords, report prefixes and trigger commands: NFKC and
casefold, so ＵＲＧＥＮＴ, Urgent and urgent are one keyword and ＃日报 is #日报.
What the operator's commands print goes through `terminal()`, so chat content
never drives their terminal.
"""

from __future__ import annotations

import json
import re
import unicodedata


def fold(text: str) -> str:
    """NFKC, casefold, NFKC again: casefolding can yield characters that have a
    compatibility decomposition."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


# --------------------------------------------------------------------------- one line


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


_WHITESPACE_RUN = re.compile(r"\s+")


def single_line(text: str) -> str:
    """Control characters and line breaks become single spaces, ends trimmed."""
    cleaned = "".join(" " if _is_control(ch) else ch for ch in text)
    return _WHITESPACE_RUN.sub(" ", cleaned).strip()


def preview(text: str, limit: int = 40) -> str:
    """A one-line excerpt for subjects and logs, never longer than `limit` characters."""
    if limit <= 0:
        return ""
    # Cut first: cleaning a megabyte of text for a 40-character subject is waste. Runs of
    # white space shrink when cleaned, hence the slack.
    line = single_line(text[: limit * 4 + 64])
    if len(line) <= limit:
        return line
    return line[: limit - 1].rstrip() + "…"


# --------------------------------------------------------------------------- on a terminal

#: What a terminal acts on instead of showing: C0 controls but tab and line feed (ESC
#: starts every escape sequence: OSC 52 writes the clipboard, OSC 0 the title, CSI
#: clears the screen; BEL, BS and a lone CR overwrite), DEL, the C1 controls (U+009B is
#: CSI to many terminals), the line and paragraph separators, the bidi embeddings,
#: overrides and isolates (they reorder what follows, "Trojan Source"), and lone
#: surrogates (not even encodable: printing one raises).
_TERMINAL_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_LAYOUT_RUN = re.compile(r"[ \t\n]+")


def _code(found: re.Match[str]) -> str:
    point = ord(found.group())
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def terminal(text: str, *, one_line: bool = False) -> str:
    """Chat content as the operator's terminal may receive it: everything a terminal
    would act on written as an escape (`\\x1b`, `\\u202e`), never raw; CJK text and
    emoji (with their zero-width joiners) as they are.

    Line feeds and tabs are a mail body's layout and stay (CRLF becomes LF; a lone
    CR is escaped); with `one_line`, for listings, they become single spaces.
    Every command that prints chat content prints it through this.
    """
    text = text.replace("\r\n", "\n")
    if one_line:
        text = _LAYOUT_RUN.sub(" ", text).strip()
    return _TERMINAL_UNSAFE.sub(_code, text)


def terminal_json(value: object) -> str:
    """`value` as indented JSON for a terminal: what `terminal` escapes is written as
    JSON's own four-hex-digit `\\u` escape, so a parser reads back the same strings."""
    doc = json.dumps(value, ensure_ascii=False, indent=2)  # escapes C0 itself
    return _TERMINAL_UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", doc)
