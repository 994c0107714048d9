"""A bulletin printed: a PDF with its markings on every page (issue 18, ADR 29).

Every page carries, top and bottom, the classification and the TLP label in FIRST's
TLP 2.0 colours (the label's colour on black), and at the bottom the signature status,
so that a page separated from the rest still says how to handle it and whose it is. The
first page gives the handling caveats (handling codes, REL TO, precedence, expiry), the
signature status at length, where the bulletin sits in its thread, the text wrapped across
as many pages as it needs, and the attached files by name, size and digest (never
embedded: a printout is not a way round the checked download).

``print_document`` is pure (the archive's row and thread in, the words of the page out);
``render_pdf`` lays it out with fpdf2, imported only when a PDF is made, so the SDK's
dependencies do not grow (``pip install 'istmo[desk]'``). A DejaVu Sans font is used when
the machine has one (any script it covers prints); otherwise the PDF core font, which
covers Latin-1, and a character outside it prints as ``?``.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from clients.archive import MAX_PAGE, Archive, ArchivedBulletin, ArchiveEntry, ArchiveFilter
from clients.desk_strings import Translator, translator
from clients.results import shown_time
from schemas.errors import ConfigError

__all__ = [
    "TLP_COLOURS",
    "PrintDoc",
    "bulletin_pdf",
    "document_of",
    "print_document",
    "printable",
    "render_pdf",
    "signature_status",
]

Rgb = tuple[int, int, int]
BLACK: Final[Rgb] = (0, 0, 0)
# FIRST, TLP 2.0 "TLP colors": the label's letters in its colour on a black background.
TLP_COLOURS: Final[dict[str, Rgb]] = {
    "RED": (255, 43, 43),
    "AMBER": (255, 192, 0),
    "AMBER+STRICT": (255, 192, 0),
    "GREEN": (51, 255, 0),
    "CLEAR": (255, 255, 255),
}
FONT_PATHS: Final = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/local/share/fonts/dejavu"),
)
MAX_THREAD = 50


@dataclass(frozen=True)
class PrintDoc:
    """What a printed bulletin says, in the order it says it.

    Attributes:
        banner: the classification line printed at the top and bottom of every page.
        tlp: the TLP label (``TLP:AMBER+STRICT``), printed beside it in its colour.
        signature: the one-line signature status at the foot of every page.
        title: the bulletin's title.
        sections: (heading, lines) after the title and before the text.
        body: the text.
        files: (heading, lines) for the attached files, after the text.
        printed: who printed it, when (the last line of every page's foot).
    """

    banner: str
    tlp: str
    signature: str
    title: str
    sections: tuple[tuple[str, tuple[str, ...]], ...]
    body: str
    files: tuple[str, tuple[str, ...]]
    printed: str

    @property
    def tlp_colour(self) -> Rgb:
        return TLP_COLOURS.get(self.tlp.removeprefix("TLP:"), (255, 255, 255))


def signature_status(got: ArchivedBulletin, _: Callable[..., str]) -> str:
    """One line: whose signature verified, under which key, signed when.

    The archive keeps only what the SDK verified (the originator's Ed25519 signature
    under a key the signed directory lists, not revoked when it was made), so every row's
    status is "verified"; a row kept before the key id was recorded says so."""
    b = got.bulletin
    kid = b.signed_kid or _("print.kid_unknown")
    return _("print.signature", originator=b.originator, kid=kid, at=shown_time(b.created_at))


def _caveats(got: ArchivedBulletin, _: Translator) -> tuple[str, ...]:
    b, lab = got.bulletin, got.bulletin.labels
    lines = [
        _("print.rel_to", rel=", ".join(lab.rel_to)),
        _("print.precedence", p=_.word("precedence", lab.precedence.value)),
        _("print.handling", codes=", ".join(lab.handling) if lab.handling else "—"),
    ]
    lines += [_("print.caveat", text=c) for c in b.caveats]
    if b.expires_at is not None:
        lines.append(_("print.expires", at=shown_time(b.expires_at)))
    else:
        lines.append(_("print.no_expiry"))
    if lab.named:
        lines.append(_("print.named", names=", ".join(lab.named)))
    if lab.source_grade:
        lines.append(_("print.grade", grade=lab.source_grade))
    return tuple(lines)


def _thread(
    got: ArchivedBulletin,
    thread: Sequence[ArchiveEntry],
    titles: dict[str, str],
    _: Callable[..., str],
) -> tuple[str, ...]:
    b = got.bulletin
    lines = []
    if b.in_reply_to:
        lines.append(_("read.answers", id=b.in_reply_to))
    if b.supersedes:
        lines.append(_("read.corrects", id=b.supersedes))
    if b.rfi_due is not None:
        lines.append(_("print.rfi_due", at=shown_time(b.rfi_due)))
    others = [e for e in thread if e.id != b.id]
    if got.entry.thread is not None:
        lines.append(_("print.thread", id=got.entry.thread, n=len(others) + 1))
    for e in others[:MAX_THREAD]:
        title = titles.get(e.id, "")
        lines.append(f"{shown_time(e.created_at)}  {e.sender}  {e.id}  {title}".rstrip())
    if not lines:
        lines.append(_("print.no_thread"))
    return tuple(lines)


def print_document(
    got: ArchivedBulletin,
    thread: Sequence[ArchiveEntry],
    titles: dict[str, str],
    *,
    printed_by: str,
    now: int,
    _: Translator,
) -> PrintDoc:
    """The words of ``got`` printed by ``printed_by`` at ``now`` (pure).

    Args:
        thread: the thread's bulletins the archive holds, oldest first (``got`` among
            them or not).
        titles: their titles, by id.
        _: the desk's translator (``clients.desk_strings.translator``): the words, the
            topic and the precedence in its language; the banner, the TLP label and the
            handling codes are markings of record and stay as they are (ADR 26).
    """
    b, e, lab = got.bulletin, got.entry, got.bulletin.labels
    about = (
        _("print.id", id=b.id),
        _("print.from", originator=b.sender),
        _("print.topic", topic=_.word("topic", lab.topic)),
        _("print.created", at=shown_time(b.created_at)),
        _("print.received", at=shown_time(b.received_at)),
    )
    sections: list[tuple[str, tuple[str, ...]]] = []
    if e.withdrawn_at is not None:
        reason = got.withdrawal_reason or ""
        sections.append(
            (
                _("print.withdrawn_head"),
                (_("read.withdrawn", at=shown_time(e.withdrawn_at), reason=reason),),
            )
        )
    sections += [
        (_("print.about"), about),
        (_("read.caveats"), _caveats(got, _)),
        (_("print.signature_head"), (signature_status(got, _),)),
        (_("read.thread"), _thread(got, thread, titles, _)),
    ]
    files = tuple(
        _(
            "print.file",
            name=a.name,
            type=a.media_type,
            size=_("read.bytes", n=a.size),
            digest=a.digest,
        )
        for a in b.attachments
    ) or (_("read.no_attachments"),)
    return PrintDoc(
        banner=f"{lab.classification.value} // REL TO {', '.join(lab.rel_to)}",
        tlp=f"TLP:{lab.tlp.value}",
        signature=signature_status(got, _),
        title=b.title,
        sections=tuple(sections),
        body=b.body,
        files=(_("read.attachments"), files),
        printed=_("print.printed", who=printed_by, at=shown_time(now)),
    )


def _font_dir() -> Path | None:
    for d in FONT_PATHS:
        if (d / "DejaVuSans.ttf").is_file() and (d / "DejaVuSans-Bold.ttf").is_file():
            return d
    return None


def printable(text: str, has: Callable[[int], bool]) -> str:
    """``text`` as a font with the characters ``has`` can print it: a tab is four spaces,
    any other space one, other control and format characters go, and a character the font
    lacks is ``?`` (never silently dropped: the reader sees something was there)."""
    out = []
    for c in text.replace("\r\n", "\n"):
        cat = unicodedata.category(c)
        if c == "\n":
            out.append(c)
        elif c == "\t":
            out.append("    ")
        elif cat in ("Zs", "Zl", "Zp"):
            out.append(" ")
        elif cat in ("Cc", "Cf", "Cs"):
            continue
        else:
            out.append(c if has(ord(c)) else "?")
    return "".join(out)


def latin1(text: str) -> str:
    """``text`` as the PDF core fonts can print it: a character outside Latin-1 is ``?``."""
    return printable(text, lambda cp: cp < 256)


def render_pdf(doc: PrintDoc, *, font_dir: Path | None = None, core_font: bool = False) -> bytes:
    """``doc`` laid out on A4 pages; the PDF's bytes.

    Args:
        font_dir: where DejaVuSans.ttf and DejaVuSans-Bold.ttf are (default: looked for).
        core_font: use the PDF core font (Latin-1) even if DejaVu is there.

    Raises:
        ConfigError: fpdf2 is not installed.
    """
    try:
        from fpdf import FPDF
        from fpdf.enums import XPos, YPos
        from fpdf.fonts import TTFFont
    except ImportError as exc:
        raise ConfigError(
            "printing needs fpdf2", hint="pip install 'istmo[desk]' (or pip install fpdf2)"
        ) from exc
    fonts = None if core_font else font_dir or _font_dir()
    family = "DejaVu" if fonts is not None else "Helvetica"
    text: Callable[[str], str] = latin1
    colour = doc.tlp_colour

    class Printout(FPDF):
        def _banner(self) -> None:
            self.set_font(family, "B", 11)
            self.set_text_color(*BLACK)
            self.cell(0, 6, text(doc.banner), align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            self.set_fill_color(*BLACK)
            self.set_text_color(*colour)
            width = self.get_string_width(doc.tlp) + 6
            self.set_x((self.w - width) / 2)
            self.cell(width, 6, doc.tlp, align="C", fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            self.set_text_color(*BLACK)

        def header(self) -> None:
            self.set_y(8)
            self._banner()
            self.ln(4)

        def footer(self) -> None:
            self.set_y(-30)
            self.set_font(family, "", 7)
            self.set_text_color(*BLACK)
            self.multi_cell(
                0, 3.5, text(doc.signature), align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT
            )
            self.cell(
                0,
                3.5,
                text(f"{doc.printed} · {self.page_no()}/{{nb}}"),
                align="C",
                new_x=XPos.LMARGIN,
                new_y=YPos.NEXT,
            )
            self._banner()

    pdf = Printout(orientation="P", unit="mm", format="A4")
    if fonts is not None:
        pdf.add_font(family, "", str(fonts / "DejaVuSans.ttf"))
        pdf.add_font(family, "B", str(fonts / "DejaVuSans-Bold.ttf"))
        # The code points both faces have glyphs for; a lacking one prints as "?".
        faces = [pdf.fonts[k] for k in ("dejavu", "dejavuB")]
        both = set.intersection(*(set(f.cmap) for f in faces if isinstance(f, TTFFont)))
        text = functools.partial(printable, has=both.__contains__)
    pdf.set_creator("Istmo desk")
    pdf.set_margins(18, 18, 18)
    pdf.set_auto_page_break(True, margin=34)
    pdf.add_page()
    pdf.set_font(family, "B", 15)
    pdf.multi_cell(0, 7, text(doc.title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    for heading, lines in (*doc.sections, ("", ()), doc.files):
        if not heading:  # the text goes between the sections and the files
            pdf.ln(2)
            pdf.set_font(family, "", 10.5)
            for para in doc.body.split("\n"):
                pdf.multi_cell(0, 5.2, text(para) or " ", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(3)
            continue
        pdf.set_font(family, "B", 11)
        pdf.multi_cell(0, 6, text(heading), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font(family, "", 9)
        for line in lines:
            pdf.multi_cell(0, 4.5, text(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(1.5)
    return bytes(pdf.output())


def printed_context(
    archive: Archive, bulletin_id: str
) -> tuple[ArchivedBulletin, list[ArchiveEntry], dict[str, str]] | None:
    """The bulletin, its thread in the archive (oldest first) and their titles; None if
    the archive does not hold it."""
    got = archive.get(bulletin_id)
    if got is None:
        return None
    thread: list[ArchiveEntry] = []
    if got.entry.thread is not None:
        found = archive.entries(ArchiveFilter(thread=got.entry.thread), limit=MAX_PAGE)
        thread = list(reversed(found))[:MAX_THREAD]
    titles: dict[str, str] = {}
    for e in thread:
        other = archive.get(e.id)
        if other is not None:
            titles[e.id] = other.bulletin.title
    return got, thread, titles


def document_of(
    archive: Archive, bulletin_id: str, *, printed_by: str, now: int, lang: str = "en"
) -> PrintDoc | None:
    """What ``bulletin_id`` printed in ``lang`` says (the archive read here, on the
    caller's thread); None if the archive does not hold it."""
    ctx = printed_context(archive, bulletin_id)
    if ctx is None:
        return None
    got, thread, titles = ctx
    return print_document(got, thread, titles, printed_by=printed_by, now=now, _=translator(lang))


def bulletin_pdf(
    archive: Archive, bulletin_id: str, *, printed_by: str, now: int, **render: Any
) -> bytes | None:
    """The PDF of ``bulletin_id`` from ``archive``; None if it does not hold it."""
    doc = document_of(archive, bulletin_id, printed_by=printed_by, now=now)
    return None if doc is None else render_pdf(doc, **render)
