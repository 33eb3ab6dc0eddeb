"""What is made in state_dir belongs to the state directory's owner, whoever makes it.

The daemon runs as feishu-mailbot; `send-report`, `status`, `retry`, `drop`… may run
as root on the same files. What root creates there would be root's (and 0600 under
root's umask 077), and the daemon locked out of it: a spool/ made by root's
`send-report` alone failed every later mail over 256 KiB. So, running as root, what
is created here is given the owner and group of the directory it is made in, on its
descriptor, before its name is visible: it is made under a temporary name and
renamed (or linked) into place. Any other user can only create files as itself, and
only the daemon's user (or root) can open the state at all.

SQLite already does this for the database's -wal and -shm files: as root it gives
them the database file's owner and mode (os_unix.c: robustFchown in unixOpen and
in unixOpenSharedMemory), so only the database file itself needs it here.

Root works in a directory another user may write, so nothing here follows a
symbolic link: files are made with O_EXCL, directories opened with O_NOFOLLOW, and
what is handed over is chowned through its descriptor or with lchown.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path


def running_as_root() -> bool:
    return os.geteuid() == 0


def _give(fd: int, owner: os.stat_result) -> None:
    """The open file or directory `fd` to `owner`'s owner and group (root only)."""
    if running_as_root():
        os.fchown(fd, owner.st_uid, owner.st_gid)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}")


def reclaim(path: Path) -> bool:
    """As root, a directory `path` that root made (by a release before this one) given
    back, with its files, to its parent's owner; whether `path` exists."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(found.st_mode):
        return True  # not ours to touch: writing into it fails, and says where
    parent = os.stat(path.parent)
    if running_as_root() and (found.st_uid, found.st_gid) != (parent.st_uid, parent.st_gid):
        _give_back(path, parent)
    return True


def make_dir(path: Path, mode: int = 0o700) -> None:
    """`path` made if missing, owned like its parent (see reclaim for an existing one)."""
    if reclaim(path):
        return
    parent = os.stat(path.parent)
    temporary = _temporary(path)
    os.mkdir(temporary, mode)
    try:
        fd = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _give(fd, parent)
        finally:
            os.close(fd)
        os.rename(temporary, path)  # atomic; over an empty directory made meanwhile too
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(temporary)
        if not path.is_dir():  # not "someone made it first (and put a file in it)"
            raise


def _give_back(directory: Path, owner: os.stat_result) -> None:
    """A directory root made, and what it holds (files only: the spool has no more),
    to `owner`'s user and group."""
    os.chown(directory, owner.st_uid, owner.st_gid, follow_symlinks=False)
    for entry in os.scandir(directory):
        with contextlib.suppress(FileNotFoundError):
            os.chown(entry.path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def create_file(path: Path, mode: int = 0o600) -> int:
    """A new file at `path` (it must not exist), open for writing, owned like its
    directory; the caller names it finished with a rename."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        _give(fd, os.stat(path.parent))
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_database(path: Path) -> None:
    """As root, an empty database file at `path` owned like its directory, unless one
    is there already (SQLite takes an empty file for a new database). Not as any other
    user: SQLite makes it, as that user, as it always did."""
    if not running_as_root() or path.exists():
        return
    temporary = _temporary(path)
    os.close(create_file(temporary))
    try:
        with contextlib.suppress(FileExistsError):  # made meanwhile: that one is used
            os.link(temporary, path)  # a whole, owned file appears, or none
    finally:
        temporary.unlink()
