"""A command's output file: complete, or left as it was."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomically(target: Path, text: str, mode: int = 0o644) -> None:
    """`target` becomes a complete file of `text` with `mode`, or stays as it was.

    A reader (node-exporter) sees the old file or the new one, never half. The
    partial file has a name nobody can guess and is created with O_EXCL and
    O_NOFOLLOW, so a link planted in the directory (this may run as root) cannot
    send the write into another file; its mode is set on the descriptor, whatever
    the umask. On any failure (a full disk) it is removed again. The rename
    replaces `target` itself, never what a symlink there points to.
    """
    partial = target.with_name(f".{target.name}.{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(partial, flags, 0o600)
    try:
        with open(fd, "wb", closefd=True) as out:
            os.fchmod(fd, mode)
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(fd)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
