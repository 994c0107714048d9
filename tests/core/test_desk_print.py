"""The desk's printout (clients.desk_print): what it says, as table tests of the pure
part, and one multi-page bulletin laid out by fpdf2 and read back page by page with a
real PDF parser (pypdf): both banners and the signature status on every page."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pypdf
import pytest

from clients.archive import Archive, ArchivedBulletin, ArchiveEntry
from clients.archive_keys import ArchiveSecret
from clients.desk_print import (
    TLP_COLOURS,
    bulletin_pdf,
    latin1,
    print_document,
    signature_status,
)
from clients.desk_strings import translator
from clients.results import ReceivedAttachment, ReceivedBulletin
from schemas.labels import Classification, Handling, Labels, Precedence, Tlp

_ = translator("en")
KID = "sig-" + "ab" * 16


def received(n: int = 1, **extra: object) -> ReceivedBulletin:
    fields: dict[str, object] = {
        "id": f"00000000-0000-4000-8000-{n:012d}",
        "originator": "gt-police",
        "labels": Labels(
            topic="drug-trafficking",
            classification=Classification.SECRET,
            tlp=Tlp.AMBER_STRICT,
            rel_to=("CR", "GT"),
            handling=(Handling.H1, Handling.H2),
            precedence=Precedence.FLASH,
        ),
        "title": "Go-fast boat",
        "body": "Seen near Puerto Barrios.",
        "created_at": 1_800_000_000,
        "received_at": 1_800_000_100,
        "caveats": ("No judicial use without consent",),
        "signed_kid": KID,
        **extra,
    }
    return ReceivedBulletin(**fields)  # type: ignore[arg-type]  # the test's fields


def entry(b: ReceivedBulletin, **extra: object) -> ArchiveEntry:
    lab = b.labels
    fields: dict[str, object] = {
        "seq": 1,
        "id": b.id,
        "originator": b.originator,
        "topic": lab.topic,
        "classification": lab.classification.value,
        "tlp": lab.tlp.value,
        "precedence": lab.precedence.value,
        "created_at": b.created_at,
        "received_at": b.received_at,
        "added_us": 1,
        "expires_at": b.expires_at,
        "thread": b.thread,
        "in_reply_to": b.in_reply_to,
        "supersedes": b.supersedes,
        "read": False,
        "flags": (),
        "withdrawn_at": None,
        **extra,
    }
    return ArchiveEntry(**fields)  # type: ignore[arg-type]  # the test's fields


def doc_of(b: ReceivedBulletin, **kw: object) -> tuple[str, ...]:
    got = ArchivedBulletin(entry(b, **kw), b, "a wrong place" if kw else None)
    d = print_document(got, [], {}, printed_by="ana", now=1_800_000_500, _=_)
    return tuple(line for _h, lines in d.sections for line in lines)


def test_every_tlp_has_its_colour_on_black() -> None:
    assert set(TLP_COLOURS) == {t.value for t in Tlp}
    assert TLP_COLOURS["RED"] == (255, 43, 43)
    assert TLP_COLOURS["AMBER+STRICT"] == TLP_COLOURS["AMBER"] == (255, 192, 0)


@pytest.mark.parametrize(
    ("kid", "want"),
    [
        (KID, f"Signature verified: originator gt-police, key {KID}, signed 2027-01-15"),
        (None, "Signature verified: originator gt-police, key (id not recorded), signed"),
    ],
)
def test_signature_status(kid: str | None, want: str) -> None:
    b = received(signed_kid=kid)
    assert signature_status(ArchivedBulletin(entry(b), b), _).startswith(want)


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ({}, "Releasable to: CR, GT"),
        ({}, "Precedence: FLASH"),
        ({}, "Handling codes: H1, H2"),
        ({}, "Caveat: No judicial use without consent"),
        ({}, "No expiry set by its originator."),
        ({"expires_at": 1_900_000_000}, "Valid until 2030-03-17 17:46:40Z"),
        ({}, "Not part of a thread."),
        ({"in_reply_to": "00000000-0000-4000-8000-000000000009"}, "This bulletin answers"),
        ({"rfi_due": 1_800_086_400}, "A request for information: answers wanted by 2027-01-16"),
    ],
)
def test_caveats_and_context_lines(extra: dict[str, object], line: str) -> None:
    assert any(x.startswith(line) for x in doc_of(received(**extra))), doc_of(received(**extra))


def test_withdrawn_and_files_and_thread() -> None:
    att = ReceivedAttachment(
        index=0, name="map.png", media_type="image/png", size=1234, chunks=1,
        chunk_size=65536, digest="cd" * 32,
    )  # fmt: skip
    b = received(2, thread=received(1).id, in_reply_to=received(1).id, attachments=(att,))
    first = received(1)
    got = ArchivedBulletin(entry(b, withdrawn_at=1_800_000_300), b, "sent in error")
    d = print_document(
        got,
        [entry(first), entry(b)],
        {first.id: "The first"},
        printed_by="ana",
        now=1_800_000_500,
        _=_,
    )
    assert d.sections[0][0] == "WITHDRAWN"
    assert "sent in error" in d.sections[0][1][0]
    thread = dict(d.sections)["Thread"]
    assert thread[-2].startswith(f"Thread {first.id}: 2 in the archive")
    assert thread[-1].endswith(f"{first.id}  The first")
    assert d.files[1] == (f"map.png (image/png, 1234 bytes, signed digest {'cd' * 32})",)
    assert d.banner == "SECRET // REL TO CR, GT"
    assert d.tlp == "TLP:AMBER+STRICT"
    assert d.printed.startswith("Printed by ana at 2027-01-15 08:08:20Z")


@pytest.mark.parametrize(
    ("lang", "says"),
    [
        ("es", ("Tema: narcotráfico", "Precedencia: FLASH", "Códigos de tratamiento: H1, H2")),
        ("fr", ("Thème\u00a0: trafic de stupéfiants", "Priorité\u00a0: FLASH", "Fil ")),
        ("nl", ("Onderwerp: drugshandel", "Voorrang: FLASH", "Behandelingscodes: H1, H2")),
    ],
)
def test_printed_in_the_analysts_language(lang: str, says: tuple[str, ...]) -> None:
    """Words in the analyst's language; the markings of record stay as they are (ADR 26):
    the banner, the TLP label, FLASH, the handling codes, the caveat's own text."""
    b = received(thread=received(1).id)
    d = print_document(
        ArchivedBulletin(entry(b), b), [], {}, printed_by="ana", now=1_800_000_500,
        _=translator(lang),
    )  # fmt: skip
    lines = [line for _h, section in d.sections for line in section]
    for want in says:
        assert any(x.startswith(want) for x in lines), (want, lines)
    assert d.banner == "SECRET // REL TO CR, GT"
    assert d.tlp == "TLP:AMBER+STRICT"
    assert "No judicial use without consent" in " ".join(lines)
    assert d.printed.startswith({"es": "Impreso", "fr": "Imprimé", "nl": "Afgedrukt"}[lang])


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Barrios € año ✓", "Barrios ? año ?"),  # outside Latin-1: shown as missing
        ("a\tb\r\nc", "a    b\nc"),
        ("no\x00nul\x07bell\u200bzwsp", "nonulbellzwsp"),
        ("« 12\u00a0h »", "« 12 h »"),
    ],
)
def test_core_font_replaces_what_latin1_lacks(text: str, want: str) -> None:
    assert latin1(text) == want


@pytest.mark.parametrize("core_font", [False, True])
def test_a_long_bulletin_has_its_markings_on_every_page(tmp_path: Path, core_font: bool) -> None:
    para = "La lancha rápida fue vista cerca de Puerto Barrios al amanecer. " * 14
    body = "\n".join(f"{i}. {para}" for i in range(40)) + "\n" + "x" * 500  # one long word
    b = received(body=body, expires_at=int(time.time()) + 86400)
    with Archive.open(
        tmp_path / "a.sqlite", "sv-police", lambda: ArchiveSecret("passphrase", b"p" * 16)
    ) as archive:
        archive.add(b)
        pdf = bulletin_pdf(archive, b.id, printed_by="ana", now=1_800_000_500, core_font=core_font)
    assert pdf is not None  # how long it takes is docs/desk.md's figure, not a test's
    pages = pypdf.PdfReader(io.BytesIO(pdf)).pages
    assert len(pages) >= 5
    texts = [p.extract_text() for p in pages]
    for n, text in enumerate(texts, 1):
        lines = [line.strip() for line in text.splitlines()]
        # Top and bottom: the classification line and the TLP label, each twice a page.
        assert lines.count("SECRET // REL TO CR, GT") == 2, (n, lines[:3], lines[-3:])
        assert lines.count("TLP:AMBER+STRICT") == 2, (n, lines[:3], lines[-3:])
        assert lines[0] == "SECRET // REL TO CR, GT"
        assert lines[-1] == "TLP:AMBER+STRICT"
        assert f"Signature verified: originator gt-police, key {KID}" in text.replace("\n", " ")
        assert f"· {n}/{len(pages)}" in text
    whole = " ".join(texts)
    assert "Handling codes: H1, H2" in whole
    assert "39. La lancha" in whole  # the last paragraph made it
    assert "x" * 60 in whole  # the long word is broken across lines, not cut
