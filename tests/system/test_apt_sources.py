"""Which mirror debootstrap takes: the one apt is configured with, read from both
source formats, so the tests never name a mirror of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.container import apt_mirror, apt_source_files, debootstrap_mirror

ONE_LINE = """\
# deb http://commented.invalid/debian bookworm main
deb-src http://source.invalid/debian bookworm main
deb http://updates.invalid/debian bookworm-updates main
deb http://contrib-only.invalid/debian bookworm contrib non-free
deb [ arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg ] \
http://mirror.invalid/debian bookworm main contrib  # the one
deb http://later.invalid/debian bookworm main
"""

DEB822 = """\
Types: deb
URIs: http://disabled.invalid/debian
Suites: bookworm
Components: main
Enabled: no

# a comment between stanzas
Types: deb-src
URIs: http://source.invalid/debian
Suites: bookworm
Components: main

types: deb deb-src
# a comment inside a stanza
uris: cdrom:[Debian GNU/Linux 12]/ http://mirror.invalid/debian
suites: bookworm bookworm-updates
components: main
signed-by:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://later.invalid/debian
Suites: bookworm
Components: main
"""


def test_one_line_format() -> None:
    """deb-src, other suites, a source without main and comments are passed over;
    [options] (with spaces inside) do not hide the URI."""
    assert apt_mirror([("/etc/apt/sources.list", ONE_LINE)]) == "http://mirror.invalid/debian"


def test_deb822_format() -> None:
    """Disabled stanzas and deb-src are passed over, field names in any case, a
    multi-line Signed-By, and a cdrom: URI debootstrap could not use before the mirror."""
    found = apt_mirror([("/etc/apt/sources.list.d/debian.sources", DEB822)])
    assert found == "http://mirror.invalid/debian"


def test_the_first_file_in_apt_order_wins() -> None:
    files = [
        ("/etc/apt/sources.list", "# nothing here\n"),
        ("/etc/apt/sources.list.d/a.list", "deb http://first.invalid/debian bookworm main\n"),
        ("/etc/apt/sources.list.d/b.sources", DEB822),
    ]
    assert apt_mirror(files) == "http://first.invalid/debian"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("sources.list", "deb http://mirror.invalid/debian trixie main\n"),
        ("sources.list", "deb-src http://mirror.invalid/debian bookworm main\n"),
        ("sources.list", "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"),
        ("x.sources", "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n"),
        (
            "x.sources",
            "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm-security\n"
            "Components: main\n",
        ),
    ],
)
def test_no_usable_source(name: str, text: str) -> None:
    assert apt_mirror([(name, text)]) is None


def test_source_files_are_read_as_apt_reads_them(tmp_path: Path) -> None:
    """sources.list first, then the .list and .sources files by name; others (a
    .save, a .disabled) are not apt's."""
    (tmp_path / "sources.list.d").mkdir()
    for name in ("b.sources", "a.list", "c.list.save", "d.sources.disabled"):
        (tmp_path / "sources.list.d" / name).write_text(name)
    (tmp_path / "sources.list").write_text("top")
    names = [Path(name).name for name, _ in apt_source_files(tmp_path)]
    assert names == ["sources.list", "a.list", "b.sources"]


def test_a_machine_without_a_source_gets_told_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        DEB822.replace("bookworm", "trixie")
    )
    with pytest.raises(RuntimeError) as error:
        debootstrap_mirror(tmp_path)
    message = str(error.value)
    for part in (
        "`deb` source",
        "'bookworm'",
        "'main'",
        f"{tmp_path}/sources.list.d/*.list",
        "*.sources",
        "apt-get update",
    ):
        assert part in message
