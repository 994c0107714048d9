"""The desk's compose form and drafts (clients.desk_drafts): every field checked against
its closed set with a message naming it, the multipart reader's bounds, and the drafts
store on a real archive file (sealed, four-eyes, released once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.desk_drafts import (
    MAX_FILE_BYTES,
    MAX_FILES,
    DeskDrafts,
    DraftFile,
    FormErrors,
    check_compose,
    parse_multipart,
    sent_labels,
)
from clients.desk_strings import translator
from schemas.labels import Classification, Handling, Precedence, Tlp

NOW = 1_800_000_000
GOOD = [
    ("title", "Go-fast boat sighted"),
    ("text", "Two boats left at 03:10."),
    ("topic", "drug-trafficking"),
    ("classification", "RESTRICTED"),
    ("tlp", "AMBER"),
    ("precedence", "PRIORITY"),
    ("rel_to", "SICA, GT"),
]


def with_(**changes: str | list[str]) -> list[tuple[str, str]]:
    pairs = [(k, v) for k, v in GOOD if k not in changes]
    for k, v in changes.items():
        pairs += [(k, x) for x in v] if isinstance(v, list) else [(k, v)]
    return pairs


def test_a_good_form_gives_its_labels() -> None:
    c = check_compose(
        with_(handling=["H1", "H3"], handling_note="not before trial", named="GT-Police"),
        kind="bulletin",
        now=NOW,
    )
    assert c.title == "Go-fast boat sighted"
    assert c.labels.classification is Classification.RESTRICTED
    assert c.labels.tlp is Tlp.AMBER
    assert c.labels.precedence is Precedence.PRIORITY
    assert c.labels.rel_to == ("SICA", "GT")
    assert c.labels.handling == (Handling.H1, Handling.H3)
    assert c.labels.named == ("gt-police",)
    assert c.to == ()
    assert c.due_at is None
    assert not c.reply_all


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"title": ""}, "title", "give a title"),
        ({"title": "x" * 301}, "title", "at most 300"),
        ({"title": "two\nlines"}, "title", "one line"),
        ({"text": "bell\x07"}, "text", "control characters"),
        ({"text": "x" * 100_001}, "text", "at most 100000"),
        ({"topic": "cyber"}, "topic", "one of drug-trafficking"),
        ({"topic": ""}, "topic", "choose a topic"),
        ({"classification": "TOP SECRET"}, "classification", "UNCLASSIFIED, RESTRICTED"),
        ({"tlp": "PURPLE"}, "tlp", "CLEAR, GREEN, AMBER, AMBER+STRICT, RED"),
        ({"precedence": "URGENT"}, "precedence", "FLASH, IMMEDIATE"),
        ({"rel_to": ""}, "rel_to", "at least one"),
        ({"rel_to": "sica"}, "rel_to", "upper-case codes"),
        ({"rel_to": "GT, GT"}, "rel_to", "each code once"),
        ({"rel_to": ", ".join(f"A{i:02d}" for i in range(65))}, "rel_to", "at most 64"),
        ({"handling": ["H9"]}, "handling", "H0, H1, H2, H3"),
        ({"handling": ["H1", "H1"]}, "handling", "each once"),
        ({"handling": ["H3"]}, "handling_note", "H3 needs"),
        ({"handling_note": "keep it"}, "handling_note", "tick H3"),
        ({"named": "police of gt"}, "named", "not an agency id"),
    ],
)
def test_a_bad_field_is_named_with_what_to_give(changes: dict, field: str, says: str) -> None:
    with pytest.raises(FormErrors) as got:
        check_compose(with_(**changes), kind="bulletin", now=NOW)
    assert field in got.value.errors, got.value.errors
    assert says in got.value.errors[field]


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(FormErrors) as got:
        check_compose(with_(tlp="PURPLE", topic="cyber", title=""), kind="bulletin", now=NOW)
    assert set(got.value.errors) == {"tlp", "topic", "title"}


@pytest.mark.parametrize(
    ("to", "due", "field", "says"),
    [
        ("", "", "to", "at least one addressee"),
        ("gt police", "", "to", "neither an agency id"),
        ("gt-police", "2020-01-01T00:00", "due", "has passed"),
        ("gt-police", "2027-12-31T00:00", "due", "more than 30 days"),
        ("gt-police", "tomorrow", "due", "like 2026-12-06T18:00"),
    ],
)
def test_a_bad_request_for_information(to: str, due: str, field: str, says: str) -> None:
    with pytest.raises(FormErrors) as got:
        check_compose(with_(to=to, due=due), kind="rfi", now=NOW)
    assert says in got.value.errors[field], got.value.errors


def test_a_request_names_its_agencies_and_is_releasable_to_its_states() -> None:
    c = check_compose(with_(to="gt-police, HN", due="2027-01-15T10:00"), kind="rfi", now=NOW)
    assert c.to == ("gt-police", "HN")
    assert c.due_at == NOW + 2 * 3600  # NOW is 2027-01-15T08:00Z
    sent = sent_labels(c)
    assert sent.named == ("gt-police",)
    assert sent.rel_to == ("SICA", "GT", "HN")
    assert check_compose(with_(to="gt-police"), kind="rfi", now=NOW).due_at is None


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: text/plain\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


CT = "multipart/form-data; boundary=b0undary"


def test_multipart_fields_and_files() -> None:
    body = _multipart(
        [
            ("csrf", None, b"tok"),
            ("text", None, "línea\r\ndos".encode()),
            ("files", "C:\\Users\\ana\\notes.txt", b"ledger\r\n--b0und"),
            ("files", "", b""),  # an input left empty
        ]
    )
    fields, files = parse_multipart(body, CT)
    assert fields == [("csrf", "tok"), ("text", "línea\r\ndos")]
    assert files == [DraftFile("notes.txt", "text/plain", b"ledger\r\n--b0und")]


@pytest.mark.parametrize(
    ("body", "ctype", "says"),
    [
        (b"a=b", "application/x-www-form-urlencoded", "multipart/form-data"),
        (b"--b0undary\r\n", CT, "cut short"),
        (_multipart([("x", None, b"y")]).replace(b"Content-Disposition", b"X-No"), CT, "malformed"),
        (_multipart([("f", "a.bin", b"x" * (MAX_FILE_BYTES + 1))]), CT, "at most 4 MiB"),
        (
            _multipart([("f", f"{i}.txt", b"x") for i in range(MAX_FILES + 1)]),
            CT,
            "at most 4 files",
        ),
        (_multipart([("f", "..", b"x")]), CT, "plain name"),
        (_multipart([("title", None, b"\xff")]), CT, "not UTF-8"),
        (_multipart([("rel_to", None, b"x" * 2001)]), CT, "too long"),
        (_multipart([(f"k{i}", None, b"v") for i in range(49)]), CT, "too many fields"),
    ],
)
def test_multipart_refusals(body: bytes, ctype: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_multipart(body, ctype)


@pytest.fixture
def drafts(tmp_path: Path):
    path = tmp_path / "a.sqlite"
    with Archive.open(path, "sv-police", lambda: ArchiveSecret("key-file", bytes(32))) as a:
        store = DeskDrafts(path, a.subkey("desk-drafts"))
        yield store, path
        store.close()


def test_drafts_are_sealed_and_released_once_by_another(drafts) -> None:
    store, path = drafts
    content = check_compose(
        with_(title="CANARY-d41 title", text="CANARY-d41 body"), kind="bulletin", now=NOW
    )
    did = store.save(
        content, [DraftFile("CANARY-d41.txt", "text/plain", b"CANARY-d41 file")], author="ana"
    )
    assert store.content(did) == content
    assert [f.name for f in store.files(did)] == ["CANARY-d41.txt"]
    assert [d.id for d in store.listed(author="ana")] == [did]
    assert store.listed(author="ben") == []
    assert not store.claim(did, "ana")  # four eyes: not its author
    assert store.claim(did, "ben")
    assert not store.claim(did, "carla")  # taken already
    store.unclaim(did)
    assert store.claim(did, "carla")
    store.released(did, "00000000-0000-4000-8000-000000000009")
    got = store.get(did)
    assert got is not None
    assert (got.state, got.decided_by) == ("released", "carla")
    assert got.sent_id == "00000000-0000-4000-8000-000000000009"
    assert store.files(did) == []
    assert store.listed() == []
    assert not store.discard(did, "ben")
    on_disk = b"".join(p.read_bytes() for p in path.parent.glob("a.sqlite*"))
    assert b"CANARY" not in on_disk


def test_a_discarded_draft_keeps_nothing(drafts) -> None:
    store, _ = drafts
    did = store.save(check_compose(GOOD, kind="bulletin", now=NOW), [], author="ana")
    assert store.discard(did, "ana")
    assert store.get(did).state == "discarded"  # type: ignore[union-attr]
    with pytest.raises(Exception, match="holds nothing"):
        store.content(did)


def test_a_bad_field_is_said_in_the_analysts_language() -> None:
    with pytest.raises(FormErrors) as got:
        check_compose(with_(tlp="PURPLE", title=""), kind="bulletin", now=NOW)
    tlp, title = got.value.errors["tlp"], got.value.errors["title"]
    assert tlp == "choose a TLP level: one of CLEAR, GREEN, AMBER, AMBER+STRICT, RED"
    assert translator("fr")(tlp.key, **tlp.values) == (
        "choisissez un niveau TLP\u00a0: l'un de CLEAR, GREEN, AMBER, AMBER+STRICT, RED"
    )
    assert translator("es")(title.key, **title.values) == "indique un título"
    assert translator("nl")(title.key, **title.values) == "geef een titel op"
