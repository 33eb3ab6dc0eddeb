"""How chat text is compared with what the operator configured.

One rule for keywords, report prefixes and trigger commands: NFKC and
casefold, so ＵＲＧＥＮＴ, Urgent and urgent are one keyword and ＃日报 is #日报.
"""

from __future__ import annotations

import unicodedata


def fold(text: str) -> str:
    """NFKC, casefold, NFKC again: casefolding can yield characters that have a
    compatibility decomposition."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
