"""The agency's archive (clients.archive) on a real SQLite file: sealed at rest, filters,
search, marks, paging, and the wrong secret refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clients.archive import Archive, ArchiveFilter
from clients.archive_keys import ArchiveSecret
from clients.archive_search import SearchIndex, words
from clients.results import ReceivedAttachment, ReceivedBulletin, Withdrawn
from schemas.errors import ConfigError
from schemas.labels import Classification, Labels, Precedence, Tlp

PASS = ArchiveSecret("passphrase", b"correct horse battery staple")
KEYFILE = ArchiveSecret("key-file", bytes(range(32)))


def bulletin(
    n: int,
    *,
    topic: str = "drug-trafficking",
    tlp: Tlp = Tlp.AMBER,
    originator: str = "gt-police",
    title: str = "",
    body: str = "",
    thread: str | None = None,
    precedence: Precedence = Precedence.ROUTINE,
) -> ReceivedBulletin:
    bid = f"00000000-0000-4000-8000-{n:012d}"
    return ReceivedBulletin(
        id=bid,
        originator=originator,
        labels=Labels(
            topic=topic,  # type: ignore[arg-type]  # a topic of the test's choosing
            classification=Classification.RESTRICTED,
            tlp=tlp,
            rel_to=("SICA",),
            precedence=precedence,
        ),
        title=title or f"title {n}",
        body=body or f"body {n}",
        created_at=1_800_000_000 + n,
        received_at=1_800_000_100 + n,
        caveats=(),
        in_reply_to=thread,
        thread=thread,
    )


@pytest.fixture
def archive(tmp_path: Path):
    a = Archive.open(tmp_path / "a.sqlite", "sv-police", lambda: PASS)
    yield a
    a.close()


def test_nothing_in_clear_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    b = ReceivedBulletin(
        **{
            **bulletin(1).__dict__,
            "title": "CANARY-title-4e1f",
            "body": "CANARY-body-77aa go-fast boat",
            "caveats": ("CANARY-caveat-0c2d",),
            "attachments": (
                ReceivedAttachment(0, "CANARY-name-9b1e.pdf", "application/pdf", 10, 1, 10, "d"),
                # A forward's file: the original's, sealed under its id (ADR 20).
                ReceivedAttachment(
                    1,
                    "boats.jpg",
                    "image/jpeg",
                    10,
                    1,
                    10,
                    "e",
                    original="0b1e5a8c-1111-4222-8333-444455556666",
                ),
            ),
        }
    )
    with Archive.open(path, "sv-police", lambda: PASS) as a:
        a.add(b)
        a.withdraw(Withdrawn(b.id, "gt-police", "CANARY-reason-51d0", 1_800_000_500, True))
        assert a.search("canary-body-77aa", ArchiveFilter())[0].id == b.id
        assert a.search("CANARY-name-9b1e", ArchiveFilter())[0].id == b.id
    assert path.stat().st_mode & 0o077 == 0
    for f in tmp_path.iterdir():
        data = f.read_bytes()
        for needle in (b"CANARY", b"go-fast", b"9b1e", b"51d0"):
            assert needle not in data, (f, needle)
    with Archive.open(path, "sv-police", lambda: PASS) as a:
        got = a.get(b.id)
        assert got is not None
        assert got.bulletin == b
        assert got.withdrawal_reason == "CANARY-reason-51d0"


@pytest.mark.parametrize(
    ("made_with", "opened_with", "message"),
    [
        (PASS, ArchiveSecret("passphrase", b"wrong"), "wrong passphrase for this archive"),
        (KEYFILE, ArchiveSecret("key-file", bytes(32)), "wrong key file for this archive"),
        (PASS, KEYFILE, "protected by a passphrase, not a key file"),
        (KEYFILE, PASS, "protected by a key file, not a passphrase"),
        (KEYFILE, ArchiveSecret("key-file", b"short"), "holds 32 to 4096 bytes"),
    ],
)
def test_wrong_secret_refused(
    tmp_path: Path, made_with: ArchiveSecret, opened_with: ArchiveSecret, message: str
) -> None:
    path = tmp_path / "a.sqlite"
    with Archive.open(path, "sv-police", lambda: made_with) as a:
        a.add(bulletin(1))
    with pytest.raises(ConfigError, match=message):
        Archive.open(path, "sv-police", lambda: opened_with)


def test_refuses_another_agencys_archive_and_open_modes(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    Archive.open(path, "sv-police", lambda: PASS).close()
    with pytest.raises(ConfigError, match="is sv-police's, not hn-police's"):
        Archive.open(path, "hn-police", lambda: PASS)
    with pytest.raises(ConfigError, match="no archive at"):
        Archive.open(tmp_path / "none.sqlite", "sv-police", lambda: PASS, create=False)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        Archive.open(path, "sv-police", lambda: PASS)


def test_a_row_moved_or_altered_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    with Archive.open(path, "sv-police", lambda: PASS) as a:
        a.add(bulletin(1))
        a.add(bulletin(2))
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "UPDATE bulletins SET sealed = (SELECT sealed FROM bulletins WHERE seq = 1)"
            " WHERE seq = 2"
        )
    db.close()
    with Archive.open(path, "sv-police", lambda: PASS) as a:
        assert a.get(bulletin(1).id) is not None
        with pytest.raises(ConfigError, match="was altered"):
            a.get(bulletin(2).id)


def test_filters_marks_and_threads(archive: Archive) -> None:
    archive.add(bulletin(1, topic="migration", tlp=Tlp.GREEN))
    archive.add(bulletin(2, originator="hn-police", precedence=Precedence.FLASH))
    archive.add(bulletin(3, thread=bulletin(2).id))
    assert archive.add(bulletin(3)) is None  # a redelivery is kept once
    assert archive.count() == 3

    def ids(**where: object) -> list[str]:
        return [e.id[-1] for e in archive.entries(ArchiveFilter(**where))]  # type: ignore[arg-type]

    assert ids() == ["3", "2", "1"]
    assert ids(topic="migration") == ["1"]
    assert ids(tlp="GREEN") == ["1"]
    assert ids(originator="hn-police") == ["2"]
    assert ids(precedence="FLASH") == ["2"]
    assert ids(since=1_800_000_002) == ["3", "2"]
    assert ids(until=1_800_000_002) == ["1"]
    assert ids(thread=bulletin(2).id) == ["3", "2"]
    assert archive.mark_read(bulletin(1).id)
    assert ids(unread=True) == ["3", "2"]
    assert archive.flag(bulletin(2).id, "starred")
    assert ids(flag="starred") == ["2"]
    assert archive.flag(bulletin(2).id, "starred", on=False)
    assert ids(flag="starred") == []
    assert not archive.flag("00000000-0000-4000-8000-999999999999", "done")
    with pytest.raises(ConfigError, match="no flag 'secret'"):
        archive.flag(bulletin(2).id, "secret")
    # A withdrawal counts only from the bulletin's originator.
    assert not archive.withdraw(Withdrawn(bulletin(2).id, "gt-police", "x", 1, True))
    assert archive.withdraw(Withdrawn(bulletin(2).id, "hn-police", "x", 1, True))


def test_search_every_word_newest_first(archive: Archive) -> None:
    archive.add(bulletin(1, body="Go-fast boat left Puerto Barrios"))
    archive.add(bulletin(2, body="A boat near Belize", topic="migration"))
    archive.add(bulletin(3, body="Nothing here"))

    def found(query: str, **where: object) -> list[str]:
        hits = archive.search(query, ArchiveFilter(**where))  # type: ignore[arg-type]
        return [e.id[-1] for e in hits]

    assert found("boat") == ["2", "1"]
    assert found("BOAT barrios") == ["1"]
    assert found("boat", topic="migration") == ["2"]
    assert found("submarine") == []
    archive.add(bulletin(4, title="boat again"))  # indexed as it arrives
    assert found("boat") == ["4", "2", "1"]
    with pytest.raises(ConfigError, match="at least one word"):
        archive.search("  ... ", ArchiveFilter())


def test_paging_by_sequence(archive: Archive) -> None:
    for n in range(1, 8):
        archive.add(bulletin(n, tlp=Tlp.RED if n == 5 else Tlp.AMBER), now_us=1000)
    page = archive.after("drug-trafficking", limit=3)
    assert [p.entry.seq for p in page] == [1, 2, 3]
    # Archive times grow with the sequence even when the clock does not.
    assert [p.entry.added_us for p in page] == [1000, 1001, 1002]
    page = archive.after("drug-trafficking", after_seq=3, limit=3, tlps=["AMBER"])
    assert [p.entry.seq for p in page] == [4, 6, 7]
    assert archive.seq_after_us(1002) == 3
    assert archive.after("drug-trafficking", after_us=1006) == []
    assert archive.after("migration") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Go-fast boats", {"go-fast", "boats"}),
        ("ÁREA área", {"área"}),
        ("it's 03:10", {"it's", "03", "10"}),
        ("", set()),
    ],
)
def test_words(text: str, expected: set[str]) -> None:
    assert words(text) == expected


def test_index_refuses_out_of_order_and_long_queries() -> None:
    index = SearchIndex()
    index.add(2, ["a b"])
    with pytest.raises(ValueError, match="indexed after"):
        index.add(1, ["c"])
    with pytest.raises(ValueError, match="at most 16 words"):
        index.search(" ".join(f"w{i}" for i in range(17)), limit=10)
    with pytest.raises(ValueError, match="at most 500 characters"):
        index.search("x" * 501, limit=10)
