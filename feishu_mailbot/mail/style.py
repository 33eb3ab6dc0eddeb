"""The look of every mail we write: one font stack, one palette, the inline styles.

Mail clients strip `<style>` (Gmail) or render with Word (Outlook), so every
style is inline; keeping the values here means the forwarded message, the
digest and the recall notice cannot drift apart.
"""

from __future__ import annotations

FONT = (
    "-apple-system,BlinkMacSystemFont,'Segoe UI','PingFang SC','Hiragino Sans GB',"
    "'Microsoft YaHei',Helvetica,Arial,sans-serif"
)
BLUE = "#3370ff"  # Feishu's brand blue: mentions, the digest header
TEXT = "#1f2329"
MUTED = "#8f959e"  # placeholders, notes, footers
SECONDARY = "#646a73"
BORDER = "#dee0e3"
SHADE = "#f5f6f7"  # code blocks, section heads, the digest's page
WHITE = "#ffffff"
ON_BLUE = "#e1eaff"  # secondary text on the blue digest header
BLUE_BAR = "#7fa5ff"  # the digest's progress bar, the part not yet submitted
WARN_BG, WARN_EDGE, WARN_TEXT = "#fff3e8", "#ff7d00", "#7a3d00"  # the "not submitted" box

MENTION = f"color:{BLUE}"
PLACEHOLDER = f"color:{MUTED}"
POST_TITLE = "font-weight:bold;font-size:16px;margin:0 0 8px"
CODE = (
    f"background:{SHADE};padding:8px;border-radius:4px;white-space:pre-wrap;font-family:monospace"
)
DIVIDER = f"border:none;border-top:1px solid {BORDER}"
QUOTE = f"margin:0 0 12px;padding:4px 10px;border-left:3px solid {BORDER};color:{SECONDARY}"
NOTE = f"margin-top:12px;padding:8px;background:{SHADE};border-radius:4px;color:{SECONDARY}"
IMAGE = "max-width:100%;height:auto;vertical-align:middle"

# Cards (interactive cards, events, votes, tasks): a bordered box under a header band in
# the card's own header colour, as Feishu shows it. Keys are Feishu's header templates.
CARD_COLORS = {
    "blue": "#3370ff",
    "wathet": "#4cb0ff",
    "turquoise": "#14c0ff",
    "green": "#34c724",
    "yellow": "#ffc60a",
    "orange": "#ff8800",
    "red": "#f54a45",
    "carmine": "#e13768",
    "violet": "#d136d1",
    "purple": "#7f3bf5",
    "indigo": "#4954e6",
    "grey": "#8f959e",
}
CARD = f"margin:4px 0;border:1px solid {BORDER};border-radius:8px;overflow:hidden;max-width:560px"
CARD_HEAD = f"padding:8px 12px;background:{SHADE};font-weight:bold"
CARD_HEAD_COLORED = "padding:8px 12px;font-weight:bold;color:#ffffff;background:"
CARD_LABEL = "font-weight:normal;font-size:12px;opacity:0.75;margin-right:6px"
CARD_BODY = "padding:8px 12px"
# A merged forward: the conversation quoted, one bar deeper per nested forward.
FORWARD = f"margin:4px 0;padding:2px 0 2px 12px;border-left:3px solid {BORDER}"
FORWARD_HEAD = f"font-size:12px;color:{SECONDARY};margin-top:6px"
CONTENT = "word-wrap:break-word;overflow-wrap:anywhere"

# The forwarded message and the recall notice: a meta line, the content, a footer.
BODY = f"margin:0;padding:16px;font-family:{FONT};font-size:14px;line-height:1.6;color:{TEXT}"
META = (
    f"font-size:12px;color:{SECONDARY};border-bottom:1px solid {BORDER};"
    "padding-bottom:8px;margin-bottom:12px"
)
FOOTER = (
    f"font-size:12px;color:{MUTED};border-top:1px solid {BORDER};padding-top:8px;margin-top:16px"
)
