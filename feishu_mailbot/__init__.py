"""Feishu (Lark) group chat to email bridge."""

__version__ = "0.1.0"
